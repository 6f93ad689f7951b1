"""Corrections become training data: an image and its corrected segmentation added to an nnU-Net-style dataset.

An annotator corrects AutoMedSAM's segments in Slicer's Segment Editor and saves them (`.seg.nrrd`), or keeps the
command line's NIfTI result (`.nii.gz` + its `.json`). `export_training_case` adds that pair to a dataset folder in
nnU-Net v2's raw layout, which `automedsam-train import-nnunet` (and nnU-Net itself) read:

    DATASET/imagesTr/<case>_0000.nii.gz   the image, on its own grid and voxel type (DICOM series included)
    DATASET/labelsTr/<case>.nii.gz        the label map on the image grid, catalog label values (uint8/uint16)
    DATASET/dataset.json                  channel_names, labels (class key -> catalog label value), numTraining,
                                          file_ending, and `patients` (case -> patient), which nnU-Net ignores

Segments are mapped to catalog classes as `import-slicer` maps them (the user's rename/ignore choices, then the
terminology the segment shows in Slicer, then its name). Label values are the catalog's, so every case of a dataset
agrees on them. Overlapping segments cannot share one label map: they are refused with the voxels counted, never
merged silently.
Nothing is replaced: a case id that exists is refused, and files are written through temporary names.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk  # noqa: N813 (the conventional alias)

from automedsam.catalog import default_catalog
from automedsam.errors import InputError, OutputError
from automedsam.io import read_input, read_volume
from automedsam.result import label_dtype
from automedsam.volume import Volume

from .slicer_import import (
    SegmentChoices,
    SegmentMapping,
    align_segmentation,
    map_segments,
    read_slicer_segmentation,
    segmentation_layers,
)

FILE_ENDING = ".nii.gz"
_CASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class ExportedCase:
    """What was written, and how each segment was mapped."""

    case_id: str
    patient: str
    image: Path
    label: Path
    classes: tuple[str, ...]
    segments: tuple[SegmentMapping, ...]


def export_training_case(image: Path | str, segmentation: Path | str, dataset: Path | str,
                         case_id: str | None = None, patient: str | None = None, modality: str | None = None,
                         series: str | None = None, choices: SegmentChoices | None = None,
                         resample: bool = False) -> ExportedCase:
    """Add `image` (file or DICOM folder) labelled by `segmentation` (`.seg.nrrd`, or `.nii.gz`/`.nii` + `.json`)
    to the dataset folder `dataset` (created when missing). `InputError` before anything is written when the case
    exists, the modality differs from the dataset's, a segment maps to no class, or segments overlap."""
    dataset, segmentation = Path(dataset).expanduser(), Path(segmentation).expanduser()
    case_id = _checked_case_id(case_id or _stem(Path(image)))
    _case_paths(dataset, case_id)
    volume, _ = read_input(image, modality, series)
    labels, mappings = read_corrected_labels(segmentation, volume, choices or SegmentChoices(), resample)
    return add_training_case(volume, labels, dataset, case_id, patient, tuple(mappings))


def add_training_case(volume: Volume, labels: np.ndarray, dataset: Path | str, case_id: str,
                      patient: str | None = None, segments: tuple[SegmentMapping, ...] = ()) -> ExportedCase:
    """Write `volume` and its KJI label map of catalog label values as case `case_id` of the dataset folder."""
    dataset = Path(dataset).expanduser()
    case_id = _checked_case_id(case_id)
    volume.validate()
    manifest = _read_manifest(dataset)
    targets = _case_paths(dataset, case_id)
    _check_modality(manifest, volume.modality, dataset)
    classes = _present_classes(labels)
    if not classes:
        raise InputError("the segmentation labels no voxel with a catalog class, so there is nothing to train on")
    manifest = _updated_manifest(manifest, dataset, volume.modality, case_id, patient or case_id, classes)
    labels = np.asarray(labels).astype(label_dtype(int(np.max(labels))))
    _write_all([(targets[0], lambda path: sitk.WriteImage(volume.to_sitk(), str(path), True)),
                (targets[1], lambda path: sitk.WriteImage(volume.to_sitk(labels), str(path), True)),
                (dataset / "dataset.json", lambda path: path.write_text(json.dumps(manifest, indent=2) + "\n"))])
    return ExportedCase(case_id, patient or case_id, targets[0], targets[1], tuple(classes), segments)


def free_case_id(dataset: Path | str, wanted: str) -> str:
    """`wanted` made a valid case id (other characters -> '_'), with `_2`, `_3`, ... when the dataset has it."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", wanted).strip("_.-") or "case"
    candidate, number = base, 1
    while any((Path(dataset) / folder / name).exists() for folder, name in
              (("imagesTr", f"{candidate}_0000{FILE_ENDING}"), ("labelsTr", f"{candidate}{FILE_ENDING}"))):
        number += 1
        candidate = f"{base}_{number}"
    return candidate


def read_corrected_labels(segmentation: Path, volume: Volume, choices: SegmentChoices,
                          resample: bool) -> tuple[np.ndarray, list[SegmentMapping]]:
    """The segmentation as one KJI label map of catalog label values on `volume`'s grid, and the segment mapping."""
    name = segmentation.name.lower()
    if name.endswith((".seg.nrrd", ".seg.nhdr")):
        data = read_slicer_segmentation(segmentation)
        mappings = map_segments(data["segments"], segmentation.name, choices.rename, choices.ignore,
                                choices.ignore_unmapped)
        layers = segmentation_layers(data)
    elif name.endswith((".nii.gz", ".nii")):
        layers, mappings = _nifti_result(segmentation, choices)
    else:
        raise InputError(f"{segmentation.name}: a corrected segmentation is a Slicer .seg.nrrd or an AutoMedSAM NIfTI "
                         "result (.nii.gz with its .json)")
    reference = volume.to_sitk()
    aligned = [sitk.GetArrayFromImage(align_segmentation(reference, layer, resample, f"{segmentation.name} layer "
                                                          f"{index}")) for index, layer in enumerate(layers)]
    return _catalog_label_map(aligned, mappings, segmentation.name), mappings


def _nifti_result(path: Path, choices: SegmentChoices) -> tuple[list[sitk.Image], list[SegmentMapping]]:
    """An AutoMedSAM NIfTI result: the label map and its `.json` (label value -> class key, name, codes)."""
    stem = path.name[: -len(".nii.gz")] if path.name.lower().endswith(".nii.gz") else path.name[: -len(".nii")]
    sidecar = path.with_name(f"{stem}.json")
    if not sidecar.is_file():
        raise InputError(f"{path.name} has no {sidecar.name} beside it; the label values of a NIfTI result are "
                         "described there (write .seg.nrrd from Slicer instead)")
    try:
        described = json.loads(sidecar.read_text(encoding="utf-8"))
        segments = [{"name": str(item["key"]), "labelValue": int(value), "layer": 0}
                    for value, item in described.items()]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as error:
        raise InputError(f"{sidecar} is not an AutoMedSAM labels file ({error})") from error
    mappings = map_segments(segments, path.name, choices.rename, choices.ignore, choices.ignore_unmapped)
    return [read_volume(path, "CT").to_sitk()], mappings


def _catalog_label_map(layers: Sequence[np.ndarray], mappings: Sequence[SegmentMapping], where: str) -> np.ndarray:
    """Merge the layers into catalog label values; overlapping classes are refused with the voxels counted."""
    catalog = default_catalog()
    values = [catalog.get(m.class_key).label_value for m in mappings if m.class_key is not None]
    merged = np.zeros(layers[0].shape, dtype=label_dtype(max(values, default=0)))
    taken = np.zeros(layers[0].shape, dtype=bool)
    for mapping in mappings:
        if mapping.class_key is None:
            continue
        mask = layers[mapping.layer] == mapping.label_value
        overlap = int(np.count_nonzero(mask & taken & (merged != catalog.get(mapping.class_key).label_value)))
        if overlap:
            raise InputError(f"{where}: segment {mapping.name!r} overlaps another segment in {overlap:,} voxels; a "
                             "training label map holds one class per voxel: remove the overlap in Segment Editor "
                             "(masking: overwrite other segments) and save again")
        merged[mask] = catalog.get(mapping.class_key).label_value
        taken |= mask
    if not taken.any():
        raise InputError(f"{where}: no voxel belongs to a catalog class, so there is nothing to train on")
    return merged


def _present_classes(labels: np.ndarray) -> list[str]:
    by_value = {organ.label_value: organ.key for organ in default_catalog()}
    return [by_value[int(value)] for value in np.unique(labels) if value]


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _checked_case_id(case_id: str) -> str:
    if not _CASE_ID.fullmatch(case_id):
        raise InputError(f"case id {case_id!r}: use letters, digits, '_', '-' and '.' (give one with --case-id)")
    return case_id


def _case_paths(dataset: Path, case_id: str) -> tuple[Path, Path]:
    image = dataset / "imagesTr" / f"{case_id}_0000{FILE_ENDING}"
    label = dataset / "labelsTr" / f"{case_id}{FILE_ENDING}"
    if image.exists() or label.exists():
        raise InputError(f"the dataset {dataset} already has a case {case_id!r}; give another --case-id (nothing was "
                         "changed)")
    return image, label


def _read_manifest(dataset: Path) -> dict[str, Any]:
    path = dataset / "dataset.json"
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path} is not valid JSON ({error}); fix or move it first") from error
    if manifest.get("file_ending", FILE_ENDING) != FILE_ENDING:
        raise InputError(f"{path}: the dataset stores {manifest['file_ending']} files; AutoMedSAM adds {FILE_ENDING}")
    return manifest


def _check_modality(manifest: dict[str, Any], modality: str, dataset: Path) -> None:
    channel = str((manifest.get("channel_names") or {}).get("0", modality))
    if channel.upper() != modality.upper():
        raise InputError(f"the dataset {dataset} holds {channel} images and this image is {modality}; keep one "
                         "modality per dataset (or pass --modality if the guess is wrong)")


def _updated_manifest(manifest: dict[str, Any], dataset: Path, modality: str, case_id: str, patient: str,
                      classes: Sequence[str]) -> dict[str, Any]:
    catalog = default_catalog()
    labels = {"background": 0, **{k: v for k, v in (manifest.get("labels") or {}).items() if k != "background"}}
    for key in classes:
        labels[key] = catalog.get(key).label_value
    cases = len(list((dataset / "labelsTr").glob(f"*{FILE_ENDING}"))) if (dataset / "labelsTr").is_dir() else 0
    return {**manifest, "name": manifest.get("name", dataset.name), "channel_names": {"0": modality},
            "labels": dict(sorted(labels.items(), key=lambda item: item[1])), "numTraining": cases + 1,
            "file_ending": FILE_ENDING, "patients": {**(manifest.get("patients") or {}), case_id: patient},
            "description": manifest.get("description", "AutoMedSAM training cases (corrected segmentations)")}


def _write_all(targets: Sequence[tuple[Path, Callable[[Path], None]]]) -> None:
    """Write each file under a temporary name in its folder, then rename all; on failure remove the temporaries."""
    temporaries: list[tuple[Path, Path]] = []
    try:
        for target, write in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_name(f".{target.name}.part{''.join(target.suffixes[-2:])}")
            temporaries.append((temporary, target))
            write(temporary)
        for temporary, target in temporaries:
            os.replace(temporary, target)
    except (OSError, RuntimeError) as error:
        raise OutputError(f"cannot write the training case into {targets[0][0].parent.parent}: "
                          f"{getattr(error, 'strerror', None) or error} (nothing was added)") from error
    finally:
        for temporary, _ in temporaries:
            temporary.unlink(missing_ok=True)
