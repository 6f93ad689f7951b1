"""Render the user guide's correction pictures from real runs of the command line on the bundled sample CT.

Run from the repository root: `.venv/bin/python docs/make_correction_images.py [WORKDIR]` (about a minute on 2 CPU
cores). It runs, as a user would (the commands are printed):

    automedsam segment SAMPLE -c liver -c spleen -c "left kidney" -c "right kidney" --uncertainty u.nii.gz
        --report review.csv -o result.seg.nrrd
    automedsam refine SAMPLE result.seg.nrrd -c "left kidney" --box R0,A0,S,R1,A1,S --propagate -o refined.seg.nrrd

The box is the one a user would draw around the left kidney on the slice where the result misses most of it (taken
here from the sample's reference labels, which are TotalSegmentator's output, not manual ground truth). Writes
`docs/images/correction_review.png` (the three most suspect slices of the review report) and
`docs/images/correction_refine.png` (that slice before, with the box, after, and the carried slices in a sagittal
view), and prints the left kidney's Dice against the reference before and after.
"""

from __future__ import annotations

import csv
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from automedsam.catalog import default_catalog  # noqa: E402
from automedsam.io import read_volume  # noqa: E402
from automedsam.metrics import dice  # noqa: E402
from automedsam.preprocess import mask_box  # noqa: E402
from automedsam.resources import resource_path  # noqa: E402
from automedsam.segmentation_file import SegmentationFile  # noqa: E402
from automedsam.volume import canonical_view  # noqa: E402

IMAGES = Path(__file__).resolve().parent / "images"
SAMPLE = resource_path("SampleData", "example_ct_sm.nii.gz")
REFERENCE = resource_path("SampleData", "example_ct_sm_seg.nii.gz")
CLASSES = ("liver", "spleen", "left kidney", "right kidney")


def run(*argv: str) -> None:
    """One command line, printed, as the user types it."""
    command = [str(Path(sys.executable).with_name("automedsam")), *argv]
    print("$ automedsam " + " ".join(f'"{a}"' if " " in a else a for a in argv), flush=True)
    subprocess.run(command, check=True)


def segment(work: Path) -> SegmentationFile:
    """The first run: four classes, the uncertainty map and the review report."""
    argv = ["segment", str(SAMPLE)]
    for name in CLASSES:
        argv += ["-c", name]
    run(*argv, "--uncertainty", str(work / "u.nii.gz"), "--report", str(work / "review.csv"), "-o",
        str(work / "result.seg.nrrd"))
    return SegmentationFile.read(work / "result.seg.nrrd")


def kidney_box(result: SegmentationFile, view) -> tuple[int, str]:
    """The slice where the result misses most of the reference left kidney, and a box around the kidney there."""
    organ = default_catalog().get("kidney_left")
    truth = view.apply(read_volume(REFERENCE, "CT").array == organ.ts_total)
    found = view.apply(result.labels == result.segments["kidney_left"])
    missed = (truth & ~found).sum(axis=(1, 2))
    slice_index = int(np.argmax(missed))
    r0, c0, r1, c1 = mask_box(truth[slice_index])
    corners = [view.src_to_ras @ np.array([c, r, slice_index, 1.0]) for c, r in ((c0, r0), (c1, r1))]
    text = ",".join(f"{v:.1f}" for corner in corners for v in corner[:3])
    return slice_index, text


def soft_tissue(plane: np.ndarray) -> np.ndarray:
    return np.clip((plane + 160.0) / 400.0, 0.0, 1.0)


def draw_segments(axis, labels: np.ndarray, result: SegmentationFile) -> None:
    """Each segment's outline in its catalog colour."""
    catalog = default_catalog()
    for key, value in result.segments.items():
        mask = labels == value
        if mask.any():
            axis.contour(mask, levels=[0.5], colors=[np.array(catalog.get(key).color) / 255.0], linewidths=1.2)


def review_figure(work: Path, result: SegmentationFile, view, ct: np.ndarray) -> Path:
    """The three top rows of the review report: slice, segments, uncertainty."""
    with open(work / "review.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))[:3]
    uncertainty = view.apply(read_volume(work / "u.nii.gz", "CT").array.astype(float))
    labels = view.apply(result.labels)
    figure, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 4.4))
    for axis, row in zip(np.atleast_1d(axes), rows, strict=True):
        s = _canonical_slice(view, row)
        axis.imshow(soft_tissue(ct[s]), cmap="gray")
        axis.imshow(np.ma.masked_less(uncertainty[s], 0.05), cmap="inferno", alpha=0.4, vmin=0, vmax=0.5)
        draw_segments(axis, labels[s], result)
        axis.set_title(f"{row['segment']}, score {float(row['score']):.2f}", fontsize=10)
        axis.axis("off")
    figure.suptitle("Slices to review first (review.csv): segment outlines, model uncertainty in colour", fontsize=11)
    figure.tight_layout()
    return _save(figure, "correction_review.png")


def _canonical_slice(view, row: dict) -> int:
    """The canonical slice of a review row's RAS point."""
    ras = np.array([float(row["r_mm"]), float(row["a_mm"]), float(row["s_mm"]), 1.0])
    return int(round((np.linalg.inv(view.src_to_ras) @ ras)[2]))


def refine_figure(before: SegmentationFile, after: SegmentationFile, view, ct: np.ndarray, slice_index: int,
                  box: str) -> Path:
    """The slice before (with the box), after, and a sagittal view of the kidney before and after propagation."""
    labels_before, labels_after = view.apply(before.labels), view.apply(after.labels)
    values = [float(v) for v in box.split(",")]
    corners = [np.linalg.inv(view.src_to_ras) @ np.array([*values[i:i + 3], 1.0]) for i in (0, 3)]
    figure, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    for axis, labels, title in ((axes[0], labels_before, "before: the left kidney is missed"),
                                (axes[1], labels_after, "after: one box, refined")):
        axis.imshow(soft_tissue(ct[slice_index]), cmap="gray")
        draw_segments(axis, labels[slice_index], before)
        axis.set_title(title, fontsize=10)
        axis.axis("off")
    (c0, r0), (c1, r1) = (corners[0][:2], corners[1][:2])
    axes[0].add_patch(Rectangle((min(c0, c1), min(r0, r1)), abs(c1 - c0), abs(r1 - r0), fill=False, ec="yellow",
                                lw=1.5, ls="--"))
    column = int(round((corners[0][0] + corners[1][0]) / 2))
    rows = slice(max(int(min(r0, r1)) - 20, 0), int(max(r0, r1)) + 20)
    for axis, labels, title in ((axes[2], labels_before, "sagittal, before"),
                                (axes[3], labels_after, "sagittal, after --propagate")):
        axis.imshow(soft_tissue(ct[:, rows, column]), cmap="gray", origin="lower",
                    aspect=view.pixel_spacing[0] / view.pixel_spacing[1])
        draw_segments(axis, labels[:, rows, column], before)
        axis.axhline(slice_index, color="yellow", ls="--", lw=0.8)
        axis.set_title(title + " (dashed: the box's slice)", fontsize=10)
        axis.axis("off")
    figure.suptitle("automedsam refine: a box on one slice, carried to the neighbouring slices", fontsize=11)
    figure.tight_layout()
    return _save(figure, "correction_refine.png")


def _save(figure, name: str) -> Path:
    IMAGES.mkdir(parents=True, exist_ok=True)
    path = IMAGES / name
    figure.savefig(path, dpi=90)
    plt.close(figure)
    print(f"wrote {path}")
    return path


def main(work: Path) -> None:
    before = segment(work)
    volume = read_volume(SAMPLE, "CT")
    view = canonical_view(volume)
    ct = view.apply(volume.array.astype(float))
    slice_index, box = kidney_box(before, view)
    run("refine", str(SAMPLE), str(work / "result.seg.nrrd"), "-c", "left kidney", "--box", box, "--propagate",
        "-o", str(work / "refined.seg.nrrd"))
    after = SegmentationFile.read(work / "refined.seg.nrrd")
    truth = read_volume(REFERENCE, "CT").array == default_catalog().get("kidney_left").ts_total
    for name, result in (("before", before), ("after", after)):
        print(f"left kidney Dice {name}: {dice(result.labels == result.segments['kidney_left'], truth):.3f}")
    review_figure(work, before, view, ct)
    refine_figure(before, after, view, ct, slice_index, box)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as folder:
            main(Path(folder))
