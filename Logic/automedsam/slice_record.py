"""What AutoMedSAM last wrote into a segment, slice by slice, so that hand edits made since can be recognised.

After every run and refinement a segment carries the tag `AutoMedSAM.SliceDigests`: one CRC-32 per slice of the
volume's canonical (axial-like) slices, of the segment's mask on that slice, as 8 hex digits each. The Slicer module
sets it on the segment (it travels with the scene and `.seg.nrrd`), and `.seg.nrrd` results of the command line carry
it too. A slice whose mask no longer matches was edited by someone since (Segment Editor, another tool), and a
refinement never carries a correction into it. NIfTI results have no record.
"""

from __future__ import annotations

import zlib

import numpy as np

from .segment_tags import SLICE_DIGESTS_TAG
from .volume import CanonicalView

DIGEST_TAG = SLICE_DIGESTS_TAG
_WIDTH = 8  # hex digits per slice


def slice_digests(mask_kji: np.ndarray, view: CanonicalView) -> str:
    """The mask's per-slice record (canonical slice order), as stored in the tag."""
    canonical = view.apply(np.asarray(mask_kji, dtype=bool))
    return "".join(f"{zlib.crc32(np.packbits(plane).tobytes()):0{_WIDTH}x}" for plane in canonical)


def changed_slices(record: str | None, mask_kji: np.ndarray, view: CanonicalView,
                   without_record: str = "occupied") -> set[int]:
    """Canonical slices whose mask differs from `record`. Without a usable record: every slice holding voxels
    (`without_record="occupied"`: a segment someone drew) or none (`"none"`: nothing is known, e.g. a NIfTI result)."""
    current = slice_digests(mask_kji, view)
    if record is None or len(record) != len(current):
        if without_record == "none":
            return set()
        occupied = view.apply(np.asarray(mask_kji, dtype=bool)).any(axis=(1, 2))
        return {int(s) for s in np.flatnonzero(occupied)}
    return {index for index in range(len(current) // _WIDTH)
            if current[index * _WIDTH:(index + 1) * _WIDTH] != record[index * _WIDTH:(index + 1) * _WIDTH]}
