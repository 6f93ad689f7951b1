"""How the model runs: numeric precision (fp32 / bf16 / fp16) and backend (PyTorch eager or OpenVINO).

Why (measured, docs/benchmarks.md): on a CPU, PyTorch eager runs the TinyViT encoder memory-bound (GELU, adds and
layout copies on 256 x 256 x 256 activations dominate), far from the cores' peak. OpenVINO fuses those into its
kernels and, on CPUs with AMX-BF16 / avx512_bf16, computes in bfloat16 on the matrix units. The OpenVINO models are
converted from OUR modules (`torch.export` -> `openvino.convert_model`, batch size dynamic): the image encoder and,
on the same plan, SAM's mask decoder (fp32: faster than PyTorch with the same masks; bf16 on CPUs with native bf16:
faster again with the class masks kept, where bf16 *embeddings* moved whole organs). Their IR is cached on disk under
`<AUTOMEDSAM_HOME>/openvino/`, keyed by the weights, the export revision and the library versions, so a conversion
(tens of seconds) is paid once per machine. The class prompt encoder stays in PyTorch fp32 (a third converted model
gained too little). On GPUs everything runs in PyTorch, the encoder under autocast (bf16 where supported, else fp16).
Every figure behind these choices is in docs/benchmarks.md.

OpenVINO is optional (`pip install automedsam[cpu]`): without it the CPU path is PyTorch eager.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import signal
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .errors import InputError, ModelError
from .file_checks import native_stderr

if TYPE_CHECKING:
    from .model.lite_medsam import PairDecode

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BACKENDS = ("auto", "torch", "openvino")
Encode = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class EncoderPlan:
    """What a run will use: the encoder's `backend` ("torch" | "openvino") and `precision` ("fp32" | "bf16" |
    "fp16"), and the precision of the OpenVINO mask decoder (`decoder_precision`, used with that backend only)."""

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
    return EncoderPlan(backend, precision, _decoder_precision(requested, backend))


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


def make_decode(model: Any, device: torch.device, plan: EncoderPlan) -> PairDecode | None:
    """The mask decoder for (embedding, prompt) pairs as `plan` says: OpenVINO when the encoder runs there (faster
    than PyTorch, same masks), else None (the model's own PyTorch decoder)."""
    if plan.backend != "openvino" or device.type != "cpu" or not _has_paired_decoder(model):
        return None
    return openvino_decoder(model, plan.decoder_precision)


def _has_paired_decoder(model: Any) -> bool:
    from .model.lite_medsam import PairedMaskDecoder

    return isinstance(getattr(model, "mask_decoder", None), PairedMaskDecoder)


def _encode_bf16_cpu(model: Any, images: torch.Tensor) -> torch.Tensor:
    """PyTorch CPU bf16 encoding (no OpenVINO): autocast on the encoder only, channels_last input for oneDNN."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return model.encode(images.contiguous(memory_format=torch.channels_last)).float()


class OpenVINOModel:
    """A module compiled by OpenVINO for the CPU, called with tensors; gives its first output as an fp32 CPU tensor."""

    def __init__(self, compiled: Any) -> None:
        self._compiled = compiled
        self._lock = threading.Lock()

    def run(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Inputs (all with the same leading batch size) -> the first output."""
        arrays = tuple(np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy()) for x in inputs)
        with self._lock:  # one compiled model, one inference at a time
            output = self._compiled(arrays)[0]
        return torch.from_numpy(np.array(output, dtype=np.float32, copy=True))


class OpenVINOEncoder(OpenVINOModel):
    """Our image encoder compiled by OpenVINO; called like `model.encode`."""

    def __init__(self, compiled: Any, image_size: int) -> None:
        super().__init__(compiled)
        self.image_size = image_size

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) float images in [0, 1] -> (B, 256, 64, 64) fp32 embeddings."""
        from .model.lite_medsam import check_model_input

        check_model_input(images, self.image_size)
        return self.run(images)


class OpenVINODecoder(OpenVINOModel):
    """The SAM mask decoder compiled by OpenVINO for one pair at a time (a static shape: 1.3-1.8x faster than the
    dynamic-batch graph, and batching pairs gave nothing on the CPU); called like `PairDecoder`."""

    def __call__(self, embeddings: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """(N, 256, 64, 64), (N, 2, 256), (N, 256, 64, 64) -> (N, 1, 256, 256) mask logits on the input's device."""
        if not embeddings.shape[0] == sparse.shape[0] == dense.shape[0]:
            raise InputError(f"one prompt per image embedding is needed, got {embeddings.shape[0]} embeddings, "
                             f"{sparse.shape[0]} sparse and {dense.shape[0]} dense prompts")
        pairs = [self.run(embeddings[i:i + 1], sparse[i:i + 1], dense[i:i + 1]) for i in range(embeddings.shape[0])]
        return torch.cat(pairs).to(embeddings.device)


class PairDecoder(nn.Module):
    """LiteMedSAM's mask decoder on N (image embedding, prompt) pairs as one module: what OpenVINO converts, and
    the PyTorch reference of `OpenVINODecoder`. The positional encoding is a constant of the model."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.mask_decoder = model.mask_decoder
        self.register_buffer("image_pe", model.prompt_encoder.get_dense_pe().detach().clone())

    def forward(self, embeddings: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """(N, 256, 64, 64), (N, 2, 256), (N, 256, 64, 64) -> single-mask logits (N, 1, 256, 256)."""
        from .model.lite_medsam import decode_single_mask

        return decode_single_mask(self.mask_decoder, self.image_pe, embeddings, sparse, dense)[0]


_COMPILED: dict[tuple[str, str, int, int | None], OpenVINOModel] = {}
_COMPILED_LOCK = threading.Lock()
_PAIR_DECODERS: weakref.WeakKeyDictionary[Any, PairDecoder] = weakref.WeakKeyDictionary()
# Part of every converted model's name: bump it when a module's code changes in a way that changes its graph
# (2: TinyViT window attention as one scaled_dot_product_attention op).
EXPORT_REVISION = 2


def openvino_encoder(encoder: nn.Module, image_size: int, precision: str,
                     cache_root: Path | None = None, threads: int | None = None) -> OpenVINOEncoder:
    """The OpenVINO-compiled `encoder` (in memory per weights/precision/threads; IR on disk per weights)."""
    examples = (torch.rand(2, 3, image_size, image_size),)
    compiled = _compiled("tinyvit", encoder, examples, precision, cache_root, threads,
                         lambda c: OpenVINOEncoder(c, image_size))
    return compiled  # type: ignore[return-value]


def openvino_decoder(model: Any, precision: str = "fp32", cache_root: Path | None = None,
                     threads: int | None = None) -> OpenVINODecoder:
    """LiteMedSAM's mask decoder (`PairDecoder`) compiled by OpenVINO, cached like the encoder."""
    grid = model.prompt_encoder.image_embedding_size
    examples = (torch.rand(2, 256, *grid), torch.rand(2, 2, 256), torch.rand(2, 256, *grid))
    module = _PAIR_DECODERS.get(model)
    if module is None:  # one per model, so its weight hash is remembered (the positional encoding is a new tensor)
        module = _PAIR_DECODERS[model] = PairDecoder(model)
    compiled = _compiled("sam-decoder", module, examples, precision, cache_root, threads, OpenVINODecoder,
                         static_batch=1)
    return compiled  # type: ignore[return-value]


def _compiled(name: str, module: nn.Module, examples: tuple[torch.Tensor, ...], precision: str,
              cache_root: Path | None, threads: int | None, wrap: Callable[[Any], OpenVINOModel],
              static_batch: int | None = None) -> OpenVINOModel:
    """`module` compiled for the CPU: converted once per machine (IR with a dynamic batch, cached on disk), compiled
    once per process, for any batch size or, with `static_batch`, for that one."""
    ov = import_openvino()

    threads = threads or torch.get_num_threads()
    digest = module_digest(module, examples)
    key = (f"{name}-{digest}", precision, threads, static_batch)
    with _COMPILED_LOCK:
        if key not in _COMPILED:
            model = ov.Core().read_model(str(_cached_ir(name, module, examples, digest, cache_root)))
            if static_batch is not None:
                model.reshape({port: ov.PartialShape([static_batch, *x.shape[1:]])
                               for port, x in zip(model.inputs, examples, strict=True)})
            config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                      "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
            _COMPILED[key] = wrap(ov.Core().compile_model(model, "CPU", config))
        return _COMPILED[key]


_DIGESTS: dict[tuple, str] = {}


def module_digest(module: nn.Module, examples: tuple[torch.Tensor, ...]) -> str:
    """Hash of the module's type, weights and buffers, input shapes, export revision and torch/OpenVINO versions
    (names the cached IR, so changed weights or code never reuse an old conversion).

    Remembered per process for the same tensors at the same version (hashing the weights takes ~70 ms a run); an
    in-place change of a weight (`tensor._version`) or new tensors give a new hash."""
    ov = import_openvino()

    state = module.state_dict()
    shapes = [tuple(x.shape[1:]) for x in examples]
    header = f"{type(module).__name__}|{shapes}|{EXPORT_REVISION}|{torch.__version__}|{ov.__version__}"
    memo = (header, *((name, t.data_ptr(), _version(t), t.dtype, tuple(t.shape)) for name, t in state.items()))
    if memo not in _DIGESTS:
        digest = hashlib.blake2b(header.encode(), digest_size=16)
        for name, tensor in state.items():
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        _DIGESTS[memo] = digest.hexdigest()
    return _DIGESTS[memo]


def _version(tensor: torch.Tensor) -> int:
    """In-place modification counter; tensors made under inference mode have none (-1: only their storage counts)."""
    return -1 if tensor.is_inference() else tensor._version


def openvino_cache_dir(cache_root: Path | None = None) -> Path:
    """Where converted models are kept: `<AUTOMEDSAM_HOME or ~/.cache/automedsam>/openvino`."""
    from .registry import cache_dir

    return (cache_root or cache_dir()) / "openvino"


def _cached_ir(name: str, module: nn.Module, examples: tuple[torch.Tensor, ...], digest: str,
               cache_root: Path | None) -> Path:
    """The IR file of `module`, converted and written atomically on first use."""
    ov = import_openvino()

    folder = openvino_cache_dir(cache_root)
    xml = folder / f"{name}-{digest}.xml"
    if xml.exists() and xml.with_suffix(".bin").exists():
        return xml
    logger.info("converting the %s for OpenVINO (once per machine; up to half a minute)", name)
    model = convert_module(module, examples)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{name}-{digest}.{os.getpid()}.xml"
        ov.save_model(model, str(tmp), compress_to_fp16=False)
        tmp.with_suffix(".bin").replace(xml.with_suffix(".bin"))
        tmp.replace(xml)
    except OSError as error:
        raise ModelError(f"cannot write the converted {name} to {folder} ({error.strerror or error}); set "
                         "AUTOMEDSAM_HOME to a writable folder") from error
    return xml


def convert_module(module: nn.Module, examples: tuple[torch.Tensor, ...]) -> Any:
    """`openvino.Model` of `module` in eval mode via `torch.export` on the CPU; the leading (batch) axis of every
    input is one shared dynamic size, the other axes are fixed to the examples' sizes.

    Ctrl-C during the conversion always reaches the caller as `KeyboardInterrupt` (torch.export may catch it and
    fail otherwise); what torch and OpenVINO log or print meanwhile is not shown.
    """
    ov = import_openvino()

    was_training = module.training
    device = next(module.parameters()).device
    module.eval().to("cpu")
    try:
        with _interruptible_and_quiet():
            batch = torch.export.Dim("batch", min=1, max=4096)
            with torch.no_grad():
                exported = torch.export.export(module, examples, dynamic_shapes=tuple({0: batch} for _ in examples))
            model = ov.convert_model(exported)
            model.reshape({port: ov.PartialShape([-1, *x.shape[1:]]) for port, x in zip(model.inputs, examples,
                                                                                         strict=True)})
        return model
    finally:
        module.to(device).train(was_training)


@contextlib.contextmanager
def _interruptible_and_quiet() -> Iterator[None]:
    """Re-raise a Ctrl-C that arrived during the block even if the code inside swallowed it; mute logs and prints."""
    interrupted = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        def on_interrupt(signum: int, frame: object) -> None:
            interrupted.set()
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGINT, on_interrupt)
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), native_stderr([]):
            warnings.simplefilter("ignore")
            yield
    except Exception:
        if interrupted.is_set():
            raise KeyboardInterrupt from None
        raise
    finally:
        logging.disable(logging.NOTSET)
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if interrupted.is_set():
        raise KeyboardInterrupt
