"""Dataset spec: which image/label volume pairs to train on and what each label value means.

A spec is a JSON (or TOML) file::

    {"format_version": 1, "name": "my-dataset", "source": "where the data and labels come from",
     "root": "folder the case paths are relative to (optional; default: the spec's folder; ~ and $VARS expand)",
     "label_maps": {"ct": {"1": "liver", "2": "spleen", "3": null}},   # value -> catalog class, null = background
     "label_map": "ct",                                                # default map of every case (name or dict)
     "resample_labels": false,                                         # true: nearest-neighbour onto the image grid
     "cases": [{"id": "case_001", "image": "imagesTr/case_001_0000.nii.gz", "label": "labelsTr/case_001.nii.gz",
                "modality": "CT", "patient": "P1", "label_map": "ct"}]}

Images are NIfTI, NRRD, MHA files or DICOM series folders; labels are label-map files. `modality` ("CT"/"MR")
may be left out when the image is DICOM (its Modality tag) or clearly CT/MR by its intensities. `patient` groups
cases of one patient (leave-one-patient-out evaluation: `DatasetSpec.patients()`); it defaults to the case id. One
image under two patients is refused, and so is a scan that is a slab of another patient's scan (`patients.py`).
Class names are checked against the catalog (`automedsam classes`) and stored as catalog keys.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from automedsam.catalog import ClassCatalog, default_catalog
from automedsam.errors import InputError, OutputError
from automedsam.volume import MODALITIES

from .._toml import tomllib
from .patients import check_patients

FORMAT_VERSION = 1
LabelMap = dict[int, str | None]


@dataclass(frozen=True)
class CaseSpec:
    """One image/label pair: absolute paths, modality (None: from the file), label value -> class key."""

    id: str
    image: Path
    label: Path
    label_map: LabelMap
    modality: str | None = None
    patient: str = ""

    @property
    def patient_id(self) -> str:
        """The patient this case belongs to (the case id when none was given)."""
        return self.patient or self.id

    def classes(self) -> set[str]:
        """Class keys this case's label map can label (its annotated classes)."""
        return {key for key in self.label_map.values() if key is not None}


@dataclass(frozen=True)
class DatasetSpec:
    """A list of cases plus provenance; `resample_labels` allows nearest-neighbour resampling of label maps."""

    name: str
    cases: tuple[CaseSpec, ...]
    source: str = ""
    resample_labels: bool = False
    root: Path = field(default_factory=Path.cwd)

    def classes(self) -> list[str]:
        """Every class key some case can label, in catalog order."""
        present = set().union(*(case.classes() for case in self.cases)) if self.cases else set()
        order = {key: i for i, key in enumerate(default_catalog().keys())}
        return sorted(present, key=lambda key: order.get(key, len(order)))

    def patients(self) -> dict[str, tuple[CaseSpec, ...]]:
        """Patient id -> that patient's cases, in the order patients first appear (what leave-one-out iterates)."""
        grouped: dict[str, list[CaseSpec]] = {}
        for case in self.cases:
            grouped.setdefault(case.patient_id, []).append(case)
        return {patient: tuple(cases) for patient, cases in grouped.items()}

    def case(self, case_id: str) -> CaseSpec:
        """The case with this id; `InputError` listing the ids otherwise."""
        for case in self.cases:
            if case.id == case_id:
                return case
        raise InputError(f"the dataset {self.name!r} has no case {case_id!r}; its cases are "
                         f"{', '.join(c.id for c in self.cases)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data; paths relative to `root` where possible, one named label map per distinct map."""
        maps: dict[str, LabelMap] = {}
        cases = []
        for case in self.cases:
            name = next((n for n, m in maps.items() if m == case.label_map), None)
            if name is None:
                name = f"map{len(maps) + 1}"
                maps[name] = case.label_map
            cases.append({"id": case.id, "image": _relative(case.image, self.root),
                          "label": _relative(case.label, self.root), "modality": case.modality,
                          "patient": case.patient_id, "label_map": name})
        return {"format_version": FORMAT_VERSION, "name": self.name, "source": self.source, "root": str(self.root),
                "resample_labels": self.resample_labels,
                "label_maps": {n: {str(v): k for v, k in sorted(m.items())} for n, m in maps.items()},
                "cases": cases}


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def save_spec(spec: DatasetSpec, path: Path | str, root_text: str | None = None) -> Path:
    """Write `spec` as JSON (atomically). `root_text` replaces the stored root (e.g. a `~/...` form)."""
    path = Path(path)
    data = spec.to_dict()
    if root_text is not None:
        data["root"] = root_text
    temporary = path.with_name(f".{path.name}.part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise OutputError(f"cannot write the dataset spec {path}: {error.strerror or error}") from error
    return path


def load_spec(path: Path | str, check_files: bool = True) -> DatasetSpec:
    """Read and validate a spec file (`.json` or `.toml`); `InputError` naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"dataset spec {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"dataset spec {path} cannot be parsed: {error}") from error
    spec = spec_from_dict(data, path.parent, str(path), check_files)
    if check_files:
        check_patients(spec, str(path))
    return spec


def expand_path(text: str, base: Path) -> Path:
    """`~` and `$VARIABLES` expanded; relative paths taken from `base`."""
    expanded = Path(os.path.expanduser(os.path.expandvars(str(text))))
    return Path(os.path.normpath(expanded if expanded.is_absolute() else base / expanded))


def spec_from_dict(data: Mapping[str, Any], base: Path, where: str = "dataset spec",
                   check_files: bool = True) -> DatasetSpec:
    """Validate parsed spec data; relative paths are taken from `root` (itself relative to `base`)."""
    if not isinstance(data, Mapping):
        raise InputError(f"{where}: expected an object with 'cases'")
    version = data.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise InputError(f"{where}: format_version {version!r} is not supported (this version reads {FORMAT_VERSION})")
    root = expand_path(str(data.get("root") or "."), base)
    catalog = default_catalog()
    maps = {str(name): parse_label_map(raw, catalog, f"{where}, label map {name!r}")
            for name, raw in dict(data.get("label_maps") or {}).items()}
    default_map = data.get("label_map")
    raw_cases = data.get("cases")
    if not isinstance(raw_cases, list) or not raw_cases:
        raise InputError(f"{where} lists no cases; a dataset needs at least one image/label pair")
    cases = tuple(_parse_case(raw, i, root, maps, default_map, catalog, where, check_files)
                  for i, raw in enumerate(raw_cases))
    ids = [case.id for case in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise InputError(f"{where}: case ids {duplicates} appear more than once; give every case its own id")
    check_shared_images(cases, where)
    return DatasetSpec(name=str(data.get("name") or Path(where).stem), cases=cases, source=str(data.get("source", "")),
                       resample_labels=bool(data.get("resample_labels", False)), root=root)


def check_shared_images(cases: tuple[CaseSpec, ...], where: str) -> None:
    """`InputError` when one image file belongs to cases of two patients (a leave-one-out would see it twice)."""
    owner: dict[Path, CaseSpec] = {}
    for case in cases:
        first = owner.setdefault(case.image, case)
        if first.patient_id != case.patient_id:
            raise InputError(f"{where}: cases {first.id!r} (patient {first.patient_id!r}) and {case.id!r} (patient "
                             f"{case.patient_id!r}) read the same image {case.image}; one scan is one patient: give "
                             "both cases the same 'patient'")


def parse_label_map(raw: Any, catalog: ClassCatalog | None = None, where: str = "label map") -> LabelMap:
    """`{"1": "liver", "2": null}` -> `{1: "liver", 2: None}` with names checked and turned into catalog keys."""
    if not isinstance(raw, Mapping) or not raw:
        raise InputError(f"{where}: expected a non-empty object of label value -> class name (or null)")
    catalog = catalog or default_catalog()
    result: LabelMap = {}
    for value_text, name in raw.items():
        try:
            value = int(value_text)
        except (TypeError, ValueError):
            raise InputError(f"{where}: label value {value_text!r} is not a whole number") from None
        if value <= 0:
            raise InputError(f"{where}: label value {value} must be positive; 0 is the background")
        if name is None or name == "":
            result[value] = None
            continue
        try:
            result[value] = catalog.get(str(name)).key
        except InputError as error:
            raise InputError(f"{where}, label value {value}: {error}") from None
    return result


def parse_pairs(items: Sequence[str]) -> dict[str, str]:
    """`--rename` options `["NAME=CLASS", ...]` -> {NAME: CLASS}; `InputError` for an item without '='."""
    pairs = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise InputError(f"{item!r} must look like NAME=CLASS")
        pairs[name] = value
    return pairs


def _parse_case(raw: Any, index: int, root: Path, maps: dict[str, LabelMap], default_map: Any,
                catalog: ClassCatalog, where: str, check_files: bool) -> CaseSpec:
    if not isinstance(raw, Mapping):
        raise InputError(f"{where}, case {index + 1}: expected an object with 'image' and 'label'")
    case_id = str(raw.get("id") or f"case_{index + 1:03d}")
    here = f"{where}, case {case_id!r}"
    label_map = _case_map(raw.get("label_map", default_map), maps, catalog, here)
    paths = []
    for key in ("image", "label"):
        if not raw.get(key):
            raise InputError(f"{here}: '{key}' is missing")
        path = expand_path(str(raw[key]), root)
        if check_files and not path.exists():
            raise InputError(f"{here}: {key} {path} does not exist")
        paths.append(path)
    modality = raw.get("modality")
    if modality is not None and modality not in MODALITIES:
        raise InputError(f"{here}: modality {modality!r} must be one of {', '.join(MODALITIES)} (or left out)")
    return CaseSpec(id=case_id, image=paths[0], label=paths[1], modality=modality, patient=str(raw.get("patient", "")),
                    label_map=label_map)


def _case_map(choice: Any, maps: dict[str, LabelMap], catalog: ClassCatalog, where: str) -> LabelMap:
    if isinstance(choice, str):
        if choice not in maps:
            raise InputError(f"{where}: label map {choice!r} is not defined in 'label_maps' "
                             f"(defined: {', '.join(maps) or 'none'})")
        return maps[choice]
    if choice is None:
        raise InputError(f"{where}: no label map; give 'label_map' for the case or for the whole spec")
    return parse_label_map(choice, catalog, f"{where}, label map")
