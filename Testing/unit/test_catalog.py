"""The class catalog: lookups, label values, Slicer terminology strings, colours, term.json and csv validation."""

from __future__ import annotations

import csv
import itertools
import json
import math
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


# ---------------------------------------------------------------- colours

# recommendedDisplayRGBValue of every catalog class whose codes Slicer's General Anatomy list has (Slicer/Slicer,
# Modules/Loadable/Terminologies/Resources/SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.json, commit
# 583e9b37d50e). Both sides of a pair share one colour there.
SLICER_COLOURS = {
    "spleen": (157, 108, 162), "kidney_right": (185, 102, 83), "kidney_left": (185, 102, 83),
    "gallbladder": (139, 150, 98), "liver": (221, 130, 101), "stomach": (216, 132, 105),
    "pancreas": (249, 180, 111), "adrenal_gland_right": (249, 186, 150), "adrenal_gland_left": (249, 186, 150),
    "lung_upper_lobe_left": (172, 138, 115), "lung_lower_lobe_left": (224, 186, 162),
    "lung_upper_lobe_right": (172, 138, 115), "lung_middle_lobe_right": (202, 164, 140),
    "lung_lower_lobe_right": (224, 186, 162), "esophagus": (211, 171, 143), "trachea": (182, 228, 255),
    "thyroid_gland": (62, 162, 114), "small_bowel": (205, 167, 142), "duodenum": (255, 253, 229),
    "colon": (204, 168, 143), "urinary_bladder": (222, 154, 132), "prostate": (230, 158, 140),
    "kidney_cyst_left": (205, 205, 100), "kidney_cyst_right": (205, 205, 100), "heart": (206, 110, 84),
    "aorta": (224, 97, 76), "clavicula_left": (205, 179, 108), "clavicula_right": (205, 179, 108),
    "spinal_cord": (244, 214, 49), "brain": (250, 250, 225), "skull": (241, 213, 144), "sternum": (244, 217, 154),
    "lung_left": (197, 165, 145), "lung_right": (197, 165, 145), "ribs": (253, 232, 158),
    "cervical_spine": (255, 255, 207), "thoracic_spine": (226, 202, 134), "lumbar_spine": (212, 188, 102),
}
# One side of a pair takes a shade of Slicer's colour (lighter or darker); the other side keeps it.
SHADED = {"lung_left", "lung_upper_lobe_left", "lung_lower_lobe_left", "adrenal_gland_left", "kidney_right",
          "kidney_cyst_right", "clavicula_left"}
# Classes whose Slicer colour is too close to a neighbour's Slicer colour; they keep an own colour.
OWN_COLOUR = {
    "stomach": "liver", "heart": "liver", "small_bowel": "colon", "esophagus": "lung_right",
    "lung_middle_lobe_right": "lung_lower_lobe_right", "urinary_bladder": "prostate", "sternum": "clavicula_right",
    "ribs": "thoracic_spine", "lumbar_spine": "thoracic_spine",
}
MIN_DELTA_E = 15.0  # CIE76; about 2.3 is a just-noticeable difference, 15 tells two organs apart at a glance
# Classes that touch (or face each other across a thin wall); "{side}" stands for left and right.
NEIGHBOURS = {
    "liver": ("spleen", "stomach", "gallbladder", "kidney_right", "kidney_cyst_right", "adrenal_gland_right",
              "inferior_vena_cava", "portal_vein_and_splenic_vein", "duodenum", "colon", "small_bowel", "pancreas",
              "heart", "esophagus", "lung_right", "lung_lower_lobe_right"),
    "spleen": ("stomach", "kidney_left", "kidney_cyst_left", "colon", "pancreas", "adrenal_gland_left",
               "portal_vein_and_splenic_vein", "lung_left", "lung_lower_lobe_left"),
    "stomach": ("pancreas", "duodenum", "esophagus", "colon", "small_bowel", "gallbladder", "kidney_left",
                "adrenal_gland_left", "portal_vein_and_splenic_vein", "heart", "lung_left", "lung_lower_lobe_left"),
    "kidney_right": ("adrenal_gland_right", "duodenum", "colon", "small_bowel", "gallbladder", "pancreas",
                     "inferior_vena_cava", "kidney_cyst_right", "iliopsoas_right", "autochthon_right"),
    "kidney_left": ("adrenal_gland_left", "pancreas", "colon", "small_bowel", "aorta", "kidney_cyst_left",
                    "iliopsoas_left", "autochthon_left"),
    "pancreas": ("duodenum", "small_bowel", "colon", "gallbladder", "portal_vein_and_splenic_vein", "aorta",
                 "inferior_vena_cava", "adrenal_gland_left"),
    "duodenum": ("gallbladder", "small_bowel", "colon", "inferior_vena_cava", "aorta", "portal_vein_and_splenic_vein"),
    "colon": ("gallbladder", "small_bowel", "urinary_bladder", "prostate", "sacrum", "adrenal_gland_right",
              "portal_vein_and_splenic_vein"),
    "small_bowel": ("urinary_bladder", "aorta", "inferior_vena_cava", "portal_vein_and_splenic_vein"),
    "aorta": ("inferior_vena_cava", "esophagus", "heart", "trachea", "pulmonary_vein", "brachiocephalic_trunk",
              "brachiocephalic_vein_left", "superior_vena_cava", "subclavian_artery_left",
              "common_carotid_artery_left", "adrenal_gland_left", "spinal_cord", "vertebrae", "lung_lower_lobe_left"),
    "inferior_vena_cava": ("portal_vein_and_splenic_vein", "adrenal_gland_right", "heart", "vertebrae",
                           "lung_lower_lobe_right"),
    "heart": ("pulmonary_vein", "atrial_appendage_left", "superior_vena_cava", "esophagus", "sternum", "vertebrae"),
    "trachea": ("esophagus", "thyroid_gland", "brachiocephalic_trunk", "superior_vena_cava"),
    "brachiocephalic_trunk": ("subclavian_artery_right", "common_carotid_artery_right", "brachiocephalic_vein_left",
                              "superior_vena_cava"),
    "vertebrae": ("intervertebral_discs", "spinal_cord", "ribs", "esophagus", "sacrum", "skull", "trachea"),
    "intervertebral_discs": ("spinal_cord",),
    "spinal_cord": ("brain", "sacrum"),
    "sternum": ("costal_cartilages", "ribs"),
    "ribs": ("costal_cartilages", "thoracic_spine"),
    "thoracic_spine": ("cervical_spine", "lumbar_spine"),
    "lumbar_spine": ("sacrum",),
    "skull": ("brain", "cervical_spine"),
    "urinary_bladder": ("prostate",),
    "esophagus": ("thyroid_gland",),
    "lung_upper_lobe_right": ("lung_middle_lobe_right", "lung_lower_lobe_right"),
    "lung_middle_lobe_right": ("lung_lower_lobe_right", "heart", "esophagus", "ribs", "pulmonary_vein",
                               "superior_vena_cava"),
    "lung_upper_lobe_left": ("lung_lower_lobe_left", "atrial_appendage_left"),
    "lung_{side}": ("heart", "esophagus", "trachea", "ribs", "pulmonary_vein", "thoracic_spine", "vertebrae"),
    "lung_upper_lobe_{side}": ("heart", "esophagus", "trachea", "ribs", "pulmonary_vein", "superior_vena_cava",
                               "aorta", "subclavian_artery_{side}", "brachiocephalic_vein_{side}"),
    "lung_lower_lobe_{side}": ("heart", "esophagus", "ribs", "pulmonary_vein", "autochthon_{side}"),
    "hip_{side}": ("femur_{side}", "sacrum", "gluteus_maximus_{side}", "gluteus_medius_{side}", "colon",
                   "gluteus_minimus_{side}", "iliopsoas_{side}", "urinary_bladder", "iliac_artery_{side}",
                   "iliac_vena_{side}", "small_bowel", "vertebrae"),
    "femur_{side}": ("gluteus_maximus_{side}", "gluteus_medius_{side}", "gluteus_minimus_{side}", "iliopsoas_{side}"),
    "gluteus_medius_{side}": ("gluteus_maximus_{side}", "gluteus_minimus_{side}"),
    "gluteus_maximus_{side}": ("gluteus_minimus_{side}", "sacrum"),
    "iliopsoas_{side}": ("iliac_artery_{side}", "iliac_vena_{side}", "colon", "small_bowel", "vertebrae"),
    "iliac_artery_{side}": ("iliac_vena_{side}", "aorta", "inferior_vena_cava", "small_bowel"),
    "iliac_vena_{side}": ("inferior_vena_cava", "small_bowel"),
    "common_carotid_artery_{side}": ("subclavian_artery_{side}", "brachiocephalic_vein_{side}", "thyroid_gland",
                                     "trachea"),
    "brachiocephalic_vein_{side}": ("superior_vena_cava", "subclavian_artery_{side}"),
    "autochthon_{side}": ("vertebrae", "ribs", "sacrum", "intervertebral_discs"),
    "clavicula_{side}": ("sternum", "scapula_{side}", "rib_{side}_1"),
    "scapula_{side}": ("humerus_{side}",),
    "subclavian_artery_{side}": ("rib_{side}_1",),
}
VERTEBRAL_COLUMN = ("skull", *(f"vertebrae_C{i}" for i in range(1, 8)), *(f"vertebrae_T{i}" for i in range(1, 13)),
                    *(f"vertebrae_L{i}" for i in range(1, 6)), "vertebrae_S1", "sacrum")


def _srgb_to_lab(rgb: tuple[int, int, int]) -> tuple[float, float, float]:
    """CIELAB (D65) of an sRGB colour, channels 0..255."""
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in (v / 255 for v in rgb)]
    matrix = ((0.4124, 0.3576, 0.1805), (0.2126, 0.7152, 0.0722), (0.0193, 0.1192, 0.9505))
    white = (0.95047, 1.0, 1.08883)
    x, y, z = (sum(m * c for m, c in zip(row, linear, strict=True)) / w for row, w in zip(matrix, white, strict=True))
    f = [t ** (1 / 3) if t > (6 / 29) ** 3 else t / (3 * (6 / 29) ** 2) + 4 / 29 for t in (x, y, z)]
    return (116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2]))


def delta_e(first: tuple[int, int, int], second: tuple[int, int, int]) -> float:
    """CIE76 colour difference of two sRGB colours: the distance of their CIELAB coordinates."""
    return math.dist(_srgb_to_lab(first), _srgb_to_lab(second))


def _other_side(key: str) -> str | None:
    """The key of the class on the other side ("kidney_left" -> "kidney_right"), None for unpaired classes."""
    for side, other in (("left", "right"), ("right", "left")):
        if side in key.split("_"):
            return "_".join(other if part == side else part for part in key.split("_"))
    return None


def _neighbour_pairs(cat: ClassCatalog) -> set[frozenset[str]]:
    """Every pair of classes that touch: the table above, the spine, each side's ribs, and left/right pairs."""
    pairs = {frozenset((a, b)) for a, b in itertools.pairwise(VERTEBRAL_COLUMN)}
    for key, others in NEIGHBOURS.items():
        for side in ("left", "right"):
            pairs |= {frozenset((key.format(side=side), o.format(side=side))) for o in others}
    for vertebra in VERTEBRAL_COLUMN[1:-1]:
        pairs |= {frozenset((vertebra, o)) for o in ("spinal_cord", "autochthon_left", "autochthon_right", "aorta")}
    for side in ("left", "right"):
        ribs = [f"rib_{side}_{i}" for i in range(1, 13)]
        pairs |= {frozenset(p) for p in itertools.pairwise(ribs)}
        for i, rib in enumerate(ribs, start=1):
            touching = {f"vertebrae_T{i}", f"vertebrae_T{max(i - 1, 1)}", f"lung_{side}", f"lung_lower_lobe_{side}",
                        f"autochthon_{side}", f"scapula_{side}" if 2 <= i <= 8 else "costal_cartilages"}
            pairs |= {frozenset((rib, o)) for o in touching}
    keys = set(cat.keys())
    pairs |= {frozenset((o.key, _other_side(o.key))) for o in cat if _other_side(o.key) in keys}
    return pairs


def test_delta_e_is_cie76():
    assert delta_e((0, 0, 0), (0, 0, 0)) == 0.0
    assert delta_e((0, 0, 0), (255, 255, 255)) == pytest.approx(100.0, abs=0.01)
    assert _srgb_to_lab((255, 0, 0)) == pytest.approx((53.24, 80.09, 67.20), abs=0.05)


def test_neighbouring_classes_have_colours_people_can_tell_apart(cat):
    pairs = _neighbour_pairs(cat)
    assert set().union(*pairs) <= set(cat.keys()), "a neighbour table names an unknown class"
    too_close = sorted((round(delta_e(cat.get(a).color, cat.get(b).color), 1), a, b) for a, b in map(sorted, pairs)
                       if delta_e(cat.get(a).color, cat.get(b).color) <= MIN_DELTA_E)
    assert not too_close, f"neighbours with colours too alike (CIE76 delta E <= {MIN_DELTA_E}): {too_close}"


def test_classes_in_slicers_general_anatomy_list_take_its_colour(cat):
    assert set(SLICER_COLOURS) == {o.key for o in cat if _code_id(o) in GENERAL_ANATOMY}
    for key, colour in SLICER_COLOURS.items():
        organ = cat.get(key)
        if key in SHADED:
            assert organ.color != colour and cat.get(_other_side(key)).color == colour, key
        elif key in OWN_COLOUR:
            assert delta_e(colour, cat.get(OWN_COLOUR[key]).color) <= MIN_DELTA_E, f"{key} could take Slicer's"
        else:
            assert organ.color == colour, key


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
