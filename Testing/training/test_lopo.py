"""`automedsam-train lopo` on phantom patients and a tiny model: folds by patient, classes the fold cannot train
left out, reports with means and false positives, resumption (finished folds skipped, interrupted ones resumed)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from training_fakes import TINY_SHA256, tiny_config, tiny_factory, tiny_model, write_nnunet_folder

from automedsam.errors import InputError
from automedsam.model import apply_checkpoint, load_checkpoint
from automedsam_training import cli
from automedsam_training.data.dataset_spec import load_spec, save_spec
from automedsam_training.data.folder_import import import_nnunet_folder
from automedsam_training.evaluation.evaluate import EvaluationRow
from automedsam_training.evaluation.lopo import lopo_markdown, plan_folds, run_lopo, summarise
from automedsam_training.evaluation.review_check import (
    REVIEW_FILE,
    ReviewRow,
    read_review_rows,
    review_markdown,
    spearman,
    write_review_rows,
)
from automedsam_training.training.state import load_state


def _loader(path: Path):
    model = tiny_model(seed=9)
    apply_checkpoint(model, load_checkpoint(path, base_sha256=TINY_SHA256))
    return model.eval()


@pytest.fixture(scope="module")
def three_patients(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lopo")
    spec = import_nnunet_folder(write_nnunet_folder(folder / "Dataset002_Three", shifts=(0, 2, 4)))
    return save_spec(spec, folder / "spec.json")


def _config(tmp_path: Path, spec: Path, **overrides: object):
    return tiny_config(tmp_path, spec, **{"data.val_fraction": 0.0, "data.val_position": "none",
                                          "run.validate_every": 0, "optim.steps": 4, **overrides})


def test_folds_leave_each_ct_patient_out(tmp_path, three_patients):
    config = _config(tmp_path, three_patients)
    folds = plan_folds(config, load_spec(three_patients))
    assert [f.patient for f in folds] == ["case_000", "case_001", "case_002"]
    assert folds[1].cases == ("case_001",) and folds[1].classes == ("liver", "spleen")
    assert folds[1].folder == tmp_path / "run" / "lopo-case_001"
    with pytest.raises(InputError, match="not CT patients"):
        plan_folds(config, load_spec(three_patients), ["nobody"])


def test_fewer_than_two_patients_is_a_clear_error(tmp_path):
    spec = save_spec(import_nnunet_folder(write_nnunet_folder(tmp_path / "Dataset003_One", shifts=(0,))),
                     tmp_path / "one.json")
    with pytest.raises(InputError, match="at least 2 CT patients"):
        plan_folds(_config(tmp_path, spec), load_spec(spec))
    assert cli.main(["lopo", str(tmp_path / "missing.toml")]) == 2


def test_lopo_trains_scores_and_resumes(tmp_path, three_patients):
    config = _config(tmp_path, three_patients)
    messages: list[str] = []

    class Stop(Exception):
        pass

    def stop_in_fold_two(text: str) -> None:
        messages.append(text)
        fold = next(m for m in reversed(messages) if m.startswith("patient "))
        if text.startswith("step 3/4") and fold.startswith("patient case_001"):
            raise Stop                                       # killed after the checkpoint of step 2

    with pytest.raises(Stop):
        run_lopo(config, say=stop_in_fold_two, model_factory=tiny_factory, model_loader=_loader)
    assert (tmp_path / "run" / "lopo-case_000" / "evaluation.csv").exists()
    assert load_state(tmp_path / "run" / "lopo-case_001" / "state.pt")["position"]["step"] == 2
    messages.clear()
    csv_path, md_path = run_lopo(config, say=messages.append, model_factory=tiny_factory, model_loader=_loader)
    assert any("case_000: already evaluated" in m for m in messages)
    assert any("case_001: resuming" in m for m in messages) and any("case_002: training" in m for m in messages)
    with open(csv_path, newline="") as file:
        rows = list(csv.DictReader(file))
    assert {r["patient"] for r in rows} == {"case_000", "case_001", "case_002"}
    assert all(r["mode"] == "class" for r in rows) and all(0 <= float(r["dice"]) <= 1 for r in rows)
    text = md_path.read_text()
    assert "| **mean** |" in text and "| Liver |" in text
    assert "## Review ranking" in text and any("ranking slices for review" in m for m in messages)
    reviewed = {patient: read_review_rows(tmp_path / "run" / f"lopo-{patient}" / REVIEW_FILE)
                for patient in ("case_000", "case_001", "case_002")}
    assert sum(map(len, reviewed.values())) > 0
    for patient, mine in reviewed.items():
        assert all(r.patient == patient and 0 <= r.error <= 1 and r.score >= 0 for r in mine)


def test_summary_counts_present_classes_and_false_positives():
    def row(patient: str, key: str, dice: float, reference: float, predicted: float) -> EvaluationRow:
        return EvaluationRow(patient, patient, "CT", "all", key, key.title(), "class", dice, dice, reference, predicted)

    rows = [row("a", "liver", 0.8, 100, 90), row("a", "spleen", 0.4, 50, 40), row("a", "heart", 0.0, 0, 12.5),
            row("b", "liver", 0.6, 80, 70), row("b", "heart", float("nan"), 0, 0)]
    first, second = summarise(rows)
    assert (first.present, round(first.mean_dice, 3), first.false_positive_ml) == (2, 0.6, 12.5)
    assert (second.present, second.mean_dice, second.false_positive_ml) == (1, 0.6, 0.0)
    text = lopo_markdown(rows)
    assert "| **mean** | | **0.60** |" in text and "a heart 12.5 mL" in text


def test_review_check_rho_and_round_trip(tmp_path):
    def row(patient: str, score: float, error: float) -> ReviewRow:
        return ReviewRow(patient, patient, "liver", 0, score, error)

    ranked = [row("a", s, e) for s, e in ((0.1, 0.0), (0.2, 0.1), (0.3, 0.5), (0.4, 0.9))]
    reversed_ = [row("b", s, e) for s, e in ((0.1, 0.9), (0.2, 0.5), (0.3, 0.1))]
    assert spearman(ranked) == pytest.approx(1.0) and spearman(reversed_) == pytest.approx(-1.0)
    assert spearman(ranked[:2]) != spearman(ranked[:2])               # NaN: too few slices
    assert read_review_rows(write_review_rows(ranked, tmp_path / "r.csv")) == ranked
    text = review_markdown(ranked + reversed_)
    assert "| a | 4 | 0.38 | 1.00 |" in text and "| b | 3 | 0.50 | -1.00 |" in text
