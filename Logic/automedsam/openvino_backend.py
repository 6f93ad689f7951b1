"""The OpenVINO backend: our image encoder and SAM's mask decoder converted and compiled for the CPU.

Why (measured, docs/benchmarks.md): on a CPU, PyTorch eager runs the TinyViT encoder memory-bound (GELU, adds and
layout copies on 256 x 256 x 256 activations dominate), far from the cores' peak. OpenVINO fuses those into its
kernels and, on CPUs with AMX-BF16 / avx512_bf16, computes in bfloat16 on the matrix units. The OpenVINO models are
converted from OUR modules (`torch.export` -> `openvino.convert_model`, batch size dynamic). Their IR is cached on disk
under `<AUTOMEDSAM_HOME>/openvino/`, keyed by the weights, the export revision and the library versions, so a
conversion (tens of seconds) is paid once per machine; the compiled models are kept per process. Which path a run
takes is `automedsam.acceleration`'s decision; `automedsam.runner.ModelRunner` calls what is compiled here.

OpenVINO is optional (`pip install automedsam[cpu]`); nothing here imports it before it is needed, and its usage
telemetry is always switched off.
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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import InputError, ModelError
from .file_checks import native_stderr

logger = logging.getLogger(__name__)


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


class OpenVINODecoder:
    """The SAM mask decoder compiled by OpenVINO with static shapes (1.3-1.8x faster than the dynamic-batch graph):
    the pairs go through in chunks of `PAIR_CHUNK` (one call each; a slice's classes decode ~1.2-1.4x faster than
    pair by pair, same logits), the rest one at a time. Called like `PairDecoder`."""

    def __init__(self, single: OpenVINOModel, chunked: OpenVINOModel, chunk: int) -> None:
        self.single, self.chunked, self.chunk = single, chunked, chunk

    def __call__(self, embeddings: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """(N, 256, 64, 64), (N, 2, 256), (N, 256, 64, 64) -> (N, 1, 256, 256) mask logits on the input's device."""
        if not embeddings.shape[0] == sparse.shape[0] == dense.shape[0]:
            raise InputError(f"one prompt per image embedding is needed, got {embeddings.shape[0]} embeddings, "
                             f"{sparse.shape[0]} sparse and {dense.shape[0]} dense prompts")
        n, k = embeddings.shape[0], self.chunk
        whole = n - n % k
        parts = [self.chunked.run(embeddings[i:i + k], sparse[i:i + k], dense[i:i + k]) for i in range(0, whole, k)]
        parts += [self.single.run(embeddings[i:i + 1], sparse[i:i + 1], dense[i:i + 1]) for i in range(whole, n)]
        if not parts:
            return embeddings.new_zeros((0, 1, 4 * embeddings.shape[-2], 4 * embeddings.shape[-1]))
        return torch.cat(parts).to(embeddings.device)


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
_DECODERS: dict[tuple[int, int], OpenVINODecoder] = {}
# Pairs per call of the batched decoder graph: 4 decoded 8 pairs 1.4x faster than one at a time on 2 cores, 8 and 2
# less so (docs/benchmarks.md); a static shape per size, so the rest of a batch goes one pair at a time.
PAIR_CHUNK = 4
# Sparse tokens of the example a refinement decoder is converted with (any count runs): 2 class tokens + 3 points
# + SAM's padding point.
PROMPT_TOKENS_EXAMPLE = 6
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


def _pair_decoder(model: Any) -> PairDecoder:
    """One `PairDecoder` per model, so that its weight hash is remembered (the positional encoding is a new tensor)."""
    module = _PAIR_DECODERS.get(model)
    if module is None:
        module = _PAIR_DECODERS[model] = PairDecoder(model)
    return module


def openvino_decoder(model: Any, precision: str = "fp32", cache_root: Path | None = None,
                     threads: int | None = None) -> OpenVINODecoder:
    """LiteMedSAM's mask decoder (`PairDecoder`) compiled by OpenVINO for 1 and `PAIR_CHUNK` pairs (one IR on disk,
    cached like the encoder; compiled once per process)."""
    grid = model.prompt_encoder.image_embedding_size
    examples = (torch.rand(2, 256, *grid), torch.rand(2, 2, 256), torch.rand(2, 256, *grid))
    module = _pair_decoder(model)
    single, chunked = (_compiled("sam-decoder", module, examples, precision, cache_root, threads, OpenVINOModel,
                                 static_shapes=tuple((size, *x.shape[1:]) for x in examples))
                        for size in (1, PAIR_CHUNK))
    with _COMPILED_LOCK:
        key = (id(single), id(chunked))  # both live in _COMPILED for the whole process
        if key not in _DECODERS:
            _DECODERS[key] = OpenVINODecoder(single, chunked, PAIR_CHUNK)
        return _DECODERS[key]


def openvino_prompt_decoder(model: Any, precision: str = "fp32", cache_root: Path | None = None,
                            threads: int | None = None) -> OpenVINOPromptDecoder:
    """LiteMedSAM's mask decoder (`PairDecoder`) in OpenVINO for any number of sparse tokens: a refinement's class
    tokens plus the user's points and box. One IR on disk with a dynamic token axis; one static graph per token
    count, compiled in this process on the count's first use."""
    grid = model.prompt_encoder.image_embedding_size
    examples = (torch.rand(2, 256, *grid), torch.rand(2, PROMPT_TOKENS_EXAMPLE, 256), torch.rand(2, 256, *grid))
    module = _pair_decoder(model)
    digest = module_digest(module, examples)   # prepares the IR now, so that a failure shows before the first click
    _cached_ir("sam-decoder-tokens", module, examples, digest, cache_root, {1: 1})

    def compile_for(tokens: int) -> OpenVINOModel:
        shapes = ((1, *examples[0].shape[1:]), (1, tokens, examples[1].shape[2]), (1, *examples[2].shape[1:]))
        return _compiled("sam-decoder-tokens", module, examples, precision, cache_root, threads, OpenVINOModel,
                         static_shapes=shapes, varying={1: 1})

    return OpenVINOPromptDecoder(compile_for)


class OpenVINOPromptDecoder:
    """The refinement decoder: pairs one at a time through a static graph for their token count (~1.4x faster than
    one graph with a dynamic token axis on 2 cores; each count compiles once, ~0.3 s). Called like `PairDecoder`
    but with any number of sparse tokens (N, T, 256)."""

    def __init__(self, compile_for: Callable[[int], OpenVINOModel]) -> None:
        self._compile_for = compile_for

    def __call__(self, embeddings: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """(N, 256, 64, 64), (N, T, 256), (N, 256, 64, 64) -> (N, 1, 256, 256) mask logits on the input's device."""
        if not embeddings.shape[0] == sparse.shape[0] == dense.shape[0] or sparse.shape[0] == 0:
            raise InputError(f"one prompt per image embedding is needed, got {embeddings.shape[0]} embeddings, "
                             f"{sparse.shape[0]} sparse and {dense.shape[0]} dense prompts")
        graph = self._compile_for(sparse.shape[1])
        parts = [graph.run(embeddings[i:i + 1], sparse[i:i + 1], dense[i:i + 1]) for i in range(embeddings.shape[0])]
        return torch.cat(parts).to(embeddings.device)


def _compiled(name: str, module: nn.Module, examples: tuple[torch.Tensor, ...], precision: str,
              cache_root: Path | None, threads: int | None, wrap: Callable[[Any], OpenVINOModel],
              static_shapes: tuple[tuple[int, ...], ...] | None = None,
              varying: dict[int, int] | None = None) -> OpenVINOModel:
    """`module` compiled for the CPU: converted once per machine (IR with a dynamic batch, cached on disk), compiled
    once per process, for any batch size or, with `static_shapes` (one per input), for those. `varying`: input index
    -> one more axis of that input that stays dynamic in the IR (e.g. the number of prompt tokens)."""
    ov = import_openvino()

    threads = threads or torch.get_num_threads()
    digest = module_digest(module, examples)
    key = (f"{name}-{digest}", precision, threads, static_shapes)
    with _COMPILED_LOCK:
        if key not in _COMPILED:
            model = ov.Core().read_model(str(_cached_ir(name, module, examples, digest, cache_root, varying)))
            if static_shapes is not None:
                model.reshape({port: ov.PartialShape(list(shape))
                               for port, shape in zip(model.inputs, static_shapes, strict=True)})
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
               cache_root: Path | None, varying: dict[int, int] | None = None) -> Path:
    """The IR file of `module`, converted and written atomically on first use."""
    ov = import_openvino()

    folder = openvino_cache_dir(cache_root)
    xml = folder / f"{name}-{digest}.xml"
    if xml.exists() and xml.with_suffix(".bin").exists():
        return xml
    logger.info("converting the %s for OpenVINO (once per machine; up to half a minute)", name)
    model = convert_module(module, examples, varying)
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


def convert_module(module: nn.Module, examples: tuple[torch.Tensor, ...],
                   varying: dict[int, int] | None = None) -> Any:
    """`openvino.Model` of `module` in eval mode via `torch.export` on the CPU; the leading (batch) axis of every
    input is one shared dynamic size, and so is the axis `varying[i]` of input i; the other axes are fixed to the
    examples' sizes.

    Ctrl-C during the conversion always reaches the caller as `KeyboardInterrupt` (torch.export may catch it and
    fail otherwise); what torch and OpenVINO log or print meanwhile is not shown.
    """
    ov = import_openvino()

    was_training = module.training
    device = next(module.parameters()).device
    module.eval().to("cpu")
    try:
        with _interruptible_and_quiet():
            axes = _dynamic_axes(examples, varying or {})
            with torch.no_grad():
                exported = torch.export.export(module, examples, dynamic_shapes=tuple(
                    {axis: dim for axis, dim in enumerate(x) if dim is not None} for x in axes))
            model = ov.convert_model(exported)
            model.reshape({port: ov.PartialShape([-1 if dim is not None else size for dim, size in zip(x, e.shape,
                                                                                                       strict=True)])
                           for port, x, e in zip(model.inputs, axes, examples, strict=True)})
        return model
    finally:
        module.to(device).train(was_training)


def _dynamic_axes(examples: tuple[torch.Tensor, ...], varying: dict[int, int]) -> list[list[Any]]:
    """Per input, per axis: the shared `torch.export.Dim` of a dynamic axis, or None for a fixed one."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    extra = {i: torch.export.Dim(f"axis{i}_{axis}", min=1, max=256) for i, axis in varying.items()}
    return [[batch if axis == 0 else extra[i] if varying.get(i) == axis else None for axis in range(x.ndim)]
            for i, x in enumerate(examples)]


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
