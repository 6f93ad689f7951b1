"""`automedsam-train import-slicer`: Slicer segmentations as training cases, on slicerio's real chest CT and its
Slicer-made segmentations, and on small written ones for the cases that file does not have."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from automedsam.errors import InputError
from automedsam_training import cli
from automedsam_training.data.alignment import read_labelled_volume
from automedsam_training.data.slicer_import import SegmentChoices, import_slicer_segmentation, map_segments

CHEST_CODES = {"ribs": "ribs", "cervical vertebral column": "cervical_spine",
               "thoracic vertebral column": "thoracic_spine", "lumbar vertebral column": "lumbar_spine",
               "right lung": "lung_right", "left lung": "lung_left"}
GENERAL_ANATOMY = "Segmentation category and type - 3D Slicer General Anatomy list"
SPACING = (2.0, 1.5, 3.0)
ORIGIN = (10.0, -20.0, 5.0)


def _terms(type_value: str, meaning: str, modifier: tuple[str, str] | None = None, scheme: str = "SCT") -> dict:
    """A slicerio terminology dict in the Anatomical Structure category."""
    terms = {"contextName": GENERAL_ANATOMY, "category": [scheme, "123037004", "Anatomical Structure"],
             "type": [scheme, type_value, meaning]}
    if modifier:
        terms["typeModifier"] = [scheme, *modifier]
    return terms


def _image(path: Path, size: tuple[int, int, int] = (12, 10, 8)) -> Path:
    """A small CT-like image (IJK size `size`) with identity directions."""
    image = sitk.GetImageFromArray(np.full(size[::-1], -100, np.int16))
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    sitk.WriteImage(image, str(path))
    return path


def _segmentation(path: Path, segments: list[tuple[np.ndarray, dict]], offset=(0, 0, 0), flip_i: bool = False,
                  spacing=SPACING, shape=(12, 10, 8)) -> Path:
    """A .seg.nrrd written by slicerio: IJK masks with segment fields, on a grid shifted by `offset` voxels."""
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = np.diag(spacing)
    ijk_to_lps[:3, 3] = np.array(ORIGIN) + np.array(offset) * np.array(SPACING)
    if flip_i:
        ijk_to_lps[0, 0] = -spacing[0]
        ijk_to_lps[0, 3] = ORIGIN[0] + (offset[0] + shape[0] - 1) * SPACING[0]
    segmentation = slicerio.create_segmentation(shape, ijk_to_lps)
    for mask, fields in segments:
        slicerio.add_segment(segmentation, mask[::-1] if flip_i else mask, fields)
    slicerio.write_segmentation(str(path), segmentation)
    return path


def _box(shape=(12, 10, 8), low=(2, 2, 2), high=(5, 5, 4)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[low[0]:high[0], low[1]:high[1], low[2]:high[2]] = True
    return mask


def _labels(case) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(case.label)))


# ---------------------------------------------------------------- slicerio's real chest CT

def test_chest_segments_map_by_snomed_code_and_keep_every_voxel(slicerio_data, tmp_path):
    result = import_slicer_segmentation(slicerio_data / "CTChest4.nrrd", slicerio_data / "Segmentation.seg.nrrd",
                                        tmp_path, "chest", modality="CT", choices=SegmentChoices(ignore=("tissue",)))
    found = {m.name: (m.class_key, m.how) for m in result.segments}
    assert found == {**{name: (key, "code") for name, key in CHEST_CODES.items()}, "tissue": (None, "ignored")}
    (case,) = result.cases
    assert case.id == case.patient_id == "chest" and case.label_map[5] == "lung_right" and case.label_map[7] is None
    source = slicerio.read_segmentation(str(slicerio_data / "Segmentation.seg.nrrd"))
    assert np.array_equal(_labels(case), source["voxels"].transpose(2, 1, 0))       # same grid: IJK -> KJI
    labelled = read_labelled_volume(case)                                             # the training reader agrees
    lungs = labelled.class_mask("lung_left") | labelled.class_mask("lung_right")
    assert labelled.volume.array[lungs].mean() < -500                                 # air: aligned, not shifted
    assert any("tissue" in line and "ignored" in line for line in result.listing())


def test_unmapped_chest_segment_is_listed_then_refused(slicerio_data, tmp_path):
    with pytest.raises(InputError, match=r"'tissue' \(layer 0, value 7\) \[Tissue \(SCT 85756007\)\].*--ignore NAME"):
        import_slicer_segmentation(slicerio_data / "CTChest4.nrrd", slicerio_data / "Segmentation.seg.nrrd", tmp_path)
    assert not list(tmp_path.iterdir())                                               # nothing written


def test_overlapping_segments_become_one_case_per_layer(slicerio_data, tmp_path):
    image, overlapping = slicerio_data / "CTChest4.nrrd", slicerio_data / "SegmentationOverlapping.seg.nrrd"
    choices = SegmentChoices(rename={"overlapping sphere": "liver"}, ignore=("tissue",))
    result = import_slicer_segmentation(image, overlapping, tmp_path, "ov", choices=choices)
    assert [c.id for c in result.cases] == ["ov_layer0", "ov_layer1"]
    assert {c.patient_id for c in result.cases} == {"ov"} and result.cases[1].label_map == {1: "liver"}
    layer0, layer1 = (_labels(case) for case in result.cases)
    source = slicerio.read_segmentation(str(overlapping))["voxels"]
    assert np.array_equal(layer1, source[1].transpose(2, 1, 0))
    assert np.count_nonzero((layer0 > 0) & (layer1 > 0)) > 1000                      # overlap kept, not merged
    sphere_only = import_slicer_segmentation(image, overlapping, tmp_path / "b", "ov",
                                             choices=SegmentChoices(ignore=("tissue", "overlapping sphere")))
    assert [c.id for c in sphere_only.cases] == ["ov_layer0"] and sphere_only.skipped_layers == (1,)


def test_cli_import_honours_rename_ignore_and_append(slicerio_data, tmp_path, capsys):
    spec = tmp_path / "chest.json"
    image, segmentation = str(slicerio_data / "CTChest4.nrrd"), str(slicerio_data / "Segmentation.seg.nrrd")
    assert cli.main(["import-slicer", image, segmentation, "-o", str(spec)]) == 2
    assert "'tissue'" in capsys.readouterr().err and not spec.exists()
    assert cli.main(["import-slicer", image, segmentation, "-o", str(spec), "--case-id", "a", "--ignore", "tissue",
                     "--rename", "ribs=sternum", "--merge-vertebrae", "--modality", "CT"]) == 0
    data = json.loads(spec.read_text())
    label_map = data["label_maps"][data["cases"][0]["label_map"]]
    assert label_map == {"1": "sternum", "2": "vertebrae", "3": "vertebrae", "4": "vertebrae", "5": "lung_right",
                         "6": "lung_left", "7": None}
    assert (tmp_path / "chest_labels" / "a.nrrd").is_file()
    assert cli.main(["import-slicer", image, segmentation, "-o", str(spec), "--case-id", "b", "--ignore-unmapped",
                     "--append"]) == 2                                                # same image, another patient
    assert "same image" in capsys.readouterr().err
    assert cli.main(["import-slicer", image, segmentation, "-o", str(spec), "--case-id", "b", "--patient", "a",
                     "--ignore-unmapped", "--append"]) == 0
    assert [c["patient"] for c in json.loads(spec.read_text())["cases"]] == ["a", "a"]


# ---------------------------------------------------------------- mapping rules on written segmentations

def test_code_first_then_name_then_refusal(tmp_path):
    segments = [
        {"name": "liver", "terminology": _terms("78961009", "Spleen")},                # code wins over name
        {"name": "Left kidney"},                                                       # no terminology: name
        {"name": "lung", "terminology": _terms("39607008", "Lung", ("7771000", "Left"), scheme="SRT")},
        {"name": "blob", "terminology": {**_terms("85756007", "Tissue"),
                                         "category": ["SCT", "85756007", "Tissue"]}},
        {"name": "Segment_5"},                                                         # nothing to go by
    ]
    for index, segment in enumerate(segments):
        segment.update(labelValue=index + 1, layer=0)
    with pytest.raises(InputError, match=r"2 segment\(s\).*'blob'.*'Segment_5' \(layer 0, value 5\) \[no termin"):
        map_segments(segments, "x.seg.nrrd", {}, ())
    mapped = map_segments(segments, "x.seg.nrrd", {"blob": "liver"}, ("Segment_5",))
    assert [(m.class_key, m.how) for m in mapped] == [
        ("spleen", "code"), ("kidney_left", "name"), ("lung_left", "code"), ("liver", "renamed"), (None, "ignored")]
    loose = map_segments(segments, "x.seg.nrrd", {}, (), ignore_unmapped=True)
    assert [m.class_key for m in loose][3:] == [None, None]
    with pytest.raises(InputError, match=r"not in the file: \['lvier'\]"):
        map_segments(segments, "x.seg.nrrd", {"lvier": "liver"}, ())
    with pytest.raises(InputError, match="did you mean 'liver'"):
        map_segments(segments, "x.seg.nrrd", {"blob": "livr"}, ())


# ---------------------------------------------------------------- geometry

def test_cropped_and_flipped_segmentations_align_exactly(tmp_path):
    image = _image(tmp_path / "ct.nrrd")
    expected = np.zeros((8, 10, 12), np.uint8)
    expected[3:5, 4:7, 5:8] = 1                              # KJI of IJK box [5:8, 4:7, 3:5]
    spleen = {"name": "spleen", "terminology": _terms("78961009", "Spleen")}
    cropped = _segmentation(tmp_path / "crop.seg.nrrd", [(_box((6, 5, 4), (2, 2, 1), (5, 5, 3)), spleen)],
                            offset=(3, 2, 2), shape=(6, 5, 4))
    flipped = _segmentation(tmp_path / "flip.seg.nrrd", [(_box(low=(5, 4, 3), high=(8, 7, 5)), spleen)], flip_i=True)
    for path in (cropped, flipped):
        (case,) = import_slicer_segmentation(image, path, tmp_path / "labels", path.name.split(".")[0]).cases
        assert np.array_equal(_labels(case), expected), path.name


def test_other_grids_are_refused_with_the_differences_or_resampled(tmp_path):
    image = _image(tmp_path / "ct.nrrd")
    spleen = {"name": "spleen", "terminology": _terms("78961009", "Spleen")}
    coarse = _segmentation(tmp_path / "coarse.seg.nrrd", [(_box((6, 5, 4), (1, 1, 1), (3, 3, 2)), spleen)],
                           spacing=(4.0, 3.0, 6.0), shape=(6, 5, 4))
    with pytest.raises(InputError, match=r"grid differs .*spacing \(2.0, 1.5, 3.0\) vs \(4.0, 3.0, 6.0\).*--resample"):
        import_slicer_segmentation(image, coarse, tmp_path / "labels")
    (case,) = import_slicer_segmentation(image, coarse, tmp_path / "labels", resample=True).cases
    resampled = _labels(case)                                # 2x2x2 coarse voxels, each about 2x2x2 image voxels
    assert set(np.unique(resampled)) == {0, 1} and 16 <= np.count_nonzero(resampled) <= 64
    outside = _segmentation(tmp_path / "out.seg.nrrd", [(_box(low=(8, 2, 2), high=(12, 4, 4)), spleen)],
                            offset=(4, 0, 0))
    with pytest.raises(InputError, match=r"outside the image \(label value: voxels outside \{1: 16\}\)"):
        import_slicer_segmentation(image, outside, tmp_path / "labels")


def test_segmentation_of_old_slicer_one_segment_per_layer(tmp_path):
    """Slicer before 4.11 wrote segment i as value 1 of layer i, with no Layer or LabelValue field."""
    import nrrd

    layers = np.zeros((2, 12, 10, 8), np.uint8)
    layers[0][_box()] = 1
    layers[1][_box(low=(3, 3, 3), high=(7, 6, 5))] = 1                              # overlaps segment 0
    header = {"space": "left-posterior-superior", "kinds": ["list", "domain", "domain", "domain"],
              "space directions": np.vstack([np.full(3, np.nan), np.diag(SPACING)]), "space origin": np.array(ORIGIN),
              "Segment0_ID": "s0", "Segment0_Name": "liver", "Segment1_ID": "s1", "Segment1_Name": "spleen"}
    nrrd.write(str(tmp_path / "old.seg.nrrd"), layers, header)
    result = import_slicer_segmentation(_image(tmp_path / "ct.nrrd"), tmp_path / "old.seg.nrrd", tmp_path / "l")
    assert [(c.id, c.label_map) for c in result.cases] == [("old_layer0", {1: "liver"}), ("old_layer1", {1: "spleen"})]
    assert np.array_equal(_labels(result.cases[1]), layers[1].transpose(2, 1, 0))

