"""The `automedsam` command end to end on files: outputs, exit codes and one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
from engine_fakes import phantom

from automedsam import cli, commands
from automedsam.errors import Cancelled


@pytest.fixture(scope="module")
def phantom_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "phantom.nii.gz"
    sitk.WriteImage(phantom(shape_kji=(6, 40, 48)).to_sitk(), str(path))
    return path


def _box_args(volume_path: Path) -> str:
    """A RAS box around the phantom's liver (voxels i 6..22, j 8..20, k 2..4)."""
    volume = phantom(shape_kji=(6, 40, 48))
    corner0 = volume.ijk_to_ras @ np.array([6, 8, 2, 1.0])
    corner1 = volume.ijk_to_ras @ np.array([22, 20, 4, 1.0])
    return ",".join(f"{v:.2f}" for v in (*corner0[:3], *corner1[:3]))


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    return err[-1]


def test_classes_lists_the_catalog(capsys):
    assert cli.main(["classes", "--region", "abdomen"]) == 0
    out = capsys.readouterr().out
    assert "liver" in out and "Left kidney" in out and "thorax" not in out


def test_models_list_and_verify(capsys):
    assert cli.main(["models", "list"]) == 0
    assert "litemedsam" in capsys.readouterr().out
    assert cli.main(["models", "verify", "litemedsam"]) == 0
    assert " ok" in capsys.readouterr().out


@pytest.mark.parametrize("argv,expected", [
    (["-c", "livr"], "did you mean 'liver'"),
    (["-c", "brain"], "not trained for"),
    (["--box", "1,2,3"], "six comma-separated numbers"),
    (["--box", "900,900,900,990,990,990", "-c", "x"], "RAS"),
])
def test_user_errors_exit_2_with_one_line(argv, expected, phantom_path, tmp_path, capsys):
    code = cli.main(["segment", str(phantom_path), "-o", str(tmp_path / "out.seg.nrrd"), *argv])
    assert code == 2
    line = _error_line(capsys)
    assert line.startswith("error: ") and expected in line
    assert not (tmp_path / "out.seg.nrrd").exists()


def test_bad_paths_exit_2(phantom_path, tmp_path, capsys):
    missing = tmp_path / "missing.nii.gz"
    assert cli.main(["segment", str(missing), "-c", "liver", "-o", str(tmp_path / "o.seg.nrrd")]) == 2
    assert "missing.nii.gz" in _error_line(capsys)
    assert cli.main(["segment", str(phantom_path), "-c", "liver", "-o", str(tmp_path / "o.png")]) == 2
    assert "unsupported result format" in _error_line(capsys)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli.main(["segment", str(phantom_path), "-c", "liver", "-o", str(blocker / "o.seg.nrrd")]) == 2
    assert "is a file, not a folder" in _error_line(capsys)
    assert cli.main(["segment", str(phantom_path), "-c", "liver", "-o", str(tmp_path / "dicom_out")]) == 2
    assert "DICOM" in _error_line(capsys)


def test_two_dimensional_input_exits_2(tmp_path, capsys):
    path = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(64, dtype=np.int16).reshape(8, 8)), str(path))
    assert cli.main(["segment", str(path), "--box", "0,0,0,1,1,1", "-o", str(tmp_path / "o.seg.nrrd")]) == 2
    assert "2D" in _error_line(capsys)


@pytest.mark.realmodel
def test_box_segment_writes_seg_nrrd_and_nifti(phantom_path, tmp_path, capsys):
    box = _box_args(phantom_path)
    out = tmp_path / "lesion.seg.nrrd"
    assert cli.main(["segment", str(phantom_path), "--box", box, "-c", "lesion", "-o", str(out),
                     "--device", "cpu"]) == 0
    segmentation = slicerio.read_segmentation(str(out))
    assert [s["name"] for s in segmentation["segments"]] == ["lesion"]
    assert "wrote" in capsys.readouterr().err
    nifti = tmp_path / "liver.nii.gz"
    assert cli.main(["segment", str(phantom_path), "--box", box, "-c", "liver", "-o", str(nifti)]) == 0
    assert (tmp_path / "liver.json").exists()
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(nifti)))
    assert labels.shape == (6, 40, 48)
    assert not labels[:2].any() and not labels[5:].any()


def test_cancel_mid_run_writes_nothing_and_keeps_previous_output(phantom_path, tmp_path, monkeypatch, capsys):
    out = tmp_path / "kept.seg.nrrd"
    out.write_bytes(b"previous result")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("automedsam.engine.segment_boxes", interrupted)
    assert cli.main(["segment", str(phantom_path), "--box", _box_args(phantom_path), "-o", str(out)]) == 130
    assert out.read_bytes() == b"previous result"
    assert "nothing was written" in _error_line(capsys)

    def cancelled(*args, **kwargs):
        raise Cancelled("segmentation cancelled; nothing was written")

    monkeypatch.setattr("automedsam.engine.segment_boxes", cancelled)
    assert cli.main(["segment", str(phantom_path), "--box", _box_args(phantom_path), "-o", str(out)]) == 2
    assert out.read_bytes() == b"previous result"


def test_internal_errors_exit_1_without_traceback(phantom_path, tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(commands, "read_input", broken)
    assert cli.main(["segment", str(phantom_path), "-c", "liver", "-o", str(tmp_path / "o.seg.nrrd")]) == 1
    line = _error_line(capsys)
    assert line.startswith("internal error: RuntimeError: boom")


def test_console_script_runs_as_a_program():
    completed = subprocess.run([sys.executable, "-m", "automedsam.cli", "--version"], capture_output=True, text=True)
    assert completed.returncode == 0 and "automedsam" in completed.stdout
