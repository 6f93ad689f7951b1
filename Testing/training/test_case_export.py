"""`automedsam export-training`: corrected segmentations become cases of an nnU-Net-style dataset the trainer reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from engine_fakes import phantom

from automedsam import cli
from automedsam.catalog import default_catalog
from automedsam.io import write_nifti_labels, write_seg_nrrd
from automedsam.result import LabelVolume, Segment
from automedsam_training.data.folder_import import import_nnunet_folder


def _result(volume, classes: dict[str, tuple[slice, ...]]) -> LabelVolume:
    catalog = default_catalog()
    labels = np.zeros(volume.array.shape, dtype=np.uint8)
    segments = []
    for key, where in classes.items():
        organ = catalog.get(key)
        labels[where] = organ.label_value
        segments.append(Segment(key, organ.label_value, organ))
    return LabelVolume(labels, volume, tuple(segments))


@pytest.fixture
def case(tmp_path: Path) -> dict[str, Path]:
    """A CT phantom on disk and a corrected segmentation of it (liver and spleen) as .seg.nrrd and NIfTI + JSON."""
    volume = phantom(shape_kji=(5, 40, 48))
    image = tmp_path / "patient1.nrrd"
    sitk.WriteImage(volume.to_sitk(), str(image))
    result = _result(volume, {"liver": np.s_[1:4, 5:15, 5:20], "spleen": np.s_[1:3, 20:30, 30:40]})
    return {"image": image, "volume_array": volume.array, "labels": result.labels,
            "seg": write_seg_nrrd(result, tmp_path / "corrected.seg.nrrd"),
            "nifti": write_nifti_labels(result, tmp_path / "corrected.nii.gz")[0], "folder": tmp_path}


def _run(capsys, *argv: object) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main(["export-training", *map(str, argv)])
    return code, capsys.readouterr().err


def test_a_corrected_seg_nrrd_becomes_a_case_the_trainer_reads(case, capsys):
    dataset = case["folder"] / "Dataset900_Corrections"
    code, err = _run(capsys, case["image"], case["seg"], "-o", dataset, "--patient", "p1")
    assert code == 0, err
    manifest = json.loads((dataset / "dataset.json").read_text())
    catalog = default_catalog()
    assert manifest["channel_names"] == {"0": "CT"} and manifest["numTraining"] == 1
    assert manifest["labels"] == {"background": 0, "liver": catalog.get("liver").label_value,
                                  "spleen": catalog.get("spleen").label_value}
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(dataset / "imagesTr" / "patient1_0000.nii.gz")))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(dataset / "labelsTr" / "patient1.nii.gz")))
    assert np.array_equal(image, case["volume_array"]) and np.array_equal(labels, case["labels"])
    spec = import_nnunet_folder(dataset)
    assert [(c.id, c.patient_id) for c in spec.cases] == [("patient1", "p1")]
    assert set(spec.classes()) == {"liver", "spleen"}
    assert "import-nnunet" in err


def test_cases_accumulate_and_a_repeated_case_is_refused(case, capsys):
    dataset = case["folder"] / "data"
    assert _run(capsys, case["image"], case["seg"], "-o", dataset)[0] == 0
    before = {p: p.read_bytes() for p in sorted(dataset.rglob("*")) if p.is_file()}
    code, err = _run(capsys, case["image"], case["seg"], "-o", dataset)
    assert code == 2 and "already has a case 'patient1'" in err
    assert {p: p.read_bytes() for p in sorted(dataset.rglob("*")) if p.is_file()} == before
    code, err = _run(capsys, case["image"], case["nifti"], "-o", dataset, "--case-id", "patient1_b",
                     "--patient", "patient1")
    assert code == 0, err
    manifest = json.loads((dataset / "dataset.json").read_text())
    assert manifest["numTraining"] == 2 and manifest["patients"] == {"patient1": "patient1", "patient1_b": "patient1"}
    assert [c.patient_id for c in import_nnunet_folder(dataset).cases] == ["patient1", "patient1"]
    assert not [p for p in dataset.rglob(".*")], "temporary files left behind"


def test_segments_are_mapped_renamed_and_ignored_like_the_importer(case, tmp_path, capsys):
    volume = phantom(shape_kji=(5, 40, 48))
    result = _result(volume, {"liver": np.s_[1:4, 5:15, 5:20]})
    custom = default_catalog().custom("my lesion", 0)
    labels = result.labels.copy()
    labels[2, 30:35, 30:35] = custom.label_value
    seg = write_seg_nrrd(LabelVolume(labels, volume, (*result.segments, Segment(custom.key, custom.label_value,
                                                                                     custom))), tmp_path / "c.seg.nrrd")
    code, err = _run(capsys, case["image"], seg, "-o", tmp_path / "d1")
    assert code == 2 and "map to no catalog class" in err and not (tmp_path / "d1").exists()
    code, err = _run(capsys, case["image"], seg, "-o", tmp_path / "d2", "--ignore", "my lesion")
    assert code == 0, err
    assert json.loads((tmp_path / "d2" / "dataset.json").read_text())["labels"].keys() == {"background", "liver"}
    code, err = _run(capsys, case["image"], seg, "-o", tmp_path / "d3", "--rename", "my lesion=gallbladder")
    assert code == 0, err
    saved = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "d3" / "labelsTr" / "patient1.nii.gz")))
    assert np.count_nonzero(saved == default_catalog().get("gallbladder").label_value) == 25


def test_overlapping_segments_are_refused_not_merged(case, tmp_path, slicerio_data, capsys):
    code, err = _run(capsys, slicerio_data / "CTChest4.nrrd", slicerio_data / "SegmentationOverlapping.seg.nrrd",
                     "-o", tmp_path / "chest", "--ignore", "tissue", "--rename", "overlapping sphere=liver")
    assert code == 2 and "overlaps another segment" in err
    assert not (tmp_path / "chest").exists()


def test_a_slicer_made_segmentation_maps_by_its_codes(tmp_path, slicerio_data, capsys):
    code, err = _run(capsys, slicerio_data / "CTChest4.nrrd", slicerio_data / "Segmentation.seg.nrrd",
                     "-o", tmp_path / "chest", "--ignore", "tissue")
    assert code == 0, err
    manifest = json.loads((tmp_path / "chest" / "dataset.json").read_text())
    assert {"lung_left", "lung_right", "ribs"} <= set(manifest["labels"])


def test_modalities_do_not_mix_in_one_dataset(case, tmp_path, capsys):
    dataset = tmp_path / "data"
    assert _run(capsys, case["image"], case["seg"], "-o", dataset)[0] == 0
    code, err = _run(capsys, case["image"], case["seg"], "-o", dataset, "--case-id", "again", "--modality", "MR")
    assert code == 2 and "holds CT images and this image is MR" in err
