"""Real model on the sample CT: a box on a slice where the left kidney is missing restores it; --propagate carries it
to the next slices and stops where the kidney ends, in PyTorch and on the OpenVINO path (encoder and refinement
decoder). (The shipped model misses the left kidney on slices 13..22 of the sample; the starting segmentation here is
the reference with exactly those slices removed.)"""

from __future__ import annotations

import numpy as np
import pytest

from automedsam.catalog import default_catalog
from automedsam.engine import EmbeddingCache, EngineOptions, RasBox
from automedsam.io import read_volume
from automedsam.loading import load_model
from automedsam.metrics import dice
from automedsam.preprocess import mask_box
from automedsam.refine import Refinement, RefineOptions, refine
from automedsam.volume import canonical_view

pytestmark = [pytest.mark.realmodel, pytest.mark.realdata]

FIRST, LAST = 8, 26        # the crop (sample slices) that keeps the test quick
POOR = range(13, 23)       # sample slices where the left kidney is missing


@pytest.mark.parametrize("backend", ["torch", "openvino"])
def test_a_box_restores_the_slice_and_propagation_stops_where_the_kidney_ends(sample_ct_path, sample_seg_path,
                                                                              backend):
    if backend == "openvino":
        pytest.importorskip("openvino")
    volume = read_volume(sample_ct_path, "CT")
    reference = read_volume(sample_seg_path, "CT").array
    volume, reference = _crop(volume), reference[FIRST:LAST]
    kidney = default_catalog().get("kidney_left")
    labels = np.zeros(reference.shape, dtype=np.uint8)
    for organ in _classes():
        labels[reference == organ.ts_total] = organ.label_value
    truth = labels == kidney.label_value
    labels[[s - FIRST for s in POOR]] = np.where(labels[[s - FIRST for s in POOR]] == kidney.label_value, 0,
                                                 labels[[s - FIRST for s in POOR]])
    view, start = canonical_view(volume), 13 - FIRST
    r0, c0, r1, c1 = mask_box(view.apply(truth)[start])
    box = RasBox(_ras(view, c0, r0, start), _ras(view, c1, r1, start))
    model = load_model(None)
    options = EngineOptions(device="cpu", encoder_backend=backend, precision="fp32", cache=EmbeddingCache())
    result = refine(volume, labels, kidney.label_value, Refinement("kidney_left", box=box), model,
                    model.class_index("kidney_left"), options, RefineOptions(propagate=True))
    before, after = labels == kidney.label_value, result.labels == kidney.label_value
    scores = {s + FIRST: (round(dice(before[s], truth[s]), 3), round(dice(after[s], truth[s]), 3))
              for s in range(truth.shape[0])}
    print("left kidney Dice per sample slice (before, after):", scores, result.stops)
    assert scores[13][1] >= 0.7 > scores[13][0]
    assert np.mean([scores[s][1] for s in range(14, 22)]) >= 0.75
    assert max(result.slices) + FIRST <= 23 and "organ has ended" in result.stops["superior"]
    changed = np.flatnonzero((result.labels != labels).any(axis=(1, 2))) + FIRST
    assert set(changed) <= set(POOR)
    others = labels != kidney.label_value
    assert np.array_equal(result.labels[others & (result.labels != kidney.label_value)],
                          labels[others & (result.labels != kidney.label_value)])
    assert np.array_equal(result.labels != kidney.label_value, ~after)
    assert not (after & others & (labels != 0)).any()


def _classes():
    catalog = default_catalog()
    return [catalog.get(key) for key in ("liver", "spleen", "kidney_left", "kidney_right", "stomach")]


def _crop(volume):
    from automedsam.volume import Volume

    shift = np.eye(4)
    shift[2, 3] = FIRST
    return Volume(np.ascontiguousarray(volume.array[FIRST:LAST]), volume.ijk_to_ras @ shift, volume.modality)


def _ras(view, c, r, s):
    return tuple(float(x) for x in (view.src_to_ras @ np.array([c, r, s, 1.0]))[:3])
