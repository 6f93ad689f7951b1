"""Readers and writers of `automedsam.io` on synthetic volumes: geometry, metadata, atomic writes, errors."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path

import nrrd
import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813 (the conventional alias)
import slicerio

from automedsam import io
from automedsam.catalog import Code, OrganClass
from automedsam.errors import InputError, OutputError
from automedsam.result import LabelVolume, Segment
from automedsam.slice_record import slice_digests
from automedsam.volume import LPS_TO_RAS, Volume, canonical_view

ANATOMY = Code("SCT", "123037004", "Anatomical Structure")


def organ(key: str, name: str, value: int, type_code: Code, color: tuple[int, int, int],
          modifier: Code | None = None, region: Code | None = None) -> OrganClass:
    """A catalog class built by hand (the tests do not depend on the shipped catalog)."""
    return OrganClass(key=key, name=name, label_value=value, region="abdomen", category=ANATOMY, type=type_code,
                      type_modifier=modifier, anatomic_region=region, color=color, modalities=("CT",),
                      window=(50.0, 400.0))


LIVER = organ("liver", "Liver", 5, Code("SCT", "10200004", "Liver"), (221, 130, 101))
KIDNEY_LEFT = organ("kidney_left", "Left kidney", 3, Code("SCT", "64033007", "Kidney"), (185, 102, 83),
                    modifier=Code("SCT", "7771000", "Left"))
VESSEL = organ("vessel", "Hepatic vessel", 300, Code("SCT", "59820001", "Blood vessel"), (0, 151, 206),
               region=Code("SCT", "10200004", "Liver"))


def oblique_flipped_directions() -> np.ndarray:
    """RAS axis directions (columns): rotated 30 degrees about S, then j flipped (left-handed, det -1)."""
    angle = np.deg2rad(30.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0, 0, 1.0]])
    return rotation @ np.diag([1.0, -1.0, 1.0])


@pytest.fixture
def ct_volume() -> Volume:
    """5x6x7 (KJI) CT-like volume, anisotropic voxels, oblique and flipped axes."""
    rng = np.random.default_rng(7)
    array = rng.integers(-1000, 1500, size=(5, 6, 7)).astype(np.int16)
    return Volume.from_array(array, spacing=(0.8, 1.1, 2.5), origin_ras=(12.5, -30.0, 100.0),
                             directions_ras=oblique_flipped_directions(), modality="CT")


@pytest.fixture
def result(ct_volume: Volume) -> LabelVolume:
    """Liver (5) and left kidney (3), plus a stray value 9 that belongs to no segment."""
    labels = np.zeros(ct_volume.array.shape, np.uint8)
    labels[1:4, 1:4, 1:5] = 5
    labels[2:5, 4:6, 3:6] = 3
    labels[0, 0, 0] = 9
    return LabelVolume(labels, ct_volume, (Segment("liver", 5, LIVER), Segment("kidney_left", 3, KIDNEY_LEFT)))


def expected_labels(result: LabelVolume) -> np.ndarray:
    return np.where(result.labels == 9, 0, result.labels)


# ------------------------------------------------------------------------------------------------ reading
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"])
def test_reads_each_format_with_geometry(tmp_path: Path, ct_volume: Volume, suffix: str) -> None:
    path = tmp_path / f"image{suffix}"
    sitk.WriteImage(ct_volume.to_sitk(), str(path))
    volume, source_files = io.read_input(path)
    assert source_files == []
    assert np.array_equal(volume.array, ct_volume.array)
    assert volume.array.dtype == np.int16
    np.testing.assert_allclose(volume.ijk_to_ras, ct_volume.ijk_to_ras, atol=1e-4)
    assert np.linalg.det(volume.directions_ras) < 0          # the flip survived
    assert volume.modality == "CT"                           # guessed: minimum below -500


def test_modality_guess_and_argument(tmp_path: Path, ct_volume: Volume) -> None:
    path = tmp_path / "mr.nrrd"
    sitk.WriteImage(ct_volume.to_sitk((ct_volume.array + 1000).astype(np.int16)), str(path))
    assert io.read_volume(path).modality == "MR"
    assert io.read_volume(path, modality="CT").modality == "CT"
    with pytest.raises(InputError, match="unknown modality 'PET'"):
        io.read_volume(path, modality="PET")


def test_missing_input_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "ct.nii.gz"
    with pytest.raises(InputError, match="does not exist") as info:
        io.read_volume(missing)
    assert str(missing) in str(info.value)


def test_unsupported_and_unreadable_files(tmp_path: Path) -> None:
    picture = tmp_path / "slice.png"
    picture.write_bytes(b"not really a png")
    with pytest.raises(InputError, match=r"unsupported file type.*\.nii\.gz"):
        io.read_volume(picture)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"garbage")
    with pytest.raises(InputError, match="could not read") as info:
        io.read_volume(broken)
    assert "broken.nii.gz" in str(info.value)


def test_refuses_2d_4d_and_rgb(tmp_path: Path) -> None:
    flat = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((6, 7), np.int16)), str(flat))
    with pytest.raises(InputError, match="2D") as info:
        io.read_volume(flat)
    assert "flat.nrrd" in str(info.value)
    series = tmp_path / "series.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 4, 5), np.int16), isVector=False), str(series))
    with pytest.raises(InputError, match="4D"):
        io.read_volume(series)
    rgb = tmp_path / "rgb.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5, 3), np.uint8), isVector=True), str(rgb))
    with pytest.raises(InputError, match="3 components per voxel"):
        io.read_volume(rgb)


def write_dicom_series(folder: Path, volume: Volume, series_uid: str, modality: str, description: str) -> None:
    """One DICOM file per slice with SimpleITK (position, orientation, UIDs and modality tags set)."""
    folder.mkdir(parents=True, exist_ok=True)
    image = volume.to_sitk()
    direction = image.GetDirection()
    orientation = [direction[0], direction[3], direction[6], direction[1], direction[4], direction[7]]
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        plane = image[:, :, k]
        tags = {"0008|0060": modality, "0008|103e": description, "0020|000d": "1.2.826.0.1.3680043.10.511.9.1",
                "0020|000e": series_uid, "0008|0018": f"{series_uid}.{k + 1}", "0020|0013": str(k + 1),
                "0020|0032": "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
                "0020|0037": "\\".join(f"{v:.6f}" for v in orientation)}
        for tag, value in tags.items():
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{series_uid}-{k:03d}.dcm"))
        writer.Execute(plane)


@pytest.fixture
def right_handed_mr() -> Volume:
    """A DICOM-storable MR volume (slices along the orientation normal, as DICOM readers rebuild them)."""
    angle = np.deg2rad(20.0)
    directions = np.array([[np.cos(angle), 0.0, np.sin(angle)], [0.0, 1.0, 0.0], [-np.sin(angle), 0.0, np.cos(angle)]])
    array = np.random.default_rng(3).integers(0, 900, size=(4, 6, 5)).astype(np.int16)
    return Volume.from_array(array, spacing=(0.9, 1.2, 3.0), origin_ras=(-5.0, 8.0, 40.0),
                             directions_ras=directions, modality="MR")


def test_dicom_folder_with_several_series(tmp_path: Path, right_handed_mr: Volume) -> None:
    write_dicom_series(tmp_path, right_handed_mr, "1.2.826.0.1.3680043.10.511.9.2", "MR", "T1 axial")
    write_dicom_series(tmp_path, right_handed_mr, "1.2.826.0.1.3680043.10.511.9.3", "PT", "PET AC")
    with pytest.raises(InputError, match="2 DICOM series") as info:
        io.read_volume(tmp_path)
    assert "1.2.826.0.1.3680043.10.511.9.2 ('T1 axial', 4 files)" in str(info.value)
    assert "1.2.826.0.1.3680043.10.511.9.3 ('PET AC', 4 files)" in str(info.value)
    volume, files = io.read_input(tmp_path, modality="CT", series_uid="1.2.826.0.1.3680043.10.511.9.2")
    assert volume.modality == "MR"                        # the Modality tag wins over the argument
    assert np.array_equal(volume.array, right_handed_mr.array)
    np.testing.assert_allclose(volume.ijk_to_ras, right_handed_mr.ijk_to_ras, atol=1e-4)
    assert [f.name for f in files] == [f"1.2.826.0.1.3680043.10.511.9.2-{k:03d}.dcm" for k in range(4)]
    with pytest.raises(InputError, match=r"is PT \(Modality tag"):
        io.read_volume(tmp_path, series_uid="1.2.826.0.1.3680043.10.511.9.3")
    with pytest.raises(InputError, match="no DICOM series '9.9.9'"):
        io.read_volume(tmp_path, series_uid="9.9.9")


def test_folder_without_dicom(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(InputError, match="no DICOM series found"):
        io.read_volume(tmp_path)


# ------------------------------------------------------------------------------------------------ writing
def test_seg_nrrd_round_trip(tmp_path: Path, result: LabelVolume) -> None:
    path = io.write_seg_nrrd(result, tmp_path / "ct.seg.nrrd")
    segmentation = slicerio.read_segmentation(str(path))
    np.testing.assert_allclose(segmentation["ijkToLPS"], LPS_TO_RAS @ result.ijk_to_ras, atol=1e-6)
    assert np.array_equal(segmentation["voxels"].transpose(2, 1, 0), expected_labels(result))
    by_id = {s["id"]: s for s in segmentation["segments"]}
    assert set(by_id) == {"liver", "kidney_left"}
    kidney = by_id["kidney_left"]
    assert (kidney["name"], kidney["labelValue"], kidney["layer"]) == ("Left kidney", 3, 0)
    np.testing.assert_allclose(kidney["color"], [185 / 255, 102 / 255, 83 / 255], atol=1e-6)
    assert kidney["terminology"] == {
        "contextName": "Segmentation category and type - 3D Slicer General Anatomy list",
        "category": ["SCT", "123037004", "Anatomical Structure"], "type": ["SCT", "64033007", "Kidney"],
        "typeModifier": ["SCT", "7771000", "Left"], "anatomicContextName": "Anatomic codes - DICOM master list"}
    assert nrrd.read_header(str(path))["Segment1_Tags"].count(KIDNEY_LEFT.slicer_terminology()) == 1
    record = kidney["tags"].pop("AutoMedSAM.SliceDigests")     # what was written, slice by slice (slice_record)
    assert kidney["tags"] == {"AutoMedSAM.ClassKey": "kidney_left"}
    view = canonical_view(result.volume)
    assert record == slice_digests(expected_labels(result) == 3, view) and len(record) == 8 * view.shape[0]
    assert kidney["status"] == "inprogress"
    assert kidney["extent"] == [3, 5, 4, 5, 2, 4]         # i0 i1 j0 j1 k0 k1 of its voxels
    assert by_id["liver"]["name"] == "Liver" and by_id["liver"]["labelValue"] == 5
    header = nrrd.read_header(str(path))
    assert header["space"] == "left-posterior-superior"


def test_nifti_labels_and_sidecar(tmp_path: Path, result: LabelVolume) -> None:
    image_path, sidecar = io.write_nifti_labels(result, tmp_path / "ct_labels.nii.gz")
    assert sidecar == tmp_path / "ct_labels.json"
    image = sitk.ReadImage(str(image_path))
    assert image.GetPixelID() == sitk.sitkUInt8
    written = Volume.from_sitk(image)
    assert np.array_equal(written.array, expected_labels(result))
    np.testing.assert_allclose(written.ijk_to_ras, result.ijk_to_ras, atol=1e-4)
    labels = json.loads(sidecar.read_text())
    assert set(labels) == {"5", "3"}
    assert labels["3"] == {"key": "kidney_left", "name": "Left kidney", "color": [185, 102, 83],
                           "category": {"scheme": "SCT", "value": "123037004", "meaning": "Anatomical Structure"},
                           "type": {"scheme": "SCT", "value": "64033007", "meaning": "Kidney"},
                           "type_modifier": {"scheme": "SCT", "value": "7771000", "meaning": "Left"},
                           "anatomic_region": None, "anatomic_region_modifier": None}


def test_nifti_labels_above_255_are_uint16(tmp_path: Path, ct_volume: Volume) -> None:
    labels = np.zeros(ct_volume.array.shape, np.uint16)
    labels[2, 2:4, 2:4] = 300
    vessel = LabelVolume(labels, ct_volume, (Segment("vessel", 300, VESSEL),))
    path = tmp_path / "vessel.nii"
    io.write_result(vessel, path)
    image = sitk.ReadImage(str(path))
    assert image.GetPixelID() == sitk.sitkUInt16
    assert np.array_equal(sitk.GetArrayFromImage(image), labels)
    assert json.loads((tmp_path / "vessel.json").read_text())["300"]["anatomic_region"]["meaning"] == "Liver"


def test_write_result_chooses_by_extension(tmp_path: Path, result: LabelVolume) -> None:
    assert io.write_result(result, tmp_path / "a.seg.nrrd") == tmp_path / "a.seg.nrrd"
    assert io.write_result(result, tmp_path / "b.nii.gz") == tmp_path / "b.nii.gz"
    assert (tmp_path / "b.json").exists()
    for name in ("c.png", "d.nrrd"):
        with pytest.raises(InputError, match=r"unsupported result format; use one of \.seg\.nrrd, \.nii\.gz, \.nii"):
            io.write_result(result, tmp_path / name)
    with pytest.raises(InputError, match="needs a DICOM series as input"):
        io.write_result(result, f"{tmp_path}/dicom_seg/")
    assert not (tmp_path / "dicom_seg").exists()


def test_probability_volume(tmp_path: Path, result: LabelVolume) -> None:
    uncertainty = np.linspace(0, 1, result.labels.size, dtype=np.float64).reshape(result.labels.shape)
    result.uncertainty = uncertainty
    for name in ("u.nii.gz", "u.nrrd", "u.mha"):
        path = io.write_probability_volume(result, tmp_path / name)
        written = io.read_volume(path, modality="CT")
        assert written.array.dtype == np.float32
        np.testing.assert_allclose(written.array, uncertainty.astype(np.float32))
        np.testing.assert_allclose(written.ijk_to_ras, result.ijk_to_ras, atol=1e-4)
    result.uncertainty = None
    with pytest.raises(InputError, match="no uncertainty map"):
        io.write_probability_volume(result, tmp_path / "none.nii.gz")
    with pytest.raises(InputError, match="unsupported file type for a probability map"):
        io.write_probability_volume(result.volume, tmp_path / "u.png")


def test_inconsistent_result_is_refused(tmp_path: Path, result: LabelVolume) -> None:
    clash = LabelVolume(result.labels, result.volume, (Segment("liver", 5, LIVER), Segment("liver2", 5, LIVER)))
    with pytest.raises(InputError, match="distinct"):
        io.write_seg_nrrd(clash, tmp_path / "clash.seg.nrrd")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ atomic writes
def test_disk_full_midway_keeps_previous_output(tmp_path: Path, result: LabelVolume,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    target = io.write_seg_nrrd(result, tmp_path / "ct.seg.nrrd")
    before = target.read_bytes()

    def fill_disk(file: str, segmentation: dict, **kwargs: object) -> None:
        Path(file).write_bytes(b"NRRD0004\npartial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(slicerio, "write_segmentation", fill_disk)
    with pytest.raises(OutputError, match="disk is full") as info:
        io.write_seg_nrrd(result, target)
    assert str(target) in str(info.value)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.seg.nrrd"]


def test_failing_image_write_keeps_both_previous_files(tmp_path: Path, result: LabelVolume,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    image_path, sidecar = io.write_nifti_labels(result, tmp_path / "ct.nii.gz")
    before = (image_path.read_bytes(), sidecar.read_text())

    def broken_writer(image: sitk.Image, file: str, useCompression: bool = False) -> None:
        Path(file).write_bytes(b"\x1f\x8b partial")
        raise RuntimeError("itk::ERROR: NiftiImageIO: could not write")

    monkeypatch.setattr(sitk, "WriteImage", broken_writer)
    with pytest.raises(OutputError, match="could not write"):
        io.write_nifti_labels(result, image_path)
    assert (image_path.read_bytes(), sidecar.read_text()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.json", "ct.nii.gz"]


def make_unwritable(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove write permission; where permission bits do not bind (root), refuse file creation there as the OS would."""
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        create = tempfile.mkstemp

        def refuse(*args: object, dir: str | None = None, **kwargs: object) -> tuple[int, str]:
            if dir is not None and Path(dir) == folder:
                raise PermissionError(errno.EACCES, "Permission denied", str(folder))
            return create(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", refuse)


def test_unwritable_folder(tmp_path: Path, result: LabelVolume, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "readonly"
    folder.mkdir()
    target = io.write_seg_nrrd(result, folder / "ct.seg.nrrd")
    before = target.read_bytes()
    make_unwritable(folder, monkeypatch)
    try:
        with pytest.raises(OutputError, match="permission denied") as info:
            io.write_result(result, target)
        assert str(folder) in str(info.value)
        assert target.read_bytes() == before
        assert [p.name for p in folder.iterdir()] == ["ct.seg.nrrd"]
    finally:
        folder.chmod(0o755)


def test_missing_output_folder(tmp_path: Path, result: LabelVolume) -> None:
    with pytest.raises(OutputError, match="does not exist; create it"):
        io.write_seg_nrrd(result, tmp_path / "missing" / "ct.seg.nrrd")
    with pytest.raises(OutputError, match="does not exist; create it"):
        io.write_nifti_labels(result, tmp_path / "missing" / "ct.nii.gz")
    assert list(tmp_path.iterdir()) == []
