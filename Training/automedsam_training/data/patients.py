"""One patient, one id: scans of the same patient listed as two patients would leak into leave-one-patient-out.

The cheap check (one image file under two patients) runs in `dataset_spec.spec_from_dict`. This module finds the
less obvious case: a scan stored as a slab of another scan (TotalSegmentator's `example_ct_sm.nii.gz` holds slices
82-111 of `example_ct.nii.gz`, and its header repeats the full scan's origin). Image headers are compared first
(same origin, voxel size, directions and slice size); only such pairs have their voxels read, and they count as one
scan when the smaller one's slices equal consecutive slices of the other. DICOM folders are not compared.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk  # noqa: N813 (the conventional alias)

from automedsam.errors import InputError

if TYPE_CHECKING:  # types only: `dataset_spec.load_spec` runs these checks, so this module never imports it
    from .dataset_spec import CaseSpec, DatasetSpec

GridKey = tuple[tuple[float, ...], ...]


def check_patients(spec: DatasetSpec, where: str = "dataset spec") -> None:
    """`InputError` naming the cases when cases of different patients hold the same scan (or a slab of it)."""
    pairs = shared_scans(spec)
    if pairs:
        listed = "; ".join(f"{a.id!r} (patient {a.patient_id!r}) and {b.id!r} (patient {b.patient_id!r})"
                           for a, b in pairs)
        raise InputError(f"{where}: these cases hold slices of one scan but name different patients: {listed}; "
                         "give the cases of one patient the same 'patient' (a leave-one-patient-out run would "
                         "otherwise test on slices it trained on)")


def shared_scans(spec: DatasetSpec) -> list[tuple[CaseSpec, CaseSpec]]:
    """Pairs of cases of different patients whose images are one scan, or one a slab of the other."""
    headers = {case.id: _grid(case) for case in spec.cases if case.image.is_file()}
    pairs = []
    for first, second in itertools.combinations(spec.cases, 2):
        if first.patient_id == second.patient_id or first.id not in headers or second.id not in headers:
            continue
        if headers[first.id] == headers[second.id] and _is_slab(first, second):
            pairs.append((first, second))
    return pairs


def _grid(case: CaseSpec) -> GridKey | None:
    """Origin, spacing, direction (rounded) and slice size from the header; None when the file cannot be read."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(case.image))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None  # reading the case later names the problem
    size = reader.GetSize()
    return (tuple(np.round(reader.GetOrigin(), 2)), tuple(np.round(reader.GetSpacing(), 4)),
            tuple(np.round(reader.GetDirection(), 4)), tuple(size[:2]))


def _is_slab(first: CaseSpec, second: CaseSpec) -> bool:
    """True when the shorter scan's slices equal consecutive slices of the longer one (KJI arrays, K = slices)."""
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(first.image)))
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(second.image)))
    short, long = (a, b) if a.shape[0] <= b.shape[0] else (b, a)
    if short.shape[1:] != long.shape[1:]:
        return False
    starts = [k for k in range(long.shape[0] - short.shape[0] + 1) if np.array_equal(long[k], short[0])]
    return any(np.array_equal(long[k:k + short.shape[0]], short) for k in starts)
