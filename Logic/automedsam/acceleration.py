"""The execution plan of a run: which backend (PyTorch eager or OpenVINO) and which precision (fp32 / bf16 / fp16)
run the image encoder and the mask decoder, and what the CPU can compute natively.

Policy (every figure behind it is in docs/benchmarks.md): "auto" picks the fastest path that kept the masks. On GPUs
everything runs in PyTorch, the encoder under autocast (bf16 where supported, else fp16). On the CPU the encoder runs
in fp32 in OpenVINO when it is installed (`automedsam.openvino_backend`; bf16 *embeddings* moved whole organs), and
on the same plan SAM's mask decoder too, in bf16 on CPUs with native bf16 (faster, masks kept) and fp32 elsewhere.
The class prompt encoder stays in PyTorch fp32 (a third converted model gained too little). Without OpenVINO the CPU
path is PyTorch eager. `automedsam.runner.ModelRunner` carries a plan out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import InputError
from .openvino_backend import import_openvino, openvino_available

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BACKENDS = ("auto", "torch", "openvino")


@dataclass(frozen=True)
class ExecutionPlan:
    """How a run executes the model: the image encoder's `backend` ("torch" | "openvino") and `precision` ("fp32" |
    "bf16" | "fp16"), and the precision of the mask decoder when it runs in OpenVINO (`decoder_precision`, used with
    that backend only; otherwise the decoder runs in PyTorch, under the encoder's autocast on a GPU)."""

    backend: str
    precision: str
    decoder_precision: str = "fp32"

    @property
    def label(self) -> str:
        """The encoder path, e.g. "openvino-bf16" (logs, the benchmark, embedding cache keys)."""
        return f"{self.backend}-{self.precision}"

    @property
    def description(self) -> str:
        """Encoder and decoder paths for logs, e.g. "openvino-fp32, decoder bf16"."""
        decoder = self.decoder_precision if self.backend == "openvino" else "fp32 (PyTorch)"
        return f"{self.label}, decoder {decoder}"


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS or Windows)."""
    path = Path("/proc/cpuinfo")
    if not path.exists():
        return set()
    for line in path.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_native_bf16() -> bool:
    """True if the CPU computes bfloat16 in hardware (AMX-BF16 or avx512_bf16); elsewhere bf16 is emulated (slow).

    Decides the precision of the OpenVINO mask decoder (`plan_execution`) and is reported by the benchmark."""
    flags = cpu_flags()
    if flags:
        return bool({"amx_bf16", "avx512_bf16"} & flags)
    if openvino_available():
        ov = import_openvino()
        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return False


def plan_execution(device: torch.device, precision: str = "auto", backend: str = "auto",
                   model: Any = None) -> ExecutionPlan:
    """Choose backend and precision for `device`; "auto" picks the fastest path that kept the masks (see docs).

    auto precision: GPU -> bf16 (fp16 where bf16 is unsupported), the design's AMP; CPU and Apple MPS -> fp32, because
    bf16 embeddings moved class-prompt masks on real scans (docs/benchmarks.md). auto backend: OpenVINO on
    the CPU when it is installed and the model has our TinyViT encoder (fp32 there is exact and faster than eager);
    its mask decoder then runs in bf16 where the CPU has native bf16 and fp32 was not asked for explicitly.
    """
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if backend not in BACKENDS:
        raise InputError(f"unknown encoder backend {backend!r}; use one of {', '.join(BACKENDS)}")
    requested = precision
    if precision == "auto":
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if device.type == "cuda" else "fp32"
    if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        precision = "fp16"
    convertible = _has_tinyvit_encoder(model)
    if backend == "openvino" and device.type != "cpu":
        raise InputError("the OpenVINO encoder runs on the CPU only; use --device cpu or --encoder-backend torch")
    if backend == "openvino" and not openvino_available():
        raise InputError("OpenVINO is not installed; install it with `pip install automedsam[cpu]` "
                         "(or `pip install openvino`), or use --encoder-backend torch")
    if backend == "auto":
        backend = "openvino" if device.type == "cpu" and convertible and openvino_available() else "torch"
    if backend == "openvino" and precision == "fp16":
        precision = "fp32"  # fp16 is not a CPU compute type; fp32 keeps the result exact
    return ExecutionPlan(backend, precision, _decoder_precision(requested, backend))


def _decoder_precision(requested: str, backend: str) -> str:
    """The OpenVINO decoder's precision: bf16 where the CPU computes it natively, unless fp32 was asked for.

    bf16 decoding kept every class's masks vs fp32 on four real scans (bf16 *embeddings* did not) and is faster there
    (docs/benchmarks.md); emulated bf16 (no avx512_bf16 / AMX) would be slower.
    """
    if backend != "openvino" or requested == "fp32":
        return "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def _has_tinyvit_encoder(model: Any) -> bool:
    from .model.tiny_vit import TinyViT

    return isinstance(getattr(model, "image_encoder", None), TinyViT)


def autocast_dtype(plan: ExecutionPlan, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for the PyTorch part of a run, or None for fp32 (CPU decoding always runs fp32)."""
    if device.type == "cpu" or plan.precision == "fp32":
        return None
    return torch.bfloat16 if plan.precision == "bf16" else torch.float16
