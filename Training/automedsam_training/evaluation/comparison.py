"""Old model against new on the same held-out slices: one row per case and class, the mean per class, and the table
as console text, Markdown and CSV (what `automedsam-train finetune` prints and writes next to the new model).

Rows come from `evaluate` (the engine with class prompts, 3D Dice and NSD after post-processing) run once per model
on the same slice ranges. A class the old model cannot segment (added by the fine-tuning) has no old score.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .evaluate import NSD_TOLERANCE_MM, EvaluationRow, write_text_atomically


@dataclass(frozen=True)
class ComparisonRow:
    """One (case, class) on its held-out slices; NaN: nothing to score (or, for `old_*`, a class the old model
    lacked: `new_class`)."""

    case: str
    slices: str
    key: str
    name: str
    old_dice: float
    new_dice: float
    old_nsd: float
    new_nsd: float
    reference_ml: float
    new_class: bool


@dataclass(frozen=True)
class ClassComparison:
    """The mean over the cases that score a class (NaN when none does)."""

    key: str
    name: str
    cases: int
    old_dice: float
    new_dice: float
    new_class: bool

    @property
    def change(self) -> float:
        """New minus old Dice (NaN for a new class or nothing to score)."""
        return self.new_dice - self.old_dice


def compare_rows(old: Sequence[EvaluationRow], new: Sequence[EvaluationRow]) -> list[ComparisonRow]:
    """Join the class-prompt rows of both models by (case, class), in the order of the new model's rows."""
    before = {(r.case, r.key): r for r in old if r.mode == "class"}
    rows = []
    for row in (r for r in new if r.mode == "class"):
        previous = before.get((row.case, row.key))
        rows.append(ComparisonRow(row.case, row.slices, row.key, row.name,
                                  previous.dice if previous else math.nan, row.dice,
                                  previous.nsd if previous else math.nan, row.nsd, row.reference_ml,
                                  previous is None))
    return rows


def class_means(rows: Sequence[ComparisonRow]) -> list[ClassComparison]:
    """Per class (first-seen order): the mean old and new Dice over the cases where the new Dice is defined."""
    means = []
    for key in dict.fromkeys(r.key for r in rows):
        scored = [r for r in rows if r.key == key and math.isfinite(r.new_dice)]
        first = next(r for r in rows if r.key == key)
        means.append(ClassComparison(key, first.name, len(scored), _mean([r.old_dice for r in scored]),
                                     _mean([r.new_dice for r in scored]), first.new_class))
    return means


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _fmt(value: float, signed: bool = False) -> str:
    if not math.isfinite(value):
        return "-"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def console_table(rows: Sequence[ComparisonRow]) -> str:
    """The per-class table as aligned plain text, for the terminal."""
    means = class_means(rows)
    width = max([len(_class_label(m)) for m in means] + [5])
    lines = [f"{'class':<{width}}  cases  old Dice  new Dice  change"]
    for m in means:
        lines.append(f"{_class_label(m):<{width}}  {m.cases:>5}  {_fmt(m.old_dice):>8}  {_fmt(m.new_dice):>8}  "
                     f"{_fmt(m.change, signed=True):>6}")
    return "\n".join(lines)


def _class_label(mean: ClassComparison) -> str:
    return f"{mean.name} (new class)" if mean.new_class else mean.name


def comparison_markdown(rows: Sequence[ComparisonRow], title: str, note: str = "") -> str:
    """A per-class table (means over cases) and a per-case table, old model next to new."""
    lines = [f"# {title}", "", *([note, ""] if note else []),
             f"Dice and NSD ({NSD_TOLERANCE_MM:g} mm) in 3D on each case's held-out slices, after post-processing; "
             "'-': nothing to score, or a class the old model could not segment.", "",
             "| class | scored cases | old Dice | new Dice | change |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {_class_label(m)} | {m.cases} | {_fmt(m.old_dice)} | {_fmt(m.new_dice)} | "
              f"{_fmt(m.change, signed=True)} |" for m in class_means(rows)]
    lines += ["", "| case | held-out slices | class | old Dice | new Dice | old NSD | new NSD | reference mL |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r.case} | {r.slices} | {r.name} | {_fmt(r.old_dice)} | {_fmt(r.new_dice)} | {_fmt(r.old_nsd)} | "
              f"{_fmt(r.new_nsd)} | {r.reference_ml:.1f} |" for r in rows]
    return "\n".join(lines) + "\n"


def write_comparison(rows: Sequence[ComparisonRow], markdown: Path, table: Path, title: str,
                     note: str = "") -> list[Path]:
    """Write the Markdown report and the CSV table (one row per case and class), each atomically."""
    write_text_atomically(markdown, lambda file: file.write(comparison_markdown(rows, title, note)))
    write_text_atomically(table, lambda file: _write_csv(file, rows))
    return [markdown, table]


def _write_csv(file: object, rows: Sequence[ComparisonRow]) -> None:
    writer = csv.DictWriter(file, fieldnames=list(ComparisonRow.__dataclass_fields__))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v)
                         for k, v in asdict(row).items()})


def comparison_record(rows: Sequence[ComparisonRow]) -> dict[str, object]:
    """Plain data for the new model's `metrics` (NaN as None)."""
    def plain(value: float) -> float | None:
        return round(value, 4) if math.isfinite(value) else None

    return {"per_class": {m.key: {"old_dice": plain(m.old_dice), "new_dice": plain(m.new_dice), "cases": m.cases,
                                  "new_class": m.new_class} for m in class_means(rows)},
            "per_case": [{"case": r.case, "slices": r.slices, "class": r.key, "old_dice": plain(r.old_dice),
                          "new_dice": plain(r.new_dice)} for r in rows]}
