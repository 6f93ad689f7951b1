"""The fast encoder paths keep the masks: real LiteMedSAM on the sample CT, each path vs PyTorch fp32 (Dice >= 0.99)."""

from __future__ import annotations

import numpy as np
import pytest

from automedsam.acceleration import openvino_available
from automedsam.catalog import default_catalog
from automedsam.engine import BoxPrompt, EngineOptions, segment, segment_boxes
from automedsam.io import read_volume
from automedsam.loading import load_model
from automedsam.metrics import dice
from automedsam.volume import Volume

pytestmark = [pytest.mark.realmodel, pytest.mark.realdata]

ORGANS = ("liver", "spleen")


def _middle(volume: Volume, count: int) -> Volume:
    start = volume.array.shape[0] // 2 - count // 2
    shift = np.eye(4)
    shift[2, 3] = start
    return Volume(np.ascontiguousarray(volume.array[start:start + count]), volume.ijk_to_ras @ shift, volume.modality)


@pytest.fixture(scope="module")
def reference_run(sample_ct_path, sample_seg_path):
    """Model, volume, box prompts and the fp32 eager result on 4 central slices of the sample (computed once)."""
    volume = _middle(read_volume(sample_ct_path, "CT"), 4)
    labels = _middle(read_volume(sample_seg_path, "CT"), 4).array
    catalog = default_catalog()
    prompts = [BoxPrompt.from_mask(volume, key, labels == catalog.get(key).ts_total) for key in ORGANS]
    model = load_model(None)
    options = EngineOptions(device="cpu", precision="fp32", encoder_backend="torch")
    return model, volume, prompts, segment_boxes(volume, prompts, model, options)


@pytest.mark.parametrize(("precision", "backend"), [("bf16", "openvino"), ("fp32", "openvino"), ("bf16", "torch")])
def test_fast_path_masks_match_fp32_eager(precision, backend, reference_run):
    if backend == "openvino" and not openvino_available():
        pytest.skip("OpenVINO is not installed (pip install automedsam[cpu])")
    model, volume, prompts, reference = reference_run
    fast = segment_boxes(volume, prompts, model, EngineOptions(device="cpu", precision=precision,
                                                               encoder_backend=backend))
    scores = {key: dice(fast.mask(key), reference.mask(key)) for key in ORGANS}
    assert all(reference.mask(key).any() for key in ORGANS)
    assert min(scores.values()) >= 0.99, scores


def test_default_class_path_matches_fp32_eager_decoding_every_pair(sample_ct_path):
    """The automatic path (OpenVINO encoder, its decoder, presence gating) vs the engine before any of them."""
    volume = _middle(read_volume(sample_ct_path, "CT"), 4)
    model = load_model(None)
    classes = ("liver", "kidney_left", "aorta", "gallbladder")
    eager = segment(volume, classes, model, EngineOptions(device="cpu", precision="fp32", encoder_backend="torch",
                                                          decode_absent=True))
    gated = segment(volume, classes, model, EngineOptions(device="cpu", precision="fp32", encoder_backend="torch"))
    fast = segment(volume, classes, model, EngineOptions(device="cpu"))
    assert np.array_equal(gated.labels, eager.labels)  # gating skips work, never changes a mask
    assert any(eager.mask(key).any() for key in classes)
    scores = {key: dice(fast.mask(key), eager.mask(key)) for key in classes if eager.mask(key).any()}
    assert min(scores.values()) >= 0.99, scores
