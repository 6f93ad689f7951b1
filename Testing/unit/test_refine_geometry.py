"""Refinement geometry: the RAS point picks the same physical slice and voxels whatever the storage order."""

from __future__ import annotations

import numpy as np
import pytest
from engine_fakes import FakeModel, back_to_reference, phantom, reorient

from automedsam.engine import EngineOptions, RasBox
from automedsam.errors import InputError
from automedsam.refine import RasPoint, Refinement, locate, refine
from automedsam.volume import canonical_view

LIVER_RAS = (31.0, -3.2 + 6 * 1.2, 30.0 + 5 * 3.0)   # i 14, j 20, k 5 of the (12, 40, 48) phantom


def _refined(volume, labels):
    model = FakeModel()
    refinement = Refinement("liver", (RasPoint(LIVER_RAS),))
    return refine(volume, labels, 1, refinement, model, model.class_index("liver"), EngineOptions(device="cpu"))


@pytest.mark.parametrize(("perm", "flips"), [((0, 1, 2), (True, False, False)), ((2, 0, 1), (True, False, True)),
                                             ((1, 2, 0), (False, True, True))])
def test_a_flipped_or_permuted_volume_refines_the_same_physical_voxels(perm, flips):
    volume = phantom()
    labels = np.zeros(volume.array.shape, dtype=np.uint8)
    labels[0, 0, 0] = 2   # another segment: stays
    straight = _refined(volume, labels)
    moved = reorient(volume, perm, flips)
    turned = _refined(moved, reorient(volume.with_array(labels), perm, flips).array)
    back = back_to_reference(turned.labels, perm, flips)
    assert np.array_equal(back, straight.labels)
    assert np.array_equal(np.flatnonzero((straight.labels == 1).any(axis=(1, 2))), [5])   # only slice k = 5
    assert straight.labels[0, 0, 0] == 2 and straight.labels.dtype == np.uint8


def test_the_slice_is_the_one_pointed_at():
    volume = phantom()
    view = canonical_view(volume)
    prompts = locate(view, Refinement("liver", (RasPoint(LIVER_RAS),), RasBox((20, -10, 45), (40, 4, 45))))
    assert prompts.slice_index == 5
    s, r, c = prompts.slice_index, prompts.points[0][0], prompts.points[0][1]
    assert view.ijk_of(s, r, c) == (14, 20, 5)


def test_a_voxel_edge_is_inside_and_beyond_it_is_not():
    volume = phantom()
    view = canonical_view(volume)
    edge = (10.0 - 0.75 + 1e-6, 0.0, 45.0)   # half a voxel left of i = 0's centre
    assert locate(view, Refinement("liver", (RasPoint(edge),))).points
    with pytest.raises(InputError, match="outside the volume"):
        locate(view, Refinement("liver", (RasPoint((10.0 - 0.75 - 1e-3, 0.0, 45.0)),)))
