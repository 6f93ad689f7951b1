"""`automedsam refine`: what it changes (one class, the refined slices), and every refusal before the model loads.

The phantom (cli_harness workspace: 6 x 40 x 48 voxels, spacing 1.5 x 1.2 x 3 mm, origin RAS (10, -20, 30)) has its
"liver" at i 6..22, j 8..20, k 2..5, i.e. R 19..43, A -10.4..4, S 36..45 mm.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from cli_harness import Workspace, assert_refused

from automedsam.segmentation_file import SegmentationFile

LIVER_POINT = "31,-3.2,39"          # voxel i 14, j 14, k 3
LIVER_BOX = "22,-10.4,39,46,4,39"   # i 8..24, j 8..20 on slice k 3


@pytest.fixture
def seg(workspace: Workspace, model_calls: list) -> Path:
    """A liver + spleen result of the phantom whose liver is missing on slice k = 3 (a poor slice to refine)."""
    path = workspace.folder / "result.seg.nrrd"
    assert workspace.segment("-c", "liver", "-c", "spleen", output=path).code == 0
    source = SegmentationFile.read(path)
    labels = source.labels.copy()
    liver = source.segments["liver"]
    labels[3][labels[3] == liver] = 0
    source.write(labels, path)
    model_calls.clear()  # the refusals below must come before the refine command loads a model
    return path


def refine(workspace: Workspace, seg: Path, *argv: str, output: Path | None = None):
    return workspace.run(["refine", str(workspace.image), str(seg), "-o", str(output or workspace.output), *argv])


def test_a_box_restores_the_slice_and_changes_nothing_else(workspace, seg):
    before = SegmentationFile.read(seg)
    outcome = refine(workspace, seg, "-c", "liver", "--box", LIVER_BOX)
    assert outcome.code == 0, outcome.err
    after = SegmentationFile.read(workspace.output)
    liver = before.segments["liver"]
    assert after.labels.dtype == before.labels.dtype
    assert (after.labels[3] == liver).sum() > 100
    unchanged = np.ones(after.labels.shape, dtype=bool)
    unchanged[3] = False
    assert np.array_equal(after.labels[unchanged], before.labels[unchanged])
    assert np.array_equal(after.labels[3] == before.segments["spleen"], before.labels[3] == before.segments["spleen"])
    assert after.segments == before.segments and after.names == before.names


def test_propagation_stops_where_the_segmentation_already_agrees(workspace, seg):
    """Slice k 3 refined; the fake's box masks of k 2 and 4 agree with the liver there (Dice >= 0.7), so propagation
    stops on both sides and every other slice, and the spleen everywhere, stays as it was."""
    before = SegmentationFile.read(seg)
    outcome = refine(workspace, seg, "-c", "liver", "--point", LIVER_POINT, "--propagate")
    assert outcome.code == 0, outcome.err
    assert "propagation inferior: stopped, the slice's segmentation already agrees" in outcome.err
    assert "on the slice at S = 36.0 mm" in outcome.err and "on the slice at S = 42.0 mm" in outcome.err
    after = SegmentationFile.read(workspace.output)
    assert np.array_equal(np.delete(after.labels, 3, axis=0), np.delete(before.labels, 3, axis=0))
    assert (after.labels[3] == before.segments["liver"]).sum() > 100


def test_nifti_results_keep_their_label_table_byte_for_byte(workspace):
    path = workspace.folder / "result.nii.gz"
    assert workspace.segment("-c", "liver", output=path).code == 0
    output = workspace.folder / "refined.nii.gz"
    assert refine(workspace, path, "-c", "liver", "--point", LIVER_POINT, output=output).code == 0
    assert (workspace.folder / "refined.json").read_bytes() == (workspace.folder / "result.json").read_bytes()
    written, source = sitk.ReadImage(str(output)), sitk.ReadImage(str(path))
    assert written.GetSpacing() == source.GetSpacing() and written.GetDirection() == source.GetDirection()


@pytest.mark.usefixtures("no_model")
@pytest.mark.parametrize(("argv", "expected"), [
    (["-c", "liver", "--point", "-30,-3.2,39"], "the point at RAS (-30.0, -3.2, 39.0) mm lies outside the volume"),
    (["-c", "liver", "--box", "-90,-3,39,-80,4,39"], "does not intersect the volume"),
    (["-c", "liver", "--point", LIVER_POINT, "--point", "31,-3.2,42"], "points lie on 2 different slices"),
    (["-c", "liver", "--box", "22,-10.4,36,46,4,45"], "the box spans 4 slices"),
    (["-c", "liver", "--box", LIVER_BOX, "--point", "31,-3.2,42"], "are on different slices"),
    (["-c", "liver", "--point", "31,-3.2,39,-"], "negative points can only remove from a mask"),
    (["-c", "liver"], "no refinement prompt given"),
    (["-c", "liver", "--point", "31,-3.2"], "--point expects R,A,S"),
    (["-c", "heart", "--point", LIVER_POINT], "class 'heart' is not in result.seg.nrrd"),
    (["-c", "liver", "-c", "spleen", "--point", LIVER_POINT], "exactly one -c NAME"),
])
def test_bad_prompts_are_refused_before_the_model_loads(workspace, seg, argv, expected):
    assert_refused(refine(workspace, seg, *argv), expected)


@pytest.mark.usefixtures("no_model")
def test_a_segmentation_of_another_grid_is_refused_naming_the_differences(workspace, seg):
    source = SegmentationFile.read(seg)
    other = workspace.folder / "other.nii.gz"
    image = sitk.GetImageFromArray(source.labels[:, :, :40])
    image.SetSpacing((1.0, 1.2, 3.0))
    image.SetOrigin((-10.0, 25.0, 30.0))
    sitk.WriteImage(image, str(other))
    (workspace.folder / "other.json").write_text('{"1": {"key": "liver", "name": "Liver"}}', encoding="utf-8")
    outcome = refine(workspace, other, "-c", "liver", "--point", LIVER_POINT, output=workspace.folder / "o.nii.gz")
    assert_refused(outcome, "is not on the image's grid (size 48x40x6 vs 40x40x6 voxels; spacing")
    assert "origin (RAS)" in outcome.error_lines[0]


@pytest.mark.usefixtures("no_model")
@pytest.mark.parametrize("target", ["segmentation", "image"])
def test_the_output_must_not_be_an_input(workspace, seg, target):
    output = seg if target == "segmentation" else workspace.image
    expected = "is the input" if target == "segmentation" else "must have the segmentation's format"
    assert_refused(refine(workspace, seg, "-c", "liver", "--point", LIVER_POINT, output=output), expected)


@pytest.mark.parametrize("name", ["result.seg.nrrd", "result.nii.gz"])
def test_a_class_of_the_model_missing_from_the_file_becomes_a_new_segment(workspace, name):
    """Liver segmented only; refining the model's spleen with a box adds a Spleen segment, the liver stays."""
    path = workspace.folder / name
    assert workspace.segment("-c", "liver", output=path).code == 0
    output = workspace.folder / ("refined" + name[len("result"):])
    outcome = refine(workspace, path, "-c", "spleen", "--box", "52,1.6,45,70,15,45", output=output)
    assert outcome.code == 0, outcome.err
    assert "spleen added and refined on 1 slice(s)" in outcome.err
    before, after = SegmentationFile.read(path), SegmentationFile.read(output)
    assert after.names["spleen"] == "Spleen" and after.segments["liver"] == before.segments["liver"]
    spleen = after.labels == after.segments["spleen"]
    assert spleen[5].sum() > 20 and not spleen[np.arange(6) != 5].any()
    assert np.array_equal(after.labels == before.segments["liver"], before.labels == before.segments["liver"])


def _missed(workspace: Workspace, slices: list[int]) -> Path:
    """A liver + spleen result whose liver the run itself missed on `slices` (the record says it wrote them so)."""
    from automedsam.slice_record import slice_digests

    path = workspace.folder / "missed.seg.nrrd"
    assert workspace.segment("-c", "liver", "-c", "spleen", output=path).code == 0
    source = SegmentationFile.read(path)
    labels = source.labels.copy()
    liver = source.segments["liver"]
    for index in slices:
        labels[index][labels[index] == liver] = 0
    source.write(labels, path, {"liver": slice_digests(labels == liver, source.view())})
    return path


def test_results_carry_the_record_of_what_was_written(workspace, seg):
    from automedsam.slice_record import changed_slices

    source = SegmentationFile.read(seg)
    record = source.record_of("liver")
    assert record is not None and len(record) == 8 * source.labels.shape[0]
    assert changed_slices(record, source.labels == source.segments["liver"], source.view()) == {3}  # the fixture's edit
    spleen = source.labels == source.segments["spleen"]
    assert changed_slices(source.record_of("spleen"), spleen, source.view()) == set()


def test_propagation_never_enters_a_slice_edited_since_the_run(workspace):
    """The run missed the liver on k 3 and 4; refined on k 3, propagation fills k 4 ... unless the user has edited k 4
    since (a stroke painted in Slicer): then k 4 keeps the user's voxels and the command says why it stopped."""
    path = _missed(workspace, [3, 4])
    filled = workspace.folder / "filled.seg.nrrd"
    assert refine(workspace, path, "-c", "liver", "--point", LIVER_POINT, "--propagate", output=filled).code == 0
    liver = SegmentationFile.read(path).segments["liver"]
    assert (SegmentationFile.read(filled).labels[4] == liver).sum() > 100
    edited = SegmentationFile.read(path)
    labels = edited.labels.copy()
    labels[4, 10:12, 10:14] = liver            # the user's stroke; the record is not updated by Slicer's editor
    edited.write(labels, path)
    outcome = refine(workspace, path, "-c", "liver", "--point", LIVER_POINT, "--propagate")
    assert outcome.code == 0, outcome.err
    assert "propagation superior: stopped, the slice at S = 42.0 mm was edited by hand" in outcome.err
    after = SegmentationFile.read(workspace.output)
    assert np.array_equal(after.labels[4], labels[4])
    assert after.record_of("liver") != edited.record_of("liver")     # the refined slice is AutoMedSAM's again
