"""The hand-edit record (`automedsam.slice_record`) on segments of a segmentation node: set after every run and
refinement, read before a refinement so that propagation never enters a slice edited by hand since. A segment
without a record (drawn by hand, or made before records were kept) counts as edited on every slice with voxels."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..slice_record import DIGEST_TAG, changed_slices, slice_digests
from ..volume import CanonicalView
from .request import read_tag

__all__ = ["DIGEST_TAG", "edited_slices", "record", "slice_digests"]


def record(segment: Any, mask_kji: np.ndarray, view: CanonicalView) -> None:
    """Remember `mask_kji` as what AutoMedSAM wrote into `segment` (a vtkSegment)."""
    segment.SetTag(DIGEST_TAG, slice_digests(mask_kji, view))


def edited_slices(segment: Any, mask_kji: np.ndarray, view: CanonicalView) -> set[int]:
    """Canonical slices whose mask differs from the segment's record (every slice with voxels without one)."""
    return changed_slices(read_tag(segment, DIGEST_TAG), mask_kji, view)
