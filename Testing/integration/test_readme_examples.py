"""Every command-line example in the README, run verbatim (real model) on small real files named as it names them."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from automedsam import cli

pytestmark = [pytest.mark.realmodel, pytest.mark.realdata]

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_commands() -> list[list[str]]:
    """The `automedsam ...` lines of the README's "Command line" code block, split as a shell splits them."""
    section = README.read_text(encoding="utf-8").split("## Command line", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "the README's Command line section has no bash block"
    commands = [shlex.split(line, comments=True) for line in block.group(1).splitlines() if line.strip()]
    assert all(command[0] == "automedsam" for command in commands), commands
    return commands


def test_the_readme_has_the_examples_this_test_prepares_files_for():
    names = {word for command in readme_commands() for word in command}
    assert {"ct.nii.gz", "ct.nrrd", "dicom_series_folder/", "--box", "-20,120,150,100,220,170"} <= names


@pytest.fixture(scope="module")
def example_folder(tmp_path_factory, sample_ct_path: Path, sample_seg_path: Path, reference_files: Path) -> Path:
    """ct.nii.gz / ct.nrrd: five slices of the sample CT inside the README's box; result.seg.nrrd: their reference
    liver and spleen (as if corrected by hand; the segment example rewrites it); dicom_series_folder/: the example
    DICOM series with its UIDs restored (a DICOM SEG must reference them)."""
    from reference_data import dicom_with_uids

    folder = tmp_path_factory.mktemp("readme")
    image = sitk.ReadImage(str(sample_ct_path))
    crop = image[:, :, 20:25]
    sitk.WriteImage(crop, str(folder / "ct.nii.gz"))
    sitk.WriteImage(crop, str(folder / "ct.nrrd"))
    _reference_result(folder / "ct.nii.gz", sample_seg_path, folder / "result.seg.nrrd")
    series = folder / "dicom_series_folder"
    series.mkdir()
    dicom_with_uids(sorted((reference_files / "example_ct_dicom").iterdir()), series,
                    "1.2.826.0.1.3680043.8.498.11", "1.2.826.0.1.3680043.8.498.12")
    return folder


def _reference_result(image: Path, reference_labels: Path, output: Path) -> None:
    """A segmentation of `image` (a crop of the sample) made of the sample's reference liver and spleen."""
    from automedsam.catalog import default_catalog
    from automedsam.io import read_volume, write_seg_nrrd
    from automedsam.result import LabelVolume, Segment

    volume = read_volume(image, "CT")
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(reference_labels)))[20:25]
    organs = [default_catalog().get(key) for key in ("liver", "spleen")]
    labels = np.zeros(volume.array.shape, dtype=np.uint8)
    for organ in organs:
        labels[reference == organ.ts_total] = organ.label_value
    write_seg_nrrd(LabelVolume(labels, volume, tuple(Segment(o.key, o.label_value, o) for o in organs)), output)


@pytest.mark.parametrize("command", readme_commands(), ids=lambda command: " ".join(command[1:4]))
def test_readme_example_runs_verbatim(command, example_folder, monkeypatch, capsys):
    monkeypatch.chdir(example_folder)
    code = cli.main(command[1:])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "error:" not in captured.err and "Traceback" not in captured.err
    if "-o" in command:
        output = example_folder / command[command.index("-o") + 1]
        assert output.exists(), output
    if "--box" in command:
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(example_folder / "lesion.seg.nrrd")))
        assert np.count_nonzero(labels), "the README's box example segmented nothing"
    if "--report" in command:
        report = (example_folder / command[command.index("--report") + 1]).read_text().splitlines()
        assert report[0].startswith("rank,class,segment") and len(report) > 1, "the review report lists no slice"
