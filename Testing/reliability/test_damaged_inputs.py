"""Damaged or incomplete images are refused with what is wrong, never segmented as if they were whole."""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from cli_harness import assert_refused, write_image
from engine_fakes import phantom

pytestmark = pytest.mark.usefixtures("no_model")


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("suffix,expected", [
    (".nii", "is truncated: its header describes 48x40x6 voxels"),
    (".nii.gz", "the file is truncated or damaged"),
    (".mha", "the file is truncated"),
    (".nrrd", "could not read"),
])
def test_truncated_image(workspace, suffix, expected):
    image = workspace.folder / f"half{suffix}"
    sitk.WriteImage(phantom(shape_kji=(6, 40, 48)).to_sitk(), str(image), useCompression=False)
    _truncate(image)
    outcome = workspace.segment("-c", "liver", image=image)
    assert_refused(outcome, expected)
    assert not any(line.startswith(("MetaImage", "WARNING")) for line in outcome.err.splitlines())


def _nifti_without_geometry(path: Path) -> Path:
    """A NIfTI-1 file whose pixdim is 0 and whose qform/sform codes are 0 (no voxel size, no orientation)."""
    sitk.WriteImage(phantom(shape_kji=(6, 40, 48)).to_sitk(), str(path))
    data = bytearray(path.read_bytes())
    data[80:92] = struct.pack("<3f", 0.0, 0.0, 0.0)
    data[252:256] = struct.pack("<2h", 0, 0)
    path.write_bytes(bytes(data))
    return path


def test_nifti_without_voxel_size_and_orientation(workspace):
    image = _nifti_without_geometry(workspace.folder / "nogeometry.nii")
    assert_refused(workspace.segment("-c", "liver", image=image),
                   "stores no voxel size along i, j, k (pixdim = 0, 0, 0) and no orientation")


def test_nifti_that_is_not_nifti(workspace):
    image = workspace.folder / "noise.nii.gz"
    image.write_bytes(gzip.compress(np.random.default_rng(0).bytes(4000)))
    assert_refused(workspace.segment("-c", "liver", image=image), "could not read noise.nii.gz: it is not a NIfTI file")


def test_gzip_that_is_not_gzip(workspace):
    image = workspace.folder / "plain.nii.gz"
    image.write_bytes(b"this is not compressed" * 40)
    assert_refused(workspace.segment("-c", "liver", image=image),
                   "could not read plain.nii.gz: the file is truncated or damaged")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_voxels_are_refused_by_every_reader(workspace, suffix, bad):
    array = phantom(shape_kji=(6, 40, 48)).array.astype(np.float32)
    array[2, 10:12, 10:15] = bad
    image = write_image(array, workspace.folder / f"bad{suffix}")
    assert_refused(workspace.segment("-c", "liver", image=image), "the volume has 10 NaN or infinite voxels")


def test_all_nan_volume_is_called_nan_not_zero(workspace):
    image = write_image(np.full((6, 40, 48), np.nan, dtype=np.float32), workspace.folder / "nan.nii.gz")
    assert_refused(workspace.segment("-c", "liver", image=image), "11,520 NaN or infinite voxels")


@pytest.fixture
def series(workspace, reference_files: Path) -> Path:
    folder = workspace.folder / "series"
    shutil.copytree(reference_files / "example_ct_dicom", folder)
    return folder


def test_dicom_series_with_a_missing_slice(workspace, series):
    sorted(series.iterdir())[9].unlink()
    outcome = workspace.segment("-c", "liver", image=series)
    assert_refused(outcome, "is not evenly spaced: 2 mm between most slices, but 4 mm between")
    assert "WARNING" not in outcome.err


def test_dicom_series_with_a_truncated_file(workspace, series):
    _truncate(sorted(series.iterdir())[12])
    assert_refused(workspace.segment("-c", "liver", image=series), "a slice is probably missing or unreadable")


def test_folder_without_dicom(workspace):
    empty = workspace.folder / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    assert_refused(workspace.segment("-c", "liver", image=empty, output=workspace.output), "no DICOM series found")


def test_non_utf8_input_name(workspace):
    name = workspace.folder / "ct\udcff.nii.gz"
    shutil.copy(workspace.image, name)
    assert_refused(workspace.segment("-c", "liver", image=name), "is not valid UTF-8 text")


def test_non_utf8_output_name(workspace):
    assert_refused(workspace.segment("-c", "liver", output=workspace.folder / "out\udcff.seg.nrrd"),
                   "is not valid UTF-8 text")


def test_non_utf8_file_in_a_dicom_folder(workspace, series):
    shutil.copy(sorted(series.iterdir())[0], series / "extra\udcff.dcm")
    assert_refused(workspace.segment("-c", "liver", image=series), "is not valid UTF-8 text")


def test_two_dimensional_image(workspace):
    image = workspace.folder / "flat.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((40, 48), dtype=np.int16)), str(image))
    assert_refused(workspace.segment("-c", "liver", image=image), "2D; AutoMedSAM needs a 3D volume")


def test_constant_volume(workspace):
    image = write_image(np.full((6, 40, 48), -1000, dtype=np.int16), workspace.folder / "air.nrrd")
    assert_refused(workspace.segment("-c", "liver", image=image), "every voxel is -1000")
