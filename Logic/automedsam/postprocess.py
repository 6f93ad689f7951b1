"""3D clean-up of label maps: keep each organ's largest connected component, fill its enclosed holes.

Choices (the same on any voxel grid, so they work on KJI label maps and canonical arrays alike):
- Components are 26-connected (faces, edges and corners). Slice-by-slice prediction on thick slices leaves
  thin or oblique structures (aorta, ureters, a tapering organ tip) touching the next slice only along an edge
  or a corner; 6-connectivity would cut them and the largest-component step would then delete real organ.
- Holes are filled in 3D (`scipy.ndimage.binary_fill_holes`' rule, background 6-connected, the topological
  partner of a 26-connected object): only cavities sealed on every side are filled. Vessels and ducts that run
  through an organ (IVC and portal vein in the liver, the renal hilum) reach the organ's surface somewhere, so
  they stay unfilled, whereas filling each axial slice in 2D would paint the organ over every vessel that is
  enclosed in one cross-section. Holes are only filled where the label map is background, never over another
  class.
- Work is done inside each class's bounding box, so the cost follows the organ's size, not the volume's.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage

from .errors import InputError

OBJECT_CONNECTIVITY = ndimage.generate_binary_structure(3, 3)      # 26-connected components
BACKGROUND_CONNECTIVITY = ndimage.generate_binary_structure(3, 1)  # 6-connected background (holes)


def _as_mask3d(mask3d: np.ndarray) -> np.ndarray:
    """A 3D mask as booleans (no copy when it already is); `InputError` for other dimensions."""
    mask = np.asarray(mask3d)
    if mask.ndim != 3:
        raise InputError(f"expected a 3D mask; got shape {mask.shape}")
    return mask.astype(bool, copy=False)


def largest_component(mask3d: np.ndarray) -> np.ndarray:
    """Boolean mask of the largest 26-connected component of `mask3d` (empty stays empty).

    The ranking is by voxel count, which on one grid is the ranking by volume in mm³; a tie keeps the
    component met first in array order, so the result is deterministic.
    """
    mask = _as_mask3d(mask3d)
    result = np.zeros(mask.shape, dtype=bool)
    box = _bounding_box(mask)
    if box is None:
        return result
    components, count = ndimage.label(mask[box], structure=OBJECT_CONNECTIVITY)
    if count <= 1:
        result[box] = mask[box]
        return result
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    result[box] = components == int(np.argmax(sizes))
    return result


def fill_holes(mask3d: np.ndarray) -> np.ndarray:
    """Boolean mask with every cavity sealed off in 3D filled (see the module notes for why 3D, not per slice).

    A background region is a hole when it does not reach the mask's bounding box (so it cannot reach the
    volume's border or the outside either); this is `binary_fill_holes`' result, computed by one labelling.
    """
    mask = _as_mask3d(mask3d)
    result = mask.copy()
    box = _bounding_box(mask)
    if box is None:
        return result
    inside = mask[box]
    regions, count = ndimage.label(~inside, structure=BACKGROUND_CONNECTIVITY)
    if count == 0:
        return result
    outside = np.zeros(count + 1, dtype=bool)
    for face in _faces(regions):
        outside[np.unique(face)] = True
    outside[0] = True  # label 0 is the object itself
    result[box] = inside | ~outside[regions]
    return result


def postprocess_labels(
    labels: np.ndarray,
    label_values: Iterable[int],
    largest: bool = True,
    fill: bool = True,
    multi_component_ok: Iterable[int] = frozenset(),
) -> np.ndarray:
    """Clean each listed class of a 3D label map: largest component, then 3D hole filling (a new array).

    `multi_component_ok`: label values whose class is legitimately several pieces (vertebrae as one class,
    colon loops, both lungs in one class); they skip the largest-component step but are still hole-filled.
    Removed voxels become background (0); filled voxels are taken only from background. Values not listed
    are left as they are. Classes are cleaned in the order given.
    """
    result = np.array(labels, copy=True)
    if result.ndim != 3 or not np.issubdtype(result.dtype, np.integer):
        raise InputError(f"expected a 3D integer label map; got shape {result.shape} of type {result.dtype}")
    if result.size and np.issubdtype(result.dtype, np.signedinteger) and result.min() < 0:
        raise InputError("the label map has negative values; label values are 0 (background) or positive")
    values = [int(v) for v in label_values]
    if any(v <= 0 for v in values):
        raise InputError(f"label values {values} must be positive; 0 is the background")
    if not values or not (largest or fill):
        return result
    keep_all = {int(v) for v in multi_component_ok}
    # Boxes found once: cleaning one class never moves another class's voxels outside that class's box.
    boxes = ndimage.find_objects(result, max_label=max(values))
    for value in values:
        box = boxes[value - 1]
        if box is None:
            continue
        region = result[box]  # a view: edits land in `result`
        mask = region == value
        if largest and value not in keep_all:
            kept = largest_component(mask)
            region[mask & ~kept] = 0
            mask = kept
        if fill:
            region[fill_holes(mask) & (region == 0)] = value
    return result


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Slices of the tight bounding box of a 3D boolean mask, None when it is empty."""
    boxes = ndimage.find_objects(mask.astype(np.uint8, copy=False))
    return boxes[0] if boxes else None


def _faces(array: np.ndarray) -> list[np.ndarray]:
    """The six boundary faces of a 3D array (views)."""
    return [array[0], array[-1], array[:, 0], array[:, -1], array[:, :, 0], array[:, :, -1]]
