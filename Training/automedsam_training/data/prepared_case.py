"""Training slices: the inference path's canonical view and preprocessing, plus per-slice targets.

`PreparedCase` holds one labelled volume in the canonical view, normalised by `normalize_volume` exactly as the
engine does, and its labels as indices of the trained classes. `model_input` returns the same tensor the engine
feeds the image encoder for that slice (variant 0) or for a seeded augmented copy (variants 1..V). `TrainingData`
collects, for every (case, slice, variant) item, the targets the losses need: a class-index mask at model-input
resolution, each class's box prompt in model-input pixels, and which classes are present / usable on the slice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional alias)

from automedsam.errors import InputError
from automedsam.preprocess import PreprocessConfig, ResizeInfo, box_to_model, mask_box, normalize_volume, to_model_input
from automedsam.volume import CanonicalView, Volume, canonical_view

from .alignment import LabelledVolume
from .augment import AugmentConfig, augment_slice, slice_rng

VAL_POSITIONS = ("middle", "start", "end", "none")


@dataclass(frozen=True)
class SplitConfig:
    """Validation slices per case: a contiguous canonical slice range of `fraction` of the case's slices."""

    fraction: float = 0.2
    position: str = "middle"   # "middle", "start" (inferior end), "end" (superior end), "none"

    def __post_init__(self) -> None:
        if self.position not in VAL_POSITIONS or not 0.0 <= self.fraction < 1.0:
            raise InputError(f"validation split position {self.position!r} must be one of {VAL_POSITIONS} and "
                             f"fraction {self.fraction} in [0, 1)")


def validation_range(slices: int, split: SplitConfig) -> tuple[int, int] | None:
    """Inclusive canonical slice range `(lo, hi)` held out for validation, None when nothing is held out."""
    count = int(round(slices * split.fraction))
    if split.position == "none" or count == 0:
        return None
    if count >= slices:
        raise InputError(f"a validation fraction of {split.fraction} leaves no training slice of {slices}")
    lo = {"start": 0, "end": slices - count, "middle": (slices - count) // 2}[split.position]
    return lo, lo + count - 1


@dataclass
class PreparedCase:
    """A labelled volume in the canonical view: normalised voxels and trained-class indices (0 = background)."""

    labelled: LabelledVolume
    classes: tuple[str, ...]
    config: PreprocessConfig
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    view: CanonicalView = field(init=False)
    normalized: np.ndarray = field(init=False)
    class_labels: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        volume = self.labelled.volume
        self.view = canonical_view(volume)
        self.normalized = normalize_volume(self.view.apply(volume.array), volume.modality, self.config)
        labels = np.zeros(self.view.shape, dtype=np.uint8 if len(self.classes) < 255 else np.uint16)
        canonical = self.view.apply(self.labelled.labels)
        for index, key in enumerate(self.classes):
            values = [v for v, mapped in self.labelled.case.label_map.items() if mapped == key]
            labels[np.isin(canonical, values)] = index + 1
        self.class_labels = labels

    @property
    def case_id(self) -> str:
        """The spec's case id."""
        return self.labelled.case.id

    @property
    def volume(self) -> Volume:
        """The image volume (input grid, not canonical)."""
        return self.labelled.volume

    @property
    def slices(self) -> int:
        """Number of canonical (axial) slices."""
        return int(self.normalized.shape[0])

    def annotated(self) -> np.ndarray:
        """(C,) bool: the case's label map can label class c (its absence from a slice is then known)."""
        known = self.labelled.case.classes()
        return np.array([key in known for key in self.classes], dtype=bool)

    def slice_pair(self, index: int, variant: int) -> tuple[np.ndarray, np.ndarray]:
        """Normalised slice (R, C) and class-index labels (R, C) of one item; variant 0 is the slice itself."""
        image, labels = self.normalized[index], self.class_labels[index]
        if variant == 0:
            return image, labels
        return augment_slice(image, labels, self.augment, slice_rng(self.augment, self.case_id, index, variant))

    def model_input(self, slice_indices: Sequence[int], variant: int = 0) -> tuple[torch.Tensor, ResizeInfo]:
        """(N, 3, S, S) encoder input of canonical slices, through the engine's own `to_model_input`."""
        images = np.stack([self.slice_pair(s, variant)[0] for s in slice_indices])
        return to_model_input(images, self.config.image_size)


@dataclass
class ItemTargets:
    """Targets of N items for C classes (model-input pixels)."""

    masks: np.ndarray      # (N, S, S) uint8/uint16 class index + 1 (0: background), padded like the model input
    boxes: np.ndarray      # (N, C, 4) float32 x0, y0, x1, y1; 0 where the class is absent
    present: np.ndarray    # (N, C) bool: the class covers at least `min_area_mm2` on the slice
    usable: np.ndarray     # (N, C) bool: present, or annotated and absent (not a sliver below the minimum area)


def slice_targets(labels: np.ndarray, num_classes: int, info: ResizeInfo, annotated: np.ndarray,
                  min_pixels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Targets of one label slice (R, C) of class indices: mask (S, S), boxes (C, 4), present (C,), usable (C,)."""
    resized = F.interpolate(torch.from_numpy(labels.astype(np.float32))[None, None], size=info.resized_size,
                            mode="nearest-exact")[0, 0]
    side = info.image_size
    mask = np.zeros((side, side), dtype=labels.dtype)
    mask[: info.resized_size[0], : info.resized_size[1]] = resized.numpy().astype(labels.dtype)
    counts = np.bincount(labels.ravel(), minlength=num_classes + 1)[1:num_classes + 1]
    present = counts >= max(1, min_pixels)
    usable = present | (annotated & (counts == 0))
    boxes = np.zeros((num_classes, 4), dtype=np.float32)
    for c in np.flatnonzero(present):
        boxes[c] = box_to_model(mask_box(labels == c + 1), info)
    return mask, boxes, present, usable


def item_targets(case: PreparedCase, items: Sequence[tuple[int, int]], min_area_mm2: float) -> ItemTargets:
    """Targets of `items` = (slice, variant) pairs of one case."""
    row_mm, col_mm = case.view.pixel_spacing[1:]
    min_pixels = int(np.ceil(min_area_mm2 / (row_mm * col_mm)))
    info = ResizeInfo.for_slices(*case.view.shape[1:], case.config.image_size)
    annotated = case.annotated()
    parts = [slice_targets(case.slice_pair(s, v)[1], len(case.classes), info, annotated, min_pixels)
             for s, v in items]
    masks, boxes, present, usable = (np.stack(p) for p in zip(*parts, strict=True))
    return ItemTargets(masks, boxes, present, usable)
