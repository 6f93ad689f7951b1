"""A model on an execution plan: where it runs (device), how (precision; PyTorch eager or OpenVINO) and how many slices
at once (batch size), as segment_anything's `SamPredictor` wraps `Sam`.

The model (`automedsam.model.AutoMedSAM`) is plain PyTorch. The engine makes one `ModelRunner` per model and plan
(`ModelRunner.prepare`) and calls only the runner: `encode` slices, then `segment_classes` or `segment_boxes` on
their embeddings. The runner takes the model's steps (class prompts for the (slice, class) pairs -> mask decoder ->
class output) and decodes the pairs with the decoder of its plan: SAM's in PyTorch, or the OpenVINO one
(`automedsam.openvino_backend`). It reports the seconds of its stages to an optional `StageTimer`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch

from .acceleration import ExecutionPlan, autocast_dtype, plan_execution
from .openvino_backend import openvino_decoder, openvino_encoder, openvino_prompt_decoder

logger = logging.getLogger(__name__)

# (stage, seconds) of each step of a run: "pre" (normalising, resizing), "encoder", "prompt" (the class prompt
# encoder), "decoder" (the mask decoder; box prompts, and a model that does not expose its steps, count whole here)
# and "post" (labels, post-processing, the inverse view).
StageTimer = Callable[[str, float], None]
Encode = Callable[[torch.Tensor], torch.Tensor]
# One image embedding per prompt: (N, 256, 64, 64), (N, 2, 256), (N, 256, 64, 64) -> (N, 1, 256, 256) mask logits.
PairDecode = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class SegmentationModel(Protocol):
    """What the engine and its runner need from a model (`automedsam.model.AutoMedSAM` implements it)."""

    image_size: int
    classes: tuple[str, ...]
    preprocessing: dict

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    def segment_classes(self, embeddings: torch.Tensor, class_indices: torch.Tensor, noise_samples: int = 0,
                        presence_threshold: float | None = None) -> Any: ...

    def segment_boxes(self, embeddings: torch.Tensor, boxes: torch.Tensor) -> Any: ...

    def class_index(self, key: str) -> int: ...

    def to(self, device: torch.device) -> Any: ...


@contextlib.contextmanager
def timed_stage(timer: StageTimer | None, stage: str) -> Iterator[None]:
    """Report the seconds the block takes to `timer` as `stage` (no clock is read without a timer)."""
    if timer is None:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        timer(stage, time.perf_counter() - start)


class ModelRunner:
    """One model on one execution plan: encodes slices and decodes (slice, prompt) pairs on `device`.

    A model that exposes its class-prompt steps (`AutoMedSAM`) has its pairs decoded by the plan's decoder; any other
    `SegmentationModel` (e.g. a test's stand-in) is called as it is.
    """

    def __init__(self, model: SegmentationModel, device: torch.device, plan: ExecutionPlan,
                 batch_size: int | None = None, timer: StageTimer | None = None) -> None:
        """Move `model` to `device` and prepare the plan's backends (an OpenVINO conversion may fail here)."""
        self.model, self.device, self.plan, self.timer = model, device, plan, timer
        self.batch_size = batch_size or default_batch_size(device)
        model.to(device)
        self._encode = make_encode(model, device, plan)
        self._backend_decoder = make_backend_decoder(model, device, plan)
        self._has_steps = _has_class_steps(model)
        self._decoder_seconds = 0.0
        self._prompt_decoder: Any = None   # made on the first refinement (`decode_prompts`)

    @classmethod
    def prepare(cls, model: SegmentationModel, device: torch.device, precision: str = "auto", backend: str = "auto",
                batch_size: int | None = None, timer: StageTimer | None = None,
                warn: Callable[[str], None] | None = None) -> ModelRunner:
        """The runner of the plan `acceleration.plan_execution` picks. On the automatic path an OpenVINO conversion
        that fails falls back to PyTorch with one warning line (to `warn`, else the log); asked for, it raises."""
        plan = plan_execution(device, precision, backend, model)
        try:
            return cls(model, device, plan, batch_size, timer)
        except Exception as error:  # noqa: BLE001 - any OpenVINO conversion/compile failure: PyTorch still works
            if plan.backend != "openvino" or backend != "auto":
                raise
            reason = next((line.strip() for line in str(error).splitlines() if line.strip()), "no details")
            (warn or logger.warning)(f"the fast CPU path (OpenVINO) could not prepare the model ({type(error).__name__}"
                                     f": {reason}); running in PyTorch instead, which is slower")
            return cls(model, device, plan_execution(device, precision, "torch", model), batch_size, timer)

    @property
    def encoder_id(self) -> str:
        """Identifies the embeddings this runner makes: the model's encoder weights and the plan's encoder path."""
        return f"{getattr(self.model, 'encoder_id', type(self.model).__name__)}|{self.plan.label}"

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) float images in [0, 1] -> (B, 256, 64, 64) fp32 image embeddings on the runner's device."""
        with timed_stage(self.timer, "encoder"), self._autocast():
            return self._encode(images.to(self.device)).to(self.device, torch.float32)

    def segment_classes(self, embeddings: torch.Tensor, class_indices: torch.Tensor, noise_samples: int = 0,
                        presence_threshold: float | None = None) -> Any:
        """Embeddings (B, 256, 64, 64), class indices (C,) -> the model's `ClassOutput` (see
        `AutoMedSAM.segment_classes`: the same steps, with the pairs decoded by the plan's decoder)."""
        if not self._has_steps:
            with timed_stage(self.timer, "decoder"), self._autocast():
                return self.model.segment_classes(embeddings, class_indices, noise_samples,
                                                  presence_threshold=presence_threshold)
        model: Any = self.model
        start, decoded_before = time.perf_counter(), self._decoder_seconds
        with self._autocast():
            pairs = model.class_pairs(embeddings, class_indices, presence_threshold)
            images = pairs.images(shared=self._backend_decoder is None)
            logits = self._decode(images, pairs.sparse, pairs.dense)
            noise = (self._decode(images, *prompts) for prompts in model.noise_prompts(pairs, noise_samples))
            output = model.class_output(pairs, logits, noise, noise_samples)
        if self.timer is not None:
            self.timer("prompt", time.perf_counter() - start - (self._decoder_seconds - decoded_before))
        return output

    def segment_boxes(self, embeddings: torch.Tensor, boxes: torch.Tensor) -> Any:
        """Embeddings (B, 256, 64, 64), one box per slice (B, 4) in model-input pixels -> the model's `BoxOutput`
        (its `iou` is NaN when the decoder runs in OpenVINO, which predicts none)."""
        with timed_stage(self.timer, "decoder"), self._autocast():
            if self._backend_decoder is None:
                return self.model.segment_boxes(embeddings, boxes)
            from .model.lite_medsam import BoxOutput

            sparse, dense = self.model.box_prompts(boxes, embeddings.shape[0])  # type: ignore[attr-defined]
            logits = self._backend_decoder(embeddings, sparse, dense)
        return BoxOutput(logits, logits.new_full((logits.shape[0], 1), float("nan")))

    def decode_prompts(self, embeddings: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """A refinement's decode: one embedding per prompt (N, 256, 64, 64), prompts with any number of sparse tokens
        (N, T, 256) and (N, 256, 64, 64) -> mask logits (N, 1, 256, 256), in OpenVINO when the plan decodes there
        (a click ~1.5x faster on 2 cores, docs/benchmarks.md), else by the model."""
        if self._prompt_decoder is None:
            self._prompt_decoder = make_prompt_decoder(self.model, self.device, self.plan)
        if self._prompt_decoder is False:
            return self.model.decode(embeddings, sparse, dense)[0]  # type: ignore[attr-defined]
        return self._prompt_decoder(embeddings, sparse, dense)

    def _decode(self, images: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """Pairs -> mask logits (N, 1, 256, 256) by the plan's decoder; the seconds count as the "decoder" stage."""
        start = time.perf_counter()
        if self._backend_decoder is None or sparse.shape[0] == 0:
            logits = self.model.decode_pairs(images, sparse, dense)  # type: ignore[attr-defined]
        else:
            logits = self._backend_decoder(images, sparse, dense)
        seconds = time.perf_counter() - start
        self._decoder_seconds += seconds
        if self.timer is not None:
            self.timer("decoder", seconds)
        return logits

    def _autocast(self) -> contextlib.AbstractContextManager:
        """Autocast for the PyTorch part of the plan on a GPU (bf16 or fp16); nothing for fp32 or the CPU."""
        dtype = autocast_dtype(self.plan, self.device)
        return contextlib.nullcontext() if dtype is None else torch.autocast(self.device.type, dtype=dtype)


def default_batch_size(device: torch.device) -> int:
    """CPU: 1 (batching slices does not help on a few cores); GPU: sized from free memory (~0.25 GB a slice)."""
    if device.type != "cuda":
        return 1
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(1, min(64, free // (256 * 1024**2))))


def make_encode(model: Any, device: torch.device, plan: ExecutionPlan) -> Encode:
    """A function (B, 3, S, S) float images -> (B, 256, 64, 64) embeddings on `device`, as `plan` says."""
    if plan.backend == "torch":
        if device.type == "cpu" and plan.precision == "bf16":
            return lambda images: _encode_bf16_cpu(model, images)
        return model.encode
    return openvino_encoder(model.image_encoder, model.image_size, plan.precision)


def make_backend_decoder(model: Any, device: torch.device, plan: ExecutionPlan) -> PairDecode | None:
    """The mask decoder for (embedding, prompt) pairs in OpenVINO when the plan runs the encoder there (faster than
    PyTorch, same masks), else None (SAM's decoder in PyTorch, the model's own)."""
    if plan.backend != "openvino" or device.type != "cpu" or not _has_paired_decoder(model):
        return None
    return openvino_decoder(model, plan.decoder_precision)


def make_prompt_decoder(model: Any, device: torch.device, plan: ExecutionPlan) -> Any:
    """The refinement decoder in OpenVINO where `make_backend_decoder` gives one, else False (the model's decoder).
    If OpenVINO cannot prepare it, refinements still run, in PyTorch, with one warning in the log."""
    if plan.backend != "openvino" or device.type != "cpu" or not _has_paired_decoder(model):
        return False
    try:
        return openvino_prompt_decoder(model, plan.decoder_precision)
    except Exception as error:  # noqa: BLE001 - any conversion/compile failure: the PyTorch decoder gives the same masks
        logger.warning("refinements run in PyTorch: OpenVINO could not prepare the mask decoder (%s: %s)",
                       type(error).__name__, str(error).splitlines()[0] if str(error) else "no details")
        return False


def _encode_bf16_cpu(model: Any, images: torch.Tensor) -> torch.Tensor:
    """PyTorch CPU bf16 encoding (no OpenVINO): autocast on the encoder only, channels_last input for oneDNN."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return model.encode(images.contiguous(memory_format=torch.channels_last)).float()


def _has_paired_decoder(model: Any) -> bool:
    from .model.lite_medsam import PairedMaskDecoder

    return isinstance(getattr(model, "mask_decoder", None), PairedMaskDecoder)


def _has_class_steps(model: Any) -> bool:
    from .model.automedsam import AutoMedSAM

    return isinstance(model, AutoMedSAM)
