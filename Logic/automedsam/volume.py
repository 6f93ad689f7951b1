"""Volumes with their geometry, and the canonical slice view used by training and inference.

Conventions (used everywhere in the package):
- `Volume.array` is indexed `[k, j, i]` (KJI, the order of SimpleITK's `GetArrayFromImage` and of
  Slicer's `arrayFromVolume`); `ijk_to_ras` maps the homogeneous column `(i, j, k, 1)` to patient RAS
  millimetres.
- SimpleITK and DICOM speak LPS; the conversion is `RAS = diag(-1, -1, 1) @ LPS`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk  # noqa: N813 (the conventional alias)

from .errors import InputError
from .file_checks import non_finite_message

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
            raise InputError(f"voxel spacing {format_mm(spacing)} mm must be finite and positive along every axis")
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
        raise InputError(f"the volume's voxel spacing {format_mm(spacing)} mm is zero or degenerate")


def _check_values(array: np.ndarray) -> None:
    if np.issubdtype(array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise InputError(non_finite_message(bad))
    if array.min() == array.max():
        raise InputError(f"the volume is constant (every voxel is {array.flat[0]:g}); there is nothing to segment")


def format_mm(values: object) -> str:
    """`0.98 x 0.98 x 2` for a spacing or size in mm (plain numbers, not numpy reprs)."""
    return " x ".join(f"{float(v):.4g}" for v in np.ravel(np.asarray(values, dtype=float)))


PLAUSIBLE_SPACING_MM = (0.01, 50.0)   # voxel sizes outside this range come from a broken header
PLAUSIBLE_MAX_ABS = 1e6               # CT is -1024..~30000 HU; MR intensities stay far below this
LABEL_MAP_MAX_VALUES = 64             # an image with at most this many distinct values is taken for a label map


def plausibility_warnings(volume: Volume) -> list[str]:
    """One line per finding that a volume is probably not the CT/MR image the user meant (the run goes on)."""
    messages = []
    spacing = volume.spacing
    low, high = PLAUSIBLE_SPACING_MM
    if np.any(spacing < low) or np.any(spacing > high):
        messages.append(f"voxel spacing {format_mm(spacing)} mm is implausible for a CT or MR scan (expected "
                        f"{low:g}-{high:g} mm); volumes in mL and the model's input will be wrong: check the header")
    array = np.asarray(volume.array)
    sample = array[::2, ::4, ::4] if array.size > 1_000_000 else array
    finite = sample[np.isfinite(sample)] if np.issubdtype(sample.dtype, np.floating) else sample
    if finite.size and float(np.max(np.abs(finite.astype(np.float64)))) > PLAUSIBLE_MAX_ABS:
        messages.append(f"intensities reach {float(np.max(np.abs(finite.astype(np.float64)))):.3g}, far outside "
                        "any CT (HU) or MR range; the image is probably scaled wrongly (rescale slope)")
    elif finite.size and float(finite.min()) >= 0 and np.all(np.mod(finite, 1) == 0):
        values = np.unique(finite)
        if values.size <= LABEL_MAP_MAX_VALUES:
            messages.append(f"the image holds only {values.size} distinct values ({values.min():g}..{values.max():g}):"
                            " it looks like a label map or mask, not a CT or MR image; select the image instead")
    return messages


# --------------------------------------------------------------------------- canonical slice view
# The RAS axis (0 = R, 1 = A, 2 = S) shown along each canonical axis (slice, row, column), and the RAS sign of
# the direction in which that canonical index grows: slices inferior -> superior (+S), rows anterior ->
# posterior (-A), columns patient right -> patient left (-R; radiological convention, patient right on the
# image's left). This is the orientation SimpleITK's `DICOMOrient(image, "LPS")` gives to an axis-aligned image.
_CANONICAL_RAS_AXIS = (2, 1, 0)
_CANONICAL_RAS_SIGN = (1.0, -1.0, -1.0)
_BOX_TOLERANCE = 1e-6  # voxels; a box face within this of a voxel boundary counts as on it


@dataclass(frozen=True)
class CanonicalView:
    """Axis permutation and flips (no resampling) presenting a KJI volume as axial slices `[s, r, c]`.

    `permutation[a]` is the KJI array axis shown along canonical axis `a` (0 = slice, 1 = row, 2 = column);
    `flips[a]` says that the canonical index runs against that array axis. Canonical voxel `[s, r, c]` has
    the homogeneous index column `(c, r, s, 1)` (like KJI arrays and IJK indices), which `src_to_ijk` and
    `src_to_ras` map to IJK and to RAS millimetres. Build it with `canonical_view(volume)`.
    """

    permutation: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    shape_kji: tuple[int, int, int]
    ijk_to_ras: tuple[tuple[float, float, float, float], ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Canonical array shape (S, R, C): slices, rows, columns."""
        return tuple(self.shape_kji[axis] for axis in self.permutation)  # type: ignore[return-value]

    @property
    def pixel_spacing(self) -> tuple[float, float, float]:
        """Voxel size (slice_mm, row_mm, col_mm); anisotropic spacing is kept since nothing is resampled."""
        spacing_ijk = np.linalg.norm(np.asarray(self.ijk_to_ras)[:3, :3], axis=0)
        return tuple(float(spacing_ijk[2 - axis]) for axis in self.permutation)  # type: ignore[return-value]

    def apply(self, array_kji: np.ndarray) -> np.ndarray:
        """The (S, R, C) canonical array of a KJI array of the volume's shape; a view, not a copy.

        Copy it (`np.ascontiguousarray`) before writing to it or handing it to torch (negative strides).
        """
        if tuple(np.shape(array_kji)) != self.shape_kji:
            raise InputError(f"array of shape {np.shape(array_kji)} does not match the volume's grid {self.shape_kji}")
        return _flip(np.transpose(array_kji, self.permutation), self.flips)

    def invert(self, array_src: np.ndarray) -> np.ndarray:
        """The KJI array on the volume's grid of an (S, R, C) canonical array; `invert(apply(a))` equals `a`."""
        if tuple(np.shape(array_src)) != self.shape:
            raise InputError(f"array of shape {np.shape(array_src)} does not match the canonical shape {self.shape}")
        return np.transpose(_flip(np.asarray(array_src), self.flips), np.argsort(self.permutation))

    @property
    def src_to_ijk(self) -> np.ndarray:
        """4x4 integer-valued matrix mapping canonical `(c, r, s, 1)` to `(i, j, k, 1)`."""
        matrix = np.zeros((4, 4))
        matrix[3, 3] = 1.0
        for axis, (array_axis, flipped) in enumerate(zip(self.permutation, self.flips, strict=True)):
            ijk_axis, src_column = 2 - array_axis, 2 - axis
            matrix[ijk_axis, src_column] = -1.0 if flipped else 1.0
            matrix[ijk_axis, 3] = self.shape_kji[array_axis] - 1.0 if flipped else 0.0
        return matrix

    @property
    def src_to_ras(self) -> np.ndarray:
        """4x4 matrix mapping canonical `(c, r, s, 1)` to RAS millimetres (voxel centres)."""
        return np.asarray(self.ijk_to_ras) @ self.src_to_ijk

    def ijk_of(self, s: int, r: int, c: int) -> tuple[int, int, int]:
        """IJK index `(i, j, k)` of canonical voxel `[s, r, c]` (so `array_kji[k, j, i]` is that voxel)."""
        i, j, k = (self.src_to_ijk @ np.array([c, r, s, 1.0]))[:3]
        return round(i), round(j), round(k)


def _flip(array: np.ndarray, flips: tuple[bool, bool, bool]) -> np.ndarray:
    """`array` reversed along the axes marked in `flips` (a view)."""
    return array[tuple(slice(None, None, -1) if flipped else slice(None) for flipped in flips)]


def _nearest_ras_axes(directions_ras: np.ndarray) -> tuple[int, ...]:
    """RAS axis assigned to each of the i, j, k axes: the permutation with the largest summed |direction cosine|.

    Picking each axis's largest cosine on its own can give two axes the same RAS axis on a strongly oblique
    volume; maximising over the six permutations gives every RAS axis exactly one voxel axis (ties resolved
    in a fixed order, so the result is deterministic).
    """
    cosines = np.abs(directions_ras)  # [ras axis, ijk axis]
    return max(itertools.permutations(range(3)), key=lambda ras: sum(cosines[ras[a], a] for a in range(3)))


def canonical_view(volume: Volume) -> CanonicalView:
    """The axial, anterior-up, patient-right-on-the-left view of `volume` (axis permutation and flips only).

    Every voxel axis is matched to the RAS axis it is nearest to (an oblique volume is shown along its
    nearest axes, not resampled). Training and inference both take slices through this one function.
    """
    if np.ndim(volume.array) != 3:
        raise InputError(f"the image has {np.ndim(volume.array)} dimensions; AutoMedSAM needs a 3D volume")
    matrix = np.asarray(volume.ijk_to_ras, dtype=float)
    _check_geometry(matrix)
    directions = volume.directions_ras
    permutation, flips = [0, 0, 0], [False, False, False]
    for ijk_axis, ras_axis in enumerate(_nearest_ras_axes(directions)):
        axis = _CANONICAL_RAS_AXIS.index(ras_axis)
        permutation[axis] = 2 - ijk_axis
        flips[axis] = bool(directions[ras_axis, ijk_axis] * _CANONICAL_RAS_SIGN[axis] < 0)
    return CanonicalView(tuple(permutation), tuple(flips), tuple(int(n) for n in volume.array.shape),  # type: ignore[arg-type]
                         tuple(tuple(float(x) for x in row) for row in matrix))  # type: ignore[arg-type]


def ras_box_to_canonical(
    view_or_volume: CanonicalView | Volume,
    corner0_ras: tuple[float, float, float] | np.ndarray,
    corner1_ras: tuple[float, float, float] | np.ndarray,
) -> tuple[int, int, int, int, int, int]:
    """Canonical voxel ranges `(slice_lo, slice_hi, row_lo, row_hi, col_lo, col_hi)` (inclusive) of a RAS box.

    The box is given by two opposite corners in RAS millimetres (any order). A voxel is inside when its extent
    overlaps the box (a flat box through voxel centres selects that one slice); on an oblique volume the
    ranges cover the box's bounding box in voxel space. Ranges are clipped to the volume; `InputError` if the
    box misses the volume entirely.
    """
    view = view_or_volume if isinstance(view_or_volume, CanonicalView) else canonical_view(view_or_volume)
    corners = np.array([corner0_ras, corner1_ras], dtype=float)
    if corners.shape != (2, 3) or not np.all(np.isfinite(corners)):
        raise InputError(f"a box needs two finite RAS corners of 3 coordinates each (mm); got {corners.tolist()}")
    box = np.array(list(itertools.product(*corners.T)))  # the 8 corners, (8, 3) RAS mm
    crs = (np.linalg.inv(view.src_to_ras) @ np.c_[box, np.ones(8)].T)[:3].T  # continuous (c, r, s)
    ranges: list[int] = []
    for axis, size in enumerate(view.shape):
        lo = int(np.floor(crs[:, 2 - axis].min() + 0.5 + _BOX_TOLERANCE))
        hi = max(int(np.ceil(crs[:, 2 - axis].max() - 0.5 - _BOX_TOLERANCE)), lo)
        if hi < 0 or lo > size - 1:
            raise InputError(
                f"the box from RAS {_point_text(corners[0])} to {_point_text(corners[1])} mm does not "
                f"intersect the volume, which spans {_ras_extent_text(view)}; give the corners in RAS "
                "millimetres as Slicer shows them (not LPS, not voxel indices)")
        ranges += [max(lo, 0), min(hi, size - 1)]
    return tuple(ranges)  # type: ignore[return-value]


def _point_text(point: np.ndarray) -> str:
    """`(x, y, z)` with one decimal, for error messages."""
    return "(" + ", ".join(f"{float(x):.1f}" for x in point) + ")"


def _ras_extent_text(view: CanonicalView) -> str:
    """The volume's RAS bounding box (voxel edges, mm) as text for error messages."""
    edges = [(-0.5, n - 0.5) for n in view.shape[::-1]]  # (c, r, s)
    points = np.array([[*p, 1.0] for p in itertools.product(*edges)])
    ras = (view.src_to_ras @ points.T)[:3]
    return ", ".join(f"{name} {lo:.1f}..{hi:.1f}" for name, lo, hi in zip("RAS", ras.min(1), ras.max(1), strict=True))
