"""No output may overwrite an input or another output: refused before any work, whatever the path spelling."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import SimpleITK as sitk
from cli_harness import assert_refused
from engine_fakes import phantom

pytestmark = pytest.mark.usefixtures("no_model")


def test_output_equal_to_the_input(workspace):
    image = workspace.folder / "ct.nii"
    sitk.WriteImage(phantom(shape_kji=(6, 40, 48)).to_sitk(), str(image))
    workspace.folder.joinpath("ct.nii.gz").unlink()
    assert_refused(workspace.segment("-c", "liver", image=image, output=image), "would destroy the input")


def test_output_spelled_differently_but_the_input(workspace):
    image = workspace.folder / "ct.nrrd"
    sitk.WriteImage(phantom(shape_kji=(6, 40, 48)).to_sitk(), str(image))
    other_spelling = workspace.folder / "sub" / ".." / "ct.nrrd"
    workspace.folder.joinpath("sub").mkdir()
    assert_refused(workspace.segment("-c", "liver", "--uncertainty", other_spelling, image=image),
                   "would destroy the input")


def test_output_is_a_link_to_the_input(workspace):
    link = workspace.folder / "link.nii.gz"
    link.symlink_to(workspace.image)
    assert_refused(workspace.segment("-c", "liver", "--uncertainty", link), "would destroy the input")


def test_output_is_a_hard_link_to_the_input(workspace):
    image = workspace.folder / "ct.nii"
    sitk.WriteImage(phantom(shape_kji=(6, 40, 48)).to_sitk(), str(image))
    hard = workspace.folder / "hard.nii"
    os.link(image, hard)
    assert_refused(workspace.segment("-c", "liver", image=image, output=hard), "would destroy the input")


def test_uncertainty_equal_to_the_output(workspace):
    output = workspace.folder / "result.nii.gz"
    output.write_bytes(b"previous labels")
    assert_refused(workspace.segment("-c", "liver", "--uncertainty", output, output=output), "are the same file")


def test_uncertainty_equal_to_the_input(workspace):
    assert_refused(workspace.segment("-c", "liver", "--uncertainty", workspace.image), "would destroy the input")


def test_dicom_seg_into_the_input_dicom_folder(workspace, reference_files: Path):
    series = workspace.folder / "series"
    shutil.copytree(reference_files / "example_ct_dicom", series)
    assert_refused(workspace.segment("-c", "liver", image=series, output=series), "into the input DICOM folder")


def test_output_file_inside_the_input_dicom_folder(workspace, reference_files: Path):
    series = workspace.folder / "series"
    shutil.copytree(reference_files / "example_ct_dicom", series)
    assert_refused(workspace.segment("-c", "liver", image=series, output=series / "r.seg.nrrd"),
                   "into the input DICOM folder")



def test_report_that_is_the_input_under_another_name(workspace):
    link = workspace.folder / "report.csv"
    link.symlink_to(workspace.image)
    assert_refused(workspace.segment("-c", "liver", "--report", link), "would destroy the input")
