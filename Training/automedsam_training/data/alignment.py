"""Labels aligned to their image in physical space, never by array index.

A label map may store the image's voxel grid with other axis directions (TotalSegmentator's label map of the DICOM
reference case is the series' grid with its y axis flipped); such a map is reoriented losslessly by resampling it
onto the image grid with nearest neighbour and the identity transform: every image voxel centre falls exactly on a
label voxel centre, so no value changes. A label map on a different grid is refused unless the user asks for
resampling (nearest neighbour again; image voxels outside the label map become background).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk  # noqa: N813 (the conventional alias)

from automedsam.errors import InputError
from automedsam.io import read_volume
from automedsam.volume import Volume

from .dataset_spec import CaseSpec

CENTRE_TOLERANCE = 1e-3  # voxels: label voxel centres closer than this to image voxel centres coincide


@dataclass(frozen=True)
class LabelledVolume:
    """An image volume and its label map (KJI, same grid), with the case it came from."""

    case: CaseSpec
    volume: Volume
    labels: np.ndarray  # KJI, the case's label values

    def class_mask(self, key: str) -> np.ndarray:
        """Boolean KJI mask of class `key` (the union of every label value mapped to it)."""
        values = [value for value, mapped in self.case.label_map.items() if mapped == key]
        return np.isin(self.labels, values)


def read_labelled_volume(case: CaseSpec, resample_labels: bool = False, check_values: bool = True) -> LabelledVolume:
    """Read a case's image and its label map aligned onto the image grid; label values checked against the map
    (`check_values=False`: only that they are whole numbers, for callers that report unknown values themselves)."""
    volume = read_volume(case.image, case.modality)
    try:
        label_image = sitk.ReadImage(str(case.label))
    except RuntimeError as error:
        raise InputError(f"case {case.id!r}: could not read the label map {case.label}: "
                         f"{str(error).strip().splitlines()[-1]}") from error
    labels = align_labels(volume.to_sitk(), label_image, resample_labels, f"case {case.id!r}")
    if check_values:
        check_label_values(labels, case)
    else:
        unknown_label_values(labels, case)
    return LabelledVolume(case, volume, labels)


def unknown_label_values(labels: np.ndarray, case: CaseSpec) -> list[int]:
    """Label values that the case's label map does not name (0 is background); `InputError` for a map that holds
    non-integer values (an image, not a label map)."""
    if not np.issubdtype(labels.dtype, np.integer):
        rounded = np.rint(labels)
        if not np.array_equal(rounded, labels):
            raise InputError(f"case {case.id!r}: the label map {case.label} holds non-integer values; it is not a "
                             "label map (is it the image?)")
    values = {int(v) for v in np.unique(labels)} - {0}
    return sorted(values - set(case.label_map))


def check_label_values(labels: np.ndarray, case: CaseSpec) -> None:
    """`InputError` listing label values that the case's label map does not name (0 is background)."""
    unknown = unknown_label_values(labels, case)
    if unknown:
        raise InputError(f"case {case.id!r}: label values {unknown} in {case.label.name} are not in the label map "
                         f"(it names {sorted(case.label_map)}); add them to the spec's label map (null for "
                         "background)")


def align_labels(image: sitk.Image, labels: sitk.Image, resample: bool = False, what: str = "labels") -> np.ndarray:
    """The label map's values on the image grid, as a KJI array.

    Lossless when the label grid holds every image voxel centre (same grid, or the same points stored with other
    axis orders or directions); otherwise `InputError` unless `resample` (nearest neighbour, outside = 0).
    """
    if labels.GetDimension() != 3 or labels.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{what}: the label map must be a 3D scalar image")
    if _same_grid(image, labels):
        return sitk.GetArrayFromImage(labels)
    if not (resample or _lossless(image, labels)):
        raise InputError(f"{what}: the label map's voxel grid differs from the image's "
                         f"({_grid_difference(image, labels)}); fix the files, or set resample_labels "
                         "(nearest neighbour onto the image grid)")
    aligned = sitk.Resample(labels, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, labels.GetPixelID())
    return sitk.GetArrayFromImage(aligned)


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=1e-5, atol=1e-6)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-5))


def _index_map(image: sitk.Image, labels: sitk.Image) -> np.ndarray:
    """4x4 matrix taking image voxel indices (i, j, k, 1) to continuous label voxel indices."""
    def to_world(img: sitk.Image) -> np.ndarray:
        """Index -> LPS millimetres."""
        matrix = np.eye(4)
        matrix[:3, :3] = np.array(img.GetDirection()).reshape(3, 3) @ np.diag(img.GetSpacing())
        matrix[:3, 3] = img.GetOrigin()
        return matrix

    return np.linalg.inv(to_world(labels)) @ to_world(image)


def _lossless(image: sitk.Image, labels: sitk.Image) -> bool:
    """True when every image voxel centre is a label voxel centre: a signed permutation with integer offsets
    inside the label grid."""
    mapping = _index_map(image, labels)
    linear = mapping[:3, :3]
    if not np.allclose(np.abs(linear).sum(axis=0), 1.0, atol=CENTRE_TOLERANCE) or \
            not np.allclose(np.abs(linear).sum(axis=1), 1.0, atol=CENTRE_TOLERANCE) or \
            not np.allclose(linear, np.rint(linear), atol=CENTRE_TOLERANCE) or \
            not np.allclose(mapping[:3, 3], np.rint(mapping[:3, 3]), atol=CENTRE_TOLERANCE):
        return False
    corners = np.array([[i, j, k, 1.0] for i in (0, image.GetSize()[0] - 1) for j in (0, image.GetSize()[1] - 1)
                        for k in (0, image.GetSize()[2] - 1)])
    mapped = (mapping @ corners.T)[:3]
    size = np.array(labels.GetSize())[:, None]
    return bool(np.all(mapped > -0.5) and np.all(mapped < size - 0.5))


def _grid_difference(image: sitk.Image, labels: sitk.Image) -> str:
    """What differs between two grids, for the error message."""
    parts = []
    if image.GetSize() != labels.GetSize():
        parts.append(f"size {image.GetSize()} vs {labels.GetSize()}")
    if not np.allclose(image.GetSpacing(), labels.GetSpacing(), rtol=1e-5):
        parts.append(f"spacing {_round(image.GetSpacing())} vs {_round(labels.GetSpacing())} mm")
    if not np.allclose(image.GetOrigin(), labels.GetOrigin(), atol=1e-3):
        parts.append(f"origin {_round(image.GetOrigin())} vs {_round(labels.GetOrigin())} mm (LPS)")
    if not np.allclose(image.GetDirection(), labels.GetDirection(), atol=1e-5):
        parts.append(f"directions {_round(image.GetDirection())} vs {_round(labels.GetDirection())}")
    return "; ".join(parts) or "the grids do not cover each other"


def _round(values: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(round(float(v), 3) for v in values)
