"""The real DICOM CT series of the TotalSegmentator reference files: reading, and a DICOM SEG written on it.

The label map `example_seg_dicom.nii.gz` covers the series' grid with its y axis flipped; it is aligned
to the series in physical space (SimpleITK nearest-neighbour resampling), never by array index. Its
labels are TotalSegmentator model outputs, used here only as realistic masks.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813 (the conventional alias)
from reference_data import dicom_with_uids

from automedsam import io
from automedsam.catalog import Code, OrganClass
from automedsam.errors import InputError
from automedsam.result import LabelVolume, Segment
from automedsam.volume import Volume

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

pytestmark = pytest.mark.realdata

ANATOMY = Code("SCT", "123037004", "Anatomical Structure")
# TotalSegmentator `total` label value -> (key, name, SNOMED type, modifier, colour)
CLASSES = {
    5: ("liver", "Liver", Code("SCT", "10200004", "Liver"), None, (221, 130, 101)),
    1: ("spleen", "Spleen", Code("SCT", "78961009", "Spleen"), None, (157, 108, 162)),
    8: ("adrenal_gland_right", "Right adrenal gland", Code("SCT", "23451007", "Adrenal gland"),
        Code("SCT", "24028007", "Right"), (249, 186, 150)),
}


def segments() -> tuple[Segment, ...]:
    return tuple(Segment(key, value, OrganClass(
        key=key, name=name, label_value=value, region="abdomen", category=ANATOMY, type=type_code,
        type_modifier=modifier, anatomic_region=None, color=color, modalities=("CT",), window=(50.0, 400.0)))
        for value, (key, name, type_code, modifier, color) in CLASSES.items())


def physical_corners(volume: Volume) -> np.ndarray:
    """RAS (mm) of the 8 corner voxel centres, sorted so that two grids covering the same box compare equal."""
    k, j, i = (n - 1 for n in volume.array.shape)
    corners = np.array([[a, b, c, 1.0] for a, b, c in itertools.product((0, i), (0, j), (0, k))])
    points = (volume.ijk_to_ras @ corners.T).T[:, :3]
    return points[np.lexsort(points.T[::-1])]


@pytest.fixture(scope="module")
def series(reference_files: Path) -> tuple[Volume, list[Path]]:
    return io.read_dicom_series(reference_files / "example_ct_dicom")


@pytest.fixture(scope="module")
def series_with_uids(series: tuple[Volume, list[Path]], tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A copy of the series with its UIDs restored (the shipped files were anonymised to empty UIDs).

    SOP Class/Instance UIDs come from each file's meta header; study and series UIDs are fixed ones.
    """
    folder = tmp_path_factory.mktemp("ct_dicom_uids")
    study = pydicom.uid.generate_uid(entropy_srcs=["automedsam-test-study"])
    series_uid = pydicom.uid.generate_uid(entropy_srcs=["automedsam-test-series"])
    return dicom_with_uids(series[1], folder, study, series_uid)


@pytest.fixture(scope="module")
def result(series: tuple[Volume, list[Path]], reference_files: Path) -> LabelVolume:
    """Liver, spleen and right adrenal gland of `example_seg_dicom.nii.gz`, resampled onto the series grid."""
    volume = series[0]
    seg = sitk.ReadImage(str(reference_files / "example_seg_dicom.nii.gz"))
    aligned = sitk.Resample(seg, volume.to_sitk(), sitk.Transform(), sitk.sitkNearestNeighbor, 0, seg.GetPixelID())
    labels = sitk.GetArrayFromImage(aligned)
    labels = np.where(np.isin(labels, list(CLASSES)), labels, 0).astype(np.uint8)
    return LabelVolume(labels, volume, segments())


def test_real_series_reads_as_ct_with_the_label_maps_extent(series: tuple[Volume, list[Path]],
                                                             reference_files: Path) -> None:
    volume, files = series
    assert volume.modality == "CT"
    assert volume.array.shape == (20, 512, 512)
    np.testing.assert_allclose(volume.spacing, [0.9765625, 0.9765625, 2.0])
    assert volume.array.min() < -900 and volume.array.max() > 500      # HU after rescale
    labels = Volume.from_sitk(sitk.ReadImage(str(reference_files / "example_seg_dicom.nii.gz")))
    np.testing.assert_allclose(physical_corners(volume), physical_corners(labels), atol=1e-3)
    assert volume.directions_ras[1, 1] * labels.directions_ras[1, 1] < 0       # y runs the other way
    positions = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
    np.testing.assert_allclose(positions, volume.ijk_to_ras[2, 3] + 2.0 * np.arange(20), atol=1e-3)


def test_labels_are_aligned_in_physical_space(result: LabelVolume, reference_files: Path) -> None:
    raw = sitk.GetArrayFromImage(sitk.ReadImage(str(reference_files / "example_seg_dicom.nii.gz")))
    raw = np.where(np.isin(raw, list(CLASSES)), raw, 0)
    assert np.array_equal(result.labels, np.flip(raw, axis=1))
    assert not np.array_equal(result.labels, raw)
    assert all(np.count_nonzero(result.labels == value) > 1000 for value in CLASSES)


def test_anonymised_series_without_uids_is_refused(result: LabelVolume, series: tuple[Volume, list[Path]],
                                                   tmp_path: Path) -> None:
    with pytest.raises(InputError, match="has no SOPClassUID, SOPInstanceUID, StudyInstanceUID, SeriesInstanceUID"):
        io.write_dicom_seg(result, series[1], tmp_path / "seg")
    assert not (tmp_path / "seg").exists()


def frame_contents(seg_dataset) -> dict[tuple[str, int], np.ndarray]:
    """(referenced source SOP Instance UID, segment number) -> binary frame, read with pydicom only."""
    frames = seg_dataset.pixel_array
    contents = {}
    for index, item in enumerate(seg_dataset.PerFrameFunctionalGroupsSequence):
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        contents[(str(source), number)] = frames[index].astype(bool)
    return contents


def test_dicom_seg_frames_land_on_their_source_slices(result: LabelVolume, series_with_uids: list[Path],
                                                      tmp_path: Path) -> None:
    shuffled = series_with_uids[::2] + series_with_uids[1::2]       # frames are matched by position, not order
    path = io.write_result(result, f"{tmp_path}/seg/", source_files=shuffled)
    assert path == tmp_path / "seg" / "AutoMedSAM-SEG.dcm"
    seg_dataset = pydicom.dcmread(path)
    assert seg_dataset.Modality == "SEG" and seg_dataset.SegmentationType == "BINARY"
    source_uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in series_with_uids]
    source_study = pydicom.dcmread(series_with_uids[0], stop_before_pixels=True).StudyInstanceUID
    assert seg_dataset.StudyInstanceUID == source_study
    contents = frame_contents(seg_dataset)
    for number, value in enumerate(CLASSES, start=1):
        for k, uid in enumerate(source_uids):
            expected = result.labels[k] == value
            stored = contents.get((uid, number))
            assert np.array_equal(stored if stored is not None else np.zeros_like(expected), expected), (value, k)
    assert {uid for uid, _ in contents} <= set(source_uids)


def test_dicom_seg_describes_segments_with_codes(result: LabelVolume, series_with_uids: list[Path],
                                                 tmp_path: Path) -> None:
    path = io.write_dicom_seg(result, series_with_uids, tmp_path)
    seg = hd.seg.segread(path)
    assert seg.get_segment_numbers() == [1, 2, 3]
    descriptions = [seg.get_segment_description(n) for n in (1, 2, 3)]
    assert [d.segment_label for d in descriptions] == ["Liver", "Spleen", "Right adrenal gland"]
    assert [d.tracking_id for d in descriptions] == ["liver", "spleen", "adrenal_gland_right"]
    adrenal = seg.SegmentSequence[2]
    assert adrenal.SegmentedPropertyTypeCodeSequence[0].CodeValue == "23451007"
    assert adrenal.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning \
        == "Right"
    assert adrenal.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "123037004"
    algorithm = adrenal.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "AutoMedSAM" and algorithm.AlgorithmVersion
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in series_with_uids]
    pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=[1, 2, 3])
    for number, value in enumerate(CLASSES, start=1):
        assert np.array_equal(pixels[..., number - 1].astype(bool), result.labels == value)


def test_dicom_seg_refuses_a_result_on_another_grid(result: LabelVolume, series_with_uids: list[Path],
                                                    tmp_path: Path) -> None:
    shifted_geometry = result.volume.ijk_to_ras.copy()
    shifted_geometry[2, 3] += 2.0                                     # one slice further up
    shifted = LabelVolume(result.labels, Volume(result.volume.array, shifted_geometry, "CT"), result.segments)
    with pytest.raises(InputError, match="does not match a slice of the result's grid"):
        io.write_dicom_seg(shifted, series_with_uids, tmp_path)
    with pytest.raises(InputError, match="cover 19 of the result's 20 slices"):
        io.write_dicom_seg(result, series_with_uids[1:], tmp_path)
    assert not (tmp_path / "AutoMedSAM-SEG.dcm").exists()
