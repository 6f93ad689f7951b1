"""Slice-by-slice inference: one image encoding per slice, shared by every class (or box) prompt.

Data flow (docs/architecture.md): `Volume` -> `canonical_view` -> `normalize_volume` -> batches of slices ->
`to_model_input` -> image encoder (or the embedding cache) -> class prompt encoder for all classes at once -> mask
decoder for the (slice, class) pairs whose presence passes (or box prompts) -> `from_model_output` -> per voxel the
most probable class above threshold -> post-processing -> inverse canonical view -> `LabelVolume` on the input grid.
The model steps run through one `runner.ModelRunner` (device, precision, OpenVINO or PyTorch, batch size).
Nothing is written anywhere: cancelling raises `Cancelled` and leaves no partial output.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .catalog import ClassCatalog, OrganClass, default_catalog, resolve_classes
from .errors import AutoMedSAMError, Cancelled, InputError
from .postprocess import postprocess_labels
from .preprocess import PreprocessConfig, box_to_model, from_model_output, mask_box, normalize_volume, to_model_input
from .result import LabelVolume, Segment, label_dtype
from .runner import ModelRunner, SegmentationModel, StageTimer, timed_stage
from .volume import CanonicalView, Volume, canonical_view, ras_box_to_canonical

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int, str], None]
CancelCallback = Callable[[], bool]
Box2D = tuple[int, int, int, int]  # (row0, col0, row1, col1), inclusive canonical-slice pixels


@dataclass(frozen=True)
class RasBox:
    """An axis-aligned box in patient RAS millimetres given by two opposite corners."""

    corner0: tuple[float, float, float]
    corner1: tuple[float, float, float]


@dataclass(frozen=True)
class BoxPrompt:
    """Box mode: a segment named `key` prompted by a 2D box on each canonical slice in `boxes`."""

    key: str
    boxes: dict[int, Box2D]

    @classmethod
    def from_ras(cls, volume: Volume, key: str, box: RasBox) -> BoxPrompt:
        """The same 2D box on every slice a RAS box covers; `InputError` if it misses the volume."""
        s0, s1, r0, r1, c0, c1 = ras_box_to_canonical(volume, box.corner0, box.corner1)
        return cls(key, {s: (r0, c0, r1, c1) for s in range(s0, s1 + 1)})

    @classmethod
    def from_mask(cls, volume: Volume, key: str, mask_kji: np.ndarray) -> BoxPrompt:
        """Tight per-slice boxes around a KJI mask (e.g. reference labels): the accuracy upper bound of a class."""
        mask_src = canonical_view(volume).apply(np.asarray(mask_kji, dtype=bool))
        boxes = {s: box for s in range(mask_src.shape[0]) if (box := mask_box(mask_src[s])) is not None}
        if not boxes:
            raise InputError(f"the mask for {key!r} is empty; no box can be taken from it")
        return cls(key, boxes)


@dataclass
class EngineOptions:
    """Everything about a run except its inputs; the CLI and the Slicer module fill it from their settings."""

    device: str = "auto"
    batch_size: int | None = None
    threshold: float = 0.5
    presence_threshold: float = 0.5
    decode_absent: bool = False  # True: decode pairs below the presence threshold too (same masks, more work)
    postprocess: bool = True
    uncertainty_samples: int = 0
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (acceleration.plan_execution)
    encoder_backend: str = "auto"  # auto | torch | openvino
    progress: ProgressCallback | None = None
    cancel: CancelCallback | None = None
    cache: EmbeddingCache | None = None
    roi: RasBox | None = None
    warn: Callable[[str], None] | None = None
    stage_timer: StageTimer | None = None  # receives (stage, seconds) of each step (runner.StageTimer; benchmarks)


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then CPU; a device asked for by name that is not there is an `InputError`
    (a user who asked for the GPU must not wait for a silent CPU run)."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device not in ("cpu", "cuda", "mps") and not device.startswith("cuda:"):
        raise InputError(f"unknown device {device!r}; use auto, cpu, cuda or mps")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA GPU is available to PyTorch here (torch {torch.__version__}); "
                         "use --device auto or cpu, or install a CUDA build of PyTorch that matches the driver")
    if device.startswith("cuda:") and not (device[5:].isdigit() and int(device[5:]) < torch.cuda.device_count()):
        raise InputError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s), numbered "
                         "from 0; pick one of them or use --device cuda")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("--device mps: Apple MPS is not available here; use --device auto or cpu")
    return torch.device(device)


class EmbeddingCache:
    """fp16 image embeddings per (volume, slice), so running other classes on the same volume skips the encoder.

    In memory by default; with `directory` each slice's embedding is an `.npy` file under a folder named by the
    volume key, which changes whenever the voxels, geometry, modality, preprocessing or encoder change.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._memory: dict[tuple[str, int], np.ndarray] = {}
        self.hits = 0
        self.misses = 0

    @staticmethod
    def volume_key(volume: Volume, preprocessing: dict, encoder_id: str) -> str:
        """Content hash of everything an embedding depends on."""
        digest = hashlib.blake2b(digest_size=20)
        array = np.ascontiguousarray(volume.array)
        digest.update(f"{array.shape}{array.dtype}{volume.modality}{encoder_id}".encode())
        digest.update(json.dumps(preprocessing, sort_keys=True, default=str).encode())
        digest.update(np.asarray(volume.ijk_to_ras, dtype=np.float64).tobytes())
        digest.update(array.tobytes())
        return digest.hexdigest()

    def get(self, key: str, slice_index: int) -> np.ndarray | None:
        """The cached fp16 embedding (256, 64, 64) or None."""
        found = self._memory.get((key, slice_index))
        if found is None and self.directory is not None:
            path = self.directory / key / f"{slice_index:05d}.npy"
            found = np.load(path) if path.exists() else None
        self.hits += found is not None
        self.misses += found is None
        return found

    def put(self, key: str, slice_index: int, embedding: np.ndarray) -> None:
        """Store one slice's embedding as fp16 (atomically on disk)."""
        embedding = np.asarray(embedding, dtype=np.float16)
        if self.directory is None:
            self._memory[(key, slice_index)] = embedding
            return
        folder = self.directory / key
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{slice_index:05d}.tmp.npy"
        np.save(tmp, embedding)
        tmp.replace(folder / f"{slice_index:05d}.npy")


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


@dataclass
class _Decoded:
    """Per-batch decoder output on slice size: probabilities (B, K, R, C), optional std, presence (B, K)."""

    probabilities: torch.Tensor
    std: torch.Tensor | None = None
    presence: torch.Tensor | None = None


# The prompt mode's step on a batch: embeddings (B, 256, 64, 64), the batch's slice indices, the resize info ->
# probabilities on the slice grid.
DecodeBatch = Callable[[torch.Tensor, Sequence[int], Any], _Decoded]


@dataclass
class _VolumeSegmentation:
    """One volume being segmented slice by slice in its canonical view: the normalised slices, the runner that
    encodes and decodes them in batches, and the labels, uncertainty and presence gathered so far."""

    volume: Volume
    model: SegmentationModel
    options: EngineOptions
    label_values: list[int]
    view: CanonicalView = field(init=False)
    normalized: np.ndarray = field(init=False)
    labels: np.ndarray = field(init=False)
    uncertainty: np.ndarray | None = field(init=False, default=None)
    presence: np.ndarray | None = field(init=False, default=None)
    messages: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.view = canonical_view(self.volume)
        config = PreprocessConfig.from_dict(self.model.preprocessing)
        self.config = config
        with timed_stage(self.options.stage_timer, "pre"):
            self.normalized = normalize_volume(self.view.apply(self.volume.array), self.volume.modality, config)
        dtype = label_dtype(max(self.label_values, default=0))
        self.labels = np.zeros(self.normalized.shape, dtype=dtype)
        if self.options.uncertainty_samples > 0:
            self.uncertainty = np.zeros(self.normalized.shape, dtype=np.float32)
        self.runner = self._runner(resolve_device(self.options.device), self.options.batch_size)
        self.cache_key = self._cache_key()

    def _runner(self, device: torch.device, batch_size: int | None) -> ModelRunner:
        """The model on `device` with the options' precision and backend (again after an out-of-memory fallback)."""
        options = self.options
        runner = ModelRunner.prepare(self.model, device, options.precision, options.encoder_backend, batch_size,
                                     options.stage_timer, self.warn)
        found = " (no GPU found)" if options.device == "auto" and device.type == "cpu" else ""
        logger.info("running on %s%s: %s", device, found, runner.plan.description)
        return runner

    def _cache_key(self) -> str | None:
        if self.options.cache is None:
            return None
        return EmbeddingCache.volume_key(self.volume, self.config.to_dict(), self.runner.encoder_id)

    def warn(self, message: str) -> None:
        """Record a message for the user (also logged and passed to the caller's `warn`)."""
        self.messages.append(message)
        logger.warning(message)
        if self.options.warn is not None:
            self.options.warn(message)

    def slices_to_run(self, candidates: Iterable[int]) -> list[int]:
        """Candidate slices inside the ROI that are not blank (a constant slice holds no organ)."""
        slices = sorted(set(candidates))
        if self.options.roi is not None:
            s0, s1, *_ = ras_box_to_canonical(self.volume, self.options.roi.corner0, self.options.roi.corner1)
            slices = [s for s in slices if s0 <= s <= s1]
        return [s for s in slices if np.ptp(self.normalized[s]) > 0]

    def run(self, slices: list[int], decode: DecodeBatch) -> None:
        """Encode and decode `slices` batch by batch, halving the batch on out-of-memory, then trying the CPU."""
        done, total = 0, len(slices)
        self._report(0, total, "starting")
        while done < total:
            self._check_cancel()
            batch = slices[done:done + self.runner.batch_size]
            try:
                self._run_batch(batch, decode)
            except (torch.OutOfMemoryError, RuntimeError) as error:
                if not _is_out_of_memory(error):
                    raise
                self._recover_from_oom(error)
                continue
            done += len(batch)
            self._report(done, total, f"segmented {done}/{total} slices")

    def _check_cancel(self) -> None:
        if self.options.cancel is not None and self.options.cancel():
            raise Cancelled("segmentation cancelled; nothing was written")

    def _report(self, done: int, total: int, message: str) -> None:
        if self.options.progress is not None:
            self.options.progress(done, total, message)

    def _recover_from_oom(self, error: BaseException) -> None:
        runner = self.runner
        if runner.device.type == "cuda":
            torch.cuda.empty_cache()
        if runner.batch_size > 1:
            runner.batch_size //= 2
            self.warn(f"out of memory on {runner.device.type}; retrying with batch size {runner.batch_size}")
        elif runner.device.type != "cpu":
            self.warn(f"out of memory on {runner.device.type} even with batch size 1; continuing on the CPU (slower)")
            self.runner = self._runner(torch.device("cpu"), runner.batch_size)
        else:
            raise AutoMedSAMError("out of memory on the CPU with batch size 1; close other programs, "
                                  "or segment a region of interest") from error

    def _run_batch(self, batch: list[int], decode: DecodeBatch) -> None:
        with timed_stage(self.options.stage_timer, "pre"):
            images, info = to_model_input(self.normalized[batch], self.config.image_size)
        with torch.inference_mode():
            embeddings = self._embeddings(batch, images)
            decoded = decode(embeddings, batch, info)
        with timed_stage(self.options.stage_timer, "post"):
            self._accumulate(batch, decoded)

    def _embeddings(self, batch: list[int], images: torch.Tensor) -> torch.Tensor:
        cache, key = self.options.cache, self.cache_key
        cached = [cache.get(key, s) for s in batch] if cache is not None and key is not None else [None] * len(batch)
        missing = [i for i, found in enumerate(cached) if found is None]
        device = self.runner.device
        if not missing:
            return torch.from_numpy(np.stack(cached)).to(device, torch.float32)
        computed = self.runner.encode(images[missing])
        if cache is not None and key is not None:
            for i, embedding in zip(missing, computed.cpu().numpy(), strict=True):
                cache.put(key, batch[i], embedding)
        if len(missing) == len(batch):
            return computed
        parts = [torch.from_numpy(c.astype(np.float32)) if c is not None else None for c in cached]
        for i, embedding in zip(missing, computed.cpu(), strict=True):
            parts[i] = embedding
        return torch.stack(parts).to(device)  # type: ignore[arg-type]

    def _accumulate(self, batch: list[int], decoded: _Decoded) -> None:
        probabilities = decoded.probabilities.float().cpu().numpy()  # (B, K, R, C)
        best = probabilities.argmax(axis=1)
        best_probability = np.take_along_axis(probabilities, best[:, None], axis=1)[:, 0]
        values = np.asarray(self.label_values, dtype=self.labels.dtype)
        self.labels[batch] = np.where(best_probability > self.options.threshold, values[best], 0)
        if self.uncertainty is not None and decoded.std is not None:
            self.uncertainty[batch] = decoded.std.float().cpu().numpy().max(axis=1)
        if decoded.presence is not None:
            if self.presence is None:
                self.presence = np.full((self.labels.shape[0], len(self.label_values)), np.nan, dtype=np.float32)
            self.presence[batch] = decoded.presence.float().cpu().numpy()

    def finish(self, segments: tuple[Segment, ...], multi_component: set[int]) -> LabelVolume:
        """Post-process in the canonical view, map back to the input grid and package the result."""
        with timed_stage(self.options.stage_timer, "post"):
            return self._finish(segments, multi_component)

    def _finish(self, segments: tuple[Segment, ...], multi_component: set[int]) -> LabelVolume:
        labels = self.labels
        if self.options.postprocess and labels.any():
            labels = postprocess_labels(labels, self.label_values, largest=True, fill=True,
                                        multi_component_ok=multi_component)
        uncertainty = None if self.uncertainty is None else np.ascontiguousarray(self.view.invert(self.uncertainty))
        presence = {} if self.presence is None else {s.key: self.presence[:, i] for i, s in enumerate(segments)}
        return LabelVolume(labels=np.ascontiguousarray(self.view.invert(labels)), volume=self.volume,
                           segments=segments, uncertainty=uncertainty, presence=presence, messages=self.messages)


def segment(volume: Volume, classes: Sequence[str], model: SegmentationModel,
            options: EngineOptions | None = None, catalog: ClassCatalog | None = None) -> LabelVolume:
    """Segment `classes` (catalog names) in `volume` with the model's class prompt encoder.

    Returns labels on the input grid; per-slice presence scores per class in `LabelVolume.presence`.
    """
    options = options or EngineOptions()
    volume.validate()
    organs = resolve_classes(classes, model.classes, catalog)
    indices = torch.tensor([model.class_index(o.key) for o in organs], dtype=torch.long)
    run = _VolumeSegmentation(volume, model, options, [o.label_value for o in organs])

    def decode(embeddings: torch.Tensor, batch: Sequence[int], info: Any) -> _Decoded:
        gate = None if options.decode_absent else options.presence_threshold
        output = run.runner.segment_classes(embeddings, indices.to(embeddings.device), options.uncertainty_samples,
                                            presence_threshold=gate)
        presence = torch.sigmoid(output.presence_logits.float())
        probabilities = torch.sigmoid(from_model_output(output.logits.float(), info))
        probabilities = probabilities * (presence >= options.presence_threshold)[:, :, None, None]
        std = None if output.probability_std is None else from_model_output(output.probability_std.float(), info)
        return _Decoded(probabilities, std, presence)

    run.run(run.slices_to_run(range(run.labels.shape[0])), decode)
    segments = tuple(Segment(o.key, o.label_value, o) for o in organs)
    multi = {o.label_value for o in organs if o.multi_component}
    return run.finish(segments, multi)


def segment_boxes(volume: Volume, prompts: Sequence[BoxPrompt], model: SegmentationModel,
                  options: EngineOptions | None = None, catalog: ClassCatalog | None = None) -> LabelVolume:
    """Box mode: MedSAM box prompts (per-slice 2D boxes, e.g. from a 3D RAS box) with the same engine.

    A prompt whose key is a catalog class gets that class's name, colour and terminology; any other key names a
    custom segment.
    """
    options = options or EngineOptions()
    volume.validate()
    if not prompts:
        raise InputError("no box given")
    catalog = catalog or default_catalog()
    organs = [_organ_for_key(catalog, p.key, i) for i, p in enumerate(prompts)]
    run = _VolumeSegmentation(volume, model, options, [o.label_value for o in organs])

    def decode(embeddings: torch.Tensor, batch: Sequence[int], info: Any) -> _Decoded:
        rows, cols = run.normalized.shape[1:]
        probabilities = torch.zeros((len(batch), len(prompts), rows, cols), device=embeddings.device)
        for k, prompt in enumerate(prompts):
            items = [i for i, s in enumerate(batch) if s in prompt.boxes]
            if not items:
                continue
            boxes = np.stack([box_to_model(prompt.boxes[batch[i]], info) for i in items])
            output = run.runner.segment_boxes(embeddings[items], torch.tensor(boxes, device=embeddings.device).float())
            probabilities[items, k] = torch.sigmoid(from_model_output(output.logits.float(), info)[:, 0])
        return _Decoded(probabilities)

    run.run(run.slices_to_run(s for p in prompts for s in p.boxes), decode)
    segments = tuple(Segment(p.key, o.label_value, o) for p, o in zip(prompts, organs, strict=True))
    return run.finish(segments, {o.label_value for o in organs if o.multi_component})


def _organ_for_key(catalog: ClassCatalog, key: str, index: int) -> OrganClass:
    """The catalog class named `key`, or a custom class for a free segment name."""
    try:
        return catalog.get(key)
    except InputError:
        return catalog.custom(key, index)
