"""`automedsam-train evaluate`: 3D Dice and NSD per class and volume, class prompts vs ground-truth boxes.

Each case (or its held-out canonical slice range) is segmented by the real inference engine, so the numbers include
the engine's presence gating and 3D post-processing: once with class prompts and once, as the upper bound of the same
frozen model, with box prompts taken slice by slice from the reference mask of each class. The image encoder runs
once per volume for both (an in-memory embedding cache). Reports: `evaluation.csv` (one row per case, class and
mode), `evaluation.md` (tables) and `evaluation_dice.png` (box plot of Dice per class and mode).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from automedsam.catalog import default_catalog
from automedsam.engine import BoxPrompt, EmbeddingCache, EngineOptions, segment, segment_boxes
from automedsam.model import AutoMedSAM
from automedsam.volume import Volume, canonical_view

from ..data.alignment import LabelledVolume, read_labelled_volume
from ..data.dataset_spec import DatasetSpec
from .metrics import dice_score, normalized_surface_dice

MODES = ("class", "box")
NSD_TOLERANCE_MM = 2.0
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class EvaluationRow:
    """One (case, class, mode) result; Dice/NSD are NaN when reference and prediction are both empty."""

    case: str
    patient: str
    modality: str
    slices: str
    key: str
    name: str
    mode: str
    dice: float
    nsd: float
    reference_ml: float
    predicted_ml: float


def crop_slices(volume: Volume, labels: np.ndarray, lo: int, hi: int) -> tuple[Volume, np.ndarray]:
    """Canonical slices lo..hi (inclusive) of a volume and its KJI labels, as a volume with the right geometry."""
    view = canonical_view(volume)
    shift = np.eye(4)
    shift[2, 3] = lo                       # canonical (c, r, s, 1): s counts slices
    cropped = Volume(np.ascontiguousarray(view.apply(volume.array)[lo:hi + 1]), view.src_to_ras @ shift,
                     volume.modality)
    return cropped, np.ascontiguousarray(view.apply(labels)[lo:hi + 1])


def evaluate_case(model: AutoMedSAM, labelled: LabelledVolume, classes: Sequence[str],
                  slice_range: tuple[int, int] | None = None, device: str = "auto",
                  progress: Progress | None = None, cache: EmbeddingCache | None = None,
                  modes: Sequence[str] = MODES) -> list[EvaluationRow]:
    """Rows for `classes` (those the case annotates) on the case or its canonical slice range, in `modes`
    ("class", "box"); `cache` keeps the embeddings (e.g. on disk, for later runs on the same volume)."""
    volume, labels = labelled.volume, labelled.labels
    if slice_range is not None:
        volume, labels = crop_slices(volume, labels, *slice_range)
    scored = LabelledVolume(labelled.case, volume, labels)
    keys = [key for key in classes if key in labelled.case.classes() and key in model.classes]
    references = {key: scored.class_mask(key) for key in keys}
    options = EngineOptions(device=device, cache=cache or EmbeddingCache(), progress=progress)
    results = {"class": segment(volume, keys, model, options)} if keys and "class" in modes else {}
    prompts = [BoxPrompt.from_mask(volume, key, mask) for key, mask in references.items() if mask.any()]
    if prompts and "box" in modes:
        results["box"] = segment_boxes(volume, prompts, model, options)
    slices = "all" if slice_range is None else f"{slice_range[0]}-{slice_range[1]}"
    spacing = tuple(float(s) for s in volume.spacing[::-1])       # per KJI array axis
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    catalog = default_catalog()
    rows = []
    for mode, result in results.items():
        for segment_ in result.segments:
            predicted, reference = result.mask(segment_.key), references[segment_.key]
            rows.append(EvaluationRow(
                labelled.case.id, labelled.case.patient_id, volume.modality, slices, segment_.key,
                catalog.get(segment_.key).name, mode, dice_score(predicted, reference),
                normalized_surface_dice(predicted, reference, spacing, NSD_TOLERANCE_MM),
                round(float(reference.sum()) * voxel_ml, 2), round(float(predicted.sum()) * voxel_ml, 2)))
    return rows


def evaluate(model: AutoMedSAM, spec: DatasetSpec, case_ids: Sequence[str] | None = None,
             classes: Sequence[str] | None = None, slice_ranges: Mapping[str, tuple[int, int] | None] | None = None,
             device: str = "auto", progress: Progress | None = None, cache: EmbeddingCache | None = None,
             modes: Sequence[str] = MODES) -> list[EvaluationRow]:
    """Rows for the chosen cases (default: all) and classes (default: the model's), in `modes`."""
    cases = [spec.case(case_id) for case_id in case_ids] if case_ids else list(spec.cases)
    rows: list[EvaluationRow] = []
    for case in cases:
        labelled = read_labelled_volume(case, spec.resample_labels)
        slice_range = (slice_ranges or {}).get(case.id)
        rows += evaluate_case(model, labelled, classes or model.classes,
                              tuple(slice_range) if slice_range else None, device, progress, cache, modes)
    return rows


def write_reports(rows: Sequence[EvaluationRow], folder: Path | str,
                  title: str = "AutoMedSAM evaluation") -> list[Path]:
    """`evaluation.csv`, `evaluation.md` and `evaluation_dice.png` in `folder`; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    csv_path = folder / "evaluation.csv"
    fieldnames = list(EvaluationRow.__dataclass_fields__)
    write_text_atomically(csv_path, lambda f: _write_csv(f, fieldnames, rows))
    md_path = folder / "evaluation.md"
    write_text_atomically(md_path, lambda f: f.write(markdown_report(rows, title)))
    return [csv_path, md_path, box_plot(rows, folder / "evaluation_dice.png", title)]


def read_rows(path: Path | str) -> list[EvaluationRow]:
    """The rows of an `evaluation.csv` (empty cells and "nan" read back as NaN)."""
    kinds = {name: f.type for name, f in EvaluationRow.__dataclass_fields__.items()}
    with open(path, newline="", encoding="utf-8") as file:
        return [EvaluationRow(**{name: _parse(value, kinds[name]) for name, value in row.items()})
                for row in csv.DictReader(file)]


def _parse(value: str, kind: object) -> object:
    if kind in (float, "float"):
        return float(value) if value not in ("", "nan") else math.nan
    return value


def _write_csv(file: object, fieldnames: list[str], rows: Sequence[EvaluationRow]) -> None:
    writer = csv.DictWriter(file, fieldnames=fieldnames)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v)
                         for k, v in asdict(row).items()})


def write_text_atomically(path: Path, write: Callable[[object], None]) -> None:
    """Write a text file through a temporary name, so a report is never left half written."""
    temporary = path.with_name(f".{path.name}.part")
    with open(temporary, "w", newline="", encoding="utf-8") as file:
        write(file)
    os.replace(temporary, path)


def _fmt(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.3f}"


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def markdown_report(rows: Sequence[EvaluationRow], title: str) -> str:
    """A summary table (mean over cases per class) and a per-case table, class prompts next to boxes."""
    lookup = {(r.case, r.key, r.mode): r for r in rows}
    keys = list(dict.fromkeys(r.key for r in rows))
    cases = list(dict.fromkeys((r.case, r.slices) for r in rows))
    lines = [f"# {title}", "", f"Dice and NSD ({NSD_TOLERANCE_MM:g} mm) in 3D after post-processing; '-': nothing "
             "to score (class absent and not predicted). Box = ground-truth box prompts per slice (upper bound).", "",
             "| class | scored cases | Dice class | Dice box | NSD class | NSD box |",
             "| --- | --- | --- | --- | --- | --- |"]
    for key in keys:
        per_mode = {m: [lookup[(c, key, m)] for c, _ in cases if (c, key, m) in lookup] for m in MODES}
        name = per_mode["class"][0].name if per_mode["class"] else key
        scored = sum(math.isfinite(r.dice) for r in per_mode["class"])
        lines.append(f"| {name} | {scored} | {_fmt(_mean([r.dice for r in per_mode['class']]))} | "
                     f"{_fmt(_mean([r.dice for r in per_mode['box']]))} | "
                     f"{_fmt(_mean([r.nsd for r in per_mode['class']]))} | "
                     f"{_fmt(_mean([r.nsd for r in per_mode['box']]))} |")
    lines += ["", "| case | slices | class | Dice class | Dice box | NSD class | NSD box | reference mL | "
              "predicted mL |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for case, slices in cases:
        for key in keys:
            row, box = lookup.get((case, key, "class")), lookup.get((case, key, "box"))
            if row is None:
                continue
            lines.append(f"| {case} | {slices} | {row.name} | {_fmt(row.dice)} | {_fmt(box.dice if box else math.nan)}"
                         f" | {_fmt(row.nsd)} | {_fmt(box.nsd if box else math.nan)} | {row.reference_ml:.1f} | "
                         f"{row.predicted_ml:.1f} |")
    return "\n".join(lines) + "\n"


def box_plot(rows: Sequence[EvaluationRow], path: Path, title: str) -> Path:
    """Box plot of Dice per class, class prompts and ground-truth boxes side by side (points overlaid)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys(r.key for r in rows))
    figure, axis = plt.subplots(figsize=(max(6.0, 0.55 * len(keys) + 2), 4.5))
    for offset, mode, colour in ((-0.18, "class", "tab:blue"), (0.18, "box", "tab:orange")):
        data = [[r.dice for r in rows if r.key == key and r.mode == mode and math.isfinite(r.dice)] for key in keys]
        positions = np.arange(len(keys)) + offset
        filled = [(p, d) for p, d in zip(positions, data, strict=True) if d]
        if filled:
            axis.boxplot([d for _, d in filled], positions=[p for p, _ in filled], widths=0.3, patch_artist=True,
                         boxprops={"facecolor": colour, "alpha": 0.35}, medianprops={"color": colour})
            for p, d in filled:
                axis.plot([p] * len(d), d, ".", color=colour)
        axis.plot([], [], "s", color=colour, label="class prompt" if mode == "class" else "ground-truth box")
    axis.set_xticks(np.arange(len(keys)), keys, rotation=60, ha="right", fontsize=8)
    axis.set(ylabel="Dice (3D)", ylim=(0, 1), title=title)
    axis.legend(fontsize=8, loc="lower left")
    figure.tight_layout()
    temporary = path.with_name(f".{path.stem}.part.png")
    figure.savefig(temporary, dpi=110)
    plt.close(figure)
    os.replace(temporary, path)
    return path
