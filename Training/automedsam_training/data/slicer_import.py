"""Slicer segmentations (`.seg.nrrd`) as training cases: how annotators' corrected segmentations become data.

A Slicer segmentation stores segments as label values in one or more *layers* (a 4D file when segments overlap) and
names each segment's meaning in its `TerminologyEntry` tag (SNOMED CT category, type, type modifier, anatomic
region). Each segment is mapped to a catalog class:

1. `rename` (segment name -> class) and `ignore` (segment name -> background) first: the user's word wins;
2. then the segment's terminology codes, (category, type, modifier, region, region modifier) compared with the
   catalog's codes by coding scheme and value (`SRT`, the old designator of SNOMED, counts as `SCT`);
3. then its name, as a catalog key, display name or synonym.

Segments that map to nothing are listed and refused, unless `ignore_unmapped` makes them background.

Each layer that labels at least one class becomes one case (an image/label pair of the spec), all of the same
patient: overlapping segments keep their own voxels and are never merged into one label map. The layer is aligned to
the image in physical space (lossless when its voxel centres lie on the image grid, e.g. a segmentation cropped to
its segments' extent or stored with flipped axes; otherwise refused with the differences listed, unless resampling
is asked for) and written as a label map on the image grid, with the segments' own label values.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk  # noqa: N813 (the conventional alias)

from automedsam.catalog import ClassCatalog, OrganClass, default_catalog
from automedsam.errors import InputError, OutputError
from automedsam.io import read_volume

from .alignment import CENTRE_TOLERANCE, _grid_difference, _index_map
from .dataset_spec import CaseSpec, DatasetSpec, LabelMap, check_shared_images
from .folder_import import merge_parts, merge_vertebra_labels

LABEL_SUFFIX = ".nrrd"
_SNOMED_DESIGNATORS = {"SRT": "SCT"}  # DICOM's retired designator of SNOMED; numeric values are the same concepts
_TERMINOLOGY_PARTS = ("category", "type", "typeModifier", "anatomicRegion", "anatomicRegionModifier")
CodeKey = tuple[str, ...]


@dataclass(frozen=True)
class SegmentMapping:
    """One segment and what it became: a class key (`how`: code, name, renamed) or None (ignored, unmapped)."""

    name: str
    layer: int
    label_value: int
    terminology: str          # "Lung (SCT 39607008), Right", "" when the segment carries none
    class_key: str | None
    how: str                  # "code", "name", "renamed", "ignored" or "unmapped"

    def describe(self) -> str:
        """One line for the import listing."""
        codes = f" [{self.terminology}]" if self.terminology else " [no terminology]"
        target = self.class_key or ("no class" if self.how == "unmapped" else "background")
        return f"{self.name!r} (layer {self.layer}, value {self.label_value}){codes} -> {target} ({self.how})"


@dataclass(frozen=True)
class SegmentChoices:
    """The user's choices: segment name -> class, names made background, and merges (see `folder_import`)."""

    rename: Mapping[str, str] = field(default_factory=dict)
    ignore: tuple[str, ...] = ()
    ignore_unmapped: bool = False     # unmapped segments become background instead of an error
    merge_vertebrae: bool = False     # vertebrae and vertebral-column regions -> `vertebrae`
    whole_parts: bool = False         # lung lobes -> whole lungs, single ribs -> `ribs`


@dataclass(frozen=True)
class SlicerImport:
    """The cases made from one segmentation, and what happened to every segment."""

    cases: tuple[CaseSpec, ...]
    segments: tuple[SegmentMapping, ...]
    skipped_layers: tuple[int, ...] = ()     # layers whose segments were all ignored

    def listing(self) -> list[str]:
        """The segments and layers, for the command's report."""
        lines = [segment.describe() for segment in self.segments]
        lines += [f"layer {layer}: every segment ignored, no case written" for layer in self.skipped_layers]
        return lines


def import_slicer_segmentation(image: Path | str, segmentation: Path | str, labels_dir: Path | str,
                               case_id: str | None = None, patient: str | None = None, modality: str | None = None,
                               choices: SegmentChoices | None = None, resample: bool = False) -> SlicerImport:
    """Cases (one per layer that labels a class) for a Slicer `.seg.nrrd` of `image`; label maps go to `labels_dir`.

    `InputError` lists unmapped segments (unless `choices.ignore_unmapped`), unknown rename/ignore names, and a
    grid that does not match the image (unless `resample`: nearest neighbour onto the image grid).
    """
    choices = choices or SegmentChoices()
    image, segmentation = Path(image).expanduser(), Path(segmentation).expanduser()
    data = read_slicer_segmentation(segmentation)
    mappings = map_segments(data["segments"], segmentation.name, choices.rename, choices.ignore,
                            choices.ignore_unmapped)
    case_id = case_id or _case_name(segmentation)
    reference = read_volume(image, modality).to_sitk()
    layers = segmentation_layers(data)
    cases, skipped = [], []
    for layer, label_image in enumerate(layers):
        label_map = _layer_label_map(mappings, layer, choices)
        if not any(label_map.values()):
            skipped.append(layer)
            continue
        aligned = align_segmentation(reference, label_image, resample, f"{segmentation.name} layer {layer}")
        layer_id = case_id if len(layers) == 1 else f"{case_id}_layer{layer}"
        label_path = write_label_map(aligned, Path(labels_dir) / f"{layer_id}{LABEL_SUFFIX}")
        cases.append(CaseSpec(id=layer_id, image=image, label=label_path, label_map=label_map, modality=modality,
                              patient=patient or case_id))
    if not cases:
        raise InputError(f"{segmentation}: no segment maps to a catalog class, so there is nothing to train on "
                         f"({'; '.join(m.describe() for m in mappings)})")
    return SlicerImport(tuple(cases), tuple(mappings), tuple(skipped))


def read_slicer_segmentation(path: Path) -> dict[str, Any]:
    """The file read by `slicerio` (voxels IJK or layer-IJK, `ijkToLPS`, segments); `InputError` if it cannot be."""
    import slicerio

    if not path.is_file():
        raise InputError(f"segmentation {path} does not exist")
    try:
        data = slicerio.read_segmentation(str(path))
    except (OSError, ValueError, KeyError) as error:
        raise InputError(f"{path} is not a readable Slicer segmentation (.seg.nrrd): {error}") from error
    voxels = data.get("voxels")
    if voxels is None or voxels.ndim not in (3, 4) or not np.issubdtype(voxels.dtype, np.integer) or \
            (voxels.size and voxels.min() < 0):
        raise InputError(f"{path}: expected a binary-labelmap segmentation (3D, or 4D with layers) of label "
                         "values 0 and above")
    if not data.get("segments"):
        raise InputError(f"{path} holds no segments")
    _number_old_layers(data)
    return data


def _number_old_layers(data: dict[str, Any]) -> None:
    """Files of Slicer before 4.11 store segment i as value 1 of layer i, without Layer/LabelValue fields."""
    segments, voxels = data["segments"], data["voxels"]
    if voxels.ndim == 4 and len(segments) == voxels.shape[0] and not any("layer" in s for s in segments):
        for index, segment in enumerate(segments):
            segment.setdefault("labelValue", 1)
            segment["layer"] = index


def map_segments(segments: Sequence[Mapping[str, Any]], where: str, rename: Mapping[str, str],
                 ignore: Sequence[str], ignore_unmapped: bool = False,
                 catalog: ClassCatalog | None = None) -> list[SegmentMapping]:
    """Every segment's class: rename/ignore, then terminology code, then name; unmapped ones refused or ignored."""
    catalog = catalog or default_catalog()
    names = {str(segment.get("name", segment.get("id", ""))) for segment in segments}
    unknown = sorted((set(rename) | set(ignore)) - names)
    if unknown:
        raise InputError(f"{where}: --rename/--ignore name segments that are not in the file: {unknown}; its "
                         f"segments are {sorted(names)}")
    by_code = _catalog_codes(catalog)
    mappings = [_map_segment(segment, rename, set(ignore), by_code, catalog) for segment in segments]
    unmapped = [m for m in mappings if m.how == "unmapped"]
    if unmapped and not ignore_unmapped:
        listed = "; ".join(m.describe() for m in unmapped)
        raise InputError(f"{where}: {len(unmapped)} segment(s) map to no catalog class: {listed}. Map each with "
                         "--rename NAME=CLASS (`automedsam classes` lists them), make it background with --ignore "
                         "NAME, or pass --ignore-unmapped")
    if unmapped:
        mappings = [m if m.how != "unmapped" else SegmentMapping(m.name, m.layer, m.label_value, m.terminology,
                                                                 None, "unmapped, ignored") for m in mappings]
    return mappings


def _map_segment(segment: Mapping[str, Any], rename: Mapping[str, str], ignore: set[str],
                 by_code: dict[CodeKey, OrganClass], catalog: ClassCatalog) -> SegmentMapping:
    """One segment's mapping, in the order rename/ignore, code, name."""
    name = str(segment.get("name", segment.get("id", "")))
    terminology = segment.get("terminology") or {}
    fields = (name, int(segment.get("layer", 0)), int(segment.get("labelValue", 1)), _describe_terms(terminology))
    if name in ignore:
        return SegmentMapping(*fields, None, "ignored")
    if name in rename:
        return SegmentMapping(*fields, catalog.get(rename[name]).key, "renamed")
    organ = by_code.get(_segment_code(terminology)) if terminology else None
    if organ is not None:
        return SegmentMapping(*fields, organ.key, "code")
    if name in catalog:
        return SegmentMapping(*fields, catalog.get(name).key, "name")
    return SegmentMapping(*fields, None, "unmapped")


def _code_id(scheme: str, value: str) -> str:
    """`SCT^39607008`: the comparable part of a code (meanings vary between lists and versions)."""
    scheme = scheme.strip()
    return f"{_SNOMED_DESIGNATORS.get(scheme, scheme)}^{value.strip()}" if value.strip() else ""


def _segment_code(terminology: Mapping[str, Any]) -> CodeKey:
    """(category, type, type modifier, region, region modifier) ids of a slicerio terminology dict."""
    parts = []
    for part in _TERMINOLOGY_PARTS:
        code = list(terminology.get(part) or ["", "", ""]) + ["", ""]
        parts.append(_code_id(str(code[0]), str(code[1])))
    return tuple(parts)


def _catalog_codes(catalog: ClassCatalog) -> dict[CodeKey, OrganClass]:
    """Catalog classes by their code ids (a code two classes share would identify neither: left out)."""
    index: dict[CodeKey, OrganClass] = {}
    shared: set[CodeKey] = set()
    for organ in catalog:
        codes = (organ.category, organ.type, organ.type_modifier, organ.anatomic_region,
                 organ.anatomic_region_modifier)
        key = tuple(_code_id(code.scheme, code.value) if code else "" for code in codes)
        if key in index:
            shared.add(key)
        index[key] = organ
    return {key: organ for key, organ in index.items() if key not in shared}


def _describe_terms(terminology: Mapping[str, Any]) -> str:
    """'Lung (SCT 39607008), Right' for the listing."""
    if not terminology or not terminology.get("type"):
        return ""
    scheme, value, meaning = (list(terminology["type"]) + ["", "", ""])[:3]
    text = f"{meaning} ({scheme} {value})"
    modifier = terminology.get("typeModifier")
    return f"{text}, {modifier[2]}" if modifier and len(modifier) > 2 else text


def _layer_label_map(mappings: Sequence[SegmentMapping], layer: int, choices: SegmentChoices) -> LabelMap:
    """Label value -> class key (None: background) of one layer's segments."""
    label_map: LabelMap = {m.label_value: m.class_key for m in mappings if m.layer == layer}
    label_map = merge_vertebra_labels(label_map) if choices.merge_vertebrae else label_map
    return merge_parts(label_map) if choices.whole_parts else label_map


def _case_name(path: Path) -> str:
    """`Segmentation` for `Segmentation.seg.nrrd`."""
    name = path.name
    for suffix in (".seg.nrrd", ".nrrd", ".seg.nhdr", ".nhdr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def segmentation_layers(data: Mapping[str, Any]) -> list[sitk.Image]:
    """One SimpleITK label image (LPS geometry of the file) per layer of a slicerio segmentation."""
    voxels = np.asarray(data["voxels"])
    layers = voxels if voxels.ndim == 4 else voxels[np.newaxis]
    ijk_to_lps = np.asarray(data["ijkToLPS"], dtype=float)
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise InputError(f"the segmentation's voxel size {tuple(spacing)} is not positive")
    images = []
    for layer in layers:
        image = sitk.GetImageFromArray(np.ascontiguousarray(layer.transpose(2, 1, 0)))  # IJK -> KJI
        image.SetSpacing(tuple(float(s) for s in spacing))
        image.SetOrigin(tuple(float(o) for o in ijk_to_lps[:3, 3]))
        image.SetDirection(tuple(float(d) for d in (ijk_to_lps[:3, :3] / spacing).ravel()))
        images.append(image)
    return images


def align_segmentation(image: sitk.Image, labels: sitk.Image, resample: bool, what: str) -> sitk.Image:
    """`labels` on the grid of `image`, in physical space.

    Exact when every label voxel centre lies on an image voxel centre (the same lattice: a cropped extent, other
    axis orders or flips); segment voxels outside the image are refused. Any other grid: `InputError` listing the
    differences, unless `resample` (nearest neighbour).
    """
    on_lattice = _same_lattice(image, labels)
    if not (on_lattice or resample):
        raise InputError(f"{what}: the segmentation's voxel grid differs from the image's "
                         f"({_grid_difference(image, labels)}); export the segmentation on the image's geometry in "
                         "Slicer, or pass --resample-labels (nearest neighbour onto the image grid)")
    aligned = sitk.Resample(labels, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, labels.GetPixelID())
    if on_lattice:
        before = np.bincount(sitk.GetArrayViewFromImage(labels).ravel())[1:]
        after = np.bincount(sitk.GetArrayViewFromImage(aligned).ravel(), minlength=before.size + 1)[1:before.size + 1]
        lost = {value + 1: int(b - a) for value, (b, a) in enumerate(zip(before, after, strict=True)) if b != a}
        if lost:
            raise InputError(f"{what}: segment voxels lie outside the image (label value: voxels outside "
                             f"{lost}); is it the segmentation of another image?")
    return aligned


def _same_lattice(image: sitk.Image, labels: sitk.Image) -> bool:
    """True when label voxel centres are image voxel centres: a signed permutation with integer offsets."""
    mapping = np.linalg.inv(_index_map(image, labels))  # label indices -> image indices
    linear = mapping[:3, :3]
    return bool(np.allclose(np.abs(linear).sum(axis=0), 1.0, atol=CENTRE_TOLERANCE)
                and np.allclose(np.abs(linear).sum(axis=1), 1.0, atol=CENTRE_TOLERANCE)
                and np.allclose(linear, np.rint(linear), atol=CENTRE_TOLERANCE)
                and np.allclose(mapping[:3, 3], np.rint(mapping[:3, 3]), atol=CENTRE_TOLERANCE))


def write_label_map(labels: sitk.Image, path: Path) -> Path:
    """Write a label map atomically (compressed NRRD); `OutputError` when the folder is not writable."""
    temporary = path.with_name(f".{path.stem}.part{LABEL_SUFFIX}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(labels, str(temporary), True)
        os.replace(temporary, path)
    except (OSError, RuntimeError) as error:
        temporary.unlink(missing_ok=True)
        raise OutputError(f"cannot write the label map {path}: {error}") from error
    return path


def add_cases(spec: DatasetSpec | None, cases: Sequence[CaseSpec], name: str, source: str, root: Path) -> DatasetSpec:
    """A spec with `cases` appended (a new spec when `spec` is None).

    `InputError` on a repeated case id, or when a new case reads an image that a case of another patient reads.
    """
    existing = spec.cases if spec is not None else ()
    taken = {case.id for case in existing}
    repeated = sorted(case.id for case in cases if case.id in taken)
    if repeated:
        raise InputError(f"the spec already has cases {repeated}; give another --case-id")
    check_shared_images((*existing, *cases), "the spec with the new cases")
    if spec is None:
        return DatasetSpec(name=name, cases=tuple(cases), source=source, root=root)
    sources = spec.source if source in spec.source else "; ".join(s for s in (spec.source, source) if s)
    return DatasetSpec(name=spec.name, cases=(*existing, *cases), source=sources,
                       resample_labels=spec.resample_labels, root=spec.root)
