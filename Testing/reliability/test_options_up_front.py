"""Every option, class name and output path is checked before anything slow: refused without loading the model."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_harness import assert_refused

pytestmark = pytest.mark.usefixtures("no_model")


@pytest.mark.parametrize("argv,expected", [
    (["-c", "liver", "--uncertainty", "u.txt"], "unsupported file type for an uncertainty map"),
    (["-c", "liver", "--uncertainty", "u.nii.gz", "--samples", "0"], "--samples 0: the uncertainty map needs"),
    (["-c", "liver", "--uncertainty", "u.nii.gz", "--samples", "-3"], "--samples -3"),
    (["-c", "liver", "--batch-size", "0"], "--batch-size 0: give a whole number of slices"),
    (["-c", "liver", "--batch-size", "-1"], "--batch-size -1"),
    (["-c", "livr"], "did you mean 'liver'"),
    (["-c", "brain"], "the model was not trained for 'Brain'"),
    ([], "no class selected"),
    (["--box", "1,2,3"], "six comma-separated numbers"),
    (["--box", "1,2,3,4,5,nan"], "six comma-separated numbers"),
    (["--box", "0,0,0,9,9,9", "-c", "a", "-c", "b"], "--box makes one segment"),
    (["--box", "0,0,0,9,9,9", "--uncertainty", "u.nii.gz"], "not available with --box"),
    (["-c", "liver", "--report", "r.txt"], "the review report is a .csv file"),
    (["-c", "liver", "--report", "r.csv", "--samples", "0"], "--samples 0: the review report needs"),
    (["--box", "0,0,0,9,9,9", "--report", "r.csv"], "--report needs class prompts"),
    (["-c", "liver", "--series", "1"], "DICOM"),
])
def test_bad_option_refused_before_the_model_loads(workspace, argv, expected):
    if "--series" in argv:  # --series with a file input is fine: it only matters for DICOM folders
        argv = [*argv, "-o", str(workspace.folder / "r.png")]
        expected = "unsupported result format"
    assert_refused(workspace.segment(*argv), expected)


@pytest.mark.parametrize("name,expected", [
    ("out.png", "unsupported result format"),
    ("blocker/out.seg.nrrd", "is a file, not a folder"),
    ("dicom_out", "DICOM SEG output, which needs a DICOM series as input"),
])
def test_bad_output_path(workspace, name, expected):
    (workspace.folder / "blocker").write_text("a file where a folder should be")
    assert_refused(workspace.segment("-c", "liver", output=workspace.folder / name), expected)


def test_missing_input(workspace):
    assert_refused(workspace.segment("-c", "liver", image=workspace.folder / "missing.nii.gz"),
                   "missing.nii.gz does not exist")


def test_dicom_seg_of_a_series_without_uids_is_refused_before_the_run(workspace, reference_files: Path):
    series = workspace.folder / "series"
    shutil.copytree(reference_files / "example_ct_dicom", series)
    assert_refused(workspace.segment("-c", "liver", image=series, output=workspace.folder / "seg_out"),
                   "a DICOM SEG must reference them")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_a_gpu_asked_for_that_is_not_there(workspace):
    assert_refused(workspace.segment("-c", "liver", "--device", "cuda"), "no CUDA GPU is available")


def test_user_errors_come_back_without_importing_torch(tmp_path: Path):
    """The heavy imports (torch, OpenVINO: seconds) happen only after the cheap checks passed."""
    code = ("import sys; from automedsam import cli; "
            f"rc = cli.main(['segment', {str(tmp_path / 'missing.nii.gz')!r}, '-c', 'liver', '-o', "
            f"{str(tmp_path / 'o.seg.nrrd')!r}]); print(rc, 'torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.stdout.split() == ["2", "False"], run.stderr
    assert run.stderr.strip().startswith("error: input") and "does not exist" in run.stderr


@pytest.fixture
def two_series(workspace, reference_files: Path) -> Path:
    """A folder with the anonymised example series (no Series Instance UID) and a copy that has UIDs."""
    from reference_data import dicom_with_uids

    folder = workspace.folder / "two"
    shutil.copytree(reference_files / "example_ct_dicom", folder)
    named = workspace.folder / "named"
    named.mkdir()
    files = sorted((reference_files / "example_ct_dicom").iterdir())
    for file in dicom_with_uids(files, named, "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"):
        shutil.move(file, folder / f"named_{file.name}")
    return folder


def test_several_series_need_a_choice_and_the_message_says_how(workspace, two_series):
    outcome = workspace.segment("-c", "liver", image=two_series)
    assert_refused(outcome, "holds 2 DICOM series; pick one by its number or its Series Instance UID")
    assert "1: " in outcome.error_lines[0] and "2: " in outcome.error_lines[0]
    assert "(no UID)" in outcome.error_lines[0] and "--series" in outcome.error_lines[0]


def test_unknown_series(workspace, two_series):
    assert_refused(workspace.segment("-c", "liver", "--series", "9.9.9", image=two_series), "no DICOM series '9.9.9'")


def test_a_reader_that_stops_early_is_no_error(monkeypatch, capsys):
    """`automedsam classes | head -1`: the closed pipe ends the listing quietly, without an internal error."""
    import os

    from automedsam import cli

    read_end, write_end = os.pipe()
    os.close(read_end)                                   # the reader has gone: every write fails with EPIPE
    closed = os.fdopen(write_end, "w", buffering=1)
    monkeypatch.setattr(sys, "stdout", closed)
    assert cli.main(["classes"]) == 0
    assert "error" not in capsys.readouterr().err
