"""Refinement geometry: the RAS point picks the same physical slice and voxels whatever the storage order."""

from __future__ import annotations

import numpy as np
import pytest
from engine_fakes import FakeModel, back_to_reference, phantom, reorient

from automedsam.engine import EngineOptions, RasBox
from automedsam.errors import InputError
from automedsam.refine import RasPoint, Refinement, RefineOptions, locate, refine
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


def test_a_thick_box_is_taken_on_its_middle_slice_and_a_thin_one_is_required_otherwise():
    """A markups ROI drawn in a slice view has a depth: the module passes `thick_box`; the CLI asks for one slice."""
    view = canonical_view(phantom())
    thick = Refinement("liver", box=RasBox((20, -10, 36), (40, 4, 48)))       # S 36..48 mm: slices k 2..6
    assert locate(view, thick, thick_box=True).slice_index == 4
    with pytest.raises(InputError, match="spans 5 slices"):
        locate(view, thick)
    with_point = Refinement("liver", (RasPoint(LIVER_RAS),), thick.box)
    assert locate(view, with_point, thick_box=True).slice_index == 5


def test_propagation_stops_before_a_slice_edited_by_hand():
    """The liver is missing on k 3..6; refined on k 5 and carried, propagation goes up and stops going down at k 4,
    which the user edited by hand (protected): k 4 and everything below keep the user's voxels."""
    volume = phantom()
    model = FakeModel()
    liver = (volume.array == 100).astype(np.uint8)
    labels = liver.copy()
    labels[3:7] = 0
    labels[4, 10:12, 10:12] = 1              # the user's own stroke on k 4
    refinement = Refinement("liver", (RasPoint(LIVER_RAS),))
    result = refine(volume, labels, 1, refinement, model, model.class_index("liver"), EngineOptions(device="cpu"),
                    RefineOptions(propagate=True, protected={4}))
    assert min(result.slices) == 5 and 6 in result.slices
    assert "edited by hand" in result.stops["inferior"] and "S = 42.0 mm" in result.stops["inferior"]
    assert np.array_equal(result.labels[:5], labels[:5])
    assert np.array_equal(result.labels[5] == 1, liver[5] == 1)
    unprotected = refine(volume, labels, 1, refinement, model, model.class_index("liver"),
                         EngineOptions(device="cpu"), RefineOptions(propagate=True))
    assert 4 in unprotected.slices and 3 in unprotected.slices


def test_a_slices_class_prompt_is_made_once_for_its_clicks_and_only_the_last_few_are_kept():
    from automedsam.refine import SliceDecoder, SlicePrompts

    volume, model = phantom(), FakeModel()
    decoder = SliceDecoder(volume, model, EngineOptions(device="cpu"))
    click = SlicePrompts(5, ((20, 14, True),), None)
    first, _ = decoder.decode(5, model.class_index("liver"), click)
    again, _ = decoder.decode(5, model.class_index("liver"), SlicePrompts(5, ((21, 14, True),), None))
    assert model.class_prompts_made == 1 and np.array_equal(first, again)
    decoder.decode(5, None, click)                                         # no class: no class prompt
    assert model.class_prompts_made == 1
    for s in range(volume.array.shape[0]):
        decoder.decode(s, model.class_index("liver"), SlicePrompts(s, ((20, 14, True),), None))
    assert model.class_prompts_made == volume.array.shape[0]               # slice 5's prompt was still kept
    assert len(decoder.class_prompts) == SliceDecoder.CLASS_PROMPTS_KEPT
    decoder.decode(0, model.class_index("liver"), SlicePrompts(0, ((20, 14, True),), None))
    assert model.class_prompts_made == volume.array.shape[0] + 1           # slice 0's had been dropped
