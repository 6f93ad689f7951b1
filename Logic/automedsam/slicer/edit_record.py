"""What AutoMedSAM last wrote into a segment, slice by slice, so that hand edits made since can be recognised.

After every run and refinement the segment gets the tag `AutoMedSAM.SliceDigests`: one CRC-32 per slice of the
volume's canonical (axial-like) slices, of the segment's mask on that slice. A slice whose mask no longer matches was
edited by someone since (Segment Editor, another tool), and a refinement never carries a correction into it. The tag
travels with the segmentation (scene files, `.seg.nrrd`), so the record survives saving and reloading; without one
(a segment drawn by hand, or one made before records were kept) every slice holding voxels counts as the user's.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from ..volume import CanonicalView
from .request import read_tag

DIGEST_TAG = "AutoMedSAM.SliceDigests"
_WIDTH = 8  # hex digits per slice


def slice_digests(mask_kji: np.ndarray, view: CanonicalView) -> str:
    """The mask's per-slice record (canonical slice order), as stored in the tag."""
    canonical = view.apply(np.asarray(mask_kji, dtype=bool))
    return "".join(f"{zlib.crc32(np.packbits(plane).tobytes()):0{_WIDTH}x}" for plane in canonical)


def record(segment: Any, mask_kji: np.ndarray, view: CanonicalView) -> None:
    """Remember `mask_kji` as what AutoMedSAM wrote into `segment` (a vtkSegment)."""
    segment.SetTag(DIGEST_TAG, slice_digests(mask_kji, view))


def edited_slices(segment: Any, mask_kji: np.ndarray, view: CanonicalView) -> set[int]:
    """Canonical slices whose mask differs from the record; without a usable record, every slice with voxels."""
    current = slice_digests(mask_kji, view)
    previous = read_tag(segment, DIGEST_TAG)
    if previous is None or len(previous) != len(current):
        return {int(s) for s in np.flatnonzero(view.apply(np.asarray(mask_kji, dtype=bool)).any(axis=(1, 2)))}
    return {index for index in range(len(current) // _WIDTH)
            if current[index * _WIDTH:(index + 1) * _WIDTH] != previous[index * _WIDTH:(index + 1) * _WIDTH]}
