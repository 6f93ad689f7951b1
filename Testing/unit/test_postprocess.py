"""Post-processing on small synthetic label maps: largest component, 3D hole filling, per-class rules."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from automedsam.errors import InputError
from automedsam.postprocess import fill_holes, largest_component, postprocess_labels


def _ball(shape: tuple[int, int, int], centre: tuple[float, float, float], radius: float) -> np.ndarray:
    grid = np.indices(shape).transpose(1, 2, 3, 0)
    return np.linalg.norm(grid - np.array(centre), axis=-1) <= radius


# ------------------------------------------------------------------------------------------- components
def test_largest_component_keeps_the_biggest_piece_only() -> None:
    mask = _ball((20, 20, 20), (6, 6, 6), 4) | _ball((20, 20, 20), (15, 15, 15), 2.5)
    mask[0, 19, 0] = True
    kept = largest_component(mask)
    assert kept.dtype == bool
    assert np.array_equal(kept, _ball((20, 20, 20), (6, 6, 6), 4))


def test_components_touching_at_a_corner_are_one_26_connected_piece() -> None:
    """A thin oblique structure touching the next slice only at a corner must not be cut off."""
    mask = np.zeros((6, 6, 6), dtype=bool)
    mask[1, 1:4, 1:4] = True  # 9 voxels on slice 1
    mask[2, 4, 4] = True      # touches (1, 3, 3) only by a corner
    mask[3, 5, 5] = True
    assert np.array_equal(largest_component(mask), mask)
    mask[4, 0, 0] = True      # a truly separate voxel is dropped
    assert not largest_component(mask)[4, 0, 0] and largest_component(mask).sum() == 11


def test_largest_component_of_an_empty_or_single_piece_mask() -> None:
    assert not largest_component(np.zeros((3, 4, 5))).any()
    single = _ball((9, 9, 9), (4, 4, 4), 3)
    assert np.array_equal(largest_component(single.astype(np.uint8)), single)
    with pytest.raises(InputError, match="3D"):
        largest_component(np.ones((4, 4)))


# ------------------------------------------------------------------------------------------- holes
def test_sealed_cavity_is_filled_in_3d() -> None:
    organ = _ball((24, 24, 24), (12, 12, 12), 9)
    cavity = _ball((24, 24, 24), (12, 12, 12), 3)
    filled = fill_holes(organ & ~cavity)
    assert np.array_equal(filled, organ)


def test_vessel_running_through_an_organ_is_not_filled() -> None:
    """A channel open at both ends is enclosed in every axial slice, yet it is not a hole in 3D."""
    organ = _ball((24, 24, 24), (12, 12, 12), 9)
    vessel = np.zeros_like(organ)
    vessel[:, 11:14, 11:14] = True  # runs along the slice axis through the whole organ
    mask = organ & ~vessel
    assert all(ndimage.binary_fill_holes(mask[k])[12, 12] for k in range(8, 17)), "enclosed in 2D slices"
    assert np.array_equal(fill_holes(mask), mask)


def test_fill_holes_matches_scipy_binary_fill_holes() -> None:
    """Random masks, touching the volume border and not (the bounding-box shortcut must not change anything)."""
    rng = np.random.default_rng(0)
    for threshold in (0.2, 0.4, 0.6):
        inner = rng.random((16, 18, 20)) > threshold
        for mask in (inner, np.pad(inner, ((3, 1), (0, 2), (5, 5)))):
            filled = fill_holes(mask)
            np.testing.assert_array_equal(filled, ndimage.binary_fill_holes(mask))
            assert filled.sum() > mask.sum(), "the random mask should have some holes to fill"


def test_cavity_open_at_the_volume_border_is_not_filled() -> None:
    box = np.zeros((8, 8, 8), dtype=bool)
    box[0:6, 1:7, 1:7] = True
    box[0:4, 3:5, 3:5] = False  # a pit reaching slice 0, the border of the volume
    assert np.array_equal(fill_holes(box), box)


# ------------------------------------------------------------------------------------------- label maps
def _label_map() -> np.ndarray:
    labels = np.zeros((30, 30, 30), dtype=np.uint16)
    labels[_ball(labels.shape, (10, 10, 10), 6)] = 5                              # organ with a cavity
    labels[_ball(labels.shape, (10, 10, 10), 2)] = 0
    labels[_ball(labels.shape, (25, 25, 25), 2)] = 5                              # a stray piece of class 5
    labels[_ball(labels.shape, (10, 24, 5), 3) | _ball(labels.shape, (22, 24, 5), 3)] = 27  # two-piece class
    labels[_ball(labels.shape, (22, 8, 22), 3)] = 9                               # not listed: untouched
    return labels


def test_postprocess_labels_cleans_each_listed_class() -> None:
    labels = _label_map()
    before = labels.copy()
    cleaned = postprocess_labels(labels, [5, 27], multi_component_ok={27})
    assert np.array_equal(labels, before), "the input is not modified"
    assert cleaned.dtype == np.uint16
    assert np.array_equal(cleaned == 5, _ball(labels.shape, (10, 10, 10), 6)), "stray dropped, cavity filled"
    assert np.array_equal(cleaned == 27, before == 27), "a multi-component class keeps its pieces"
    assert np.array_equal(cleaned == 9, before == 9)
    without_exception = postprocess_labels(labels, [5, 27])
    assert ndimage.label(without_exception == 27)[1] == 1


def test_flags_switch_each_step_off() -> None:
    labels = _label_map()
    only_fill = postprocess_labels(labels, [5], largest=False)
    assert only_fill[25, 25, 25] == 5 and only_fill[10, 10, 10] == 5
    only_largest = postprocess_labels(labels, [5], fill=False)
    assert only_largest[25, 25, 25] == 0 and only_largest[10, 10, 10] == 0
    assert np.array_equal(postprocess_labels(labels, [5], largest=False, fill=False), labels)


def test_holes_are_not_filled_over_another_class() -> None:
    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    labels[_ball(labels.shape, (10, 10, 10), 7)] = 5
    labels[_ball(labels.shape, (10, 10, 10), 3)] = 0
    labels[_ball(labels.shape, (10, 10, 10), 1.5)] = 7  # a lesion inside the cavity, kept as it is
    cleaned = postprocess_labels(labels, [5, 7])
    assert np.array_equal(cleaned == 7, labels == 7)
    assert np.array_equal(cleaned == 5, _ball(labels.shape, (10, 10, 10), 7) & (labels != 7))


def test_absent_classes_and_bad_input() -> None:
    labels = _label_map()
    assert np.array_equal(postprocess_labels(labels, [3, 200]), labels)
    with pytest.raises(InputError, match="positive"):
        postprocess_labels(labels, [0, 5])
    with pytest.raises(InputError, match="3D integer label map"):
        postprocess_labels(labels.astype(np.float32), [5])
    with pytest.raises(InputError, match="negative"):
        postprocess_labels(labels.astype(np.int16) - 1, [5])
