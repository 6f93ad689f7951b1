"""The module's refinement on the real MRML scene (`slicer-core`): markups points and ROI -> one segment corrected on
one slice and carried on, never into slices edited by hand, one undo step each, the cache reused, bad input refused.

The model is `engine_fakes.FakeModel` on the phantom (liver at k 2..8, j 8..20, i 6..22; spacing 1.5 x 1.2 x 3 mm,
origin RAS (10, -20, 30)): a point prompt gives the liver's intensity band, a box 'inside the box and not air'.
"""

from __future__ import annotations

import numpy as np
import pytest
from engine_fakes import phantom

slicer = pytest.importorskip("slicer")
from mrml_state import node_state, tag  # noqa: E402 (needs slicer)

from automedsam.errors import InputError  # noqa: E402
from automedsam.slicer import bridge, edit_record  # noqa: E402
from automedsam.slicer.logic import SceneSegmenter  # noqa: E402
from automedsam.slicer.refinement import RefinementRequest, SceneRefiner  # noqa: E402
from automedsam.slicer.request import SegmentationRequest, refinable_classes  # noqa: E402
from automedsam.volume import canonical_view  # noqa: E402

pytestmark = pytest.mark.slicer
LIVER_POINT = (31.0, 4.0, 45.0)          # i 14, j 20, k 5
LIVER = phantom().array == 100


@pytest.fixture
def saved_states() -> list:
    return []


@pytest.fixture
def refiner(logic: SceneSegmenter, saved_states: list) -> SceneRefiner:
    return SceneRefiner(logic, save_editor_state=saved_states.append)


@pytest.fixture
def segmented(scene, ct_node, logic):
    """Liver and spleen segmented, then the liver missing on k 3..6 as if the model had missed it there (the record
    says the run wrote it so)."""
    node = logic.run(SegmentationRequest(ct_node, ("liver",), device="cpu")).segmentation_node
    missed = LIVER.copy()
    missed[3:7] = False
    _set(node, "liver", missed, ct_node)
    edit_record.record(node.GetSegmentation().GetSegment("liver"), missed, canonical_view(phantom()))
    return node


def _set(node, segment_id: str, mask: np.ndarray, volume_node) -> None:
    bridge.replace_segment_mask(node, segment_id, mask, volume_node)


def _mask(node, segment_id: str, volume_node) -> np.ndarray:
    return bridge.segment_mask(node, segment_id, volume_node)


def _points(scene, *positions, name: str = "plus"):
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    for position in positions:
        node.AddControlPoint(list(position))
    return node


def _request(ct_node, node, **markups) -> RefinementRequest:
    return RefinementRequest(ct_node, node, "liver", device="cpu", **markups)


def test_a_point_restores_the_slice_and_propagation_the_neighbours(scene, ct_node, segmented, refiner, model):
    """The point's slice gets the class mask; propagation (box prompts, which the fake answers with 'not air in the
    box') fills the missed slices around it and reports every slice it changed; nothing else changes."""
    before = _mask(segmented, "liver", ct_node)
    encoded = model.encoded_slices
    outcome = refiner.refine(_request(ct_node, segmented, positive_points=_points(scene, LIVER_POINT),
                                      propagate=True))
    after = _mask(segmented, "liver", ct_node)
    assert {3, 4, 5, 6} <= set(outcome.slices) and outcome.slices == list(range(outcome.slices[0],
                                                                                 outcome.slices[-1] + 1))
    assert outcome.positions == [30.0 + 3.0 * s for s in outcome.slices]
    assert np.array_equal(after[5], LIVER[5]) and all(after[s].any() for s in (3, 4, 6))
    untouched = [s for s in range(after.shape[0]) if s not in outcome.slices]
    assert np.array_equal(after[untouched], before[untouched])
    assert set(outcome.stops) == {"superior", "inferior"}
    assert model.encoded_slices == encoded           # the run's embeddings were reused: no encoder pass
    assert f"Liver refined on {len(outcome.slices)} slices" in outcome.summary()
    assert edit_record.edited_slices(segmented.GetSegmentation().GetSegment("liver"), after,
                                     canonical_view(phantom())) == set()


def test_without_propagation_only_the_pointed_slice_changes(scene, ct_node, segmented, refiner):
    before = _mask(segmented, "liver", ct_node)
    outcome = refiner.refine(_request(ct_node, segmented, positive_points=_points(scene, LIVER_POINT)))
    after = _mask(segmented, "liver", ct_node)
    assert outcome.slices == [5] and outcome.stops == {}
    changed = np.flatnonzero((after != before).any(axis=(1, 2)))
    assert changed.tolist() == [5] and np.array_equal(after[5], LIVER[5])


def test_propagation_never_enters_a_slice_edited_by_hand(scene, ct_node, segmented, refiner):
    edited = _mask(segmented, "liver", ct_node)
    edited[4, 10:12, 10:14] = True                   # the user's stroke on k 4, made in Segment Editor
    _set(segmented, "liver", edited, ct_node)
    outcome = refiner.refine(_request(ct_node, segmented, positive_points=_points(scene, LIVER_POINT),
                                      propagate=True))
    after = _mask(segmented, "liver", ct_node)
    assert outcome.slices[0] == 5 and 6 in outcome.slices
    assert "edited by hand" in outcome.stops["inferior"] and "S = 42.0 mm" in outcome.stops["inferior"]
    assert np.array_equal(after[:5], edited[:5])


def test_the_refined_slice_itself_is_the_users_choice_even_if_edited(scene, ct_node, segmented, refiner):
    edited = _mask(segmented, "liver", ct_node)
    edited[5, 30:32, 30:32] = True
    _set(segmented, "liver", edited, ct_node)
    refiner.refine(_request(ct_node, segmented, positive_points=_points(scene, LIVER_POINT)))
    assert np.array_equal(_mask(segmented, "liver", ct_node)[5], LIVER[5])


def test_a_negative_point_removes_and_other_segments_are_never_taken(scene, ct_node, logic, refiner):
    node = logic.run(SegmentationRequest(ct_node, ("liver", "spleen"), device="cpu")).segmentation_node
    spleen = _mask(node, "spleen", ct_node)
    minus = _points(scene, (31.0, 4.0, 45.0), name="minus")
    box = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    box.SetXYZ(40.0, 0.0, 45.0)
    box.SetRadiusXYZ(40.0, 30.0, 1.0)                # covers liver and spleen on k 5
    refiner.refine(_request(ct_node, node, negative_points=minus, roi_node=box))
    liver = _mask(node, "liver", ct_node)
    assert liver[5].sum() > 100 and not liver[5, 19:22, 13:16].any()   # cleared around the minus point
    assert not (liver & spleen).any() and np.array_equal(_mask(node, "spleen", ct_node), spleen)


def test_points_placed_under_a_transform_land_on_the_physical_slice(scene, ct_node, segmented, refiner):
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = bridge.vtk_matrix(np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 100.0], [0, 0, 0, 1]]))
    transform.SetMatrixTransformToParent(shift)
    ct_node.SetAndObserveTransformNodeID(transform.GetID())
    segmented.SetAndObserveTransformNodeID(transform.GetID())
    world = (LIVER_POINT[0], LIVER_POINT[1], LIVER_POINT[2] + 100.0)
    outcome = refiner.refine(_request(ct_node, segmented, positive_points=_points(scene, world)))
    assert outcome.slices == [5] and np.array_equal(_mask(segmented, "liver", ct_node)[5], LIVER[5])


def test_each_refinement_is_one_undo_step(scene, ct_node, segmented, refiner, saved_states):
    start = _mask(segmented, "liver", ct_node)
    record = edit_record.slice_digests(start, canonical_view(phantom()))
    refiner.refine(_request(ct_node, segmented, positive_points=_points(scene, LIVER_POINT), propagate=True))
    middle = _mask(segmented, "liver", ct_node)
    refiner.refine(_request(ct_node, segmented, negative_points=_points(scene, LIVER_POINT, name="minus")))
    assert saved_states == [segmented, segmented]    # the Segment Editor's undo state, once per refinement
    refiner.undo(segmented, ct_node)
    assert np.array_equal(_mask(segmented, "liver", ct_node), middle)
    assert "Undid the refinement of Liver" in refiner.undo(segmented, ct_node)
    assert np.array_equal(_mask(segmented, "liver", ct_node), start)
    liver = segmented.GetSegmentation().GetSegment("liver")
    assert edit_record.slice_digests(start, canonical_view(phantom())) == record
    assert edit_record.edited_slices(liver, start, canonical_view(phantom())) == set()
    assert not refiner.can_undo(segmented)
    with pytest.raises(InputError, match="no refinement to undo"):
        refiner.undo(segmented, ct_node)


def test_undo_is_refused_after_a_later_edit(scene, ct_node, segmented, refiner):
    refiner.refine(_request(ct_node, segmented, positive_points=_points(scene, LIVER_POINT)))
    edited = _mask(segmented, "liver", ct_node)
    edited[0, 0:2, 0:2] = True
    _set(segmented, "liver", edited, ct_node)
    with pytest.raises(InputError, match="edited after the refinement"):
        refiner.undo(segmented, ct_node)
    assert np.array_equal(_mask(segmented, "liver", ct_node), edited) and refiner.can_undo(segmented)


def test_a_class_of_the_model_without_a_segment_gets_one_and_undo_removes_it(scene, ct_node, segmented, refiner):
    box = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    box.SetXYZ(43.0, 7.0, 45.0)
    box.SetRadiusXYZ(8.0, 7.0, 0.0)
    outcome = refiner.refine(RefinementRequest(ct_node, segmented, "Spleen", roi_node=box, device="cpu"))
    spleen = segmented.GetSegmentation().GetSegment(outcome.segment_id)
    assert outcome.created and spleen.GetName() == "Spleen" and outcome.slices == [5]
    assert tag(spleen, "AutoMedSAM.ClassKey") == "spleen" and tag(spleen, "Segmentation.Status") == "inprogress"
    assert _mask(segmented, outcome.segment_id, ct_node)[5].sum() > 0
    refiner.undo(segmented, ct_node)
    assert segmented.GetSegmentation().GetSegment(outcome.segment_id) is None


def test_bad_requests_are_refused_and_change_nothing(scene, ct_node, segmented, refiner):
    before = node_state(segmented, ct_node)
    point = _points(scene, LIVER_POINT)
    cases = [
        (RefinementRequest(ct_node, segmented, "aorta", positive_points=point), "neither a segment"),
        (RefinementRequest(ct_node, segmented, "no such organ", positive_points=point), "no such organ"),
        (RefinementRequest(ct_node, segmented, "liver"), "Place a point"),
        (RefinementRequest(ct_node, None, "liver", positive_points=point), "Select the output segmentation"),
        (RefinementRequest(ct_node, segmented, "liver", positive_points=_points(scene, (500.0, 0.0, 45.0))),
         "outside the volume"),
        (RefinementRequest(ct_node, segmented, "liver", positive_points=_points(scene, LIVER_POINT, (31.0, 4.0, 39.0))),
         "different slices"),
    ]
    for request, message in cases:
        with pytest.raises(InputError, match=message):
            refiner.refine(request)
    segmented.GetSegmentation().GetSegment("liver").SetTag("Segmentation.Status", "completed")
    with pytest.raises(InputError, match="Completed"):
        refiner.refine(RefinementRequest(ct_node, segmented, "liver", positive_points=point))
    segmented.GetSegmentation().GetSegment("liver").SetTag("Segmentation.Status", "inprogress")
    assert node_state(segmented, ct_node) == before


def test_a_run_records_what_it_wrote_and_the_class_list_offers_segments_then_model_classes(scene, ct_node, logic):
    node = logic.run(SegmentationRequest(ct_node, ("liver",), device="cpu")).segmentation_node
    liver = node.GetSegmentation().GetSegment("liver")
    view = canonical_view(phantom())
    assert edit_record.edited_slices(liver, _mask(node, "liver", ct_node), view) == set()
    edited = _mask(node, "liver", ct_node)
    edited[7, 0:3, 0:3] = True
    assert edit_record.edited_slices(liver, edited, view) == {7}
    liver.RemoveTag(edit_record.DIGEST_TAG)          # no record: every slice holding voxels is the user's
    assert edit_record.edited_slices(liver, edited, view) == {2, 3, 4, 5, 6, 7, 8}
    liver.SetName("Liver (checked)")
    assert refinable_classes(node, ("liver", "spleen"), logic.catalog) == [("liver", "Liver (checked)"),
                                                                               ("spleen", "Spleen")]
    assert refinable_classes(None, ("spleen",), logic.catalog) == [("spleen", "Spleen")]


def test_clicks_on_the_same_volume_reuse_the_normalised_volume(scene, ct_node, segmented, refiner, monkeypatch):
    """A second refinement does not normalise (and hash) the volume again; changed voxels or another volume do."""
    from automedsam.slicer import refinement

    made = []
    real = refinement.SliceDecoder
    monkeypatch.setattr(refinement, "SliceDecoder", lambda *args, **kwargs: made.append(1) or real(*args, **kwargs))
    point = _points(scene, LIVER_POINT)
    refiner.refine(_request(ct_node, segmented, positive_points=point))
    refiner.refine(_request(ct_node, segmented, negative_points=_points(scene, LIVER_POINT, name="minus")))
    assert len(made) == 1
    ct_node.GetImageData().Modified()
    refiner.refine(_request(ct_node, segmented, positive_points=point))
    assert len(made) == 2


def test_a_review_jump_prepares_the_slice_so_the_first_click_makes_no_class_prompt(scene, ct_node, segmented,
                                                                                   refiner, model):
    """The module calls `prepare_at` when the user jumps to a (segment, slice) from the review table: the class
    prompt of that slice is made then, and the click that follows reuses it; nothing in the segmentation changes."""
    before = _mask(segmented, "liver", ct_node)
    made = getattr(model, "class_prompts_made", 0)
    assert refiner.prepare_at(ct_node, "liver", LIVER_POINT, device="cpu")
    assert model.class_prompts_made == made + 1
    assert np.array_equal(_mask(segmented, "liver", ct_node), before)
    refiner.refine(_request(ct_node, segmented, positive_points=_points(scene, LIVER_POINT)))
    assert model.class_prompts_made == made + 1                            # the click made none
    assert not refiner.prepare_at(ct_node, "liver", (500.0, 0.0, 45.0), device="cpu")     # outside the volume
    assert not refiner.prepare_at(ct_node, "no such organ", LIVER_POINT, device="cpu")
    assert not refiner.prepare_at(None, "liver", LIVER_POINT, device="cpu")
    assert model.class_prompts_made == made + 1


def test_a_placed_prompt_prepares_its_slice_before_refine_is_pressed(scene, ct_node, segmented, refiner, model):
    """The module calls `prepare` on every placed point or box: the slice of the prompts (here k 5) gets its class
    prompt then, so Refine runs the mask decoder only; prompts on two slices or none prepare nothing."""
    made = getattr(model, "class_prompts_made", 0)
    assert not refiner.prepare(_request(ct_node, segmented))                              # no prompt yet
    request = _request(ct_node, segmented, positive_points=_points(scene, LIVER_POINT))
    assert refiner.prepare(request) and model.class_prompts_made == made + 1
    assert refiner.refine(request).slices == [5] and model.class_prompts_made == made + 1
    two_slices = _points(scene, LIVER_POINT, (31.0, 4.0, 51.0))
    assert not refiner.prepare(_request(ct_node, segmented, positive_points=two_slices))
    assert model.class_prompts_made == made + 1
