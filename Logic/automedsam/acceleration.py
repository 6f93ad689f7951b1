"""How the image encoder runs: numeric precision (fp32 / bf16 / fp16) and backend (PyTorch eager or OpenVINO).

Why (measured, docs/benchmarks.md): on a CPU, PyTorch eager runs the TinyViT encoder memory-bound (GELU, adds and
layout copies on 256 x 256 x 256 activations dominate), far from the cores' peak. OpenVINO fuses those into its
kernels and, on CPUs with AMX-BF16 / avx512_bf16, computes in bfloat16 on the matrix units. The OpenVINO model is
converted from OUR encoder module (`torch.export` -> `openvino.convert_model`, batch size dynamic) and its IR is
cached on disk under `<AUTOMEDSAM_HOME>/openvino/`, keyed by the encoder's weights and the library versions, so the
conversion (~10-40 s) is paid once per machine. Mask decoding stays in PyTorch fp32 on the CPU (bf16 autocast made
it slower there). On GPUs the encoder runs in PyTorch under autocast (bf16 where supported, else fp16).

OpenVINO is optional (`pip install automedsam[cpu]`): without it the CPU path is PyTorch eager.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import InputError, ModelError

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BACKENDS = ("auto", "torch", "openvino")
Encode = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class EncoderPlan:
    """What a run will use: `backend` ("torch" | "openvino") and `precision` ("fp32" | "bf16" | "fp16")."""

    backend: str
    precision: str

    @property
    def label(self) -> str:
        """Short text for logs, cache keys and the benchmark, e.g. "openvino-bf16"."""
        return f"{self.backend}-{self.precision}"


def openvino_available() -> bool:
    """True when the `openvino` package can be imported (the `[cpu]` extra)."""
    try:
        return importlib.util.find_spec("openvino") is not None
    except (ImportError, ValueError):
        return False

def disable_openvino_telemetry() -> None:
    """Force OpenVINO's usage telemetry off: its model converter sends events unless a user opted out, and this
    project never sends data anywhere. Idempotent; a no-op where `openvino_telemetry` is absent."""
    try:
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
    except ImportError:
        return

    def declined(self: object, *args: object, **kwargs: object) -> ConsentCheckResult:
        return ConsentCheckResult.DECLINED

    OptInChecker.check = declined  # type: ignore[method-assign]


def import_openvino() -> Any:
    """The `openvino` module, with telemetry disabled before its tools start it (and after, should another
    component of the process have imported OpenVINO first: the telemetry object is a process-wide singleton)."""
    disable_openvino_telemetry()
    import openvino

    try:
        from openvino_telemetry import Telemetry
    except ImportError:
        return openvino
    Telemetry().consent = False
    return openvino



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

    Reported by the benchmark; the automatic precision does not use it (see `plan_encoder`)."""
    flags = cpu_flags()
    if flags:
        return bool({"amx_bf16", "avx512_bf16"} & flags)
    if openvino_available():
        ov = import_openvino()

        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return False


def plan_encoder(device: torch.device, precision: str = "auto", backend: str = "auto",
                 model: Any = None) -> EncoderPlan:
    """Choose backend and precision for `device`; "auto" picks the fastest path that kept the masks (see docs).

    auto precision: GPU -> bf16 (fp16 where bf16 is unsupported), the design's AMP; CPU and Apple MPS -> fp32, because
    bf16 embeddings moved class-prompt masks below Dice 0.99 (aorta 0.987) on the sample. auto backend: OpenVINO on
    the CPU when it is installed and the model has our TinyViT encoder (fp32 there is exact and faster than eager).
    """
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if backend not in BACKENDS:
        raise InputError(f"unknown encoder backend {backend!r}; use one of {', '.join(BACKENDS)}")
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
    return EncoderPlan(backend, precision)


def _has_tinyvit_encoder(model: Any) -> bool:
    from .model.tiny_vit import TinyViT

    return isinstance(getattr(model, "image_encoder", None), TinyViT)


def autocast_dtype(plan: EncoderPlan, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for the PyTorch part of a run, or None for fp32 (CPU decoding always runs fp32)."""
    if device.type == "cpu" or plan.precision == "fp32":
        return None
    return torch.bfloat16 if plan.precision == "bf16" else torch.float16


def make_encode(model: Any, device: torch.device, plan: EncoderPlan) -> Encode:
    """A function (B, 3, S, S) float images -> (B, 256, 64, 64) embeddings on `device`, as `plan` says."""
    if plan.backend == "torch":
        if device.type == "cpu" and plan.precision == "bf16":
            return lambda images: _encode_bf16_cpu(model, images)
        return model.encode
    return openvino_encoder(model.image_encoder, model.image_size, plan.precision)


def _encode_bf16_cpu(model: Any, images: torch.Tensor) -> torch.Tensor:
    """PyTorch CPU bf16 encoding (no OpenVINO): autocast on the encoder only, channels_last input for oneDNN."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return model.encode(images.contiguous(memory_format=torch.channels_last)).float()


class OpenVINOEncoder:
    """Our encoder compiled by OpenVINO for the CPU; called like `model.encode` (returns fp32 CPU tensors)."""

    def __init__(self, compiled: Any, image_size: int) -> None:
        self._compiled = compiled
        self.image_size = image_size
        self._lock = threading.Lock()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) float images in [0, 1] -> (B, 256, 64, 64) fp32 embeddings."""
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, self.image_size, self.image_size):
            raise InputError(f"model input must be (B, 3, {self.image_size}, {self.image_size}) images, "
                             f"got {tuple(images.shape)}")
        array = np.ascontiguousarray(images.detach().to("cpu", torch.float32).numpy())
        with self._lock:  # one compiled model, one inference at a time
            output = self._compiled(array)[0]
        return torch.from_numpy(np.array(output, dtype=np.float32, copy=True))


_COMPILED: dict[tuple[str, str, int], OpenVINOEncoder] = {}
_COMPILED_LOCK = threading.Lock()


def openvino_encoder(encoder: nn.Module, image_size: int, precision: str,
                     cache_root: Path | None = None, threads: int | None = None) -> OpenVINOEncoder:
    """The OpenVINO-compiled `encoder` (in memory per weights/precision/threads; IR on disk per weights)."""
    ov = import_openvino()

    threads = threads or torch.get_num_threads()
    digest = encoder_digest(encoder, image_size)
    key = (digest, precision, threads)
    with _COMPILED_LOCK:
        if key not in _COMPILED:
            ir = _cached_ir(encoder, image_size, digest, cache_root)
            config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                      "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
            compiled = ov.Core().compile_model(ov.Core().read_model(str(ir)), "CPU", config)
            _COMPILED[key] = OpenVINOEncoder(compiled, image_size)
        return _COMPILED[key]


def encoder_digest(encoder: nn.Module, image_size: int) -> str:
    """Hash of the encoder's weights, input size and the torch/OpenVINO versions (names the cached IR)."""
    ov = import_openvino()

    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{type(encoder).__name__}|{image_size}|{torch.__version__}|{ov.__version__}".encode())
    for name, tensor in encoder.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def openvino_cache_dir(cache_root: Path | None = None) -> Path:
    """Where converted encoders are kept: `<AUTOMEDSAM_HOME or ~/.cache/automedsam>/openvino`."""
    from .registry import cache_dir

    return (cache_root or cache_dir()) / "openvino"


def _cached_ir(encoder: nn.Module, image_size: int, digest: str, cache_root: Path | None) -> Path:
    """The IR file of `encoder`, converted and written atomically on first use."""
    ov = import_openvino()

    folder = openvino_cache_dir(cache_root)
    xml = folder / f"tinyvit-{digest}.xml"
    if xml.exists() and xml.with_suffix(".bin").exists():
        return xml
    logger.info("converting the image encoder for OpenVINO (once per machine; about half a minute)")
    model = convert_encoder(encoder, image_size)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".tinyvit-{digest}.{os.getpid()}.xml"
        ov.save_model(model, str(tmp), compress_to_fp16=False)
        tmp.with_suffix(".bin").replace(xml.with_suffix(".bin"))
        tmp.replace(xml)
    except OSError as error:
        raise ModelError(f"cannot write the converted encoder to {folder} ({error.strerror or error}); set "
                         "AUTOMEDSAM_HOME to a writable folder") from error
    return xml


def convert_encoder(encoder: nn.Module, image_size: int) -> Any:
    """`openvino.Model` of our encoder in eval mode with a dynamic batch size, via `torch.export` (on the CPU)."""
    ov = import_openvino()

    was_training = encoder.training
    device = next(encoder.parameters()).device
    encoder.eval().to("cpu")
    try:
        example = torch.rand(2, 3, image_size, image_size)
        batch = torch.export.Dim("batch", min=1, max=1024)
        with torch.no_grad():
            exported = torch.export.export(encoder, (example,), dynamic_shapes=({0: batch},))
        model = ov.convert_model(exported)
        model.reshape([-1, 3, image_size, image_size])
        return model
    finally:
        encoder.to(device).train(was_training)
