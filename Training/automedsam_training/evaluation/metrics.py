"""3D Dice and normalised surface Dice (NSD) on anisotropic voxel grids.

NSD at tolerance tau (Nikolov et al. 2021, the MedSAM challenge metric): the fraction of both surfaces lying within
tau millimetres of the other surface, (|S_p within tau of S_r| + |S_r within tau of S_p|) / (|S_p| + |S_r|). A mask's
surface is its voxels with at least one 6-neighbour outside the mask (the volume border counts as outside); distances
between surface voxel centres come from Euclidean distance transforms with the voxel spacing. Conventions: both masks
empty -> NaN (nothing to score); exactly one empty -> 0.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from automedsam.errors import InputError
from automedsam.metrics import dice

_FACES = ndimage.generate_binary_structure(3, 1)


def dice_score(prediction: np.ndarray, reference: np.ndarray) -> float:
    """`automedsam.metrics.dice` of two masks of one shape (NaN when both are empty)."""
    return dice(*_masks(prediction, reference))


def surface(mask: np.ndarray) -> np.ndarray:
    """Boolean surface voxels of a 3D mask: in the mask with a face neighbour outside it (or on the border)."""
    mask = np.asarray(mask, dtype=bool)
    eroded = ndimage.binary_erosion(mask, structure=_FACES, border_value=0)
    return mask & ~eroded


def surface_distances(source: np.ndarray, target: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Distance (mm) from each surface voxel of `source` to the nearest surface voxel of `target` (non-empty)."""
    to_target = ndimage.distance_transform_edt(~surface(target), sampling=spacing)
    return to_target[surface(source)]


def normalized_surface_dice(prediction: np.ndarray, reference: np.ndarray, spacing: tuple[float, float, float],
                            tolerance_mm: float = 2.0) -> float:
    """NSD of two masks on a grid with voxel `spacing` (mm, per array axis); NaN when both are empty."""
    prediction, reference = _masks(prediction, reference)
    if not prediction.any() and not reference.any():
        return float("nan")
    if not prediction.any() or not reference.any():
        return 0.0
    from_prediction = surface_distances(prediction, reference, spacing)
    from_reference = surface_distances(reference, prediction, spacing)
    within = int((from_prediction <= tolerance_mm).sum()) + int((from_reference <= tolerance_mm).sum())
    return within / (from_prediction.size + from_reference.size)


def _masks(prediction: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    prediction, reference = np.asarray(prediction, dtype=bool), np.asarray(reference, dtype=bool)
    if prediction.shape != reference.shape or prediction.ndim != 3:
        raise InputError(f"masks must be 3D and of one shape; got {prediction.shape} and {reference.shape}")
    return prediction, reference
