"""What the Slicer module's class list shows: catalog classes grouped by body region, filtered, with the model's.

Pure Python (no Qt, no Slicer), so the grouping, search, "select all in region" and the parsing of the class list
text are tested without the application. The widget only turns `ClassGroup`s into tree items.

The selection is kept as text, catalog keys separated by "; " (`format_classes`), because that is what the
module's parameter node stores and what a user may type (`parse_classes` accepts names and synonyms too).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from ..catalog import ClassCatalog, OrganClass, normalized_name
from ..errors import InputError

REGION_TITLES = {
    "head_neck": "Head and neck", "thorax": "Thorax", "abdomen": "Abdomen", "pelvis": "Pelvis",
    "spine": "Spine", "limbs": "Limbs and shoulder girdle", "vessels": "Vessels",
}
MODALITY_FILTERS = ("all", "CT", "MR")
SEPARATOR = "; "
PREFERRED_DEFAULTS = ("liver", "spleen", "kidney_left", "kidney_right")


@dataclass(frozen=True)
class ClassChoice:
    """One row of the class list: a catalog class and whether the selected model can segment it."""

    key: str
    name: str
    modalities: tuple[str, ...]
    available: bool            # the selected model was trained for this class


@dataclass(frozen=True)
class ClassGroup:
    """One body region of the class list, its rows in label-value order."""

    region: str
    title: str
    choices: tuple[ClassChoice, ...]

    def available_keys(self) -> list[str]:
        """Keys of the rows the model can segment (what "select all in region" ticks)."""
        return [choice.key for choice in self.choices if choice.available]


def matches(organ: OrganClass, search: str) -> bool:
    """True if every word of `search` is part of the class's key, name or a synonym (case and `_-` ignored)."""
    words = [normalized_name(word) for word in search.split()]
    haystack = [normalized_name(text) for text in (organ.key, organ.name, *organ.synonyms)]
    return all(any(word in text for text in haystack) for word in words if word)


def group_classes(catalog: ClassCatalog, model_classes: Collection[str], modality: str = "all", search: str = "",
                  only_model: bool = True) -> list[ClassGroup]:
    """The class list: regions in `REGIONS` order, each with the classes that pass the filters.

    `modality` ("all", "CT" or "MR") keeps classes labelled in that modality; `search` keeps classes whose key,
    name or synonym contains every word; `only_model` hides classes the model was not trained for (otherwise they
    are listed with `available=False`). Empty regions are left out.
    """
    if modality not in MODALITY_FILTERS:
        raise InputError(f"unknown modality filter {modality!r}; use one of {', '.join(MODALITY_FILTERS)}")
    groups = []
    for region, organs in catalog.regions().items():
        choices = tuple(
            ClassChoice(organ.key, organ.name, organ.modalities, organ.key in model_classes)
            for organ in organs
            if (modality == "all" or modality in organ.modalities) and matches(organ, search)
            and (organ.key in model_classes or not only_model))
        if choices:
            groups.append(ClassGroup(region, REGION_TITLES.get(region, region), choices))
    return groups


def parse_classes(text: str, catalog: ClassCatalog) -> list[str]:
    """Catalog keys of a class list typed as keys, names or synonyms separated by ';' or ',' (order kept, no repeats).

    Unknown names raise `InputError` with the catalog's suggestion.
    """
    keys: list[str] = []
    for part in text.replace(",", ";").split(";"):
        if part.strip():
            key = catalog.get(part.strip()).key
            if key not in keys:
                keys.append(key)
    return keys


def format_classes(keys: Iterable[str]) -> str:
    """The parameter-node text of a selection: keys joined by "; "."""
    return SEPARATOR.join(keys)


def set_region(selected: Sequence[str], group: ClassGroup, checked: bool) -> list[str]:
    """The selection after ticking (or unticking) every available class of one region; other classes stay."""
    keys = group.available_keys()
    if not checked:
        return [key for key in selected if key not in keys]
    return list(selected) + [key for key in keys if key not in selected]


def region_state(selected: Collection[str], group: ClassGroup) -> str:
    """"checked", "partial" or "unchecked": how the region's own check box shows its available classes."""
    keys = group.available_keys()
    ticked = sum(key in selected for key in keys)
    if keys and ticked == len(keys):
        return "checked"
    return "partial" if ticked else "unchecked"


def default_classes(model_classes: Sequence[str], count: int = 2) -> list[str]:
    """What a new user finds ticked: liver and spleen (or the kidneys) when the model has them, else its first
    classes, so the bundled sample segments with one click on Apply."""
    preferred = [key for key in PREFERRED_DEFAULTS if key in model_classes]
    rest = [key for key in model_classes if key not in preferred]
    return (preferred + rest)[:count]
