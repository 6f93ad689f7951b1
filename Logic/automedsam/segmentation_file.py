"""A result file of ours read back for refinement (`.seg.nrrd`, or `.nii.gz` + `.json`), and written again with only
one segment's voxels changed: every other segment, its metadata and the file's geometry stay as they were.

The label map must lie on the image's grid (same size, spacing, origin and directions): a refinement replaces
voxels slice by slice, so a grid that differs is refused with the differences named, never resampled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk  # noqa: N813 (the conventional alias)

from .catalog import OrganClass, default_catalog, normalized_name
from .errors import InputError
from .io import _write_atomically, labels_json, nifti_sidecar, seg_nrrd_segment
from .result import Segment
from .segment_tags import CLASS_KEY_TAG, SLICE_DIGESTS_TAG
from .volume import LPS_TO_RAS, CanonicalView, Volume, canonical_view, format_mm

GEOMETRY_TOLERANCE = 1e-4  # mm, and direction cosines


@dataclass
class SegmentationFile:
    """Labels (KJI, the file's dtype) on the grid `ijk_to_ras`, segments as {key: label value}, names as
    {key: display name}; `source` keeps what writing needs to reproduce the file."""

    path: Path
    kind: str  # "seg.nrrd" | "nifti"
    labels: np.ndarray
    ijk_to_ras: np.ndarray
    segments: dict[str, int]
    names: dict[str, str]
    source: Any

    @classmethod
    def read(cls, path: Path | str) -> SegmentationFile:
        """Read `.seg.nrrd` (one layer) or `.nii.gz`/`.nii` with its `.json`; `InputError` for anything else."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"segmentation {path} does not exist; check the path")
        if path.name.lower().endswith(".seg.nrrd"):
            return _read_seg_nrrd(path)
        if path.name.lower().endswith((".nii.gz", ".nii")):
            return _read_nifti(path)
        raise InputError(f"{path.name}: a segmentation to refine is a result of ours: .seg.nrrd, or .nii.gz with "
                         "its .json")

    def label_of(self, name: str) -> tuple[str, int] | None:
        """(key, label value) of the segment called `name` (a class key, name or synonym, or a segment name)."""
        wanted = {normalized_name(name)}
        with contextlib.suppress(InputError):
            wanted.add(normalized_name(default_catalog().get(name).key))
        for key, value in self.segments.items():
            if {normalized_name(key), normalized_name(self.names.get(key, key))} & wanted:
                return key, value
        return None

    def with_segment(self, organ: OrganClass) -> tuple[SegmentationFile, int]:
        """A copy with a new, empty segment of a class (named, coloured and tagged as our results are), and its label
        value: the class's own when free, else the next free one (`InputError` when the file's dtype cannot hold it)."""
        taken = set(self.segments.values()) | {int(v) for v in np.unique(self.labels)}
        value = organ.label_value if organ.label_value not in taken else max(taken) + 1
        if value > np.iinfo(self.labels.dtype).max:
            raise InputError(f"{self.path.name} has no free label value for {organ.name}; refine a segmentation "
                             "with fewer segments")
        segment = Segment(organ.key, value, organ)
        source = dict(self.source)
        if self.kind == "seg.nrrd":
            source["segments"] = [*self.source.get("segments", []),
                                  seg_nrrd_segment(segment, self.labels, self.view())]
        else:
            table = json.loads(self.source["sidecar"].decode("utf-8"))
            table.update(labels_json([segment]))
            source["sidecar"] = json.dumps(table, indent=2).encode("utf-8")
        added = dataclasses.replace(self, segments={**self.segments, organ.key: value},
                                    names={**self.names, organ.key: organ.name}, source=source)
        return added, value

    def view(self) -> CanonicalView:
        """The canonical slice order of the file's grid (the image's, once `check_grid` passed)."""
        return canonical_view(Volume(self.labels, self.ijk_to_ras, "CT"))

    def record_of(self, key: str) -> str | None:
        """The segment's record of what AutoMedSAM last wrote into it (`slice_record`; `.seg.nrrd` only), or None."""
        if self.kind != "seg.nrrd":
            return None
        for segment in self.source.get("segments", []):
            if _segment_key(segment) == key:
                return segment.get("tags", {}).get(SLICE_DIGESTS_TAG) or None
        return None

    def check_grid(self, volume: Volume) -> None:
        """`InputError` naming every difference between this label map's grid and the image's."""
        differences = grid_differences(volume.array.shape, volume.ijk_to_ras, self.labels.shape, self.ijk_to_ras)
        if differences:
            raise InputError(f"the segmentation {self.path.name} is not on the image's grid ({'; '.join(differences)})"
                             "; refine a segmentation made on this image")

    def write(self, labels: np.ndarray, path: Path | str, records: dict[str, str] | None = None) -> Path:
        """Write `labels` (KJI, same shape and dtype) in this file's format with everything else unchanged, except
        the `records` (key -> `slice_record` digests) of the segments AutoMedSAM just wrote (`.seg.nrrd` only)."""
        if labels.shape != self.labels.shape or labels.dtype != self.labels.dtype:
            raise InputError("the refined label map does not fit the segmentation it came from")
        path = Path(path)
        if self.kind == "seg.nrrd":
            import slicerio

            data = dict(self.source, voxels=np.ascontiguousarray(labels.transpose(2, 1, 0)),
                        segments=[_with_record(segment, records or {}) for segment in self.source.get("segments", [])])
            _write_atomically([(path, lambda temp: slicerio.write_segmentation(str(temp), data))])
            return path
        image: sitk.Image = self.source["image"]
        written = sitk.GetImageFromArray(labels)
        written.CopyInformation(image)
        sidecar_bytes = self.source["sidecar"]
        _write_atomically([(path, lambda temp: sitk.WriteImage(written, str(temp), useCompression=True)),
                           (nifti_sidecar(path), lambda temp: temp.write_bytes(sidecar_bytes))])
        return path


def _segment_key(segment: dict) -> str:
    """The class a slicerio segment stands for: our class-key tag, else its ID, else its name."""
    return str(segment.get("tags", {}).get(CLASS_KEY_TAG) or segment.get("id") or segment.get("name"))


def _with_record(segment: dict, records: dict[str, str]) -> dict:
    """A slicerio segment with its record replaced when `records` has one for its class."""
    tags = segment.get("tags", {})
    key = _segment_key(segment)
    if key not in records:
        return segment
    return dict(segment, tags={**tags, SLICE_DIGESTS_TAG: records[key]})


def grid_differences(shape_a: tuple[int, ...], matrix_a: np.ndarray, shape_b: tuple[int, ...],
                     matrix_b: np.ndarray) -> list[str]:
    """What differs between two KJI grids (image first): size, spacing, origin, direction, as text."""
    a, b = np.asarray(matrix_a, dtype=float), np.asarray(matrix_b, dtype=float)
    spacing_a, spacing_b = np.linalg.norm(a[:3, :3], axis=0), np.linalg.norm(b[:3, :3], axis=0)
    found = []
    if tuple(shape_a) != tuple(shape_b):
        found.append(f"size {'x'.join(map(str, shape_a[::-1]))} vs {'x'.join(map(str, shape_b[::-1]))} voxels")
    if not np.allclose(spacing_a, spacing_b, atol=GEOMETRY_TOLERANCE):
        found.append(f"spacing {format_mm(spacing_a)} vs {format_mm(spacing_b)} mm")
    if not np.allclose(a[:3, 3], b[:3, 3], atol=GEOMETRY_TOLERANCE):
        found.append(f"origin (RAS) {format_mm(a[:3, 3])} vs {format_mm(b[:3, 3])} mm")
    if not np.allclose(a[:3, :3] / spacing_a, b[:3, :3] / spacing_b, atol=GEOMETRY_TOLERANCE):
        found.append("direction (axis orientation) differs")
    return found


def _read_seg_nrrd(path: Path) -> SegmentationFile:
    import slicerio

    try:
        data = slicerio.read_segmentation(str(path))
    except (OSError, ValueError, KeyError) as error:
        raise InputError(f"{path} is not a readable Slicer segmentation (.seg.nrrd): {error}") from error
    voxels = np.asarray(data.get("voxels"))
    if voxels.ndim != 3 or not np.issubdtype(voxels.dtype, np.integer):
        raise InputError(f"{path.name}: only single-layer segmentations can be refined (this one has overlapping "
                         "segments in several layers); merge them into one layer in Slicer first")
    segments, names = {}, {}
    for segment in data.get("segments", []):
        key = _segment_key(segment)
        segments[key] = int(segment.get("labelValue", 1))
        names[key] = str(segment.get("name", key))
    ijk_to_ras = LPS_TO_RAS @ np.asarray(data["ijkToLPS"], dtype=float)
    return SegmentationFile(path, "seg.nrrd", np.ascontiguousarray(voxels.transpose(2, 1, 0)), ijk_to_ras,
                            segments, names, data)


def _read_nifti(path: Path) -> SegmentationFile:
    sidecar = nifti_sidecar(path)
    if not sidecar.is_file():
        raise InputError(f"{path.name} has no {sidecar.name} next to it naming its labels; a segmentation to refine "
                         "is a result of ours (.nii.gz with its .json)")
    raw = sidecar.read_bytes()
    try:
        table = json.loads(raw.decode("utf-8"))
        segments = {str(entry["key"]): int(value) for value, entry in table.items()}
        names = {str(entry["key"]): str(entry.get("name", entry["key"])) for entry in table.values()}
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise InputError(f"{sidecar.name} is not the label table of one of our results: {error}") from error
    image = sitk.ReadImage(str(path))
    volume = Volume.from_sitk(image, "CT")
    return SegmentationFile(path, "nifti", sitk.GetArrayFromImage(image), volume.ijk_to_ras, segments, names,
                            {"image": image, "sidecar": raw})
