"""One preprocessing path (a training slice is the engine's model input), seeded augmentation, slice splits, and
the on-disk embedding cache (reuse, self-invalidation, disk full)."""

from __future__ import annotations

import errno
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_fakes import FakeModel
from training_fakes import phantom_case, tiny_model

import automedsam_training.data.embedding_store as cache_module
from automedsam.engine import EngineOptions, segment
from automedsam.errors import OutputError
from automedsam.io import read_volume
from automedsam.preprocess import PreprocessConfig
from automedsam_training.data.alignment import LabelledVolume
from automedsam_training.data.augment import AugmentConfig
from automedsam_training.data.dataset_spec import CaseSpec
from automedsam_training.data.embedding_store import EmbeddingStore
from automedsam_training.data.folder_import import totalsegmentator_label_map
from automedsam_training.data.prepared_case import PreparedCase, SplitConfig, item_targets, validation_range


class RecordingModel(FakeModel):
    """The engine's fake model, remembering every model-input batch the engine encodes."""

    def __init__(self) -> None:
        super().__init__(image_size=256)
        self.inputs: list[torch.Tensor] = []

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.inputs.append(images.clone())
        return super().encode(images)


def _prepared(labelled: LabelledVolume, classes=("liver", "spleen"), **augment) -> PreparedCase:
    return PreparedCase(labelled, classes, PreprocessConfig(image_size=64), AugmentConfig(**augment))


def _phantom_labelled(shift: int = 0) -> LabelledVolume:
    volume, labels = phantom_case(shift)
    case = CaseSpec(f"phantom{shift}", Path("phantom.nii.gz"), Path("phantom_labels.nii.gz"),
                    {1: "liver", 2: "spleen"}, "CT")   # in memory: the paths are never read
    return LabelledVolume(case, volume, labels)


def test_a_training_slice_is_the_engines_model_input(sample_ct_path, sample_seg_path):
    volume = read_volume(sample_ct_path, "CT")
    model = RecordingModel()
    segment(volume, ["liver"], model, EngineOptions(device="cpu", batch_size=1, postprocess=False))
    labels = read_volume(sample_seg_path, "CT").array
    case = CaseSpec("sample", sample_ct_path, sample_seg_path, totalsegmentator_label_map("total"), "CT")
    prepared = PreparedCase(LabelledVolume(case, volume, labels), ("liver",),
                            PreprocessConfig.from_dict(model.preprocessing))
    assert len(model.inputs) == prepared.slices == 30                    # one encoder call per slice, in order
    for s in (0, 7, 29):
        training_input, _ = prepared.model_input([s])
        assert torch.equal(training_input[0], model.inputs[s][0])        # bit for bit
    # the labels went through the same canonical view: the liver's slices and rows match the image's
    liver_hu = prepared.view.apply(volume.array)[prepared.class_labels == 1]
    assert 20 < liver_hu.mean() < 160


def test_augmented_copies_are_seeded_and_keep_image_and_labels_together():
    prepared = _prepared(_phantom_labelled(), variants=2, rotation_deg=15.0)
    image_a, labels_a = prepared.slice_pair(4, 1)
    image_b, labels_b = prepared.slice_pair(4, 1)
    assert np.array_equal(image_a, image_b) and np.array_equal(labels_a, labels_b)     # same seed, same copy
    image_c, labels_c = prepared.slice_pair(4, 2)
    assert not np.array_equal(labels_a, labels_c)                                        # another copy differs
    assert image_a.shape == prepared.normalized[4].shape and labels_a.dtype == prepared.class_labels.dtype
    original = prepared.normalized[4][prepared.class_labels[4] == 1].mean()
    moved = image_a[labels_a == 1].mean()
    assert moved == pytest.approx(original, rel=0.35)         # labels still sit on the liver (gamma changes levels)
    assert prepared.model_input([4], 0)[0].shape == (1, 3, 64, 64)


def test_validation_ranges_and_targets():
    assert validation_range(30, SplitConfig(0.2, "middle")) == (12, 17)
    assert validation_range(30, SplitConfig(0.2, "start")) == (0, 5)
    assert validation_range(30, SplitConfig(0.2, "end")) == (24, 29)
    assert validation_range(30, SplitConfig(0.2, "none")) is None
    prepared = _prepared(_phantom_labelled())
    targets = item_targets(prepared, [(0, 0), (4, 0)], min_area_mm2=5.0)
    assert targets.present.tolist() == [[False, False], [True, True]]
    assert targets.usable.tolist() == [[True, True], [True, True]]   # annotated and absent: a negative example
    assert targets.masks.shape == (2, 64, 64) and set(np.unique(targets.masks[1])) == {0, 1, 2}
    x0, y0, x1, y1 = targets.boxes[1, 0]                              # liver: rows 8..22, columns 5..22 (flipped)
    assert 0 <= x0 < x1 < 64 and 0 <= y0 < y1 < 64


def test_embedding_cache_reuses_and_invalidates_itself(tmp_path):
    store = EmbeddingStore(tmp_path)
    model = tiny_model()
    prepared = _prepared(_phantom_labelled(), variants=1)
    first = np.array(store.embeddings(prepared, model, torch.device("cpu")))
    assert store.computed_rows == 2 * prepared.slices and first.dtype == np.float16
    assert first.shape == (2 * prepared.slices, 32, 16, 16)
    again = store.embeddings(prepared, model, torch.device("cpu"))
    assert store.computed_rows == 2 * prepared.slices and np.array_equal(first, again)   # read, not recomputed
    assert isinstance(again, np.memmap)
    changed = [replace(prepared, config=PreprocessConfig(image_size=64, ct_window=(50.0, 350.0))),
               replace(prepared, augment=AugmentConfig(variants=1, seed=1))]
    for other in changed:
        before = store.computed_rows
        store.embeddings(other, model, torch.device("cpu"))
        assert store.computed_rows == before + 2 * prepared.slices
    model.base_sha256 = "cd" * 32                                      # other encoder weights
    store.embeddings(prepared, model, torch.device("cpu"))
    assert store.computed_rows == 4 * 2 * prepared.slices
    assert len(list(tmp_path.glob("phantom0-*"))) == 1                 # stale entries removed


def test_disk_full_while_writing_the_cache_leaves_nothing(tmp_path, monkeypatch):
    def full(target):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_module, "_flush", full)
    store = EmbeddingStore(tmp_path)
    with pytest.raises(OutputError, match="disk is full"):
        store.embeddings(_prepared(_phantom_labelled()), tiny_model(), torch.device("cpu"))
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert store.embeddings(_prepared(_phantom_labelled()), tiny_model(), torch.device("cpu")).shape[0] == 10
