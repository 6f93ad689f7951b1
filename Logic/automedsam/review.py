"""Which slices to review first: a per-slice, per-segment uncertainty score from a run's uncertainty map.

Correcting is slow mostly because the bad slices must be found. The engine's uncertainty map holds, per voxel, the
largest std of a class's mask probability (over noise samples, or the Bernoulli std sqrt(p (1 - p)) of a
deterministic prompt). A confident mask has a sharp edge: its probabilities jump from ~0 to ~1 across one voxel. A
mask that the model is unsure of has a wide, soft edge, or soft patches inside. So each segment's slice gets the
mean uncertainty over its edge band (the mask's in-plane boundary, one voxel either side); slices
are the engine's axial slices (the volume axis nearest to superior-inferior), indexed on the input grid.
`docs/model-card.md` reports how well this score ranks slices by their error on unseen patients.
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
from .result import LabelVolume
from .volume import canonical_view

REPORT_COLUMNS = ("rank", "class", "segment", "slice_axis", "slice", "r_mm", "a_mm", "s_mm", "area_mm2", "score")
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
    score: float


def slice_scores(result: LabelVolume) -> list[SliceScore]:
    """Every (segment, slice) with voxels, most uncertain first; needs the run's uncertainty map."""
    if result.uncertainty is None:
        raise InputError("the result has no uncertainty map; run with uncertainty enabled to rank slices")
    array_axis = canonical_view(result.volume).permutation[0]
    labels = np.moveaxis(result.labels, array_axis, 0)
    uncertainty = np.moveaxis(np.asarray(result.uncertainty, dtype=np.float32), array_axis, 0)
    spacing_kji = result.volume.spacing[::-1]
    pixel_mm2 = float(np.prod(np.delete(spacing_kji, array_axis)))
    scores = []
    for segment in result.segments:
        for index in np.flatnonzero((labels == segment.label_value).any(axis=(1, 2))):
            mask = labels[index] == segment.label_value
            score = float(uncertainty[index][_review_region(mask)].mean())
            center = _center_ras(result, array_axis, int(index), mask)
            scores.append(SliceScore(segment.key, segment.name, _AXIS_NAMES[array_axis], int(index), center,
                                     float(mask.sum()) * pixel_mm2, score))
    return sorted(scores, key=lambda s: (-s.score, s.key, s.index))


def _review_region(mask: np.ndarray) -> np.ndarray:
    """The mask's edge band, one pixel either side of its boundary (the whole mask when it is that thin).

    Only the edge, not the inside: a mean over the whole mask would rank large organs as sure just because most of
    their pixels lie far from any edge.
    """
    outside = ndimage.binary_dilation(mask, structure=_EDGE)
    inside = ndimage.binary_erosion(mask, structure=_EDGE, border_value=0)
    return outside & ~inside if inside.any() else outside


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
    """The review report as CSV text: one row per (segment, slice), most uncertain first."""
    buffer = text_io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(REPORT_COLUMNS)
    for rank, s in enumerate(scores, start=1):
        writer.writerow([rank, s.key, s.name, s.axis, s.index, *(f"{x:.2f}" for x in s.center_ras),
                         f"{s.area_mm2:.1f}", f"{s.score:.4f}"])
    return buffer.getvalue()


def write_report(scores: Sequence[SliceScore], path: Path | str) -> Path:
    """Write the review report (CSV) atomically; returns the path."""
    from .io import write_text_file

    return write_text_file(Path(path), report_text(scores))
