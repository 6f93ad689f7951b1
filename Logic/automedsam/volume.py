"""Volumes with their geometry, and the canonical slice view used by training and inference.

Conventions (used everywhere in the package):
- `Volume.array` is indexed `[k, j, i]` (KJI, the order of SimpleITK's `GetArrayFromImage` and of
  Slicer's `arrayFromVolume`); `ijk_to_ras` maps the homogeneous column `(i, j, k, 1)` to patient RAS
  millimetres.
- SimpleITK and DICOM speak LPS; the conversion is `RAS = diag(-1, -1, 1) @ LPS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from .errors import InputError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
MODALITIES = ("CT", "MR")


def _geometry_matrix(spacing: np.ndarray, origin: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """4x4 index->world matrix from spacing (i, j, k), origin and a 3x3 matrix of axis directions (columns)."""
    matrix = np.eye(4)
    matrix[:3, :3] = np.asarray(directions, dtype=float) @ np.diag(np.asarray(spacing, dtype=float))
    matrix[:3, 3] = np.asarray(origin, dtype=float)
    return matrix


@dataclass(frozen=True)
class Volume:
    """A scalar 3D image: voxel array in KJI order + IJK->RAS matrix (mm) + modality ("CT" or "MR")."""

    array: np.ndarray
    ijk_to_ras: np.ndarray = field(default_factory=lambda: np.eye(4))
    modality: str = "CT"

    @classmethod
    def from_array(
        cls,
        array_kji: np.ndarray,
        spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
        origin_ras: tuple[float, float, float] = (0.0, 0.0, 0.0),
        directions_ras: np.ndarray | None = None,
        modality: str = "CT",
    ) -> Volume:
        """Build from a KJI array, spacing along (i, j, k) in mm, RAS origin and RAS axis directions (columns)."""
        if np.any(np.asarray(spacing, dtype=float) <= 0) or not np.all(np.isfinite(spacing)):
            raise InputError(f"voxel spacing {tuple(spacing)} mm must be finite and positive along every axis")
        directions = np.eye(3) if directions_ras is None else np.asarray(directions_ras, dtype=float)
        return cls(np.asarray(array_kji), _geometry_matrix(np.asarray(spacing), np.asarray(origin_ras), directions),
                   modality)

    @classmethod
    def from_sitk(cls, image: sitk.Image, modality: str = "CT") -> Volume:
        """Build from a SimpleITK image (LPS geometry); refuses vector (RGB) and non-3D images."""
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(
                f"the image has {image.GetNumberOfComponentsPerPixel()} components per voxel (RGB or vector); "
                "AutoMedSAM needs a scalar CT or MR volume")
        if image.GetDimension() != 3:
            raise InputError(f"the image is {image.GetDimension()}D; AutoMedSAM needs a 3D volume")
        directions = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
        ijk_to_lps = _geometry_matrix(np.array(image.GetSpacing()), np.array(image.GetOrigin()), directions)
        return cls(sitk.GetArrayFromImage(image), LPS_TO_RAS @ ijk_to_lps, modality)

    def to_sitk(self, array_kji: np.ndarray | None = None) -> sitk.Image:
        """SimpleITK image (LPS) of this geometry holding `array_kji` (default: this volume's voxels)."""
        image = sitk.GetImageFromArray(self.array if array_kji is None else array_kji)
        ijk_to_lps = LPS_TO_RAS @ self.ijk_to_ras
        image.SetSpacing(tuple(float(s) for s in self.spacing))
        image.SetOrigin(tuple(float(o) for o in ijk_to_lps[:3, 3]))
        image.SetDirection(tuple(float(d) for d in (ijk_to_lps[:3, :3] / self.spacing).ravel()))
        return image

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size along i, j, k in mm, shape (3,)."""
        return np.linalg.norm(np.asarray(self.ijk_to_ras, dtype=float)[:3, :3], axis=0)

    @property
    def directions_ras(self) -> np.ndarray:
        """Unit RAS direction of the i, j, k axes as the columns of a 3x3 matrix."""
        return np.asarray(self.ijk_to_ras, dtype=float)[:3, :3] / self.spacing

    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        """Number of voxels along i, j, k."""
        return tuple(int(n) for n in self.array.shape[::-1])  # type: ignore[return-value]

    def ras_to_ijk(self, points_ras: np.ndarray) -> np.ndarray:
        """Continuous voxel coordinates (N, 3) in IJK of RAS points (N, 3) in mm."""
        points = np.atleast_2d(np.asarray(points_ras, dtype=float))
        homogeneous = np.c_[points, np.ones(len(points))]
        return (np.linalg.inv(self.ijk_to_ras) @ homogeneous.T).T[:, :3]

    def with_array(self, array_kji: np.ndarray) -> Volume:
        """The same geometry and modality holding another array of the same shape."""
        if array_kji.shape != self.array.shape:
            raise ValueError(f"shape {array_kji.shape} differs from the volume's {self.array.shape}")
        return Volume(array_kji, self.ijk_to_ras, self.modality)

    def validate(self) -> None:
        """Raise `InputError` with a specific message if this volume cannot be segmented."""
        _check_shape(self.array)
        _check_dtype(self.array)
        _check_geometry(np.asarray(self.ijk_to_ras, dtype=float))
        if self.modality not in MODALITIES:
            raise InputError(f"unknown modality {self.modality!r}; expected one of {', '.join(MODALITIES)}")
        _check_values(self.array)


def _check_shape(array: np.ndarray) -> None:
    if array.ndim != 3:
        raise InputError(f"the image has {array.ndim} dimensions (shape {array.shape}); AutoMedSAM needs a 3D volume")
    if array.size == 0:
        raise InputError(f"the volume is empty (shape {array.shape})")
    if min(array.shape[1:]) < 2:
        raise InputError(f"the volume's slices are {array.shape[2]}x{array.shape[1]} voxels; too small to segment")


def _check_dtype(array: np.ndarray) -> None:
    if array.dtype == bool:
        raise InputError("the volume is boolean (a mask, not an image); select the CT or MR image instead")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InputError(f"voxel type {array.dtype} is not supported; expected integer or floating point scalars")


def _check_geometry(matrix: np.ndarray) -> None:
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        raise InputError("the volume's IJK-to-RAS matrix is not a finite 4x4 matrix")
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    if np.any(spacing <= 0) or abs(np.linalg.det(matrix[:3, :3])) < 1e-12:
        raise InputError(f"the volume's voxel spacing {tuple(np.round(spacing, 4))} mm is zero or degenerate")


def _check_values(array: np.ndarray) -> None:
    if np.issubdtype(array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise InputError(f"the volume has {bad} NaN or infinite voxels; fix or mask them before segmenting")
    if array.min() == array.max():
        raise InputError(f"the volume is constant (every voxel is {array.flat[0]}); there is nothing to segment")
