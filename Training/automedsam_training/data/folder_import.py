"""Importers that write a dataset spec for common layouts.

- `import_nnunet_folder`: an nnU-Net v2 raw dataset (`dataset.json` with `channel_names`, `labels` name -> value,
  `file_ending`; `imagesTr/<case>_0000<ending>`, `labelsTr/<case><ending>`) or a Medical Segmentation Decathlon /
  nnU-Net v1 folder (`dataset.json` with `modality`, `labels` value -> name and a `training` list).
- `import_totalsegmentator_reference`: TotalSegmentator's `tests/reference_files/` (three patients: the full
  abdomen-to-pelvis CT, the DICOM CT, the MR), with TotalSegmentator's label values for its `total` (CT) and
  `total_mr` (MR) tasks as recorded in the class catalog.
- `slicer_import.import_slicer_segmentation`: a Slicer `.seg.nrrd` and its image.

Label names are matched to catalog classes by key, display name or synonym (`automedsam classes`); `rename` maps a
dataset's own names to catalog names, `ignore` makes labels background. `merge_vertebrae` maps every individual
vertebra label (vertebrae_C1 ... vertebrae_S1) and vertebral-column region to the one class `vertebrae`;
`merge_parts` maps lung lobes to the whole left / right lung and single ribs to `ribs`, so that patients
labelled by part (TotalSegmentator) and as a whole (a Slicer chest segmentation) share classes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from automedsam.catalog import default_catalog
from automedsam.errors import InputError

from .dataset_spec import CaseSpec, DatasetSpec, LabelMap

VERTEBRA_PREFIX = "vertebrae_"
MERGED_VERTEBRAE = "vertebrae"
_MR_CHANNEL_NAMES = ("mr", "mri", "t1", "t2", "t1w", "t2w", "flair", "adc", "dwi", "pd")
SPINE_REGIONS = ("cervical_spine", "thoracic_spine", "lumbar_spine")  # whole vertebral-column segments
WHOLE_PARTS = {  # part class -> the whole it belongs to
    "lung_upper_lobe_left": "lung_left", "lung_lower_lobe_left": "lung_left",
    "lung_upper_lobe_right": "lung_right", "lung_middle_lobe_right": "lung_right",
    "lung_lower_lobe_right": "lung_right",
    **{f"rib_{side}_{n}": "ribs" for side in ("left", "right") for n in range(1, 13)},
}
# (case id, patient, image, label, TotalSegmentator task, modality). `example_seg_fast_force_split` is the `--fast`
# model's output, labelled with the `total` class map (its label values agree with example_seg.nii.gz's where the
# two overlap: Dice 0.89-0.98 for liver, spleen, kidneys, stomach, aorta, IVC, L1).
TOTALSEG_CASES = (
    ("ct", "ct", "example_ct.nii.gz", "example_seg_fast_force_split.nii.gz", "total", "CT"),
    ("ct_dicom", "ct_dicom", "example_ct_dicom", "example_seg_dicom.nii.gz", "total", "CT"),
    ("mr_sm", "mr_sm", "example_mr_sm.nii.gz", "example_seg_mr.nii.gz", "total_mr", "MR"),
)
# Slices 82-111 of `example_ct.nii.gz` (the same voxels; its header repeats the full scan's origin): patient "ct".
TOTALSEG_CT_SM = ("ct_sm", "ct", "example_ct_sm.nii.gz", "example_seg.nii.gz", "total", "CT")


def merge_vertebra_labels(label_map: LabelMap) -> LabelMap:
    """The map with every `vertebrae_*` class and vertebral-column region replaced by the single class `vertebrae`."""
    return {value: MERGED_VERTEBRAE if key and (key.startswith(VERTEBRA_PREFIX) or key in SPINE_REGIONS) else key
            for value, key in label_map.items()}


def merge_parts(label_map: LabelMap) -> LabelMap:
    """The map with lung lobes mapped to the whole lung and single ribs to `ribs`."""
    return {value: WHOLE_PARTS.get(key, key) if key else key for value, key in label_map.items()}


def totalsegmentator_label_map(task: str, merge_vertebrae: bool = False, whole_parts: bool = False) -> LabelMap:
    """TotalSegmentator's label value -> catalog key for `task` ("total" or "total_mr"), from the catalog."""
    catalog = default_catalog()
    attribute = {"total": "ts_total", "total_mr": "ts_total_mr"}.get(task)
    if attribute is None:
        raise InputError(f"unknown TotalSegmentator task {task!r}; use 'total' (CT) or 'total_mr' (MR)")
    label_map: LabelMap = {getattr(o, attribute): o.key for o in catalog if getattr(o, attribute) is not None}
    label_map = merge_vertebra_labels(label_map) if merge_vertebrae else label_map
    return merge_parts(label_map) if whole_parts else label_map


def import_totalsegmentator_reference(folder: Path | str, merge_vertebrae: bool = True, whole_parts: bool = True,
                                      include_ct_sm: bool = False) -> DatasetSpec:
    """Spec for TotalSegmentator's reference files: example_ct (full), example_ct_dicom (DICOM), example_mr_sm.

    Three patients. `include_ct_sm` adds example_ct_sm with its own label map as a case of patient "ct" (it is a
    slab of example_ct). The labels are TotalSegmentator outputs, not manual ground truth.
    """
    folder = Path(folder).expanduser()
    rows = (*TOTALSEG_CASES, TOTALSEG_CT_SM) if include_ct_sm else TOTALSEG_CASES
    missing = [name for _, _, image, label, _, _ in rows for name in (image, label) if not (folder / name).exists()]
    if missing:
        raise InputError(f"{folder} is not TotalSegmentator's tests/reference_files folder: {', '.join(missing)} "
                         "missing (get it with `python Testing/reference_data.py`, which runs `pip download "
                         "--no-binary :all: totalsegmentator==2.18.0` and unpacks it)")
    cases = tuple(CaseSpec(id=case_id, image=folder / image, label=folder / label, modality=modality,
                           patient=patient, label_map=totalsegmentator_label_map(task, merge_vertebrae, whole_parts))
                  for case_id, patient, image, label, task, modality in rows)
    source = ("TotalSegmentator 2.18.0 sdist tests/reference_files (Apache-2.0); labels are TotalSegmentator "
              "outputs (tasks total / total_mr), not manual ground truth")
    return DatasetSpec(name="totalsegmentator-reference", cases=cases, source=source, root=folder)


def import_nnunet_folder(folder: Path | str, modality: str | None = None, rename: Mapping[str, str] | None = None,
                         ignore: Sequence[str] = (), merge_vertebrae: bool = False) -> DatasetSpec:
    """Spec for an nnU-Net (v1/v2) or MSD raw dataset folder with `dataset.json`, `imagesTr/` and `labelsTr/`.

    Each case is its own patient unless `dataset.json` has a `patients` map (case -> patient), as the folders that
    `automedsam export-training` writes do.
    """
    folder = Path(folder).expanduser()
    manifest_path = folder / "dataset.json"
    if not manifest_path.is_file():
        raise InputError(f"{folder} has no dataset.json; an nnU-Net/MSD dataset folder holds dataset.json, "
                         "imagesTr/ and labelsTr/")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{manifest_path} is not valid JSON: {error}") from error
    modality = modality or _manifest_modality(manifest, manifest_path)
    label_map = _manifest_label_map(manifest, manifest_path, dict(rename or {}), set(ignore))
    if merge_vertebrae:
        label_map = merge_vertebra_labels(label_map)
    pairs = _training_pairs(folder, manifest)
    if not pairs:
        raise InputError(f"{folder}: no image/label pairs found in imagesTr/ and labelsTr/")
    patients = manifest.get("patients") if isinstance(manifest.get("patients"), Mapping) else {}
    cases = tuple(CaseSpec(id=case_id, image=image, label=label, modality=modality,
                           patient=str(patients.get(case_id, case_id)), label_map=label_map)
                  for case_id, image, label in pairs)
    source = f"nnU-Net/MSD dataset {manifest.get('name', folder.name)!r} in {folder}"
    return DatasetSpec(name=str(manifest.get("name", folder.name)), cases=cases, source=source, root=folder)


def _manifest_modality(manifest: Mapping[str, Any], where: Path) -> str:
    channels = manifest.get("channel_names") or manifest.get("modality") or {}
    if not isinstance(channels, Mapping) or not channels:
        raise InputError(f"{where} names no channel (channel_names / modality); pass the modality (CT or MR)")
    first = str(channels.get("0", next(iter(channels.values())))).strip()
    if len(channels) > 1:
        raise InputError(f"{where} has {len(channels)} channels ({dict(channels)}); AutoMedSAM trains on one "
                         "CT or MR channel: keep only channel 0 in a copy of the dataset")
    if first.upper() == "CT":
        return "CT"
    if first.lower() in _MR_CHANNEL_NAMES or first.upper().startswith("MR"):
        return "MR"
    raise InputError(f"{where}: channel 0 is {first!r}, which is neither CT nor MR; pass the modality explicitly")


def _manifest_label_map(manifest: Mapping[str, Any], where: Path, rename: dict[str, str],
                        ignore: set[str]) -> LabelMap:
    labels = manifest.get("labels")
    if not isinstance(labels, Mapping) or not labels:
        raise InputError(f"{where} has no 'labels'")
    pairs: list[tuple[int, str]] = []
    for key, value in labels.items():
        name, number = (str(key), value) if not str(key).isdigit() else (str(value), key)
        if isinstance(number, list):
            raise InputError(f"{where}: label {name!r} is a region ({number}); region-based labels are not "
                             "supported, give one value per class")
        if int(number) != 0:
            pairs.append((int(number), name))
    catalog = default_catalog()
    label_map: LabelMap = {}
    unknown = []
    for number, name in pairs:
        if name in ignore:
            label_map[number] = None
        elif rename.get(name, name) in catalog:
            label_map[number] = catalog.get(rename.get(name, name)).key
        else:
            unknown.append(name)
    if unknown:
        raise InputError(f"{where}: labels {unknown} are not catalog classes; map each to a catalog class with "
                         "--rename NAME=CLASS or make it background with --ignore NAME (`automedsam classes`)")
    return label_map


def _training_pairs(folder: Path, manifest: Mapping[str, Any]) -> list[tuple[str, Path, Path]]:
    """(case id, image, label) from the manifest's `training` list (MSD / v1) or by listing labelsTr (v2)."""
    training = manifest.get("training")
    if isinstance(training, list) and training:
        pairs = []
        for item in training:
            image, label = folder / str(item["image"]), folder / str(item["label"])
            image = image if image.exists() else _channel_file(image)
            pairs.append((_case_name(label), image, label))
        return pairs
    ending = str(manifest.get("file_ending", ".nii.gz"))
    pairs = []
    for label in sorted((folder / "labelsTr").glob(f"*{ending}")):
        case_id = label.name[: -len(ending)]
        image = folder / "imagesTr" / f"{case_id}_0000{ending}"
        if not image.exists():
            raise InputError(f"{label} has no image {image.name} in imagesTr/ (nnU-Net names it <case>_0000{ending})")
        pairs.append((case_id, image, label))
    return pairs


def _case_name(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _channel_file(image: Path) -> Path:
    """nnU-Net v1 lists `imagesTr/x.nii.gz` but stores `imagesTr/x_0000.nii.gz`."""
    name = _case_name(image)
    candidate = image.with_name(f"{name}_0000{image.name[len(name):]}")
    if not candidate.exists():
        raise InputError(f"image {image} (or {candidate.name}) does not exist")
    return candidate
