"""The organ class catalog: names, label values, SNOMED CT terminology, colours and CT windows.

Loaded from `Resources/classes.csv` (+ `Resources/AutoMedSAM.term.json`); the one place in the package
that knows the classes. Segment names, colours and terminology everywhere come from here.

`classes.csv`, one row per class, sorted by label value; columns:

- `key`: stable id, TotalSegmentator's structure name where one exists (`kidney_left`, `vertebrae_L1`).
- `name`: unique human display name ("Left kidney"), the segment name in Slicer and in written files.
- `label_value`: this project's label value: TotalSegmentator's `total` value where the class has one,
  201 and above for MR-only and project classes (e.g. `vertebrae`, all vertebrae as one class).
- `region`: GUI group, one of `REGIONS`: head_neck, thorax (lungs, airway, heart, ribs), abdomen, pelvis
  (bladder, prostate, hip bones, gluteal and iliopsoas muscles), spine (vertebrae, sacrum, spinal cord, discs,
  deep back muscles), limbs (limb bones and the shoulder girdle), vessels (great vessels).
- `category_*`, `type_*`, `modifier_*`, `region_*`: DICOM / SNOMED CT codes (`scheme`, `value`, `meaning`)
  of the segmented property category, type, type modifier (laterality) and anatomic region, taken from
  TotalSegmentator's `totalsegmentator_snomed_mapping.csv` (2.18.0) and checked against Slicer's
  terminology lists, with two corrections: SCT 29700009 is the *right* subclavian artery, so both
  subclavian arteries use the generic 36765005 "Subclavian artery" + laterality (as Slicer's DICOM master
  list does), and 75297007's meaning is "Gluteus minimus muscle". The MR-only classes take
  SlicerTotalSegmentator's codes. `region_modifier_*` (an addition to the agreed column list) carries the
  laterality of the anatomic region, which a kidney cyst needs ("Cyst" in the "Left" "Kidney").
- `color_r`, `color_g`, `color_b`: RGB 0..255. Slicer's General Anatomy colour where that list has the class,
  with one side of a pair in a lighter or darker shade; else TotalSegmentator's `DicomRGBColor`. Where either
  would look like a neighbour's, an own colour (individual vertebrae cycle through three bone shades).
  Neighbours differ by CIE76 delta E > 15; `Testing/unit/test_catalog.py` lists them and the exceptions.
- `modalities`: "CT", "MR" or "CT;MR": the TotalSegmentator tasks that label the class (`total`: CT,
  `total_mr`: MR); `lung_left/right` and `vertebrae` also list CT (unions of CT labels).
- `window_level`, `window_width`: default CT window in HU by tissue group: soft tissue 40/400, bone
  400/1800, lung and airway -600/1500, vessels and heart 100/700, brain 40/80.
- `multi_component`: 1 if the class is legitimately several disconnected pieces (all vertebrae as one class,
  discs, pulmonary veins, costal cartilages, kidney cysts, bowel cut by the field of view), so post-processing
  keeps every component instead of the largest one; else 0 (an addition to the agreed column list).
- `synonyms`: other names users type, separated by ";" ("kidney l;l kidney").
- `ts_total`, `ts_total_mr`: the class's label value in TotalSegmentator's `total` / `total_mr` task, empty if none.

Slicer terminology: an entry whose (category, type, modifier) is in Slicer's "Segmentation category and
type - 3D Slicer General Anatomy list" refers to that list; every other entry is listed in
`AutoMedSAM.term.json` (a Slicer terminology context, dcmqi segment-context schema, the schema Slicer's own
files use and its loader accepts) and refers to that context. A class's context is decided at load time:
if its codes are in the `.term.json`, that context, else the General Anatomy list.
"""

from __future__ import annotations

import csv
import difflib
import functools
import itertools
import json
import math
import re
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from . import resources
from .errors import InputError, ModelError
from .volume import MODALITIES

GENERAL_ANATOMY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
TERMINOLOGY_FILE = "AutoMedSAM.term.json"
TERMINOLOGY_SCHEMAS = (  # the two schema URLs Slicer's terminology loader accepts
    "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/segment-context-schema.json#",
    "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/schemas/segment-context-schema.json#",
)
REGIONS = ("head_neck", "thorax", "abdomen", "pelvis", "spine", "limbs", "vessels")
CUSTOM_REGION = "custom"
TS_TASKS = ("total", "total_mr")
COLUMNS = (
    "key", "name", "label_value", "region",
    "category_scheme", "category_value", "category_meaning",
    "type_scheme", "type_value", "type_meaning",
    "modifier_scheme", "modifier_value", "modifier_meaning",
    "region_scheme", "region_value", "region_meaning",
    "region_modifier_scheme", "region_modifier_value", "region_modifier_meaning",
    "color_r", "color_g", "color_b", "modalities", "window_level", "window_width", "multi_component", "synonyms",
    "ts_total", "ts_total_mr",
)
MAX_LABEL_VALUE = 65535  # label maps are uint8 or uint16
SOFT_TISSUE_WINDOW = (40.0, 400.0)
# Colours of free-named (box mode) segments, cycled in order: labels 1-12 of Slicer's GenericColors.txt.
CUSTOM_PALETTE = (
    (128, 174, 128), (241, 214, 145), (177, 122, 101), (111, 184, 210), (216, 101, 79), (221, 130, 101),
    (144, 238, 144), (192, 104, 88), (220, 245, 20), (78, 63, 0), (255, 250, 220), (100, 100, 130),
)
_SEPARATORS = re.compile(r"[\s_\-]+")
_KEY_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_FORBIDDEN_IN_CODES = set("~^|")  # separators of Slicer's terminology strings


@dataclass(frozen=True)
class Code:
    """One coded concept (DICOM / SNOMED CT): coding scheme designator, code value, code meaning."""

    scheme: str
    value: str
    meaning: str

    def slicer_string(self) -> str:
        """`scheme^value^meaning`, the code format of Slicer's terminology strings (empty code: `^^`)."""
        return f"{self.scheme}^{self.value}^{self.meaning}"


EMPTY_CODE = Code("", "", "")
TISSUE = Code("SCT", "85756007", "Tissue")  # General Anatomy list: category "Tissue", type "Tissue"


@dataclass(frozen=True)
class OrganClass:
    """One segmentable class of the catalog."""

    key: str                                   # stable snake_case id, e.g. "kidney_left"
    name: str                                  # display name, e.g. "Left kidney"
    label_value: int                           # value in this project's label maps
    region: str                                # body region for grouping in the GUI, e.g. "abdomen"
    category: Code                             # SegmentedPropertyCategory
    type: Code                                 # SegmentedPropertyType
    type_modifier: Code | None                 # e.g. Left / Right
    anatomic_region: Code | None               # AnatomicRegion, when the type needs one
    color: tuple[int, int, int]                # RGB 0..255
    modalities: tuple[str, ...]                # ("CT",), ("MR",) or ("CT", "MR")
    window: tuple[float, float]                # default CT window (level, width) in HU
    synonyms: tuple[str, ...] = ()             # other names users type ("left kidney", "kidney l")
    ts_total: int | None = None                # TotalSegmentator `total` task label value
    ts_total_mr: int | None = None             # TotalSegmentator `total_mr` task label value
    anatomic_region_modifier: Code | None = None  # laterality of the anatomic region (kidney cysts)
    multi_component: bool = False              # several disconnected pieces are normal (keep them all)
    terminology_context: str = GENERAL_ANATOMY_CONTEXT  # Slicer context that lists category/type/modifier

    def slicer_terminology(self) -> str:
        """Slicer's terminology entry string, the 5.8+ format of Slicer's `SerializeTerminologyEntry`.

        `context~category~type~typeModifier~anatomicContext~anatomicRegion~anatomicRegionModifier`, each code
        as `scheme^value^meaning`, absent codes as `^^`; stored in a segment's `TerminologyEntry` tag.
        """
        parts = (
            self.terminology_context,
            self.category.slicer_string(),
            self.type.slicer_string(),
            (self.type_modifier or EMPTY_CODE).slicer_string(),
            ANATOMIC_CONTEXT,
            (self.anatomic_region or EMPTY_CODE).slicer_string(),
            (self.anatomic_region_modifier or EMPTY_CODE).slicer_string(),
        )
        return "~".join(parts)

    def color_float(self) -> tuple[float, float, float]:
        """RGB colour scaled to 0..1 (VTK / Slicer segment colours)."""
        r, g, b = self.color
        return (r / 255.0, g / 255.0, b / 255.0)


def normalized_name(text: str) -> str:
    """Lookup form of a class name: case-folded, without spaces, underscores and hyphens."""
    return _SEPARATORS.sub("", text.casefold())


class ClassCatalog:
    """The classes, looked up by key, display name or synonym (case, spaces, `_` and `-` ignored).

    Iterating yields `OrganClass` objects in label-value order (the csv order).
    """

    def __init__(self, classes: Sequence[OrganClass], rows: Sequence[int] | None = None,
                 source: str = "class catalog") -> None:
        """Index `classes`; `rows` (csv line numbers, same order) and `source` name the culprit in errors."""
        self._classes = tuple(classes)
        self._source = source
        self._rows = tuple(rows) if rows is not None else None
        self._by_key: dict[str, OrganClass] = {}
        self._by_label: dict[int, OrganClass] = {}
        self._by_lookup: dict[str, OrganClass] = {}
        self._by_ts: dict[str, dict[int, OrganClass]] = {task: {} for task in TS_TASKS}
        names: dict[str, OrganClass] = {}
        for index, organ in enumerate(self._classes):
            where = self._where(index, organ)
            _add_unique(self._by_key, organ.key, organ, where, "key")
            _add_unique(names, organ.name, organ, where, "display name")
            _add_unique(self._by_label, organ.label_value, organ, where, "label value")
            for task, value in (("total", organ.ts_total), ("total_mr", organ.ts_total_mr)):
                if value is not None:
                    _add_unique(self._by_ts[task], value, organ, where, f"ts_{task} value")
            for alias in (organ.key, organ.name, *organ.synonyms):
                previous = self._by_lookup.setdefault(normalized_name(alias), organ)
                if previous is not organ:
                    raise InputError(f"{where}: the name {alias!r} also names {previous.key!r}; "
                                     "names and synonyms must identify one class")

    def _where(self, index: int, organ: OrganClass) -> str:
        """'classes.csv row 12 (key 'liver')' for error messages."""
        row = f"row {self._rows[index]}" if self._rows is not None else f"class #{index + 1}"
        return f"{self._source} {row} (key {organ.key!r})"

    @classmethod
    def load(cls, path: Path | None = None, terminology_path: Path | None = None) -> ClassCatalog:
        """Read a classes csv (default: the shipped `Resources/classes.csv`) and its `.term.json`.

        `terminology_path` defaults to `AutoMedSAM.term.json` next to the csv. Raises `InputError` naming
        the file and row of the first problem.
        """
        try:
            csv_path = Path(path) if path is not None else resources.resource_path("classes.csv")
        except FileNotFoundError as error:
            raise InputError(str(error)) from error
        term_path = Path(terminology_path) if terminology_path is not None else csv_path.with_name(TERMINOLOGY_FILE)
        context_name, context_codes = read_terminology_context(term_path)
        classes, rows = [], []
        for line, row in _read_rows(csv_path):
            try:
                organ = _parse_row(row)
            except ValueError as error:
                raise InputError(f"{csv_path.name} row {line} (key {row.get('key', '')!r}): {error}; "
                                 f"fix the row in {csv_path}") from None
            if _terminology_id(organ) in context_codes:
                organ = _with_context(organ, context_name)
            classes.append(organ)
            rows.append(line)
        if not classes:
            raise InputError(f"{csv_path} lists no classes; restore the file shipped with AutoMedSAM")
        return cls(classes, rows, csv_path.name)

    def get(self, name: str) -> OrganClass:
        """The class with this key, display name or synonym; unknown names raise `InputError` with a suggestion."""
        organ = self._by_lookup.get(normalized_name(str(name)))
        if organ is not None:
            return organ
        if not normalized_name(str(name)):
            raise InputError("the class name is empty; give a class such as 'liver' "
                             "(`automedsam classes` lists them all)")
        close = difflib.get_close_matches(normalized_name(str(name)), list(self._by_lookup), n=1, cutoff=0.6)
        if close:
            raise InputError(f"unknown class {name!r}; did you mean {self._by_lookup[close[0]].key!r}? "
                             "(`automedsam classes` lists them all)")
        raise InputError(f"unknown class {name!r}; `automedsam classes` lists the known classes")

    def by_ts_label(self, task: str, value: int) -> OrganClass | None:
        """The class that TotalSegmentator's `task` ("total" or "total_mr") labels `value`, None if not catalogued."""
        if task not in self._by_ts:
            raise InputError(f"unknown TotalSegmentator task {task!r}; use one of {', '.join(TS_TASKS)}")
        return self._by_ts[task].get(int(value))

    def by_label_value(self, value: int) -> OrganClass | None:
        """The class with this project label value, None if no class has it."""
        return self._by_label.get(int(value))

    def regions(self) -> dict[str, list[OrganClass]]:
        """Classes grouped by body region for the GUI, regions in `REGIONS` order, classes in label order."""
        grouped: dict[str, list[OrganClass]] = {region: [] for region in REGIONS}
        for organ in self._classes:
            grouped.setdefault(organ.region, []).append(organ)
        return {region: organs for region, organs in grouped.items() if organs}

    def keys(self) -> list[str]:
        """Class keys in label order."""
        return [organ.key for organ in self._classes]

    def __iter__(self) -> Iterator[OrganClass]:
        return iter(self._classes)

    def __len__(self) -> int:
        return len(self._classes)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and normalized_name(name) in self._by_lookup

    def custom(self, name: str, index: int = 0, taken: Collection[int] = ()) -> OrganClass:
        """A class for a free segment name (box mode), outside the catalog.

        Generic terminology (General Anatomy "Tissue" / "Tissue"), region `CUSTOM_REGION`, both modalities,
        soft-tissue window. Label value: counting up from just above the largest catalog label value and
        skipping the values in `taken`, the `index`-th free value (index 0: the first). Give each custom segment
        of one label map its own `index` (e.g. its position among the prompts) or pass the values already used
        as `taken`. The colour cycles through `CUSTOM_PALETTE` with the label value. Use `get` first if the
        name may be a catalog class.
        """
        text = str(name).strip()
        if not text:
            raise InputError("a segment name is empty; type a name for the segment")
        if index < 0:
            raise InputError(f"custom segment index {index} must be 0 or more")
        first = max(self._by_label, default=0) + 1
        used = set(taken)
        free = (value for value in range(first, MAX_LABEL_VALUE + 1) if value not in used)
        label = next(itertools.islice(free, index, None), None)
        if label is None:
            raise InputError(f"no free label value left for segment {text!r}; use fewer segments")
        key = re.sub(r"[^0-9a-z]+", "_", text.casefold()).strip("_") or "segment"
        return OrganClass(
            key=key, name=text, label_value=label, region=CUSTOM_REGION, category=TISSUE, type=TISSUE,
            type_modifier=None, anatomic_region=None, color=CUSTOM_PALETTE[(label - first) % len(CUSTOM_PALETTE)],
            modalities=MODALITIES, window=SOFT_TISSUE_WINDOW,
        )


@functools.lru_cache(maxsize=1)
def default_catalog() -> ClassCatalog:
    """The shipped catalog, loaded once per process."""
    return ClassCatalog.load()


def resolve_classes(names: Sequence[str], model_classes: Sequence[str],
                    catalog: ClassCatalog | None = None) -> list[OrganClass]:
    """Catalog classes for the names the user gave, checked against a model's class keys (no duplicates).

    Torch-free, so the command line checks the names against the registry before it loads anything.
    """
    if not names:
        raise InputError("no class selected; pick at least one class (see `automedsam classes`)")
    catalog = catalog or default_catalog()
    organs: list[OrganClass] = []
    for name in names:
        organ = catalog.get(name)
        if organ.key not in model_classes:
            known = ", ".join(model_classes) if model_classes else "none (box prompts only)"
            raise ModelError(f"the model was not trained for {organ.name!r} ({organ.key}); its classes are: {known}")
        if organ not in organs:
            organs.append(organ)
    return organs


def read_terminology_context(path: Path) -> tuple[str, frozenset[tuple[str, ...]]]:
    """Context name and the (category, type, modifier) code ids listed in a Slicer `.term.json`.

    Each id is `(category scheme^value, type scheme^value, modifier scheme^value or "")`.
    """
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"terminology file {path} not found; restore it next to classes.csv") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"terminology file {path} is not readable JSON ({error}); restore the shipped file") from None
    name = document.get("SegmentationCategoryTypeContextName") if isinstance(document, dict) else None
    if not name or document.get("@schema") not in TERMINOLOGY_SCHEMAS:
        raise InputError(f"{path} is not a Slicer terminology context (needs SegmentationCategoryTypeContextName "
                         f"and @schema {TERMINOLOGY_SCHEMAS[0]})")
    ids = set()
    try:
        for category in document["SegmentationCodes"]["Category"]:
            for type_ in category["Type"]:
                base = (_json_code_id(category), _json_code_id(type_))
                ids.add((*base, ""))
                ids.update((*base, _json_code_id(modifier)) for modifier in type_.get("Modifier", ()))
    except (KeyError, TypeError) as error:
        raise InputError(f"{path}: a category, type or modifier lacks {error} "
                         "(each needs CodingSchemeDesignator, CodeValue and CodeMeaning)") from None
    return name, frozenset(ids)


def _json_code_id(entry: dict) -> str:
    """`scheme^value` of a terminology JSON entry; KeyError when a mandatory member is missing."""
    entry["CodeMeaning"]  # noqa: B018 (mandatory in Slicer's loader)
    return f"{entry['CodingSchemeDesignator']}^{entry['CodeValue']}"


def _terminology_id(organ: OrganClass) -> tuple[str, str, str]:
    """The (category, type, modifier) id of a class, in `read_terminology_context`'s form."""
    modifier = organ.type_modifier
    return (f"{organ.category.scheme}^{organ.category.value}", f"{organ.type.scheme}^{organ.type.value}",
            f"{modifier.scheme}^{modifier.value}" if modifier else "")


def _with_context(organ: OrganClass, context: str) -> OrganClass:
    """Copy of `organ` whose terminology refers to `context`."""
    return replace(organ, terminology_context=context)


def _add_unique(index: dict, value: object, organ: OrganClass, where: str, what: str) -> None:
    """Insert into a uniqueness index; a second class with the same value is an error."""
    if value in index:
        raise InputError(f"{where}: {what} {value!r} is already used by {index[value].key!r}; {what}s must be unique")
    index[value] = organ


def _read_rows(path: Path) -> Iterable[tuple[int, dict[str, str]]]:
    """(line number, row) for each data row; checks the header against `COLUMNS`."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"class catalog {path} not found; pass an existing classes.csv "
                         "or restore the one shipped with AutoMedSAM") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"class catalog {path} cannot be read ({error})") from None
    reader = csv.reader(text.splitlines())
    header = next(reader, [])
    if tuple(header) != COLUMNS:
        missing = [c for c in COLUMNS if c not in header]
        extra = [c for c in header if c not in COLUMNS]
        raise InputError(f"{path.name} row 1: the header must be the columns {', '.join(COLUMNS)} in this order "
                         f"(missing: {missing or 'none'}, unexpected: {extra or 'none'})")
    for values in reader:
        if not any(value.strip() for value in values):
            continue
        if len(values) != len(COLUMNS):
            raise InputError(f"{path.name} row {reader.line_num}: {len(values)} fields, expected {len(COLUMNS)}; "
                             "check for a missing or extra comma")
        yield reader.line_num, dict(zip(COLUMNS, (value.strip() for value in values), strict=True))


def _parse_row(row: dict[str, str]) -> OrganClass:
    """One csv row -> `OrganClass`; raises ValueError saying what is wrong (the caller names the row)."""
    key, name = row["key"], row["name"]
    if not _KEY_PATTERN.fullmatch(key):
        raise ValueError(f"key {key!r} must start with a letter and contain only letters, digits and '_'")
    if not name:
        raise ValueError("the display name is empty")
    region = row["region"]
    if region not in REGIONS:
        raise ValueError(f"region {region!r} is not one of {', '.join(REGIONS)}")
    category, type_ = _code(row, "category"), _code(row, "type")
    if category is None or type_ is None:
        raise ValueError("the category and type codes are required (scheme, value and meaning)")
    anatomic_region, region_modifier = _code(row, "region"), _code(row, "region_modifier")
    if region_modifier is not None and anatomic_region is None:
        raise ValueError("a region modifier needs a region code")
    return OrganClass(
        key=key, name=name, label_value=_integer(row, "label_value", 1, MAX_LABEL_VALUE), region=region,
        category=category, type=type_, type_modifier=_code(row, "modifier"), anatomic_region=anatomic_region,
        color=tuple(_integer(row, f"color_{c}", 0, 255) for c in "rgb"),  # type: ignore[arg-type]
        modalities=_modalities(row["modalities"]), window=_window(row),
        synonyms=tuple(s.strip() for s in row["synonyms"].split(";") if s.strip()),
        ts_total=_optional_integer(row, "ts_total"), ts_total_mr=_optional_integer(row, "ts_total_mr"),
        anatomic_region_modifier=region_modifier, multi_component=_flag(row, "multi_component"),
    )


def _code(row: dict[str, str], prefix: str) -> Code | None:
    """The code in columns `{prefix}_scheme/_value/_meaning`; None when all three are empty."""
    parts = [row[f"{prefix}_{field}"] for field in ("scheme", "value", "meaning")]
    if not any(parts):
        return None
    if not all(parts):
        raise ValueError(f"the {prefix} code is incomplete ({'^'.join(parts)}): give scheme, value and meaning, "
                         "or leave all three empty")
    if any(_FORBIDDEN_IN_CODES & set(part) for part in parts):
        raise ValueError(f"the {prefix} code {'^'.join(parts)!r} contains '~', '^' or '|'")
    return Code(*parts)


def _integer(row: dict[str, str], column: str, low: int, high: int) -> int:
    """An integer column within [low, high]."""
    text = row[column]
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{column} {text!r} is not an integer") from None
    if not low <= value <= high:
        raise ValueError(f"{column} {value} is outside {low}..{high}")
    return value


def _flag(row: dict[str, str], column: str) -> bool:
    """A 0/1 column."""
    if row[column] not in ("0", "1"):
        raise ValueError(f"{column} {row[column]!r} must be 0 or 1")
    return row[column] == "1"


def _optional_integer(row: dict[str, str], column: str) -> int | None:
    """A positive integer column that may be empty."""
    return _integer(row, column, 1, MAX_LABEL_VALUE) if row[column] else None


def _modalities(text: str) -> tuple[str, ...]:
    """'CT;MR' -> ('CT', 'MR'), each one of `MODALITIES`, none repeated."""
    values = tuple(part.strip() for part in text.split(";") if part.strip())
    if not values or any(v not in MODALITIES for v in values) or len(set(values)) != len(values):
        raise ValueError(f"modalities {text!r} must be 'CT', 'MR' or 'CT;MR'")
    return values


def _window(row: dict[str, str]) -> tuple[float, float]:
    """(level, width) in HU; the width must be positive."""
    try:
        level, width = float(row["window_level"]), float(row["window_width"])
    except ValueError:
        raise ValueError(f"window {row['window_level']!r}/{row['window_width']!r} is not two numbers") from None
    if not (math.isfinite(level) and math.isfinite(width) and width > 0):
        raise ValueError(f"window {level}/{width} needs a finite level and a positive width")
    return level, width
