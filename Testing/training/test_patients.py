"""Cases grouped by patient: the reference spec's four patients, and the refusal of one scan under two patients."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import reference_data

from automedsam.errors import InputError
from automedsam_training.data.dataset_spec import load_spec, spec_from_dict

REFERENCE_PATIENTS = {"ct": ["ct"], "ct_dicom": ["ct_dicom"], "mr_sm": ["mr_sm"], "ct_chest": ["ct_chest"]}


def _spec(cases: list[dict], root: Path) -> dict:
    return {"format_version": 1, "name": "t", "root": str(root), "label_map": {"1": "liver"}, "cases": cases}


def test_patients_group_cases_in_order_and_default_to_the_case_id(tmp_path):
    spec = spec_from_dict(_spec([{"id": "a1", "image": "a1.nii.gz", "label": "l1.nii.gz", "patient": "A"},
                                 {"id": "b", "image": "b.nii.gz", "label": "l2.nii.gz"},
                                 {"id": "a2", "image": "a2.nii.gz", "label": "l3.nii.gz", "patient": "A"}], tmp_path),
                          tmp_path, check_files=False)
    assert {patient: [c.id for c in cases] for patient, cases in spec.patients().items()} == \
        {"A": ["a1", "a2"], "b": ["b"]}


def test_one_image_under_two_patients_is_refused(tmp_path):
    cases = [{"id": "x", "image": "ct.nii.gz", "label": "l1.nii.gz", "patient": "P1"},
             {"id": "y", "image": "./ct.nii.gz", "label": "l2.nii.gz", "patient": "P2"}]
    with pytest.raises(InputError, match=r"cases 'x' \(patient 'P1'\) and 'y' \(patient 'P2'\) read the same image"):
        spec_from_dict(_spec(cases, tmp_path), tmp_path, check_files=False)
    cases[1]["patient"] = "P1"
    assert list(spec_from_dict(_spec(cases, tmp_path), tmp_path, check_files=False).patients()) == ["P1"]


@pytest.mark.realdata
def test_reference_spec_has_every_labelled_patient_once():
    spec = load_spec(reference_data.reference_spec())
    assert {p: [c.id for c in cases] for p, cases in spec.patients().items()} == REFERENCE_PATIENTS
    assert spec.case("ct").image.name == "example_ct.nii.gz"
    assert spec.case("ct").label.name == "example_seg_fast_force_split.nii.gz"
    chest = spec.case("ct_chest").label_map
    assert chest == {1: "ribs", 2: "vertebrae", 3: "vertebrae", 4: "vertebrae", 5: "lung_right", 6: "lung_left",
                     7: None}
    assert {"lung_left", "lung_right", "ribs", "vertebrae", "urinary_bladder", "femur_left"} <= set(spec.classes())


@pytest.mark.realdata
def test_a_slab_of_another_patients_scan_is_refused(reference_files, tmp_path):
    cases = [{"id": "ct", "image": "example_ct.nii.gz", "label": "example_seg_fast_force_split.nii.gz",
              "patient": "one"},
             {"id": "ct_sm", "image": "example_ct_sm.nii.gz", "label": "example_seg.nii.gz", "patient": "two"},
             {"id": "mr", "image": "example_mr_sm.nii.gz", "label": "example_seg_mr.nii.gz", "patient": "three"}]
    path = tmp_path / "spec.json"
    data = {**_spec(cases, reference_files), "label_map": {str(v): None for v in range(1, 118)}}
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"slices of one scan .*'ct' \(patient 'one'\) and 'ct_sm' \(patient 'two'\)"):
        load_spec(path)
    cases[1]["patient"] = "one"
    path.write_text(json.dumps(data))
    assert [len(group) for group in load_spec(path).patients().values()] == [2, 1]
