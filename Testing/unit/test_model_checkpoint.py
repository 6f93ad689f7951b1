"""AutoMedSAM checkpoints: round trip, atomic writes, and every way a file can be refused (each a `ModelError`)."""

from __future__ import annotations

import copy
import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from automedsam.errors import ModelError, OutputError
from automedsam.model import (
    AutoMedSAM,
    ClassPromptConfig,
    LiteMedSAM,
    apply_checkpoint,
    build_lite_medsam,
    load_checkpoint,
    save_checkpoint,
    sha256_of,
)

BASE_SHA = "cd" * 32
CLASSES = ("liver", "spleen")
LIGHT = ClassPromptConfig(trunk_channels=32, trunk_mid_channels=32, head_channels=16, token_dim=32, class_dim=16)


@pytest.fixture(scope="module")
def base_model() -> LiteMedSAM:
    torch.manual_seed(0)
    return build_lite_medsam().eval()


def _model(base_model: LiteMedSAM, seed: int = 1, classes: tuple[str, ...] = CLASSES) -> AutoMedSAM:
    model = AutoMedSAM.from_lite_medsam(copy.deepcopy(base_model), base_sha256=BASE_SHA)
    torch.manual_seed(seed)
    model.attach_new_class_prompt_encoder(classes, LIGHT)
    return model.eval()


@pytest.fixture(scope="module")
def trained(base_model: LiteMedSAM) -> AutoMedSAM:
    model = _model(base_model)
    with torch.no_grad():   # "trained": move every weight away from its initial value
        for parameter in model.class_prompt_encoder.parameters():
            parameter.add_(0.01 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(2)))
    return model


@pytest.fixture()
def saved(trained: AutoMedSAM, tmp_path: Path) -> Path:
    return save_checkpoint(tmp_path / "liver.automedsam.pt", trained, training={"steps": 10}, metrics={"dice": 0.9})


def _outputs(model: AutoMedSAM) -> tuple[torch.Tensor, torch.Tensor]:
    embeddings = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        out = model.segment_classes(embeddings, torch.tensor([1, 0]))
    return out.logits, out.presence_logits


def test_round_trip_gives_identical_outputs(trained: AutoMedSAM, base_model: LiteMedSAM, tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "model.automedsam.pt", trained,
                           training={"steps": np.int64(300), "data": [Path("/data/ct1.nii.gz")], "lr": 1e-3},
                           metrics={"dice": {"liver": np.float32(0.96)}})
    checkpoint = load_checkpoint(path, expected_sha256=sha256_of(path), base_sha256=BASE_SHA)
    assert checkpoint.path == path
    assert (checkpoint.base_model_id, checkpoint.base_sha256) == ("litemedsam", BASE_SHA)
    assert checkpoint.classes == CLASSES
    assert checkpoint.training == {"steps": 300, "data": ["/data/ct1.nii.gz"], "lr": 1e-3}
    assert checkpoint.metrics["dice"]["liver"] == pytest.approx(0.96)
    assert checkpoint.mask_decoder_state is None    # the frozen parts are not copied
    stored = torch.load(path, map_location="cpu", weights_only=True)
    assert stored["format_version"] == 1 and stored["kind"] == "automedsam"
    assert set(stored["state_dicts"]) == {"class_prompt_encoder"}
    restored = _model(base_model, seed=99, classes=("other", "classes"))
    apply_checkpoint(restored, checkpoint)
    assert restored.classes == CLASSES and restored.preprocessing == trained.preprocessing
    for ours, theirs in zip(_outputs(restored), _outputs(trained), strict=True):
        assert torch.equal(ours, theirs)
    assert path.stat().st_size < 20e6


def test_a_fine_tuned_mask_decoder_is_stored_and_restored(base_model: LiteMedSAM, tmp_path: Path) -> None:
    tuned = _model(base_model)
    with torch.no_grad():
        tuned.mask_decoder.iou_token.weight.add_(1.0)
    tuned.mask_decoder_tuned = True
    path = save_checkpoint(tmp_path / "tuned.automedsam.pt", tuned)
    restored = _model(base_model, seed=5)
    apply_checkpoint(restored, load_checkpoint(path))
    assert restored.mask_decoder_tuned
    assert torch.equal(restored.mask_decoder.iou_token.weight, tuned.mask_decoder.iou_token.weight)


def test_save_needs_a_class_prompt_encoder_and_a_base_checksum(base_model: LiteMedSAM, tmp_path: Path) -> None:
    box_only = AutoMedSAM.from_lite_medsam(copy.deepcopy(base_model), base_sha256=BASE_SHA)
    with pytest.raises(ModelError, match="no class prompt encoder"):
        save_checkpoint(tmp_path / "a.automedsam.pt", box_only)
    unverified = _model(base_model)
    unverified.base_sha256 = None
    with pytest.raises(ModelError, match="not identified by a SHA-256"):
        save_checkpoint(tmp_path / "b.automedsam.pt", unverified)
    assert list(tmp_path.iterdir()) == []


def test_disk_full_leaves_no_file_and_keeps_the_old_one(trained: AutoMedSAM, saved: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    old_bytes = saved.read_bytes()

    def fail_half_way(obj: object, file: object) -> None:
        file.write(b"partial checkpoint bytes")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", fail_half_way)
    with pytest.raises(OutputError, match="disk is full.*nothing was written"):
        save_checkpoint(saved, trained)
    with pytest.raises(OutputError):
        save_checkpoint(saved.parent / "new.automedsam.pt", trained)
    assert sorted(p.name for p in saved.parent.iterdir()) == [saved.name]
    assert saved.read_bytes() == old_bytes


def test_missing_folder_is_an_output_error(trained: AutoMedSAM, tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="folder that exists"):
        save_checkpoint(tmp_path / "no" / "such" / "x.automedsam.pt", trained)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.automedsam.pt")
    with pytest.raises(ModelError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.automedsam.pt", expected_sha256="00" * 32)


def test_wrong_checksum_names_expected_and_actual(saved: Path) -> None:
    actual = sha256_of(saved)
    with pytest.raises(ModelError, match=f"expected SHA-256 {'0' * 64}, actual {actual}"):
        load_checkpoint(saved, expected_sha256="0" * 64)


def test_truncated_file(saved: Path) -> None:
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated or corrupt"):
        load_checkpoint(saved)
    saved.write_bytes(b"")
    with pytest.raises(ModelError, match="truncated or corrupt"):
        load_checkpoint(saved)


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "noise.automedsam.pt"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ModelError, match="corrupt"):
        load_checkpoint(path)


class _Payload:
    """Pickles as a call to os.system: loading it unsafely would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.command = f"touch {marker}"

    def __reduce__(self) -> tuple:
        return os.system, (self.command,)


def test_a_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.automedsam.pt"
    torch.save({"format_version": 1, "kind": "automedsam", "payload": _Payload(marker)}, path)
    for expected in (None, sha256_of(path)):   # a matching checksum does not make it safe
        with pytest.raises(ModelError, match="contains executable code .* was not loaded"):
            load_checkpoint(path, expected_sha256=expected)
    assert not marker.exists()


def _rewrite(path: Path, change: callable) -> Path:
    data = torch.load(path, map_location="cpu", weights_only=True)
    change(data)
    torch.save(data, path)
    return path


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.update(format_version=2), "format version 2; this AutoMedSAM reads version 1"),
    (lambda d: d.update(kind="sam2"), "'sam2' file, not an AutoMedSAM"),
    (lambda d: d.pop("format_version"), "not an AutoMedSAM checkpoint"),
    (lambda d: d["base_model"].update(id="medsam_vit_b"), "LiteMedSAM-based checkpoints only"),
    (lambda d: d["model_config"].update(head_channels=8), "do not fit its configuration"),
    (lambda d: d["model_config"].update(mystery=1), "unknown fields"),
    (lambda d: d["classes"].append("kidney_left"), "lists 3 classes but its class prompt encoder has 2"),
    (lambda d: d["state_dicts"]["class_prompt_encoder"].pop("film.weight"), "film.weight"),
    (lambda d: d.pop("preprocessing"), "lacks a valid 'preprocessing'"),
])
def test_inconsistent_content_is_refused(saved: Path, change: callable, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        load_checkpoint(_rewrite(saved, change))


def test_base_model_mismatch(saved: Path) -> None:
    with pytest.raises(ModelError, match=f"trained on LiteMedSAM weights with SHA-256 {BASE_SHA}"):
        load_checkpoint(saved, base_sha256="ef" * 32)
