"""Which slices to review first: a per-slice, per-segment score from the run's uncertainty map and the 3D shape.

Correcting is slow mostly because the bad slices must be found. Two signals, each 0 (fine) to 1 (suspect):
- doubt: the model's own uncertainty over the segment and a one-pixel ring around it, scaled to 0..1. The engine's
  uncertainty map holds, per voxel, the largest std of a class's mask probability (over noise samples, or the
  Bernoulli std sqrt(p (1 - p)) of a deterministic prompt; 0.5 is a coin toss, so doubt = 2 x mean std).
- inconsistency: 1 - the mean Dice of the segment on this slice with the same segment on the slices next to it. Organs
  change shape slowly from slice to slice; a mask that jumps, appears or vanishes is often wrong.
The score is their mean. Measured leave-one-patient-out (docs/model-card.md, "Review ranking"), the combination
ranks slices by their error better than either the edge uncertainty alone or the presence score. Slices are the
engine's axial slices (the volume axis nearest to superior-inferior), indexed on the input grid.
"""

from __future__ import annotations

import csv
import io as text_io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from .errors import InputError
from .metrics import dice
from .result import LabelVolume
from .volume import canonical_view

REPORT_COLUMNS = ("rank", "class", "segment", "slice_axis", "slice", "r_mm", "a_mm", "s_mm", "area_mm2", "doubt",
                  "inconsistency", "score")
_AXIS_NAMES = ("K", "J", "I")  # KJI array axis -> IJK axis letter
_EDGE = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class SliceScore:
    """One segment on one slice: where it is, how big, and how unsure the model was (0 = sure, 0.5 = a coin toss)."""

    key: str
    name: str
    axis: str                                   # "I", "J" or "K": the IJK axis the slices are taken along
    index: int                                  # slice index along that axis (0-based, input grid)
    center_ras: tuple[float, float, float]      # centre of the segment on that slice, RAS mm (a place to jump to)
    area_mm2: float
    doubt: float                                # 0..1, the model's uncertainty over the mask and its ring
    inconsistency: float                        # 0..1, 1 - mean Dice with the same segment on adjacent slices
    score: float                                # mean of doubt and inconsistency: the ranking


def slice_scores(result: LabelVolume) -> list[SliceScore]:
    """Every (segment, slice) with voxels, most suspect first; needs the run's uncertainty map."""
    if result.uncertainty is None:
        raise InputError("the result has no uncertainty map; run with uncertainty enabled to rank slices")
    array_axis = canonical_view(result.volume).permutation[0]
    labels = np.moveaxis(result.labels, array_axis, 0)
    uncertainty = np.moveaxis(np.asarray(result.uncertainty, dtype=np.float32), array_axis, 0)
    pixel_mm2 = float(np.prod(np.delete(result.volume.spacing[::-1], array_axis)))
    scores = []
    for segment in result.segments:
        masks = labels == segment.label_value
        for index in np.flatnonzero(masks.any(axis=(1, 2))):
            mask = masks[index]
            doubt = min(1.0, 2.0 * float(uncertainty[index][ndimage.binary_dilation(mask, structure=_EDGE)].mean()))
            inconsistency = _inconsistency(masks, int(index))
            center = _center_ras(result, array_axis, int(index), mask)
            scores.append(SliceScore(segment.key, segment.name, _AXIS_NAMES[array_axis], int(index), center,
                                     float(mask.sum()) * pixel_mm2, doubt, inconsistency, (doubt + inconsistency) / 2))
    return sorted(scores, key=lambda s: (-s.score, s.key, s.index))


def _inconsistency(masks: np.ndarray, index: int) -> float:
    """1 - mean Dice of slice `index`'s mask with the masks on the slices before and after it (those that exist)."""
    mask, dices = masks[index], []
    for other in (index - 1, index + 1):
        if 0 <= other < len(masks):
            dices.append(dice(mask, masks[other]))
    return 1.0 - float(np.mean(dices)) if dices else 0.0


def _center_ras(result: LabelVolume, array_axis: int, index: int, mask: np.ndarray) -> tuple[float, float, float]:
    """RAS mm of the mask's centroid on this slice (on the voxel nearest to it that belongs to the mask)."""
    rows, cols = np.nonzero(mask)
    nearest = int(np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2))
    kji = [0, 0, 0]
    in_plane = [axis for axis in range(3) if axis != array_axis]
    kji[array_axis], kji[in_plane[0]], kji[in_plane[1]] = index, int(rows[nearest]), int(cols[nearest])
    ras = np.asarray(result.ijk_to_ras) @ np.array([kji[2], kji[1], kji[0], 1.0])
    return float(ras[0]), float(ras[1]), float(ras[2])


def report_text(scores: Sequence[SliceScore]) -> str:
    """The review report as CSV text: one row per (segment, slice), most suspect first."""
    buffer = text_io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(REPORT_COLUMNS)
    for rank, s in enumerate(scores, start=1):
        writer.writerow([rank, s.key, s.name, s.axis, s.index, *(f"{x:.2f}" for x in s.center_ras),
                         f"{s.area_mm2:.1f}", f"{s.doubt:.4f}", f"{s.inconsistency:.4f}", f"{s.score:.4f}"])
    return buffer.getvalue()


def write_report(scores: Sequence[SliceScore], path: Path | str) -> Path:
    """Write the review report (CSV) atomically; returns the path."""
    from .io import write_text_file

    return write_text_file(Path(path), report_text(scores))
