"""Real LiteMedSAM weights on the real sample CT: box prompts from the reference labels reach Dice >= 0.85."""

from __future__ import annotations

import numpy as np
import pytest

from automedsam.catalog import default_catalog
from automedsam.engine import BoxPrompt, EmbeddingCache, EngineOptions, segment_boxes
from automedsam.io import read_volume
from automedsam.loading import load_model
from automedsam.metrics import dice

pytestmark = [pytest.mark.realmodel, pytest.mark.realdata]

ORGANS = ("liver", "spleen", "kidney_left", "kidney_right")


@pytest.fixture(scope="module")
def model():
    return load_model(None)


def _references(volume, seg_path) -> dict[str, np.ndarray]:
    labels = read_volume(seg_path, "CT").array
    catalog = default_catalog()
    return {key: labels == catalog.get(key).ts_total for key in ORGANS}


def test_ground_truth_boxes_give_dice_above_085(model, sample_ct_path, sample_seg_path):
    volume = read_volume(sample_ct_path, "CT")
    references = _references(volume, sample_seg_path)
    prompts = [BoxPrompt.from_mask(volume, key, mask) for key, mask in references.items()]
    result = segment_boxes(volume, prompts, model, EngineOptions(device="cpu", cache=EmbeddingCache()))
    scores = {key: dice(result.mask(key), references[key]) for key in ORGANS}
    print("LiteMedSAM, ground-truth boxes, sample CT:", {k: round(v, 3) for k, v in scores.items()})
    assert all(score >= 0.85 for score in scores.values()), scores
    assert result.labels.shape == volume.array.shape
    assert np.array_equal(result.ijk_to_ras, volume.ijk_to_ras)


def test_storage_orientation_does_not_change_the_real_result(model, sample_ct_path, sample_seg_path):
    """The sample stored with its axes permuted and flipped gives the same physical liver mask."""
    from engine_fakes import back_to_reference, reorient

    volume = read_volume(sample_ct_path, "CT")
    liver = _references(volume, sample_seg_path)["liver"]
    slices = np.flatnonzero(liver.any(axis=(1, 2)))
    keep = np.zeros_like(liver)
    keep[slices[len(slices) // 2 - 1: len(slices) // 2 + 2]] = True  # three central liver slices keep it quick
    liver &= keep
    options = EngineOptions(device="cpu", postprocess=False)
    straight = segment_boxes(volume, [BoxPrompt.from_mask(volume, "liver", liver)], model, options)
    perm, flips = (2, 0, 1), (True, False, True)
    moved = reorient(volume, perm, flips)
    moved_liver = reorient(volume.with_array(liver), perm, flips).array
    turned = segment_boxes(moved, [BoxPrompt.from_mask(moved, "liver", moved_liver)], model, options)
    back = back_to_reference(turned.mask("liver"), perm, flips)
    assert straight.mask("liver").sum() > 100
    assert dice(back, straight.mask("liver")) > 0.999
