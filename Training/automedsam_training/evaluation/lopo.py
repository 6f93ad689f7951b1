"""`automedsam-train lopo`: leave one CT patient out, for every CT patient of the spec, and report the unseen ones.

For each CT patient (cases grouped by the spec's `patient`), one model is trained on every other case (MR included)
with the run's configuration, and the left-out patient's whole volumes are segmented by the inference engine (presence
gating and post-processing included) and scored: Dice and NSD at 2 mm for each class present in the scan, and the
volume painted for each trained class that the scan's labels say is absent (false positives). Classes that only the
left-out patient has cannot be trained in its fold and are left out of it.

Folders: `<run.output>/lopo-<patient>/` is an ordinary training run plus `evaluation.csv`/`.md` and `review.csv` (the
review check: each segment slice's uncertainty score and error, see `review_check`); `<run.output>/` gets `lopo.csv`
(one row per patient, class) and `lopo.md` (per-class table, per-patient means, overall means, review ranking rho).
Resumable: a fold with its evaluation is read back, a fold with a model is only evaluated, a fold with a training
state is resumed exactly (`Trainer.run(resume=True)`), other folds start. Encoded left-out volumes are kept in
`<run.cache_dir>/engine/` (keyed by voxels, preprocessing and encoder), so another recipe skips the encoder.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from automedsam.catalog import default_catalog
from automedsam.engine import EmbeddingCache
from automedsam.errors import InputError
from automedsam.loading import load_model
from automedsam.model import AutoMedSAM
from automedsam.volume import canonical_view

from ..config import TrainConfig
from ..data.alignment import read_labelled_volume
from ..data.dataset_spec import CaseSpec, DatasetSpec, load_spec
from ..training.state import STATE_FILE
from ..training.trainer import ModelFactory, Trainer, training_classes
from .evaluate import EvaluationRow, evaluate, read_rows, write_reports, write_text_atomically
from .review_check import REVIEW_FILE, ReviewRow, read_review_rows, review_markdown, review_rows, write_review_rows

Say = Callable[[str], None]
ModelLoader = Callable[[Path], AutoMedSAM]
MODEL_FILE = "model.automedsam.pt"


@dataclass(frozen=True)
class Fold:
    """One left-out patient: its cases, the classes its model trains, its run folder."""

    patient: str
    cases: tuple[str, ...]
    classes: tuple[str, ...]
    folder: Path


def ct_patients(spec: DatasetSpec) -> dict[str, tuple[CaseSpec, ...]]:
    """Patient id -> cases, for patients with a CT case (a case without a modality is read to learn it)."""
    patients = {}
    for patient, cases in spec.patients().items():
        modalities = {case.modality or read_labelled_volume(case, spec.resample_labels).volume.modality
                      for case in cases}
        if "CT" in modalities:
            patients[patient] = cases
    return patients


def trainable_classes(spec: DatasetSpec, cases: Sequence[CaseSpec], wanted: Sequence[str],
                      min_area_mm2: float) -> set[str]:
    """Classes of `wanted` that cover at least `min_area_mm2` on some axial slice of some of `cases`."""
    found: set[str] = set()
    for case in cases:
        labelled = read_labelled_volume(case, spec.resample_labels)
        view = canonical_view(labelled.volume)
        pixel_mm2 = float(np.prod(view.pixel_spacing[1:]))
        for key in set(wanted) & case.classes() - found:
            areas = view.apply(labelled.class_mask(key)).sum(axis=(1, 2)) * pixel_mm2
            if areas.size and areas.max() >= min_area_mm2:
                found.add(key)
    return found


def plan_folds(config: TrainConfig, spec: DatasetSpec, patients: Sequence[str] | None = None) -> list[Fold]:
    """The folds of a leave-one-CT-patient-out run; `InputError` with fewer than 2 CT patients."""
    ct = ct_patients(spec)
    if len(ct) < 2:
        raise InputError(f"leave-one-patient-out needs at least 2 CT patients; the dataset {spec.name!r} has "
                         f"{len(ct)} ({', '.join(ct) or 'none'}): give the cases a 'patient' or add patients")
    unknown = sorted(set(patients or ()) - set(ct))
    if unknown:
        raise InputError(f"patients {unknown} are not CT patients of the dataset; its CT patients are {sorted(ct)}")
    wanted = training_classes(config, spec)
    root = config.output_dir
    folds = []
    for patient, cases in ct.items():
        if patients and patient not in patients:
            continue
        ids = tuple(case.id for case in cases)
        others = [case for case in spec.cases if case.id not in ids and case.id not in config.data.holdout_cases]
        if not others:
            raise InputError(f"leaving out patient {patient!r} leaves no case to train on")
        trainable = trainable_classes(spec, others, wanted, config.data.min_area_mm2)
        folds.append(Fold(patient, ids, tuple(key for key in wanted if key in trainable), root / f"lopo-{patient}"))
    return folds


def fold_config(config: TrainConfig, fold: Fold) -> TrainConfig:
    """The training configuration of a fold: the patient held out, its classes, its own run folder."""
    holdout = tuple(dict.fromkeys((*config.data.holdout_cases, *fold.cases)))
    data = replace(config.data, holdout_cases=holdout, classes=fold.classes)
    return replace(config, data=data, run=replace(config.run, output=str(fold.folder)))


def run_fold(config: TrainConfig, spec: DatasetSpec, fold: Fold, say: Say, boxes: bool = False,
             model_factory: ModelFactory | None = None, model_loader: ModelLoader = load_model) -> list[EvaluationRow]:
    """Train (or resume) and evaluate one fold; a fold already evaluated is read back from its CSV."""
    report = fold.folder / "evaluation.csv"
    if report.exists():
        say(f"patient {fold.patient}: already evaluated ({report})")
        return read_rows(report)
    model_path = fold.folder / MODEL_FILE
    if not model_path.exists():
        resume = (fold.folder / STATE_FILE).exists()
        say(f"patient {fold.patient}: {'resuming' if resume else 'training'} on the other patients "
            f"({len(fold.classes)} classes)")
        trainer = Trainer(fold_config(config, fold), **({"model_factory": model_factory} if model_factory else {}),
                          say=say)
        try:
            trainer.run(resume=resume)
        finally:
            trainer.close()
    say(f"patient {fold.patient}: segmenting {', '.join(fold.cases)}")
    model = model_loader(model_path)
    rows = evaluate(model, spec, list(fold.cases), device=config.run.device, cache=_engine_cache(config),
                    modes=("class", "box") if boxes else ("class",))
    write_reports(rows, fold.folder, f"Patient {fold.patient} left out")
    return rows


def _engine_cache(config: TrainConfig) -> EmbeddingCache:
    """Encoded left-out volumes on disk, shared by recipes and by the evaluation and review passes."""
    return EmbeddingCache(Path(config.run.cache_dir).expanduser() / "engine")


def review_fold(config: TrainConfig, spec: DatasetSpec, fold: Fold, say: Say,
                model_loader: ModelLoader = load_model) -> list[ReviewRow]:
    """The review check of a trained fold (see `review_check`): every segment slice's score and error."""
    path = fold.folder / REVIEW_FILE
    if path.exists():
        return read_review_rows(path)
    say(f"patient {fold.patient}: ranking slices for review")
    model, rows = model_loader(fold.folder / MODEL_FILE), []
    for case_id in fold.cases:
        labelled = read_labelled_volume(spec.case(case_id), spec.resample_labels)
        rows += review_rows(model, labelled, model.classes, config.run.device, _engine_cache(config))
    write_review_rows(rows, path)
    return rows


def run_lopo(config: TrainConfig, patients: Sequence[str] | None = None, boxes: bool = False, say: Say = print,
             model_factory: ModelFactory | None = None, model_loader: ModelLoader = load_model) -> list[Path]:
    """Every fold (see the module docstring); returns the paths of `lopo.csv` and `lopo.md`. `model_factory` and
    `model_loader` replace the registry's model (tests use a tiny one)."""
    spec = load_spec(config.data.spec)
    folds = plan_folds(config, spec, patients)
    config.output_dir.mkdir(parents=True, exist_ok=True)
    rows: list[EvaluationRow] = []
    reviews: list[ReviewRow] = []
    for fold in folds:
        rows += run_fold(config, spec, fold, say, boxes, model_factory, model_loader)
        reviews += review_fold(config, spec, fold, say, model_loader)
    return write_lopo_reports(rows, config.output_dir, reviews)


@dataclass(frozen=True)
class PatientSummary:
    """Means of one left-out patient."""

    patient: str
    mean_dice: float            # over classes present in the scan
    mean_nsd: float
    present: int                # classes present and trained
    false_positive_ml: float    # painted in total for trained classes absent from the scan


def summarise(rows: Sequence[EvaluationRow]) -> list[PatientSummary]:
    """Per-patient means of class-prompt rows."""
    summaries = []
    for patient in dict.fromkeys(r.patient for r in rows):
        mine = [r for r in rows if r.patient == patient and r.mode == "class"]
        present = [r for r in mine if r.reference_ml > 0]
        summaries.append(PatientSummary(patient, _mean([r.dice for r in present]), _mean([r.nsd for r in present]),
                                        len(present), round(sum(r.predicted_ml for r in mine
                                                                if r.reference_ml == 0), 1)))
    return summaries


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def write_lopo_reports(rows: Sequence[EvaluationRow], folder: Path,
                       reviews: Sequence[ReviewRow] = ()) -> list[Path]:
    """`lopo.csv` (every class-prompt row) and `lopo.md` (tables with means, and the review check when given)."""
    csv_path, md_path = folder / "lopo.csv", folder / "lopo.md"
    fieldnames = list(EvaluationRow.__dataclass_fields__)
    write_text_atomically(csv_path, lambda f: _csv(f, fieldnames, [r for r in rows if r.mode == "class"]))
    text = lopo_markdown(rows) + (f"\n{review_markdown(reviews)}" if reviews else "")
    write_text_atomically(md_path, lambda f: f.write(text))
    return [csv_path, md_path]


def _csv(file: object, fieldnames: list[str], rows: Sequence[EvaluationRow]) -> None:
    writer = csv.DictWriter(file, fieldnames=fieldnames)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: round(v, 4) if isinstance(v, float) and math.isfinite(v) else v
                         for k, v in row.__dict__.items()})


def _cell(value: float) -> str:
    return "" if not math.isfinite(value) else f"{value:.2f}"


def lopo_markdown(rows: Sequence[EvaluationRow]) -> str:
    """Per-class Dice (NSD) for each left-out patient, then per-patient means and false positives."""
    summaries = summarise(rows)
    patients = [s.patient for s in summaries]
    lookup = {(r.patient, r.key): r for r in rows if r.mode == "class"}
    catalog = default_catalog()
    lines = ["# Leave one CT patient out", "", "3D Dice (NSD at 2 mm) of each class present in the left-out scan, "
             "whole volume, after presence gating and post-processing.", "",
             "| class | " + " | ".join(patients) + " |", "| --- |" + " --- |" * len(patients)]
    for key in dict.fromkeys(r.key for r in rows if r.mode == "class" and r.reference_ml > 0):
        cells = []
        for patient in patients:
            row = lookup.get((patient, key))
            cells.append(f"{_cell(row.dice)} ({_cell(row.nsd)})" if row and row.reference_ml > 0 else "")
        lines.append(f"| {catalog.get(key).name} | " + " | ".join(cells) + " |")
    lines += ["", "| left-out patient | present classes | mean Dice | mean NSD | absent classes painted (mL) |",
              "| --- | --- | --- | --- | --- |"]
    for s in summaries:
        lines.append(f"| {s.patient} | {s.present} | {_cell(s.mean_dice)} | {_cell(s.mean_nsd)} | "
                     f"{s.false_positive_ml:.1f} |")
    lines.append(f"| **mean** | | **{_cell(_mean([s.mean_dice for s in summaries]))}** | "
                 f"**{_cell(_mean([s.mean_nsd for s in summaries]))}** | "
                 f"{_mean([s.false_positive_ml for s in summaries]):.1f} |")
    painted = [f"{r.patient} {r.key} {r.predicted_ml:.1f} mL" for r in rows
               if r.mode == "class" and r.reference_ml == 0 and r.predicted_ml > 0]
    lines += ["", "Absent classes painted: " + ("; ".join(painted) if painted else "none") + "."]
    return "\n".join(lines) + "\n"
