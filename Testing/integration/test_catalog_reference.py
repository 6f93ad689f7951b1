"""The class catalog against its references: TotalSegmentator's label maps, class map and SNOMED mapping, and
Slicer's own terminology code (slicer-core)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813

from automedsam.catalog import GENERAL_ANATOMY_CONTEXT, ClassCatalog, default_catalog

TERM_PATH = Path(__file__).resolve().parents[2] / "Resources" / "AutoMedSAM.term.json"
SAMPLE_LABEL_MAPS = [  # file in TotalSegmentator's tests/reference_files, task of its label values, modality
    ("example_seg.nii.gz", "total", "CT"),
    ("example_seg_dicom.nii.gz", "total", "CT"),
    ("example_seg_mr.nii.gz", "total_mr", "MR"),
]
# Deliberate differences from totalsegmentator_snomed_mapping.csv (2.18.0): SCT 29700009 is the *right*
# subclavian artery, so both sides use the generic 36765005 "Subclavian artery" with a laterality modifier
# (as Slicer's DICOM master list does); "Gluteus minius muscle" is a typo of 75297007's meaning.
TYPE_CORRECTIONS = {f"subclavian_artery_{side}": ("36765005", "Subclavian artery") for side in ("left", "right")}
MEANING_CORRECTIONS = {"75297007": "Gluteus minimus muscle"}


@pytest.fixture(scope="module")
def cat() -> ClassCatalog:
    return default_catalog()


def _label_values(path: Path) -> list[int]:
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    return [int(v) for v in np.unique(array) if v != 0]


def _check_label_map(cat: ClassCatalog, path: Path, task: str, modality: str, names: dict[int, str]) -> None:
    values = _label_values(path)
    assert len(values) > 10, f"{path.name}: expected a multi-organ label map"
    for value in values:
        organ = cat.by_ts_label(task, value)
        assert organ is not None, f"{path.name}: {task} label {value} ({names.get(value)}) is not in the catalog"
        assert organ.key == names[value]
        assert modality in organ.modalities, organ.key


def test_bundled_sample_label_map_is_covered(cat, sample_seg_path):
    names = {o.ts_total: o.key for o in cat if o.ts_total is not None}
    _check_label_map(cat, sample_seg_path, "total", "CT", names)


@pytest.mark.realdata
@pytest.mark.parametrize(("filename", "task", "modality"), SAMPLE_LABEL_MAPS)
def test_every_class_of_the_reference_label_maps_is_in_the_catalog(cat, reference_files, ts_class_map, filename,
                                                                    task, modality):
    _check_label_map(cat, reference_files / filename, task, modality, ts_class_map[task])


@pytest.mark.realdata
def test_every_totalsegmentator_total_and_total_mr_class_is_in_the_catalog(cat, ts_class_map):
    for task, names in ts_class_map.items():
        for value, name in names.items():
            organ = cat.by_ts_label(task, value)
            assert organ is not None and organ.key == name, f"{task} {value} {name}"
            assert cat.get(name) is organ


@pytest.mark.realdata
def test_codes_match_totalsegmentators_snomed_mapping(cat, reference_files):
    mapping_path = reference_files.parents[1] / "totalsegmentator" / "resources" / "totalsegmentator_snomed_mapping.csv"
    with mapping_path.open(newline="", encoding="utf-8") as handle:
        mapping = {row["Structure"]: row for row in csv.DictReader(handle)}
    compared = 0
    for organ in cat:
        row = mapping.get(organ.key)
        if row is None:
            continue
        compared += 1
        fields = [("SegmentedPropertyCategoryCodeSequence", organ.category),
                  ("SegmentedPropertyTypeCodeSequence", organ.type),
                  ("SegmentedPropertyTypeModifierCodeSequence", organ.type_modifier),
                  ("AnatomicRegionSequence", organ.anatomic_region),
                  ("AnatomicRegionModifierSequence", organ.anatomic_region_modifier)]
        for prefix, code in fields:
            expected = (row[f"{prefix}.CodeValue"], row[f"{prefix}.CodeMeaning"])
            if prefix == "SegmentedPropertyTypeCodeSequence":
                expected = TYPE_CORRECTIONS.get(organ.key, expected)
                expected = (expected[0], MEANING_CORRECTIONS.get(expected[0], expected[1]))
            assert ((code.value, code.meaning) if code else ("", "")) == expected, f"{organ.key} {prefix}"
    assert compared >= 117


@pytest.mark.slicer
def test_slicer_reads_the_terminology_strings_and_the_context(cat):
    """Slicer's own code parses every entry string back to the same string and finds project codes in term.json."""
    slicer_core = pytest.importorskip("slicer_core")
    logic = slicer_core.vtkSlicerTerminologiesModuleLogic()
    context = logic.LoadTerminologyFromFile(str(TERM_PATH))
    assert context and context != GENERAL_ANATOMY_CONTEXT
    listed = _slicer_listed_codes(slicer_core, logic, context)
    project = 0
    for organ in cat:
        entry = slicer_core.vtkSlicerTerminologyEntry()
        text = organ.slicer_terminology()
        assert slicer_core.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(text, entry), organ.key
        assert slicer_core.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(entry) == text
        assert entry.GetTypeObject().GetCodeValue() == organ.type.value
        if organ.terminology_context == context:
            project += 1
            modifier = organ.type_modifier.value if organ.type_modifier else ""
            assert (organ.category.value, organ.type.value, modifier) in listed, organ.key
    assert project > 0


def _slicer_listed_codes(slicer_core, logic, context: str) -> set[tuple[str, str, str]]:
    """(category, type, modifier) code values of a loaded context, read through Slicer's terminology logic."""
    listed = set()
    for i in range(logic.GetNumberOfCategoriesInTerminology(context)):
        category = slicer_core.vtkSlicerTerminologyCategory()
        logic.GetNthCategoryInTerminology(context, i, category)
        for j in range(logic.GetNumberOfTypesInTerminologyCategory(context, category)):
            type_ = slicer_core.vtkSlicerTerminologyType()
            logic.GetNthTypeInTerminologyCategory(context, category, j, type_)
            listed.add((category.GetCodeValue(), type_.GetCodeValue(), ""))
            for k in range(logic.GetNumberOfTypeModifiersInTerminologyType(context, category, type_)):
                modifier = slicer_core.vtkSlicerTerminologyType()
                logic.GetNthTypeModifierInTerminologyType(context, category, type_, k, modifier)
                listed.add((category.GetCodeValue(), type_.GetCodeValue(), modifier.GetCodeValue()))
    return listed
