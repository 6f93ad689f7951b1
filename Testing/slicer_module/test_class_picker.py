"""The class list of the Slicer module: grouping by region, modality filter, search, select-all-in-region, text."""

from __future__ import annotations

import pytest

from automedsam.catalog import REGIONS, default_catalog
from automedsam.errors import InputError
from automedsam.slicer.class_picker import (
    default_classes,
    format_classes,
    group_classes,
    matches,
    parse_classes,
    region_state,
    set_region,
)

MODEL = ("liver", "spleen", "kidney_left", "kidney_right", "aorta", "brain")


def test_groups_follow_the_catalog_regions_and_mark_the_models_classes() -> None:
    catalog = default_catalog()
    everything = group_classes(catalog, MODEL, only_model=False)
    assert [g.region for g in everything] == list(REGIONS)
    assert sum(len(g.choices) for g in everything) == len(catalog)
    abdomen = next(g for g in everything if g.region == "abdomen")
    assert abdomen.title == "Abdomen" and abdomen.available_keys() == ["spleen", "kidney_right", "kidney_left",
                                                                       "liver"]
    assert not next(c for c in abdomen.choices if c.key == "gallbladder").available
    only = group_classes(catalog, MODEL)
    assert [(g.region, [c.key for c in g.choices]) for g in only] == [
        ("head_neck", ["brain"]), ("abdomen", ["spleen", "kidney_right", "kidney_left", "liver"]),
        ("vessels", ["aorta"])]
    assert group_classes(catalog, ()) == []                       # a box-only model has no class to list


def test_modality_filter_and_search() -> None:
    catalog = default_catalog()
    mr_only = [c for g in group_classes(catalog, (), modality="MR", only_model=False) for c in g.choices]
    assert mr_only and all("MR" in c.modalities for c in mr_only)
    assert len(mr_only) < len(catalog)
    found = [c.key for g in group_classes(catalog, (), search="kidney l", only_model=False) for c in g.choices]
    assert found[0] == "kidney_left" and "kidney_right" not in found
    assert matches(catalog.get("kidney_left"), "LEFT kid") and not matches(catalog.get("liver"), "kidney")
    with pytest.raises(InputError, match="unknown modality filter 'PET'"):
        group_classes(catalog, (), modality="PET")


def test_select_all_in_region_ticks_only_what_the_model_has() -> None:
    catalog = default_catalog()
    abdomen = next(g for g in group_classes(catalog, MODEL, only_model=False) if g.region == "abdomen")
    selected = set_region(["aorta"], abdomen, True)
    assert selected == ["aorta", "spleen", "kidney_right", "kidney_left", "liver"]
    assert region_state(selected, abdomen) == "checked"
    assert region_state(["liver"], abdomen) == "partial" and region_state([], abdomen) == "unchecked"
    assert set_region(selected, abdomen, False) == ["aorta"]


def test_class_text_round_trip_accepts_names_and_synonyms() -> None:
    catalog = default_catalog()
    assert parse_classes("Liver; kidney l, left kidney;  ; spleen", catalog) == ["liver", "kidney_left", "spleen"]
    assert format_classes(["liver", "kidney_left"]) == "liver; kidney_left"
    assert parse_classes(format_classes(["liver", "kidney_left"]), catalog) == ["liver", "kidney_left"]
    assert parse_classes("", catalog) == []
    with pytest.raises(InputError, match="did you mean 'spleen'"):
        parse_classes("liver; spleeen", catalog)


def test_default_classes_prefer_liver_and_spleen() -> None:
    assert default_classes(MODEL) == ["liver", "spleen"]
    assert default_classes(("aorta", "kidney_right", "brain"), count=3) == ["kidney_right", "aorta", "brain"]
    assert default_classes(()) == []
