"""Engine behaviour on a phantom with a transparent stand-in model: geometry, batching, cancel, OOM, cache, ROI."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from engine_fakes import FakeModel, back_to_reference, phantom, reorient

from automedsam import engine
from automedsam.catalog import default_catalog
from automedsam.engine import BoxPrompt, EmbeddingCache, EngineOptions, RasBox, segment, segment_boxes
from automedsam.errors import Cancelled, InputError, ModelError
from automedsam.metrics import dice


def _truth(volume, hu: int) -> np.ndarray:
    return volume.array == hu


def test_class_mode_finds_each_class_with_catalog_labels():
    volume = phantom()
    result = segment(volume, ["liver", "Spleen"], FakeModel())
    catalog = default_catalog()
    assert [s.key for s in result.segments] == ["liver", "spleen"]
    assert [s.label_value for s in result.segments] == [catalog.get("liver").label_value,
                                                       catalog.get("spleen").label_value]
    assert result.labels.shape == volume.array.shape
    assert dice(result.mask("liver"), _truth(volume, 100)) > 0.9
    assert dice(result.mask("spleen"), _truth(volume, 200)) > 0.9
    assert np.array_equal(result.ijk_to_ras, volume.ijk_to_ras)


@pytest.mark.parametrize("perm,flips", [
    ((0, 1, 2), (False, False, False)), ((0, 1, 2), (True, False, True)), ((2, 1, 0), (False, True, False)),
    ((1, 0, 2), (True, True, True)), ((1, 2, 0), (False, False, True)), ((2, 0, 1), (True, False, False)),
])
def test_same_physical_mask_whatever_the_storage_orientation(perm, flips):
    reference = segment(phantom(), ["liver", "spleen"], FakeModel()).labels
    moved = reorient(phantom(), perm, flips)
    result = segment(moved, ["liver", "spleen"], FakeModel())
    assert np.array_equal(back_to_reference(result.labels, perm, flips), reference)


def test_all_48_orientations_give_identical_masks_without_postprocessing():
    options = EngineOptions(postprocess=False)
    reference = segment(phantom(shape_kji=(6, 20, 24)), ["liver"], FakeModel(image_size=32), options).labels
    for perm in itertools.permutations(range(3)):
        for flips in itertools.product([False, True], repeat=3):
            moved = reorient(phantom(shape_kji=(6, 20, 24)), perm, flips)
            labels = segment(moved, ["liver"], FakeModel(image_size=32), options).labels
            assert np.array_equal(back_to_reference(labels, perm, flips), reference), (perm, flips)


def test_oblique_volume_segments_like_its_axis_aligned_twin():
    angle = np.deg2rad(15)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    straight = segment(phantom(), ["liver"], FakeModel()).labels
    oblique = segment(phantom(directions=rotation), ["liver"], FakeModel()).labels
    assert np.array_equal(straight, oblique)


def test_progress_reports_every_batch_and_ends_at_total():
    calls = []
    options = EngineOptions(batch_size=4, progress=lambda done, total, message: calls.append((done, total)))
    segment(phantom(), ["liver"], FakeModel(), options)
    total = calls[-1][1]
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_cancel_between_batches_raises_and_returns_nothing():
    model = FakeModel()
    seen = []

    def cancel() -> bool:
        seen.append(model.encoded_slices)
        return model.encoded_slices >= 2

    with pytest.raises(Cancelled):
        segment(phantom(), ["liver"], model, EngineOptions(batch_size=2, cancel=cancel))
    assert model.encoded_slices == 2


def test_out_of_memory_halves_the_batch_and_keeps_the_result():
    expected = segment(phantom(), ["liver"], FakeModel(), EngineOptions(batch_size=1)).labels
    warnings = []
    result = segment(phantom(), ["liver"], FakeModel(oom_above_batch=2),
                     EngineOptions(batch_size=8, warn=warnings.append))
    assert np.array_equal(result.labels, expected)
    assert any("batch size 4" in w for w in warnings) and any("batch size 2" in w for w in warnings)
    assert result.messages == warnings


def test_out_of_memory_on_a_gpu_at_batch_one_falls_back_to_the_cpu(monkeypatch):
    monkeypatch.setattr(engine, "resolve_device", lambda device: torch.device("meta"))
    model = FakeModel(oom_unless_cpu=True)
    warnings = []
    result = segment(phantom(), ["liver"], model, EngineOptions(batch_size=2, warn=warnings.append))
    assert model.device.type == "cpu"
    assert any("continuing on the CPU" in w for w in warnings)
    assert result.mask("liver").any()


def test_embedding_cache_skips_the_encoder_for_other_classes(tmp_path):
    for cache in (EmbeddingCache(), EmbeddingCache(tmp_path)):
        model = FakeModel()
        first = segment(phantom(), ["liver"], model, EngineOptions(cache=cache))
        encoded = model.encoded_slices
        second = segment(phantom(), ["spleen", "liver"], model, EngineOptions(cache=cache))
        assert model.encoded_slices == encoded
        assert np.array_equal(second.mask("liver"), first.mask("liver"))
        assert cache.hits >= encoded


def test_cache_key_changes_with_voxels_and_preprocessing():
    volume = phantom()
    key = EmbeddingCache.volume_key(volume, {"ct_window": [40, 400]}, "enc")
    changed = volume.array.copy()
    changed[0, 0, 0] += 1
    assert EmbeddingCache.volume_key(volume.with_array(changed), {"ct_window": [40, 400]}, "enc") != key
    assert EmbeddingCache.volume_key(volume, {"ct_window": [50, 400]}, "enc") != key
    assert EmbeddingCache.volume_key(volume, {"ct_window": [40, 400]}, "other") != key


def test_roi_limits_the_slices_that_run():
    volume = phantom()
    top = volume.ijk_to_ras @ np.array([47, 39, 5, 1.0])
    bottom = volume.ijk_to_ras @ np.array([0, 0, 0, 1.0])
    model = FakeModel()
    result = segment(volume, ["liver"], model, EngineOptions(roi=RasBox(tuple(bottom[:3]), tuple(top[:3]))))
    assert model.encoded_slices == 6
    assert not result.mask("liver")[6:].any() and result.mask("liver")[2:6].any()


def test_postprocessing_removes_stray_components_and_can_be_switched_off():
    array = phantom().array.copy()
    array[10, 30:33, 8:11] = 100  # a small liver-like blob far from the liver
    volume = phantom().with_array(array)
    kept = segment(volume, ["liver"], FakeModel(), EngineOptions(postprocess=False)).mask("liver")
    cleaned = segment(volume, ["liver"], FakeModel()).mask("liver")
    assert kept[10, 30:33, 8:11].any()
    assert not cleaned[10, 30:33, 8:11].any()
    assert cleaned[2:9].sum() > 0.9 * kept[2:9].sum()


def test_overlap_goes_to_the_more_probable_class():
    model = FakeModel()
    model.segment_classes_original = model.segment_classes

    def overlapping(embeddings, class_indices, noise_samples=0, **gating):
        output = model.segment_classes_original(embeddings, class_indices, noise_samples, **gating)
        body = embeddings[:, 0] > 0.2
        output.logits[:, 0] = torch.where(body, 2.0, -10.0)  # liver: everywhere in the body, weakly
        return output

    model.segment_classes = overlapping
    result = segment(phantom(), ["liver", "spleen"], model, EngineOptions(postprocess=False))
    spleen = _truth(phantom(), 200)
    assert dice(result.mask("spleen"), spleen) > 0.9
    assert not (result.mask("liver") & result.mask("spleen")).any()


def test_uncertainty_map_is_returned_on_the_input_grid():
    result = segment(phantom(), ["liver"], FakeModel(), EngineOptions(uncertainty_samples=3))
    assert result.uncertainty is not None and result.uncertainty.shape == phantom().array.shape
    assert result.uncertainty.max() == pytest.approx(0.1)


def test_presence_scores_per_class_and_slice():
    result = segment(phantom(), ["liver", "spleen"], FakeModel())
    assert result.presence["liver"].shape == (phantom().array.shape[0],)
    assert result.presence["liver"][3] > 0.5 and result.presence["liver"][11] < 0.5


def test_unknown_class_suggests_a_name():
    with pytest.raises(InputError, match="did you mean"):
        segment(phantom(), ["livr"], FakeModel())


def test_class_the_model_lacks_names_the_model_classes():
    with pytest.raises(ModelError, match="liver"):
        segment(phantom(), ["kidney_left"], FakeModel())


def test_no_class_is_an_input_error():
    with pytest.raises(InputError, match="no class"):
        segment(phantom(), [], FakeModel())


@pytest.mark.parametrize("bad", ["nan", "constant", "2d"])
def test_bad_volumes_are_refused_before_running(bad):
    volume = phantom()
    array = volume.array.astype(np.float32)
    if bad == "nan":
        array[1, 2, 3] = np.nan
        volume = volume.with_array(array)
    elif bad == "constant":
        volume = volume.with_array(np.zeros_like(array))
    else:
        volume = type(volume)(array[0], volume.ijk_to_ras)
    model = FakeModel()
    with pytest.raises(InputError):
        segment(volume, ["liver"], model)
    assert model.encoded_slices == 0


def test_box_mode_from_a_ras_box_names_a_custom_segment():
    volume = phantom()
    corner0 = volume.ijk_to_ras @ np.array([6, 8, 2, 1.0])
    corner1 = volume.ijk_to_ras @ np.array([22, 20, 8, 1.0])
    prompt = BoxPrompt.from_ras(volume, "my lesion", RasBox(tuple(corner0[:3]), tuple(corner1[:3])))
    result = segment_boxes(volume, [prompt], FakeModel())
    assert result.segments[0].name == "my lesion"
    mask = result.mask("my lesion")
    assert dice(mask, _truth(volume, 100)) > 0.85
    assert not mask[:2].any() and not mask[9:].any()


def test_box_mode_from_masks_uses_catalog_classes():
    volume = phantom()
    prompts = [BoxPrompt.from_mask(volume, "liver", _truth(volume, 100)),
               BoxPrompt.from_mask(volume, "spleen", _truth(volume, 200))]
    result = segment_boxes(volume, prompts, FakeModel())
    assert [s.name for s in result.segments] == [default_catalog().get("liver").name,
                                                default_catalog().get("spleen").name]
    assert dice(result.mask("liver"), _truth(volume, 100)) > 0.85


def test_box_outside_the_volume_is_refused():
    volume = phantom()
    with pytest.raises(InputError):
        BoxPrompt.from_ras(volume, "x", RasBox((1000.0, 1000.0, 1000.0), (1100.0, 1100.0, 1100.0)))
