"""Does the review ranking find the bad slices? Spearman correlation of the review score and slice error.

`automedsam.review` ranks each segment's slices by a score (the model's uncertainty on the segment and the segment's
change from the neighbouring slices), so that an annotator corrects the worst slices first. That ranking is only
worth showing if the suspect slices are the wrong ones. Here every (segment, slice) the engine produced on a labelled
volume gets its review score and its error, 1 - Dice of that slice against the reference; `lopo` reports Spearman's
rho per left-out patient (positive: a higher score, a larger error).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from automedsam.engine import EmbeddingCache, EngineOptions, segment
from automedsam.metrics import dice
from automedsam.model import AutoMedSAM
from automedsam.review import slice_scores
from automedsam.volume import canonical_view

from ..data.alignment import LabelledVolume
from .evaluate import write_text_atomically

REVIEW_FILE = "review.csv"
UNCERTAINTY_SAMPLES = 4     # the CLI's default; a deterministic prompt needs none (its std is sqrt(p (1 - p)))


@dataclass(frozen=True)
class ReviewRow:
    """One segment on one slice of a labelled case: its review score and its error (1 - Dice of the slice)."""

    case: str
    patient: str
    key: str
    slice: int
    score: float
    error: float


def review_rows(model: AutoMedSAM, labelled: LabelledVolume, classes: Sequence[str], device: str = "auto",
                cache: EmbeddingCache | None = None) -> list[ReviewRow]:
    """Every (segment, slice) the engine paints on `labelled` for `classes` it annotates, scored and graded."""
    keys = [key for key in classes if key in labelled.case.classes() and key in model.classes]
    if not keys:
        return []
    options = EngineOptions(device=device, cache=cache or EmbeddingCache(), uncertainty_samples=UNCERTAINTY_SAMPLES)
    result = segment(labelled.volume, keys, model, options)
    axis = canonical_view(labelled.volume).permutation[0]
    masks = {key: (result.mask(key), labelled.class_mask(key)) for key in keys}   # once per class, not per slice
    rows = []
    for score in slice_scores(result):
        predicted, reference = (np.take(mask, score.index, axis=axis) for mask in masks[score.key])
        rows.append(ReviewRow(labelled.case.id, labelled.case.patient_id, score.key, score.index,
                              round(score.score, 5), round(1.0 - dice(predicted, reference), 5)))
    return rows


def spearman(rows: Sequence[ReviewRow]) -> float:
    """Spearman's rho of score against error; NaN with fewer than 3 rows or when either is constant."""
    scores, errors = [r.score for r in rows], [r.error for r in rows]
    if len(rows) < 3 or np.ptp(scores) == 0 or np.ptp(errors) == 0:
        return math.nan
    return float(spearmanr(scores, errors).statistic)


def write_review_rows(rows: Sequence[ReviewRow], path: Path) -> Path:
    """The rows as CSV (atomically)."""
    def write(file: object) -> None:
        writer = csv.DictWriter(file, fieldnames=list(ReviewRow.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(asdict(row) for row in rows)

    write_text_atomically(path, write)
    return path


def read_review_rows(path: Path) -> list[ReviewRow]:
    """Rows written by `write_review_rows`."""
    with open(path, newline="", encoding="utf-8") as file:
        return [ReviewRow(r["case"], r["patient"], r["key"], int(r["slice"]), float(r["score"]), float(r["error"]))
                for r in csv.DictReader(file)]


def review_markdown(rows: Sequence[ReviewRow]) -> str:
    """A section for `lopo.md`: rho per left-out patient, over all of its segment slices."""
    lines = ["## Review ranking", "", "Spearman's rho between the review score of each segment slice "
             "(`automedsam segment --report`) and its error (1 - Dice of that slice); positive: the ranking puts the "
             "wrong slices first.", "", "| left-out patient | segment slices | mean error | rho |",
             "| --- | --- | --- | --- |"]
    for patient in dict.fromkeys(r.patient for r in rows):
        mine = [r for r in rows if r.patient == patient]
        rho = spearman(mine)
        lines.append(f"| {patient} | {len(mine)} | {np.mean([r.error for r in mine]):.2f} | "
                     f"{'' if math.isnan(rho) else f'{rho:.2f}'} |")
    return "\n".join(lines) + "\n"
