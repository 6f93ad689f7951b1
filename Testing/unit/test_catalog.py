"""The class catalog: lookups, label values, Slicer terminology strings, term.json and csv validation."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest

from automedsam import catalog as catalog_module
from automedsam.catalog import (
    ANATOMIC_CONTEXT,
    COLUMNS,
    CUSTOM_PALETTE,
    CUSTOM_REGION,
    GENERAL_ANATOMY_CONTEXT,
    REGIONS,
    TERMINOLOGY_SCHEMAS,
    ClassCatalog,
    default_catalog,
)
from automedsam.errors import InputError

RESOURCES = Path(__file__).resolve().parents[2] / "Resources"
CSV_PATH = RESOURCES / "classes.csv"
TERM_PATH = RESOURCES / "AutoMedSAM.term.json"

# (category, type, type modifier) code values that Slicer's "Segmentation category and type - 3D Slicer General
# Anatomy list" lists (Modules/Loadable/Terminologies/Resources/SegmentationCategoryTypeModifier-SlicerGeneralAnatomy
# .json, Slicer commit 583e9b37d50e). Every catalog entry that is not in AutoMedSAM.term.json must be one of these;
# a new class with a code outside this list belongs in AutoMedSAM.term.json (or here, after checking Slicer's file).
GENERAL_ANATOMY = {
    ("123037004", "10200004", ""),  # Liver
    ("123037004", "12738006", ""),  # Brain
    ("123037004", "15776009", ""),  # Pancreas
    ("123037004", "15825003", ""),  # Aorta
    ("123037004", "23451007", "24028007"),  # Adrenal gland, Right
    ("123037004", "23451007", "7771000"),  # Adrenal gland, Left
    ("123037004", "2748008", ""),  # Spinal cord
    ("123037004", "28231008", ""),  # Gallbladder
    ("123037004", "30315005", ""),  # Small intestine
    ("123037004", "32849002", ""),  # Esophagus
    ("123037004", "38848004", ""),  # Duodenum
    ("123037004", "39607008", "24028007"),  # Lung, Right
    ("123037004", "39607008", "7771000"),  # Lung, Left
    ("123037004", "41216001", ""),  # Prostate
    ("123037004", "44567001", ""),  # Trachea
    ("123037004", "45653009", "24028007"),  # Upper lobe of lung, Right
    ("123037004", "45653009", "7771000"),  # Upper lobe of lung, Left
    ("123037004", "51299004", "24028007"),  # Clavicle, Right
    ("123037004", "51299004", "7771000"),  # Clavicle, Left
    ("123037004", "56873002", ""),  # Sternum
    ("123037004", "64033007", "24028007"),  # Kidney, Right
    ("123037004", "64033007", "7771000"),  # Kidney, Left
    ("123037004", "69695003", ""),  # Stomach
    ("123037004", "69748006", ""),  # Thyroid gland
    ("123037004", "71854001", ""),  # Colon
    ("123037004", "72481006", ""),  # Middle lobe of right lung
    ("123037004", "78961009", ""),  # Spleen
    ("123037004", "80891009", ""),  # Heart
    ("123037004", "89546000", ""),  # Skull
    ("123037004", "89837001", ""),  # Urinary bladder
    ("123037004", "90572001", "24028007"),  # Lower lobe of lung, Right
    ("123037004", "90572001", "7771000"),  # Lower lobe of lung, Left
    ("123037004", "113197003", ""),  # Rib (the codes of slicerio's Slicer-made Segmentation.seg.nrrd)
    ("123037004", "122494005", ""),  # Cervical spine
    ("123037004", "122495006", ""),  # Thoracic spine
    ("123037004", "122496007", ""),  # Lumbar spine
    ("49755003", "367643001", ""),  # Cyst (Morphologically Altered Structure)
}
# (region, region modifier) code values of Slicer's "Anatomic codes - DICOM master list" that the catalog uses.
ANATOMIC_MASTER = {("64033007", "7771000"), ("64033007", "24028007"), ("64033007", "")}  # Kidney (Left, Right)


@pytest.fixture(scope="module")
def cat() -> ClassCatalog:
    return default_catalog()


def _code_id(organ) -> tuple[str, str, str]:
    return (organ.category.value, organ.type.value, organ.type_modifier.value if organ.type_modifier else "")


# ---------------------------------------------------------------- lookups

@pytest.mark.parametrize(("text", "key"), [
    ("kidney_left", "kidney_left"),          # key
    ("Left kidney", "kidney_left"),          # display name
    ("left kidney", "kidney_left"),          # case
    ("  LEFT   KIDNEY ", "kidney_left"),     # spacing
    ("Kidney-Left", "kidney_left"),          # hyphen instead of underscore
    ("kidneyleft", "kidney_left"),           # no separator at all
    ("kidney l", "kidney_left"),             # synonym
    ("IVC", "inferior_vena_cava"),
    ("inferior vena cava", "inferior_vena_cava"),
    ("gall bladder", "gallbladder"),
    ("spine", "vertebrae"),
    ("L1", "vertebrae_L1"),
    ("vertebrae_l1", "vertebrae_L1"),
    ("atlas", "vertebrae_C1"),
    ("left first rib", "rib_left_1"),
    ("RUL", "lung_upper_lobe_right"),
])
def test_get_finds_key_name_and_synonym(cat, text, key):
    assert cat.get(text).key == key
    assert text in cat


@pytest.mark.parametrize(("typo", "suggestion"), [("livr", "liver"), ("kidny left", "kidney_left"),
                                                  ("pancreass", "pancreas")])
def test_unknown_name_suggests_the_closest_class(cat, typo, suggestion):
    with pytest.raises(InputError) as caught:
        cat.get(typo)
    assert str(caught.value).startswith(f"unknown class {typo!r}; did you mean {suggestion!r}?")


def test_unknown_name_without_close_match_and_empty_name(cat):
    with pytest.raises(InputError, match="unknown class 'xyzzy'") as caught:
        cat.get("xyzzy")
    assert "did you mean" not in str(caught.value)
    with pytest.raises(InputError, match="empty"):
        cat.get("  ")
    assert "xyzzy" not in cat


def test_label_values_follow_totalsegmentator(cat):
    for organ in cat:
        if organ.ts_total is not None:
            assert organ.label_value == organ.ts_total, organ.key
        else:
            assert organ.label_value > 200, organ.key
        assert cat.by_label_value(organ.label_value) is organ
    assert cat.by_label_value(0) is None
    assert cat.by_ts_label("total", 3).key == "kidney_left"
    assert cat.by_ts_label("total", 5).key == "liver"
    assert cat.by_ts_label("total_mr", 19).key == "vertebrae"
    assert cat.by_ts_label("total_mr", 10).key == "lung_left"
    assert cat.by_ts_label("total", 250) is None
    with pytest.raises(InputError, match="total_mr"):
        cat.by_ts_label("totl", 1)


def test_catalog_content_is_complete_and_consistent(cat):
    keys = cat.keys()
    assert len(cat) == len(keys) >= 125
    assert {"ribs", "cervical_spine", "thoracic_spine", "lumbar_spine"} <= set(keys)
    assert {"liver", "vertebrae", "autochthon_left", "autochthon_right", "intervertebral_discs"} <= set(keys)
    assert len({o.name for o in cat}) == len(cat)
    assert cat.get("vertebrae").type.value == "51282000"
    assert cat.get("vertebrae").modalities == ("CT", "MR")
    assert cat.get("lung_upper_lobe_left").modalities == ("CT",)
    assert cat.get("intervertebral_discs").modalities == ("MR",)
    assert cat.get("lung_upper_lobe_left").window == (-600.0, 1500.0)
    assert cat.get("femur_left").window == (400.0, 1800.0)
    assert cat.get("liver").window == (40.0, 400.0)
    assert cat.get("vertebrae").multi_component and cat.get("colon").multi_component
    assert not cat.get("liver").multi_component and not cat.get("vertebrae_L1").multi_component
    for organ in cat:
        assert organ.name[0].isupper(), organ.key
        assert all(0 <= c <= 255 for c in organ.color)


def test_regions_group_every_class_once_in_order(cat):
    grouped = cat.regions()
    assert list(grouped) == [r for r in REGIONS if r in grouped]
    assert set(grouped) == set(REGIONS)
    flat = [organ for organs in grouped.values() for organ in organs]
    assert sorted(o.key for o in flat) == sorted(cat.keys())
    assert cat.get("liver") in grouped["abdomen"]
    assert cat.get("aorta") in grouped["vessels"]
    labels = [o.label_value for o in grouped["spine"]]
    assert labels == sorted(labels)


def test_default_catalog_is_cached():
    assert default_catalog() is default_catalog()


# ---------------------------------------------------------------- terminology

def test_terminology_string_of_a_general_anatomy_class(cat):
    assert cat.get("liver").slicer_terminology() == (
        "Segmentation category and type - 3D Slicer General Anatomy list"
        "~SCT^123037004^Anatomical Structure~SCT^10200004^Liver~^^"
        "~Anatomic codes - DICOM master list~^^~^^")
    assert cat.get("kidney_cyst_left").slicer_terminology() == (
        "Segmentation category and type - 3D Slicer General Anatomy list"
        "~SCT^49755003^Morphologically Altered Structure~SCT^367643001^Cyst~^^"
        "~Anatomic codes - DICOM master list~SCT^64033007^Kidney~SCT^7771000^Left")


def test_terminology_string_of_a_project_context_class(cat):
    context = json.loads(TERM_PATH.read_text())["SegmentationCategoryTypeContextName"]
    assert cat.get("rib_left_3").slicer_terminology() == (
        f"{context}~SCT^123037004^Anatomical Structure~SCT^25888004^Third rib~SCT^7771000^Left"
        "~Anatomic codes - DICOM master list~^^~^^")


def test_every_terminology_string_has_slicers_format(cat):
    code = r"([^~^|]*\^[^~^|]*\^[^~^|]*)"
    pattern = re.compile(rf"(?P<context>[^~^|]+)~{code}~{code}~{code}~(?P<anatomic>[^~^|]+)~{code}~{code}")
    for organ in cat:
        text = organ.slicer_terminology()
        match = pattern.fullmatch(text)
        assert match, text
        assert match["context"] == organ.terminology_context
        assert match["anatomic"] == ANATOMIC_CONTEXT
        assert match[3] == organ.type.slicer_string()
        assert text.split("~")[1] != "^^"  # Slicer refuses an empty category


def test_color_float(cat):
    organ = cat.get("liver")
    assert organ.color_float() == pytest.approx(tuple(c / 255 for c in organ.color))
    assert all(0.0 <= c <= 1.0 for o in cat for c in o.color_float())


def test_term_json_is_a_slicer_context_listing_every_code_not_in_general_anatomy(cat):
    document = json.loads(TERM_PATH.read_text(encoding="utf-8"))
    assert document["@schema"] in TERMINOLOGY_SCHEMAS
    context = document["SegmentationCategoryTypeContextName"]
    listed, colors = set(), {}
    for category in document["SegmentationCodes"]["Category"]:
        for type_ in category["Type"]:
            assert {"CodingSchemeDesignator", "CodeValue", "CodeMeaning"} <= set(type_)
            listed.add((category["CodeValue"], type_["CodeValue"], ""))
            colors[(category["CodeValue"], type_["CodeValue"], "")] = type_.get("recommendedDisplayRGBValue")
            for modifier in type_.get("Modifier", []):
                listed.add((category["CodeValue"], type_["CodeValue"], modifier["CodeValue"]))
                colors[(category["CodeValue"], type_["CodeValue"], modifier["CodeValue"])] = \
                    modifier["recommendedDisplayRGBValue"]
    for organ in cat:
        code_id = _code_id(organ)
        if code_id in GENERAL_ANATOMY:
            assert organ.terminology_context == GENERAL_ANATOMY_CONTEXT, organ.key
            assert code_id not in listed, f"{organ.key} is in Slicer's General Anatomy list and in term.json"
        else:
            assert code_id in listed, f"{organ.key}: {code_id} is neither in General Anatomy nor in term.json"
            assert organ.terminology_context == context, organ.key
            assert colors[code_id] == list(organ.color), organ.key
        if organ.anatomic_region is not None:
            modifier = organ.anatomic_region_modifier.value if organ.anatomic_region_modifier else ""
            assert (organ.anatomic_region.value, modifier) in ANATOMIC_MASTER, organ.key


# ---------------------------------------------------------------- custom segments

def test_custom_class_for_a_free_segment_name(cat):
    first = cat.custom("My lesion")
    assert first.name == "My lesion" and first.key == "my_lesion"
    assert first.region == CUSTOM_REGION
    assert first.label_value > max(o.label_value for o in cat)
    assert cat.by_label_value(first.label_value) is None
    assert first.color == CUSTOM_PALETTE[0]
    assert first.slicer_terminology() == (
        "Segmentation category and type - 3D Slicer General Anatomy list~SCT^85756007^Tissue~SCT^85756007^Tissue"
        "~^^~Anatomic codes - DICOM master list~^^~^^")
    second = cat.custom("Other", taken={first.label_value})
    assert second.label_value == first.label_value + 1
    assert second.color == CUSTOM_PALETTE[1]
    assert cat.custom("Other", 1).label_value == first.label_value + 1  # one index per prompt: distinct values
    assert cat.custom("Third", 1, taken={first.label_value}).label_value == first.label_value + 2
    with pytest.raises(InputError, match="empty"):
        cat.custom("   ")


# ---------------------------------------------------------------- csv validation

def _rows() -> list[list[str]]:
    with CSV_PATH.open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def _write(tmp_path: Path, rows: list[list[str]]) -> Path:
    path = tmp_path / "classes.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)
    shutil.copy(TERM_PATH, tmp_path / TERM_PATH.name)
    return path


def _edit(rows: list[list[str]], key: str, column: str, value: str) -> list[list[str]]:
    row = next(r for r in rows if r[0] == key)
    row[COLUMNS.index(column)] = value
    return rows


def test_an_unchanged_copy_loads_like_the_shipped_file(tmp_path):
    loaded = ClassCatalog.load(_write(tmp_path, _rows()))
    assert loaded.keys() == default_catalog().keys()
    assert [o.slicer_terminology() for o in loaded] == [o.slicer_terminology() for o in default_catalog()]


@pytest.mark.parametrize(("key", "column", "value", "message"), [
    ("liver", "key", "spleen", "key 'spleen' is already used"),
    ("liver", "name", "Spleen", "display name 'Spleen' is already used"),
    ("liver", "label_value", "1", "label value 1 is already used"),
    ("liver", "label_value", "five", "label_value 'five' is not an integer"),
    ("liver", "color_g", "256", "color_g 256 is outside 0..255"),
    ("liver", "color_r", "-1", "color_r -1 is outside 0..255"),
    ("liver", "type_value", "", "type code is incomplete"),
    ("liver", "category_scheme", "", "category code is incomplete"),
    ("kidney_left", "modifier_meaning", "", "modifier code is incomplete"),
    ("liver", "type_meaning", "Li~ver", "contains '~'"),
    ("liver", "region", "belly", "region 'belly' is not one of"),
    ("liver", "modalities", "CT;PET", "modalities 'CT;PET'"),
    ("liver", "window_width", "0", "positive width"),
    ("liver", "synonyms", "spleen", "the name 'spleen' also names 'spleen'"),
    ("liver", "ts_total", "1", "ts_total value 1 is already used"),
    ("liver", "key", "3liver", "must start with a letter"),
    ("liver", "multi_component", "yes", "multi_component 'yes' must be 0 or 1"),
])
def test_broken_csv_names_the_row(tmp_path, key, column, value, message):
    rows = _rows()
    line = next(i for i, r in enumerate(rows, start=1) if r[0] == key)
    path = _write(tmp_path, _edit(rows, key, column, value))
    with pytest.raises(InputError) as caught:
        ClassCatalog.load(path)
    text = str(caught.value)
    assert message in text
    assert f"classes.csv row {line} " in text


def test_type_code_entirely_missing(tmp_path):
    rows = _rows()
    for column in ("type_scheme", "type_value", "type_meaning"):
        _edit(rows, "liver", column, "")
    with pytest.raises(InputError, match=r"row \d+ \(key 'liver'\): the category and type codes are required"):
        ClassCatalog.load(_write(tmp_path, rows))


def test_broken_header_field_count_and_missing_file(tmp_path):
    rows = _rows()
    rows[0][COLUMNS.index("color_r")] = "colour_r"
    with pytest.raises(InputError, match=r"row 1: the header .*missing: \['color_r'\].*unexpected: \['colour_r'\]"):
        ClassCatalog.load(_write(tmp_path, rows))
    rows = _rows()
    rows[5] = rows[5][:-1]
    with pytest.raises(InputError, match=rf"classes.csv row 6: {len(COLUMNS) - 1} fields, expected {len(COLUMNS)}"):
        ClassCatalog.load(_write(tmp_path, rows))
    with pytest.raises(InputError, match="not found"):
        ClassCatalog.load(tmp_path / "missing.csv")


def test_broken_terminology_file(tmp_path):
    path = _write(tmp_path, _rows())
    term = tmp_path / TERM_PATH.name
    term.write_text("{not json")
    with pytest.raises(InputError, match="not readable JSON"):
        ClassCatalog.load(path)
    term.write_text(json.dumps({"SegmentationCategoryTypeContextName": "x", "@schema": "https://example.org/s.json#"}))
    with pytest.raises(InputError, match="not a Slicer terminology context"):
        ClassCatalog.load(path)
    document = json.loads(TERM_PATH.read_text())
    del document["SegmentationCodes"]["Category"][0]["Type"][0]["CodeValue"]
    term.write_text(json.dumps(document))
    with pytest.raises(InputError, match="lacks 'CodeValue'"):
        ClassCatalog.load(path)
    term.unlink()
    with pytest.raises(InputError, match="terminology file .* not found"):
        ClassCatalog.load(path)


def test_catalog_built_in_memory_rejects_duplicates(cat):
    liver = cat.get("liver")
    with pytest.raises(InputError, match=r"class #2 \(key 'liver'\): key 'liver' is already used"):
        ClassCatalog([liver, liver])
    assert catalog_module.normalized_name("Left  Kidney-x_y") == "leftkidneyxy"
