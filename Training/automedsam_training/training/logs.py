"""Run logs: CSV files (the record), TensorBoard scalars (optional) and PNG plots of losses and validation Dice.

`<run>/train_log.csv`: step, epoch, learning rate, every loss term, the learned loss weights, seconds per step.
`<run>/validation_log.csv`: step, mean validation Dice and the Dice of each class. On resume, rows after the
resumed step are dropped, so the files always describe the run that produced the current weights.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

TRAIN_LOG = "train_log.csv"
VALIDATION_LOG = "validation_log.csv"
LOSS_PLOT = "losses.png"
VALIDATION_PLOT = "validation_dice.png"


class RunLog:
    """Appends rows to the CSV logs (and TensorBoard); only the rank-0 process makes one."""

    def __init__(self, folder: Path, tensorboard: bool = False, resume_step: int | None = None) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        for name in (TRAIN_LOG, VALIDATION_LOG):
            _truncate_after(self.folder / name, resume_step)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.folder / "tensorboard"), purge_step=resume_step)

    def train(self, row: Mapping[str, Any]) -> None:
        """One training log row (`step` plus numbers)."""
        _append(self.folder / TRAIN_LOG, row)
        self._scalars("train", row)

    def validation(self, row: Mapping[str, Any]) -> None:
        """One validation row (`step`, `dice`, per-class Dice as `dice/<class>`)."""
        _append(self.folder / VALIDATION_LOG, row)
        self._scalars("validation", row)

    def _scalars(self, prefix: str, row: Mapping[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(f"{prefix}/{key}", value, int(row["step"]))
        self.writer.flush()

    def close(self) -> None:
        """Flush and close TensorBoard."""
        if self.writer is not None:
            self.writer.close()


def read_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV log ([] when it does not exist)."""
    if not Path(path).is_file():
        return []
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def _append(path: Path, row: Mapping[str, Any]) -> None:
    """Append a row; a new column (a class first validated later) rewrites the file with the wider header."""
    rows = read_rows(path)
    header = list(rows[0].keys()) if rows else []
    if not rows or any(key not in header for key in row):
        header += [key for key in row if key not in header]
        _write(path, header, rows + [dict(row)])
        return
    with open(path, "a", newline="", encoding="utf-8") as file:
        csv.DictWriter(file, fieldnames=header).writerow(dict(row))


def _write(path: Path, header: list[str], rows: list[Mapping[str, Any]]) -> None:
    temporary = path.with_name(f".{path.name}.part")
    with open(temporary, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(temporary, path)


def _truncate_after(path: Path, step: int | None) -> None:
    rows = read_rows(path)
    if not rows:
        return
    if step is None:
        path.unlink()
        return
    kept = [row for row in rows if int(row["step"]) <= step]
    if len(kept) != len(rows):
        _write(path, list(rows[0].keys()), kept)


def plot_logs(folder: Path) -> list[Path]:
    """Write `losses.png` and `validation_dice.png` from the CSV logs (atomic); returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    written = []
    train = read_rows(folder / TRAIN_LOG)
    if train:
        keys = [k for k in train[0] if k.startswith("loss/")]
        figure, axis = plt.subplots(figsize=(7, 4))
        steps = [int(r["step"]) for r in train]
        for key in keys:
            axis.plot(steps, [float(r[key]) for r in train], label=key.removeprefix("loss/"))
        axis.set(xlabel="step", ylabel="loss", title="training losses", yscale="log")
        axis.legend(fontsize=8)
        written.append(_save(figure, folder / LOSS_PLOT))
        plt.close(figure)
    validation = read_rows(folder / VALIDATION_LOG)
    if validation:
        figure, axis = plt.subplots(figsize=(7, 4))
        axis.plot([int(r["step"]) for r in validation], [float(r["dice"]) for r in validation], "o-")
        axis.set(xlabel="step", ylabel="mean Dice", title="validation Dice (held-out slices)", ylim=(0, 1))
        written.append(_save(figure, folder / VALIDATION_PLOT))
        plt.close(figure)
    return written


def _save(figure: Any, path: Path) -> Path:
    temporary = path.with_name(f".{path.stem}.part.png")
    figure.tight_layout()
    figure.savefig(temporary, dpi=100)
    os.replace(temporary, path)
    return path
