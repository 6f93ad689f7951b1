"""The Slicer module's logic: run the engine for the ticked classes on a volume node, put the result into a
segmentation node, add the uncertainty map as a volume, and export what the user corrected.

No Qt. Works on the real MRML library inside 3D Slicer and headless with `slicer-core` (the tests). The widget
keeps Slicer responsive by calling `slicer.app.processEvents()` from the per-batch `progress` callback and cancels
through `cancel`; the engine checks it between batches and nothing is written before the run completes.

Re-run semantics: the classes that ran are replaced in one import (`bridge.apply_result`), keeping their
segment IDs; other segments and the user's own segments are not touched. Cancelling, deleting the output node or
the input volume, closing the scene or any failure leaves the scene exactly as it was (a segmentation node made for
this run is removed again).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import slicer
import torch
from vtkmodules.vtkCommonDataModel import vtkImageData

from ..catalog import CUSTOM_REGION, ClassCatalog, OrganClass, default_catalog
from ..engine import EmbeddingCache, EngineOptions, ProgressCallback, RasBox, SegmentationModel, segment
from ..errors import AutoMedSAMError, Cancelled, InputError
from ..io import write_result
from ..loading import load_model
from ..result import LabelVolume, Segment, label_dtype
from ..review import SliceScore, slice_scores
from ..segment_tags import CLASS_KEY_TAG
from ..volume import Volume, canonical_view, ras_box_to_canonical
from . import bridge, edit_record
from .class_picker import parse_classes
from .model_choice import model_version
from .request import (
    SegmentationRequest,
    class_problem,
    read_tag,
    segmentation_problem,
    tagged_segments,
    volume_problem,
)

UNCERTAINTY_ROLE = "AutoMedSAMUncertainty"      # segmentation node -> its uncertainty volume node
ModelLoader = Callable[[str | None], SegmentationModel]
DicomFiles = Callable[[Any], list[Path]]


@dataclass
class SegmentationOutcome:
    """What a run changed: the segmentation node (made if `created`), class key -> segment ID, the classes found
    nowhere, the uncertainty volume node, notes for the user (e.g. a GPU fallback) and the run time in seconds."""

    segmentation_node: Any
    segment_ids: dict[str, str]
    created: bool
    empty: list[str] = field(default_factory=list)
    uncertainty_node: Any = None
    messages: list[str] = field(default_factory=list)
    seconds: float = 0.0
    review: list[SliceScore] = field(default_factory=list)   # segment slices, most uncertain first (with uncertainty)

    def summary(self) -> str:
        """One status line for the module."""
        found = len(self.segment_ids) - len(self.empty)
        text = f"{found} of {len(self.segment_ids)} classes segmented in {self.seconds:.1f} s"
        if self.empty:
            text += f"; not found: {', '.join(self.empty)}"
        return text


class SceneSegmenter:
    """Runs AutoMedSAM on MRML nodes; one instance per module keeps the loaded model and the last volume's
    image embeddings (in memory), so running other classes on the same volume skips the image encoder."""

    def __init__(self, model_loader: ModelLoader | None = None, catalog: ClassCatalog | None = None,
                 dicom_files: DicomFiles | None = None) -> None:
        """`model_loader(spec)` gives a model for a registry id or checkpoint path (default: `load_model`, no
        download: the module's installer fetches files first); `dicom_files(volume_node)` lists the DICOM files a
        volume was loaded from (for DICOM SEG export; default: none)."""
        self._load = model_loader or (lambda spec: load_model(spec))
        self.catalog = catalog or default_catalog()
        self._dicom_files = dicom_files or (lambda node: [])
        self._models: dict[str | None, tuple[tuple[Any, ...], SegmentationModel]] = {}
        self._cache = EmbeddingCache()
        self._cache_owner: str | None = None

    def model(self, spec: str | None) -> SegmentationModel:
        """The model for a registry id (None: the default) or checkpoint path, loaded once; a checkpoint file
        replaced since (other modification time or size, e.g. by a new fine-tuning run) is loaded again."""
        version = model_version(spec)
        loaded = self._models.get(version[0])
        if loaded is None or loaded[0] != version:
            self._models[version[0]] = (version, self._load(spec))
        return self._models[version[0]][1]

    # ----------------------------------------------------------------------------------------------- run
    def run(self, request: SegmentationRequest, progress: ProgressCallback | None = None,
            cancel: Callable[[], bool] | None = None) -> SegmentationOutcome:
        """Segment the request's classes and write them into its segmentation node (or a new one).

        Raises `InputError`/`ModelError` before any work for bad input, `Cancelled` when cancelled or when a node
        of the request disappears mid-run (nothing is changed then), `AutoMedSAMError` when memory runs out.
        """
        started = time.perf_counter()
        volume, keys, model = self._prepare(request)
        messages: list[str] = []
        stop = self._stop_when(request, cancel)
        options = self._options(request, progress, stop, messages)
        try:
            result = segment(volume, keys, model, options, self.catalog)
            if stop():                                  # cancelled (or a node deleted) during the last batch
                raise Cancelled("segmentation cancelled; nothing was changed")
        except Cancelled:
            raise Cancelled(self._vanished(request) or "segmentation cancelled; nothing was changed") from None
        except MemoryError as error:
            raise AutoMedSAMError("out of memory; close other programs, choose a region of interest or use a "
                                  "smaller volume (nothing was changed)") from error
        result = self._inside_roi(result, request)
        outcome = self._write(result, request, keys)
        outcome.messages = messages + [m for m in result.messages if m not in messages]
        outcome.seconds = time.perf_counter() - started
        return outcome

    def _prepare(self, request: SegmentationRequest) -> tuple[Volume, list[str], SegmentationModel]:
        """Check everything that can be checked before the run; the volume's voxels, the class keys, the model."""
        problem = volume_problem(request.volume_node)
        if problem:
            raise InputError(problem)
        keys = parse_classes("; ".join(request.classes), self.catalog)
        problem = segmentation_problem(request.segmentation_node, keys)
        if problem:
            raise InputError(problem)
        model = self.model(request.model)
        problem = class_problem(tuple(keys), request.model, tuple(model.classes), self.catalog)
        if problem:
            raise InputError(problem)
        volume = bridge.volume_from_node(request.volume_node)
        volume.validate()
        return volume, keys, model

    def _options(self, request: SegmentationRequest, progress: ProgressCallback | None, cancel: Callable[[], bool],
                 messages: list[str]) -> EngineOptions:
        """Engine options of the request; a GPU asked for without CUDA becomes the CPU, with a note for the user."""
        device = request.device
        if device == "cuda" and not torch.cuda.is_available():
            device = "cpu"
            messages.append("No CUDA GPU is available; AutoMedSAM ran on the CPU (slower).")
        return EngineOptions(device=device, precision="bf16" if request.fast else "auto", progress=progress,
                             cancel=cancel, cache=self.cache_for(request.volume_node), roi=self.roi(request),
                             uncertainty_samples=request.uncertainty_samples if request.uncertainty else 0,
                             warn=messages.append)

    def cache_for(self, volume_node: Any) -> EmbeddingCache:
        """The embedding cache, emptied when another volume is segmented (memory holds one volume's embeddings)."""
        if volume_node.GetID() != self._cache_owner:
            self._cache, self._cache_owner = EmbeddingCache(), volume_node.GetID()
        return self._cache

    @staticmethod
    def _stop_when(request: SegmentationRequest, cancel: Callable[[], bool] | None) -> Callable[[], bool]:
        def stop() -> bool:
            return bool(cancel is not None and cancel()) or SceneSegmenter._vanished(request) is not None
        return stop

    @staticmethod
    def _vanished(request: SegmentationRequest) -> str | None:
        """Why the run must stop because the scene changed under it (node deleted, scene closed), or None."""
        volume, output = request.volume_node, request.segmentation_node
        if volume.GetScene() is None or volume.GetScene().IsClosing():
            return f"the input volume '{volume.GetName()}' was removed (or the scene closed) during the run; " \
                   "nothing was written"
        if output is not None and output.GetScene() is None:
            return f"the output segmentation '{output.GetName()}' was deleted during the run; nothing was written"
        if request.roi_node is not None and request.roi_node.GetScene() is None:
            return "the markups ROI was deleted during the run; nothing was written"
        return None

    # ------------------------------------------------------------------------------------------------ ROI
    def roi(self, request: SegmentationRequest) -> RasBox | None:
        """The request's slice range or markups ROI as a box in the volume node's own RAS frame (mm), or None."""
        if request.axial_range is not None:
            (r0, a0, _), (r1, a1, _) = _node_bounds(request.volume_node)
            low, high = sorted(request.axial_range)
            return RasBox((r0, a0, low), (r1, a1, high))
        if request.roi_node is not None:
            return roi_box(request.roi_node, request.volume_node)
        return None

    def _inside_roi(self, result: LabelVolume, request: SegmentationRequest) -> LabelVolume:
        """The labels with everything outside a markups ROI's box cleared (the engine limits slices only)."""
        if request.roi_node is None:
            return result
        box = roi_box(request.roi_node, request.volume_node)
        view = canonical_view(result.volume)
        s0, s1, r0, r1, c0, c1 = ras_box_to_canonical(view, box.corner0, box.corner1)
        keep = np.zeros(view.shape, dtype=bool)
        keep[s0:s1 + 1, r0:r1 + 1, c0:c1 + 1] = True
        labels = np.where(view.invert(keep), result.labels, 0).astype(result.labels.dtype)
        return dataclasses.replace(result, labels=labels)

    # ---------------------------------------------------------------------------------------------- write
    def _write(self, result: LabelVolume, request: SegmentationRequest, keys: list[str]) -> SegmentationOutcome:
        """Put the result into the output node (made now if there is none); all or nothing."""
        volume_node = request.volume_node
        uncertainty = bridge.image_data(result.uncertainty, np.float32) if result.uncertainty is not None else None
        node, created = request.segmentation_node, request.segmentation_node is None
        if created:
            node = _new_segmentation_node(volume_node)
        try:
            ids = bridge.apply_result(result, node, volume_node, replace_keys=keys)
        except BaseException:
            if created:
                bridge.remove_nodes(node.GetScene(), [node])
            raise
        if created:
            place_under_study(node, volume_node)
        self._record(result, node, ids)
        uncertainty_node = None if uncertainty is None else self._uncertainty_node(uncertainty, node, volume_node)
        empty = [s.name for s in result.segments if not np.any(result.labels == s.label_value)]
        review = slice_scores(result) if result.uncertainty is not None else []
        return SegmentationOutcome(node, ids, created, empty, uncertainty_node, review=review)

    @staticmethod
    def _record(result: LabelVolume, node: Any, ids: dict[str, str]) -> None:
        """Remember what the run wrote into each segment it ran, so later hand edits can be told apart."""
        view = canonical_view(result.volume)
        values = {s.key: s.label_value for s in result.segments}
        for key, segment_id in ids.items():
            mask = result.labels == values[key] if key in values else np.zeros(result.labels.shape, dtype=bool)
            edit_record.record(node.GetSegmentation().GetSegment(segment_id), mask, view)

    def _uncertainty_node(self, image: vtkImageData, segmentation_node: Any, volume_node: Any) -> Any:
        """The run's uncertainty map (per voxel the largest std of a class probability) as a scalar volume node.

        The node is kept as a reference of the segmentation node, so a re-run refills the same node.
        """
        scene = volume_node.GetScene()
        node = segmentation_node.GetNodeReference(UNCERTAINTY_ROLE)
        if node is None:
            node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode",
                                           scene.GenerateUniqueName(f"{volume_node.GetName()} AutoMedSAM uncertainty"))
            node.CreateDefaultDisplayNodes()
            segmentation_node.SetNodeReferenceID(UNCERTAINTY_ROLE, node.GetID())
            place_under_study(node, volume_node)
        node.SetAndObserveImageData(image)
        node.SetIJKToRASMatrix(bridge.vtk_matrix(bridge.node_ijk_to_ras(volume_node)))
        node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
        node.SetAttribute("AutoMedSAM.Source", volume_node.GetID())
        return node

    # --------------------------------------------------------------------------------------------- export
    def export(self, segmentation_node: Any, reference_volume_node: Any, path: Path | str) -> Path:
        """Write the segmentation as it is now (user edits included) to `.seg.nrrd`, NIfTI (+ JSON) or, for a
        folder path, DICOM SEG next to the volume's DICOM series; returns the written file."""
        result = self._current_result(segmentation_node, reference_volume_node, "export")
        return write_result(result, path, self._dicom_files(reference_volume_node) or None)

    def _current_result(self, segmentation_node: Any, reference_volume_node: Any, verb: str) -> LabelVolume:
        """The segmentation as it is now on the volume's grid, or `InputError` when either node cannot be used."""
        if segmentation_node is None or segmentation_node.GetScene() is None:
            raise InputError(f"no segmentation to {verb}; run AutoMedSAM or select a segmentation first")
        problem = volume_problem(reference_volume_node)
        if problem:
            raise InputError(problem)
        return segmentation_result(segmentation_node, reference_volume_node, self.catalog)

    def save_training_case(self, segmentation_node: Any, reference_volume_node: Any, dataset: Path | str,
                           patient: str | None = None) -> Any:
        """Add the volume and the segmentation as it is now to an nnU-Net-style training dataset (see
        `automedsam_training.data.case_export`); the case is named after the volume, never replacing one. Returns
        the `ExportedCase`."""
        from automedsam_training.data.case_export import add_training_case, free_case_id

        result = self._current_result(segmentation_node, reference_volume_node, "save")
        labels = trainable_labels(result, self.catalog)
        case_id = free_case_id(dataset, reference_volume_node.GetName())
        return add_training_case(result.volume, labels, dataset, case_id, patient)


# ------------------------------------------------------------------------------------------------- helpers
def roi_box(roi_node: Any, volume_node: Any) -> RasBox:
    """A markups ROI's world bounding box as a box in the volume node's own frame (mm, RAS).

    The ROI's world bounds are mapped through the inverse of the volume's (linear) parent transforms.
    """
    bounds = [0.0] * 6
    roi_node.GetRASBounds(bounds)
    matrix = bridge.world_to_node(volume_node)
    corners = np.array([[x, y, z, 1.0] for x in bounds[0:2] for y in bounds[2:4] for z in bounds[4:6]])
    mapped = (matrix @ corners.T)[:3]
    return RasBox(tuple(mapped.min(axis=1)), tuple(mapped.max(axis=1)))  # type: ignore[arg-type]


def _node_bounds(volume_node: Any) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Lowest and highest RAS corner (mm, node frame) of the volume's voxel edges."""
    dims = volume_node.GetImageData().GetDimensions()
    ijk_to_ras = bridge.node_ijk_to_ras(volume_node)
    corners = np.array([[i, j, k, 1.0] for i in (-0.5, dims[0] - 0.5) for j in (-0.5, dims[1] - 0.5)
                        for k in (-0.5, dims[2] - 0.5)])
    ras = (ijk_to_ras @ corners.T)[:3]
    return tuple(ras.min(axis=1)), tuple(ras.max(axis=1))  # type: ignore[return-value]


def _new_segmentation_node(volume_node: Any) -> Any:
    scene = volume_node.GetScene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                   scene.GenerateUniqueName(f"{volume_node.GetName()} AutoMedSAM"))
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    return node


def place_under_study(node: Any, volume_node: Any) -> None:
    """Put `node` next to the volume in the subject hierarchy (under its study when it was loaded from DICOM)."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(volume_node.GetScene())
    volume_item = hierarchy.GetItemByDataNode(volume_node)
    if not volume_item:
        return
    parent = hierarchy.GetItemParent(volume_item)
    item = hierarchy.GetItemByDataNode(node) or hierarchy.CreateItem(parent, node)
    hierarchy.SetItemParent(item, parent)


def segmentation_result(segmentation_node: Any, reference_volume_node: Any,
                        catalog: ClassCatalog | None = None) -> LabelVolume:
    """The segments as they are now (user edits included) as a `LabelVolume` on the reference volume's grid.

    A segment AutoMedSAM made keeps its class's label value and terminology, with the name and colour the user
    sees; any other segment becomes a custom class. Where segments overlap, the later one wins (a label map has
    one value per voxel) and `messages` says how many voxels that changed.
    """
    catalog = catalog or default_catalog()
    volume = bridge.volume_from_node(reference_volume_node)
    segmentation = segmentation_node.GetSegmentation()
    class_ids = {segment_id: key for key, segment_id in tagged_segments(segmentation_node).items()}
    labels = np.zeros(volume.array.shape, dtype=np.uint16)
    segments: list[Segment] = []
    overlap = 0
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        organ = _segment_class(segmentation.GetSegment(segment_id), class_ids.get(segment_id), catalog,
                               [s.label_value for s in segments])
        if organ.key in {s.key for s in segments}:              # two segments named alike
            organ = dataclasses.replace(organ, key=f"{organ.key}_{index + 1}")
        mask = bridge.segment_mask(segmentation_node, segment_id, reference_volume_node)
        overlap += int(np.count_nonzero(mask & (labels > 0)))
        labels[mask] = organ.label_value
        segments.append(Segment(organ.key, organ.label_value, organ))
    messages = [f"{overlap} voxels belong to more than one segment; the later segment was kept"] if overlap else []
    dtype = label_dtype(max((s.label_value for s in segments), default=0))
    return LabelVolume(labels.astype(dtype), volume, tuple(segments), messages=messages)


def trainable_labels(result: LabelVolume, catalog: ClassCatalog) -> np.ndarray:
    """The label map in catalog label values, for training. A segment the user drew counts when its name is a
    class's; overlapping segments and segments of no class are refused (their names say which)."""
    if result.messages:
        raise InputError(f"{result.messages[0].split(';')[0]}, and a training label map holds one class per voxel: "
                         "remove the overlap in Segment Editor (masking: overwrite other segments) and save again")
    labels = np.zeros(result.labels.shape, dtype=np.uint16)
    unknown = []
    for drawn in result.segments:
        mask = result.labels == drawn.label_value
        organ = drawn.organ if drawn.organ.region != CUSTOM_REGION else (
            catalog.get(drawn.name) if drawn.name in catalog else None)
        if organ is None and mask.any():
            unknown.append(drawn.name)
        elif organ is not None:
            labels[mask] = organ.label_value
    if unknown:
        raise InputError(f"segments {unknown} are no catalog class; name each after a class (`automedsam classes`) "
                         "or delete it, then save again")
    return labels


def _segment_class(segment: Any, key: str | None, catalog: ClassCatalog, taken: Sequence[int]) -> OrganClass:
    """The catalog class of an AutoMedSAM segment (with the segment's current name and colour), else a custom one."""
    color = tuple(int(round(c * 255)) for c in segment.GetColor())
    if key is not None and key in catalog and read_tag(segment, CLASS_KEY_TAG) == key:
        organ = catalog.get(key)
        if organ.label_value not in taken:
            return dataclasses.replace(organ, name=segment.GetName(), color=color)
    custom = catalog.custom(segment.GetName(), 0, taken)
    return dataclasses.replace(custom, color=color)
