"""Runs that go on: plausibility warnings (one line each), series choice, file modes, interrupts, quiet fallbacks."""

from __future__ import annotations

import contextlib
import shutil
import signal
import stat
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from cli_harness import PREVIOUS, assert_refused, umask, write_image
from engine_fakes import FakeModel, phantom

from automedsam import acceleration, openvino_backend
from automedsam.engine import EngineOptions, segment

REPO_ROOT = Path(__file__).resolve().parents[2]


def _succeeded(outcome) -> None:
    assert outcome.code == 0, outcome.err
    assert not outcome.error_lines and "Traceback" not in outcome.err


def test_implausible_spacing_warns_once(workspace):
    image = write_image(phantom(shape_kji=(6, 40, 48)).array, workspace.folder / "huge.nrrd",
                        spacing=(1000.0, 1000.0, 1000.0))
    outcome = workspace.segment("-c", "liver", image=image)
    _succeeded(outcome)
    assert len(outcome.warnings) == 1 and "voxel spacing 1000 x 1000 x 1000 mm is implausible" in outcome.warnings[0]


def test_a_label_map_given_as_the_image_warns(workspace):
    labels = np.zeros((6, 40, 48), dtype=np.uint8)
    labels[:, 10:20, 10:30] = 5
    labels[:, 25:30, 5:15] = 2
    outcome = workspace.segment("-c", "liver", image=write_image(labels, workspace.folder / "labels.nii.gz"))
    _succeeded(outcome)
    assert len(outcome.warnings) == 1 and "it looks like a label map or mask" in outcome.warnings[0]


def test_values_scaled_by_1e30_warn(workspace):
    scaled = phantom(shape_kji=(6, 40, 48)).array.astype(np.float64) * 1e30
    outcome = workspace.segment("-c", "liver", image=write_image(scaled, workspace.folder / "scaled.nrrd"))
    _succeeded(outcome)
    assert len(outcome.warnings) == 1 and "far outside any CT (HU) or MR range" in outcome.warnings[0]


def test_a_real_ct_gets_no_warning(workspace, sample_ct_path):
    outcome = workspace.segment("-c", "liver", image=sample_ct_path)
    _succeeded(outcome)
    assert outcome.warnings == []


def test_a_zero_size_box_warns(workspace):
    volume = phantom(shape_kji=(6, 40, 48))
    corner = volume.ijk_to_ras @ np.array([10, 10, 2, 1.0])
    other = volume.ijk_to_ras @ np.array([20, 20, 2, 1.0])
    box = ",".join(f"{v:.3f}" for v in (*corner[:3], *other[:3]))
    outcome = workspace.segment("--box", box, "-c", "lesion")
    _succeeded(outcome)
    assert len(outcome.warnings) == 1 and "the box has zero size along S" in outcome.warnings[0]


def test_a_series_is_chosen_by_number_or_uid(workspace, reference_files: Path):
    from reference_data import dicom_with_uids

    folder = workspace.folder / "two"
    shutil.copytree(reference_files / "example_ct_dicom", folder)
    named = workspace.folder / "named"
    named.mkdir()
    for file in dicom_with_uids(sorted(folder.iterdir()), named, "1.2.3.4", "1.2.3.5"):
        shutil.move(file, folder / f"named_{file.name}")
    _succeeded(workspace.segment("-c", "liver", "--series", "1.2.3.5", image=folder))
    _succeeded(workspace.segment("-c", "liver", "--series", "1", image=folder))


@pytest.mark.parametrize("name", ["labels.seg.nrrd", "labels.nii.gz"])
def test_results_honour_the_umask(workspace, name):
    output = workspace.folder / name
    _succeeded(workspace.segment("-c", "liver", "--uncertainty", workspace.folder / "u.nii.gz", output=output))
    expected = 0o666 & ~umask()
    written = [output, workspace.folder / "u.nii.gz"] + ([workspace.folder / "labels.json"] if "nii" in name else [])
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == expected, path


def test_demo_output_folder_is_ignored_by_git():
    assert "automedsam-demo/" in (REPO_ROOT / ".gitignore").read_text().split()


class InterruptedModel(FakeModel):
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        raise KeyboardInterrupt


def test_ctrl_c_mid_run_exits_130_and_writes_nothing(workspace, monkeypatch):
    monkeypatch.setattr("automedsam.loading.load_model", lambda *a, **k: InterruptedModel())
    outcome = workspace.segment("-c", "liver")
    assert_refused(outcome, "interrupted; nothing was written", code=130)
    assert workspace.output.read_bytes() == PREVIOUS


class _Small(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def test_ctrl_c_during_the_openvino_conversion_propagates(monkeypatch):
    """torch.export may catch the KeyboardInterrupt and fail with another error; the user's Ctrl-C still wins."""
    pytest.importorskip("openvino")

    def export_that_swallows(*args: object, **kwargs: object) -> None:
        with contextlib.suppress(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        raise RuntimeError("export failed\n" + "torch internal log line\n" * 100)

    monkeypatch.setattr(torch.export, "export", export_that_swallows)
    with pytest.raises(KeyboardInterrupt):
        openvino_backend.convert_module(_Small(), (torch.rand(2, 4),))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_failing_conversion_shows_none_of_torchs_log(monkeypatch, capfd):
    """What torch.export logs or warns while it fails stays out of the user's terminal; the error still comes."""
    import logging
    import warnings

    def noisy_export(*args: object, **kwargs: object) -> None:
        for number in range(100):
            logging.getLogger("torch._dynamo").error("dynamo log line %d", number)
        warnings.warn("a torch warning", UserWarning, stacklevel=1)
        raise RuntimeError("export failed")

    monkeypatch.setattr(torch.export, "export", noisy_export)
    pytest.importorskip("openvino")
    with pytest.raises(RuntimeError, match="export failed"):
        openvino_backend.convert_module(_Small(), (torch.rand(2, 4),))
    captured = capfd.readouterr()
    assert "dynamo log line" not in captured.err + captured.out and "a torch warning" not in captured.err
    assert logging.getLogger("torch._dynamo").isEnabledFor(logging.ERROR)   # logging is back afterwards


def test_automatic_device_says_when_it_runs_on_the_cpu(caplog):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with caplog.at_level("INFO", logger="automedsam"):
        segment(phantom(shape_kji=(4, 40, 48)), ["liver"], FakeModel(), EngineOptions(device="auto"))
    lines = [r.getMessage() for r in caplog.records if "running on" in r.getMessage()]
    assert len(lines) == 1 and "running on cpu (no GPU found)" in lines[0]


def test_a_conversion_error_falls_back_with_one_warning_line(monkeypatch):
    warnings: list[str] = []

    def failing(*args: object, **kwargs: object) -> None:
        raise RuntimeError("conversion failed here\n" + "torch internal log line\n" * 100)

    monkeypatch.setattr("automedsam.runner.plan_execution",
                        lambda device, precision, backend, model=None: acceleration.ExecutionPlan(
                            "openvino" if backend == "auto" else backend, "fp32"))
    monkeypatch.setattr("automedsam.runner.make_encode", lambda model, device, plan: (
        failing() if plan.backend == "openvino" else model.encode))
    result = segment(phantom(shape_kji=(4, 40, 48)), ["liver"], FakeModel(), EngineOptions(warn=warnings.append))
    assert result.labels.any()
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "RuntimeError: conversion failed here)" in warnings[0]


def test_nifti_without_orientation_warns_but_runs(workspace):
    image = workspace.folder / "noorient.nii"
    sitk.WriteImage(phantom(shape_kji=(6, 40, 48)).to_sitk(), str(image))
    data = bytearray(image.read_bytes())
    data[252:256] = b"\0\0\0\0"
    image.write_bytes(bytes(data))
    outcome = workspace.segment("-c", "liver", image=image)
    _succeeded(outcome)
    assert len(outcome.warnings) == 1 and "stores no orientation" in outcome.warnings[0]


def test_review_report_ranks_every_segment_slice(workspace):
    import csv

    report = workspace.folder / "review.csv"
    outcome = workspace.segment("-c", "liver", "-c", "spleen", "--report", report)
    _succeeded(outcome)
    rows = list(csv.DictReader(report.open()))
    assert rows and {row["class"] for row in rows} == {"liver", "spleen"}
    assert [int(row["rank"]) for row in rows] == list(range(1, len(rows) + 1))
    scores = [float(row["score"]) for row in rows]
    assert scores == sorted(scores, reverse=True)
    assert f"wrote {report} ({len(rows)} segment slices); most suspect:" in outcome.err
    assert stat.S_IMODE(report.stat().st_mode) == 0o666 & ~umask()


def test_missing_output_folders_are_made_for_every_output(workspace):
    """`-o results/ct1/liver.seg.nrrd --report reports/ct1.csv`: the folders are made, as the user expects (they
    were checked writable before the run; the run used to finish and then fail to write)."""
    output = workspace.folder / "results" / "ct1" / "liver.seg.nrrd"
    report = workspace.folder / "reports" / "ct1.csv"
    uncertainty = workspace.folder / "maps" / "u.nii.gz"
    outcome = workspace.segment("-c", "liver", "--report", str(report), "--uncertainty", str(uncertainty),
                                output=output)
    _succeeded(outcome)
    assert output.is_file() and report.is_file() and uncertainty.is_file()
    refined = workspace.folder / "refined" / "liver.seg.nrrd"
    outcome = workspace.run(["refine", str(workspace.image), str(output), "-c", "liver", "--point", "31,-3.2,39",
                             "-o", str(refined)])
    _succeeded(outcome)
    assert refined.is_file()
