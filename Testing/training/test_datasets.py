"""Dataset specs, importers (nnU-Net v2, MSD/v1, TotalSegmentator reference) and label alignment in physical
space, including the real DICOM case whose label map is stored y-flipped."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from training_fakes import phantom_case, write_nnunet_folder

from automedsam.errors import InputError
from automedsam.volume import Volume
from automedsam_training.data.alignment import align_labels, read_labelled_volume
from automedsam_training.data.dataset_spec import CaseSpec, load_spec, save_spec
from automedsam_training.data.folder_import import (
    import_nnunet_folder,
    import_totalsegmentator_reference,
    totalsegmentator_label_map,
)


def test_nnunet_import_round_trips_through_a_spec_file(tmp_path):
    folder = write_nnunet_folder(tmp_path / "Dataset001_Phantoms")
    spec = import_nnunet_folder(folder)
    assert [c.id for c in spec.cases] == ["case_000", "case_001"]
    assert spec.cases[0].label_map == {1: "liver", 2: "spleen"} and spec.cases[0].modality == "CT"
    assert spec.cases[0].image.name == "case_000_0000.nii.gz"
    path = save_spec(spec, tmp_path / "spec.json")
    loaded = load_spec(path)
    assert loaded.cases == spec.cases and loaded.classes() == ["spleen", "liver"]   # catalog order
    assert json.loads(path.read_text())["cases"][0]["image"] == "imagesTr/case_000_0000.nii.gz"  # relative to root


def test_msd_layout_renames_and_ignores(tmp_path):
    folder = write_nnunet_folder(tmp_path / "Task01")
    for index in range(2):   # MSD / v1: the manifest lists images without the _0000 channel suffix
        (folder / "labelsTr" / f"case_{index:03d}.nii.gz").rename(folder / "labelsTr" / f"c{index}.nii.gz")
    manifest = {"name": "Task01", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "hepar", "2": "other"},
                "training": [{"image": f"./imagesTr/case_{i:03d}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"}
                             for i in range(2)]}
    (folder / "dataset.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=r"labels \['hepar', 'other'\] are not catalog classes.*--rename"):
        import_nnunet_folder(folder)
    spec = import_nnunet_folder(folder, rename={"hepar": "liver"}, ignore=["other"])
    assert spec.cases[0].label_map == {1: "liver", 2: None}
    assert spec.cases[1].image.name == "case_001_0000.nii.gz" and spec.cases[1].id == "c1"


def test_bad_specs_are_refused_with_reasons(tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text('name = "empty"\ncases = []\n')
    with pytest.raises(InputError, match="lists no cases"):
        load_spec(path)
    path.write_text('label_map = {1 = "livr"}\n[[cases]]\nimage = "a.nii.gz"\nlabel = "b.nii.gz"\n')
    with pytest.raises(InputError, match="did you mean 'liver'"):
        load_spec(path)
    path.write_text('label_map = {1 = "liver"}\n[[cases]]\nimage = "a.nii.gz"\nlabel = "b.nii.gz"\n')
    with pytest.raises(InputError, match="image .*a.nii.gz does not exist"):
        load_spec(path)
    assert load_spec(path, check_files=False).cases[0].label_map == {1: "liver"}


def test_totalsegmentator_maps_and_merged_vertebrae():
    total = totalsegmentator_label_map("total")
    assert total[5] == "liver" and total[31] == "vertebrae_L1" and len(total) == 117
    merged = totalsegmentator_label_map("total", merge_vertebrae=True)
    assert merged[31] == merged[26] == merged[50] == "vertebrae" and merged[25] == "sacrum"
    assert totalsegmentator_label_map("total_mr")[19] == "vertebrae"


def _write(volume: Volume, array: np.ndarray, path) -> sitk.Image:
    image = volume.to_sitk(array)
    sitk.WriteImage(image, str(path))
    return image


def test_labels_stored_with_flipped_axes_are_aligned_losslessly(tmp_path):
    volume, labels = phantom_case()
    flipped = np.ascontiguousarray(labels[:, ::-1, :])                 # store the j axis reversed ...
    matrix = volume.ijk_to_ras.copy()
    matrix[:3, 3] += matrix[:3, 1] * (labels.shape[1] - 1)              # ... with the geometry that says so
    matrix[:3, 1] *= -1
    stored = Volume(flipped, matrix).to_sitk()
    aligned = align_labels(volume.to_sitk(), stored)
    assert np.array_equal(aligned, labels)
    assert not np.array_equal(sitk.GetArrayFromImage(stored), labels)   # by array index it would be wrong


def test_labels_on_another_grid_need_an_explicit_resample(tmp_path):
    volume, labels = phantom_case()
    coarse = sitk.Resample(volume.to_sitk(labels), [s // 2 for s in volume.to_sitk().GetSize()], sitk.Transform(),
                           sitk.sitkNearestNeighbor, volume.to_sitk().GetOrigin(),
                           [2 * s for s in volume.to_sitk().GetSpacing()], volume.to_sitk().GetDirection(), 0,
                           sitk.sitkUInt8)
    with pytest.raises(InputError, match=r"voxel grid differs .*size .*spacing .*resample_labels"):
        align_labels(volume.to_sitk(), coarse)
    resampled = align_labels(volume.to_sitk(), coarse, resample=True)
    assert resampled.shape == labels.shape
    assert (resampled == labels).mean() > 0.9


def test_label_values_missing_from_the_map_are_refused(tmp_path):
    volume, labels = phantom_case()
    image_path, label_path = tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz"
    _write(volume, volume.array, image_path)
    labels[0, 0, 0] = 7
    _write(volume, labels, label_path)
    case = CaseSpec("c", image_path, label_path, {1: "liver", 2: "spleen"}, "CT")
    with pytest.raises(InputError, match=r"label values \[7\] .* not in the label map"):
        read_labelled_volume(case)
    assert read_labelled_volume(CaseSpec("c", image_path, label_path, {1: "liver", 2: None, 7: None}, "CT")) \
        .class_mask("liver").sum() == (labels == 1).sum()


@pytest.mark.realdata
def test_real_dicom_labels_align_in_physical_space(reference_files):
    spec = import_totalsegmentator_reference(reference_files)
    dicom = read_labelled_volume(spec.case("ct_dicom"))
    liver = dicom.class_mask("liver")
    assert liver.sum() == 366708                                       # every labelled voxel kept
    hu = dicom.volume.array[liver]
    assert 40 < hu.mean() < 160 and np.median(hu) > 40                 # soft tissue (measured: 89 HU)
    raw = sitk.GetArrayFromImage(sitk.ReadImage(str(spec.case("ct_dicom").label)))
    assert dicom.volume.array[raw == 5].mean() < 0                     # array-index alignment would be wrong
    ct = read_labelled_volume(spec.case("ct"))
    assert 20 < ct.volume.array[ct.class_mask("liver")].mean() < 160
    assert ct.class_mask("vertebrae").sum() == sum(int((ct.labels == v).sum()) for v in range(26, 51))
    assert ct.class_mask("lung_left").sum() == int(np.isin(ct.labels, [10, 11]).sum()) > 0   # lobes -> whole lung
    slab = import_totalsegmentator_reference(reference_files, include_ct_sm=True)
    assert slab.case("ct_sm").patient_id == "ct" and list(slab.patients()) == ["ct", "ct_dicom", "mr_sm"]
