"""Evaluation through the real engine (class prompts vs ground-truth boxes) with the engine's stand-in model, the
reports it writes, and `automedsam-train` end to end on the phantom dataset."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from engine_fakes import FakeModel, phantom

from automedsam.volume import canonical_view
from automedsam_training import cli
from automedsam_training.data.alignment import LabelledVolume
from automedsam_training.data.dataset_spec import CaseSpec
from automedsam_training.evaluation.evaluate import crop_slices, evaluate_case, write_reports


def _engine_phantom() -> LabelledVolume:
    """engine_fakes' phantom (liver 100 HU, spleen 200 HU) with its exact labels."""
    volume = phantom()
    labels = np.zeros(volume.array.shape, dtype=np.uint8)
    labels[volume.array == 100] = 1
    labels[volume.array == 200] = 2
    case = CaseSpec("phantom", Path("p.nii.gz"), Path("l.nii.gz"), {1: "liver", 2: "spleen"}, "CT")
    return LabelledVolume(case, volume, labels)


def test_evaluation_scores_class_prompts_and_boxes_and_writes_reports(tmp_path):
    rows = evaluate_case(FakeModel(), _engine_phantom(), ["liver", "spleen"], device="cpu")
    assert {(r.key, r.mode) for r in rows} == {(k, m) for k in ("liver", "spleen") for m in ("class", "box")}
    liver = next(r for r in rows if r.key == "liver" and r.mode == "class")
    assert liver.dice > 0.9 and liver.nsd > 0.9 and liver.reference_ml > 0
    csv_path, md_path, png_path = write_reports(rows, tmp_path, "phantom")
    with open(csv_path, newline="") as file:
        written = list(csv.DictReader(file))
    assert len(written) == 4 and written[0]["case"] == "phantom"
    text = md_path.read_text()
    assert "| Liver | 1 |" in text and "| phantom | all | Spleen |" in text
    assert png_path.stat().st_size > 1000


def test_a_slice_range_is_cropped_with_its_geometry():
    labelled = _engine_phantom()
    cropped, labels = crop_slices(labelled.volume, labelled.labels, 3, 6)
    view, cropped_view = canonical_view(labelled.volume), canonical_view(cropped)
    assert cropped_view.shape == (4, *view.shape[1:])
    assert np.array_equal(cropped_view.apply(cropped.array), view.apply(labelled.volume.array)[3:7])
    assert np.allclose(cropped_view.src_to_ras @ [0, 0, 0, 1], view.src_to_ras @ [0, 0, 3, 1])   # same place
    rows = evaluate_case(FakeModel(), labelled, ["liver"], slice_range=(3, 6), device="cpu")
    assert rows[0].slices == "3-6" and rows[0].reference_ml < evaluate_case(
        FakeModel(), labelled, ["liver"], device="cpu")[0].reference_ml


def test_cli_imports_inspects_and_reports_user_errors(tmp_path, spec_path, capsys):
    out = tmp_path / "spec.json"
    assert cli.main(["import-nnunet", str(spec_path.parent / "Dataset001_Phantoms"), "-o", str(out)]) == 0
    assert cli.main(["inspect", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "case_000 (CT" in printed and "liver" in printed and "mL" in printed
    config = tmp_path / "bad.toml"
    config.write_text("[optim]\nstepz = 3\n")
    assert cli.main(["train", str(config)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: unknown setting(s) ['optim.stepz']")
    assert cli.main(["evaluate", str(tmp_path / "missing.automedsam.pt"), str(out), "-o", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["import-nnunet", str(tmp_path), "-o", str(out)]) == 2
    assert "has no dataset.json" in capsys.readouterr().err


def test_cli_export_writes_a_model_from_a_state(tmp_path, spec_path, monkeypatch):
    from training_fakes import TINY_SHA256, tiny_factory, tiny_trainer

    import automedsam_training.commands as commands
    from automedsam.model import load_checkpoint

    tiny_trainer(tmp_path, spec_path, **{"optim.steps": 2}).run()
    monkeypatch.setattr(commands, "build_training_model", tiny_factory)
    assert cli.main(["export", str(tmp_path / "run"), "-o", str(tmp_path / "exported.automedsam.pt")]) == 0
    checkpoint = load_checkpoint(tmp_path / "exported.automedsam.pt", base_sha256=TINY_SHA256)
    assert checkpoint.classes == ("liver", "spleen") and checkpoint.training["steps"] == 2


@pytest.mark.realmodel
def test_init_from_a_checkpoint_appends_classes_and_keeps_the_old_ones(tmp_path):
    from automedsam.loading import load_model
    from automedsam.model import save_checkpoint
    from automedsam_training.config import load_config
    from automedsam_training.model.training_model import build_training_model, freeze_for_training

    model = load_model("litemedsam")
    model.attach_new_class_prompt_encoder(["liver"])
    path = save_checkpoint(tmp_path / "liver.automedsam.pt", model)
    config = load_config(None, [f'model.init="{path}"'])
    extended = build_training_model(config, ("liver", "spleen"))
    assert extended.classes == ("liver", "spleen")
    old = model.class_prompt_encoder.class_embedding.weight
    assert (extended.class_prompt_encoder.class_embedding.weight[:1] == old).all()
    trained = freeze_for_training(extended, train_mask_decoder=False)
    assert {id(p) for p in trained} == {id(p) for p in extended.class_prompt_encoder.parameters()}
    assert not any(p.requires_grad for p in extended.image_encoder.parameters())
    assert not any(p.requires_grad for p in extended.mask_decoder.parameters())


@pytest.mark.realmodel
def test_the_shipped_default_model_segments_by_class_through_automedsam_segment(tmp_path, capsys):
    """The exported default model loads as a user's own file (`--model PATH`) and from the registry."""
    import SimpleITK as sitk

    from automedsam import cli as segment_cli
    from automedsam.resources import resource_path

    volume = phantom(shape_kji=(2, 40, 48))
    path = tmp_path / "phantom.nii.gz"
    sitk.WriteImage(volume.to_sitk(), str(path))
    model_file = resource_path("Models", "automedsam_default.automedsam.pt")
    out = tmp_path / "out.seg.nrrd"
    assert segment_cli.main(["segment", str(path), "-c", "liver", "--model", str(model_file), "-o", str(out),
                             "--device", "cpu"]) == 0, capsys.readouterr().err
    assert out.stat().st_size > 0
    assert segment_cli.main(["classes", "--model", "automedsam_default"]) == 0
    listed = capsys.readouterr().out
    assert "liver" in listed and "vertebrae" in listed and "brain" not in listed
