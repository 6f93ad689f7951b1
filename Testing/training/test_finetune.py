"""`automedsam-train finetune`: corrected cases make a new versioned model, compared with the old one on held-out
slices. The command's flow, naming and refusals run on the tiny model and phantom cases; one test runs the shipped
default model on the bundled real CT and shows that fine-tuning raises Dice on the case's held-out slices."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from training_fakes import TINY_SHA256, phantom_case, tiny_config, tiny_model, write_nnunet_folder

from automedsam.errors import ModelError
from automedsam.model import apply_checkpoint, load_checkpoint, save_checkpoint, sha256_of
from automedsam.registry import ModelRegistry
from automedsam_training import cli
from automedsam_training.evaluation import finetune as finetune_module
from automedsam_training.evaluation.finetune import FineTuneOptions, resolve_init, run_finetune


def _tiny_init(init: finetune_module.InitModel, registry: object = None):
    """The tiny model with the init checkpoint applied (its base is the tiny stand-in, not LiteMedSAM)."""
    model = tiny_model(("liver",), seed=9)
    apply_checkpoint(model, load_checkpoint(init.path, base_sha256=TINY_SHA256))
    return model.eval()


@pytest.fixture
def tiny(tmp_path, monkeypatch) -> dict[str, Path]:
    """A tiny liver-only model whose recorded recipe is the fast phantom recipe, a phantom dataset labelling liver
    and spleen (spleen is new to the model), an output folder; model loading and caches redirected."""
    monkeypatch.setattr(finetune_module, "build_init_model", _tiny_init)
    monkeypatch.setenv("AUTOMEDSAM_HOME", str(tmp_path / "home"))
    data = write_nnunet_folder(tmp_path / "Dataset900_Corrections", shifts=(0,))
    recipe = tiny_config(tmp_path, tmp_path / "old.json", **{"optim.lr": 5e-3, "data.samples_per_class": 2})
    model = save_checkpoint(tmp_path / "tiny.automedsam.pt", tiny_model(("liver",)),
                            training={"config": recipe.to_dict()})
    return {"model": model, "data": data, "out": tmp_path / "models"}


def _finetune(capsys, *argv: object) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(["finetune", *map(str, argv), "--device", "cpu"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()} \
        if folder.exists() else {}


def _refused(code: int, err: str, *expected: str) -> None:
    """Exit code 2, one `error:` line naming the problem, no traceback."""
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("error: ") and "Traceback" not in err, err
    assert sum(line.startswith("error") for line in lines) == 1
    for text in expected:
        assert text in lines[-1], lines[-1]


def test_finetune_writes_a_versioned_model_with_provenance_and_the_comparison(tiny, capsys):
    before = sha256_of(tiny["model"])
    code, out, err = _finetune(capsys, "--init", tiny["model"], "--data", tiny["data"], "-o", tiny["out"],
                               "--steps", 4)
    assert code == 0, err
    model = tiny["out"] / "tiny-ft1.automedsam.pt"
    assert f"wrote {model}" in out and "new classes (not in tiny.automedsam.pt): spleen" in err
    header, *table = out.split("\n\n")[0].splitlines()
    assert header.split() == ["class", "cases", "old", "Dice", "new", "Dice", "change"]
    spleen, liver = table                                                     # catalog order
    assert liver.startswith("Liver ") and spleen.startswith("Spleen (new class)")
    assert spleen.split()[-3] == "-" and spleen.split()[-1] == "-"            # no old Dice, so no change
    checkpoint = load_checkpoint(model, base_sha256=TINY_SHA256)
    assert checkpoint.classes == ("liver", "spleen")
    training = checkpoint.training
    assert training["init"] == {"model": "tiny.automedsam.pt", "file": "tiny.automedsam.pt", "sha256": before,
                                "classes": ["liver"]}
    config = training["config"]
    assert config["optim"]["steps"] == 4 and config["optim"]["lr"] == 5e-3        # short schedule, recipe's rate
    assert config["data"]["min_area_mm2"] == 5.0 and config["run"]["validate_every"] == 0
    case = training["data"]["cases"][0]
    assert case["id"] == "case_000" and case["validation_slices"] == [4, 5] and len(case["image_sha256"]) == 64
    comparison = checkpoint.metrics["held_out_comparison"]
    assert set(comparison["per_class"]) == {"liver", "spleen"} and comparison["per_class"]["spleen"]["new_class"]
    with open(tiny["out"] / "tiny-ft1.comparison.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [(r["case"], r["slices"], r["key"]) for r in rows] == [("case_000", "4-5", "spleen"),
                                                                  ("case_000", "4-5", "liver")]
    assert rows[0]["old_dice"] == "nan" and math.isfinite(float(rows[1]["old_dice"]))
    markdown = (tiny["out"] / "tiny-ft1.comparison.md").read_text()
    assert "| Spleen (new class) | 1 | - |" in markdown and "| case_000 | 4-5 | Liver |" in markdown
    assert json.loads((tiny["out"] / "tiny-ft1_run" / "spec.json").read_text())["cases"][0]["id"] == "case_000"
    assert sha256_of(tiny["model"]) == before


def test_each_run_takes_the_next_free_version_and_never_overwrites(tiny, capsys):
    arguments = ("--data", tiny["data"], "-o", tiny["out"], "--steps", 2)
    assert _finetune(capsys, "--init", tiny["model"], *arguments)[0] == 0
    first = _files(tiny["out"])
    assert _finetune(capsys, "--init", tiny["model"], *arguments)[0] == 0
    second = tiny["out"] / "tiny-ft2.automedsam.pt"
    assert second.is_file() and {k: v for k, v in _files(tiny["out"]).items() if k in first} == first
    assert _finetune(capsys, "--init", second, *arguments)[0] == 0          # from the fine-tuned model: ft3
    assert load_checkpoint(tiny["out"] / "tiny-ft3.automedsam.pt").training["init"]["file"] == second.name
    files = _files(tiny["out"])
    code, _, err = _finetune(capsys, "--init", tiny["model"], "--data", tiny["data"], "-o", second)
    _refused(code, err, "tiny-ft2.automedsam.pt exists", "never replaces a file")
    code, _, err = _finetune(capsys, "--init", second, "--data", tiny["data"], "-o", tiny["model"])
    _refused(code, err, "tiny.automedsam.pt exists")
    assert _files(tiny["out"]) == files


def test_unknown_label_values_are_named_or_ignored_when_asked(tiny, capsys, tmp_path):
    label_path = tiny["data"] / "labelsTr" / "case_000.nii.gz"
    image = sitk.ReadImage(str(label_path))
    labels = sitk.GetArrayFromImage(image)
    labels[0, :2, :2] = 7
    edited = sitk.GetImageFromArray(labels)
    edited.CopyInformation(image)
    sitk.WriteImage(edited, str(label_path))
    code, _, err = _finetune(capsys, "--init", tiny["model"], "--data", tiny["data"], "-o", tiny["out"])
    _refused(code, err, "case 'case_000': label values [7] in case_000.nii.gz are not classes of the dataset",
             "--ignore-unknown-labels")
    assert not tiny["out"].exists()
    code, _, err = _finetune(capsys, "--init", tiny["model"], "--data", tiny["data"], "-o", tiny["out"],
                             "--steps", 1, "--ignore-unknown-labels")
    assert code == 0 and "label values [7] treated as background" in err, err


def test_missing_or_empty_data_and_too_few_slices_are_refused(tiny, capsys, tmp_path):
    init = ("--init", tiny["model"], "-o", tiny["out"])
    code, _, err = _finetune(capsys, *init, "--data", tmp_path / "nowhere")
    _refused(code, err, "dataset", "nowhere does not exist")
    (tmp_path / "empty").mkdir()
    code, _, err = _finetune(capsys, *init, "--data", tmp_path / "empty")
    _refused(code, err, "is empty", "Save as training case")
    short = tmp_path / "Dataset901_Short"
    (short / "imagesTr").mkdir(parents=True)
    (short / "labelsTr").mkdir()
    volume, labels = phantom_case(shape=(2, 40, 48))
    sitk.WriteImage(volume.to_sitk(), str(short / "imagesTr" / "thin_0000.nii.gz"))
    sitk.WriteImage(volume.to_sitk(labels), str(short / "labelsTr" / "thin.nii.gz"))
    (short / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "file_ending": ".nii.gz",
                                                    "labels": {"background": 0, "liver": 1, "spleen": 2}}))
    code, _, err = _finetune(capsys, *init, "--data", short)
    _refused(code, err, "case 'thin' has 2 axial slice(s)", "at least 3 slices")
    code, _, err = _finetune(capsys, *init, "--data", tiny["data"], "--classes", "kidney_left")
    _refused(code, err, "classes ['kidney_left'] are not labelled outside the held-out middle slices")
    assert not tiny["out"].exists()


def test_a_damaged_init_model_is_refused_in_one_line(tiny, capsys, tmp_path):
    damaged = tmp_path / "damaged.automedsam.pt"
    damaged.write_bytes(tiny["model"].read_bytes()[:5000])
    code, _, err = _finetune(capsys, "--init", damaged, "--data", tiny["data"], "-o", tiny["out"])
    _refused(code, err, "checkpoint ", "damaged.automedsam.pt")
    code, _, err = _finetune(capsys, "--init", "litemedsam", "--data", tiny["data"], "-o", tiny["out"])
    _refused(code, err, "has no classes to fine-tune")
    assert not tiny["out"].exists()


def test_a_registry_model_whose_file_fails_its_checksum_is_refused(tiny, tmp_path):
    models = tmp_path / "registry"
    (models / "Models").mkdir(parents=True)
    (models / "Models" / "mine.automedsam.pt").write_bytes(tiny["model"].read_bytes())
    entry = {"id": "mine", "title": "Mine", "kind": "automedsam", "encoder": "tinyvit", "input_size": 256,
             "classes": ["liver"], "base": "litemedsam", "license": "test", "source": "test", "default": True,
             "files": [{"name": "mine.automedsam.pt", "sha256": "0" * 64, "size": tiny["model"].stat().st_size,
                        "urls": [], "package": None, "bundled": "Models/mine.automedsam.pt"}]}
    base = next(e for e in json.loads(Path(ModelRegistry.load().root, "models.json").read_text())
                if e["id"] == "litemedsam")
    (models / "models.json").write_text(json.dumps([{**base, "default": False}, entry]))
    with pytest.raises(ModelError, match="of model 'mine' is corrupt, incomplete") as refused:
        resolve_init("mine", ModelRegistry.load(models / "models.json"))
    assert "\n" not in str(refused.value) and "0" * 64 in str(refused.value)


def test_an_interrupted_run_leaves_nothing(tiny, capsys, monkeypatch):
    def interrupted(self, resume=False):
        (self.output / "state.pt").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune_module.Trainer, "run", interrupted)
    code, _, err = _finetune(capsys, "--init", tiny["model"], "--data", tiny["data"], "-o", tiny["out"])
    assert code == 130 and "Traceback" not in err
    assert _files(tiny["out"]) == {} and not list(tiny["out"].iterdir())


# ------------------------------------------------------------------------------------------------- real data
REAL_CLASS = "kidney_left"     # on slices 13-15 of the sample the shipped model finds no left kidney at all
REAL_STEPS = 12
MIN_GAIN = 0.5                 # measured: Dice 0.00 -> 0.83 (see the test's docstring)


@pytest.mark.realdata
@pytest.mark.realmodel
def test_finetuning_the_default_model_on_a_real_corrected_case_raises_held_out_dice(sample_ct_path, sample_seg_path,
                                                                                    tmp_path):
    """The bundled CT (slices 7-22, the left kidney's extent) with its reference labels as the corrected case, saved
    as Save as training case saves it; the shipped default model fine-tuned on the left kidney for 12 steps on the
    CPU. The held-out middle slices (13-15 of the sample) are scored in 3D by both models. Measured with the shipped
    anatomy model (SHA-256 a7816ca8...): left kidney Dice 0.000 -> 0.827 (20 steps on slices 5-24: 0.000 -> 0.903)."""
    from automedsam.catalog import default_catalog
    from automedsam.io import read_volume
    from automedsam_training.data.case_export import add_training_case
    from automedsam_training.evaluation.evaluate import crop_slices

    catalog = default_catalog()
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(sample_seg_path)))
    labels = np.zeros(reference.shape, dtype=np.uint16)
    for organ in catalog:
        if organ.ts_total is not None:
            labels[reference == organ.ts_total] = organ.label_value
    volume, cropped = crop_slices(read_volume(sample_ct_path), labels, 7, 22)
    add_training_case(volume, cropped, tmp_path / "Dataset900_Corrections", "sample", "P1")
    options = FineTuneOptions(steps=REAL_STEPS, device="cpu", classes=(REAL_CLASS,), cache_dir=tmp_path / "cache")
    result = run_finetune("automedsam_default", tmp_path / "Dataset900_Corrections", tmp_path / "models", options,
                          say=lambda message: None)
    row = next(r for r in result.rows if r.key == REAL_CLASS)
    assert (row.case, row.slices) == ("sample", "6-8")          # slices 13-15 of the sample
    assert row.old_dice < 0.5, f"the default model now finds the left kidney here (Dice {row.old_dice:.3f}): " \
                               "choose a class it does poorly on"
    assert row.new_dice > row.old_dice + MIN_GAIN, f"old {row.old_dice:.3f}, new {row.new_dice:.3f}"
    assert result.outputs.model.name == "automedsam_default-ft1.automedsam.pt"
    assert load_checkpoint(result.outputs.model).training["init"]["model"] == "automedsam_default"
