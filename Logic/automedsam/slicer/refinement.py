"""Refinement in the scene: the module's + and - points and box correct one segment on one slice, and carry on.

The prompts are markups nodes the user places in the slice views: a point list of points inside the organ, one of
points outside it, and an ROI (a box). Their world positions are mapped into the volume node's own frame, then
`automedsam.refine` re-runs the mask decoder on the slice (the slice embedding comes from the module's cache: no
encoder pass once the volume has been segmented) and, with `propagate`, on the neighbouring slices.

What is written, and what is not:
- only the refined segment changes, only on the slices the refinement reports; its new mask never takes voxels of
  another segment;
- propagation never enters a slice edited by hand since AutoMedSAM last wrote the segment (`edit_record`): it stops
  before it and says so; the slice the user prompted on is always refined;
- a class of the model without a segment yet gets a new segment (named, coloured and tagged like a run's);
- every refinement is one undo step: `SceneRefiner.undo` restores the slices it changed (and removes a segment it
  created), and the injected `save_editor_state` lets the Segment Editor's own Undo do the same;
- a failure leaves the segmentation as it was.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engine import EngineOptions
from ..errors import InputError
from ..refine import (
    RasPoint,
    RefinedLabels,
    Refinement,
    RefineOptions,
    SliceDecoder,
    canonical_slice,
    locate,
    refine,
    slice_position,
)
from ..result import Segment
from ..volume import CanonicalView, Volume, canonical_view
from . import bridge, edit_record
from .class_picker import parse_classes
from .logic import SceneSegmenter, roi_box
from .request import read_tag, segmentation_problem, tagged_segments, volume_problem

UNDO_DEPTH = 20           # refinements per segmentation that can be undone


@dataclass(frozen=True)
class RefinementRequest:
    """One refinement: the class (name or key) to correct on `segmentation_node` over `volume_node`, and the markups
    that say how (points inside, points outside, a box), all on one slice."""

    volume_node: Any
    segmentation_node: Any
    class_name: str
    positive_points: Any = None       # vtkMRMLMarkupsFiducialNode
    negative_points: Any = None       # vtkMRMLMarkupsFiducialNode
    roi_node: Any = None              # vtkMRMLMarkupsROINode
    propagate: bool = False
    model: str | None = None
    device: str = "auto"


@dataclass
class RefinementOutcome:
    """What a refinement changed: the segment, the canonical slices (and their position along the slice axis, mm),
    why propagation stopped in each direction, whether the segment was made now, and the time taken."""

    segment_id: str
    name: str
    slices: list[int]
    positions: list[float]
    stops: dict[str, str] = field(default_factory=dict)
    created: bool = False
    seconds: float = 0.0

    def summary(self) -> str:
        """One status line for the module."""
        where = (f"the slice at {self.positions[0]:.1f} mm" if len(self.positions) == 1 else
                 f"{len(self.positions)} slices ({min(self.positions):.1f} to {max(self.positions):.1f} mm)")
        lines = [f"{self.name} refined on {where} in {self.seconds:.1f} s"]
        lines += [f"Propagation {direction}: stopped, {reason}." for direction, reason in self.stops.items()]
        return "\n".join(lines)


@dataclass
class _UndoStep:
    """The segment's masks, before the refinement, on the slices it changed (of `view`, the volume's canonical slices
    then); its record before and after."""

    segment_id: str
    created: bool
    view: CanonicalView
    before: dict[int, np.ndarray]
    record_before: str | None
    record_after: str


def markups_refinement(request: RefinementRequest, key: str) -> Refinement:
    """The request's markups as a `Refinement` in the volume node's own RAS frame (mm)."""
    to_volume = bridge.world_to_node(request.volume_node)
    points: list[RasPoint] = []
    for node, positive in ((request.positive_points, True), (request.negative_points, False)):
        for position in _defined_points(node):
            points.append(RasPoint(tuple((to_volume @ np.r_[position, 1.0])[:3]), positive))  # type: ignore[arg-type]
    box = None
    if request.roi_node is not None and request.roi_node.GetNumberOfControlPoints() > 0:
        box = roi_box(request.roi_node, request.volume_node)
    return Refinement(key, tuple(points), box)


def has_prompts(request: RefinementRequest) -> bool:
    """True when the request's markups hold a placed point or a box."""
    roi = request.roi_node
    return bool(_defined_points(request.positive_points) or _defined_points(request.negative_points)
                or (roi is not None and roi.GetNumberOfControlPoints() > 0))


def _defined_points(node: Any) -> list[np.ndarray]:
    """World positions of a point list's placed points (a point still being placed does not count)."""
    if node is None:
        return []
    found = []
    for index in range(node.GetNumberOfControlPoints()):
        if node.GetNthControlPointPositionStatus(index) == node.PositionDefined:
            position = [0.0, 0.0, 0.0]
            node.GetNthControlPointPositionWorld(index, position)
            found.append(np.asarray(position, dtype=float))
    return found


class SceneRefiner:
    """Refines segments in the scene with the module's model and embedding cache (`SceneSegmenter`), and keeps the
    undo steps of its refinements."""

    def __init__(self, segmenter: SceneSegmenter, save_editor_state: Callable[[Any], None] | None = None) -> None:
        """`save_editor_state(segmentation_node)` is called just before a refinement writes (the module passes the
        Segment Editor's `saveStateForUndo` when the editor shows that segmentation)."""
        self.segmenter = segmenter
        self.save_editor_state = save_editor_state or (lambda node: None)
        self._undo: dict[str, list[_UndoStep]] = {}
        self._kept: tuple[tuple, SliceDecoder] | None = None

    def problem(self, request: RefinementRequest) -> str | None:
        """Why the refinement cannot run (checked before any work), or None."""
        problem = volume_problem(request.volume_node)
        if problem:
            return problem
        if request.segmentation_node is None:
            return "Select the output segmentation to refine (segment the volume first)."
        try:
            keys = parse_classes(request.class_name, self.segmenter.catalog)
        except InputError as error:
            return f"{error}."
        if len(keys) != 1:
            return "Choose the one class to refine."
        if not has_prompts(request):
            return "Place a point inside the organ (+), a point outside it (-) or a box on the slice to correct."
        return segmentation_problem(request.segmentation_node, keys)

    def refine(self, request: RefinementRequest) -> RefinementOutcome:
        """Refine the request's class; `InputError` (nothing changed) for anything that stops it."""
        started = time.perf_counter()
        problem = self.problem(request)
        if problem:
            raise InputError(problem)
        key = parse_classes(request.class_name, self.segmenter.catalog)[0]
        model = self.segmenter.model(request.model)
        segment_id = tagged_segments(request.segmentation_node).get(key)
        if segment_id is None and key not in model.classes:
            raise InputError(f"{self.segmenter.catalog.get(key).name} is neither a segment of "
                             f"'{request.segmentation_node.GetName()}' nor a class of the model; choose another class")
        refinement = markups_refinement(request, key)
        volume = bridge.volume_from_node(request.volume_node)
        volume.validate()
        view = canonical_view(volume)
        labels, protected = self._labels(request, volume, view, segment_id)
        class_index = model.class_index(key) if key in model.classes else None
        decoder = self._decoder(request.volume_node, volume, model, request.device)
        result = refine(volume, labels, 1, refinement, model, class_index, reach=RefineOptions(
            request.propagate, protected=protected, thick_box=True), decoder=decoder)
        segment_id, created = self._write(request, view, key, segment_id, labels == 1, result)
        segment = request.segmentation_node.GetSegmentation().GetSegment(segment_id)
        return RefinementOutcome(segment_id, segment.GetName(), result.slices,
                                 [slice_position(view, s) for s in result.slices], result.stops, created,
                                 time.perf_counter() - started)

    def prepare(self, request: RefinementRequest) -> bool:
        """Make the embedding and class prompt of the prompts' slice as soon as a prompt is placed (the module calls
        this on each placed point or box), so that Refine, pressed after the user has placed the prompts, costs only
        the mask decoder. False (nothing made) when it cannot be done now; Refine then says why."""
        if not has_prompts(request):
            return False
        return self._prepare(request.volume_node, request.class_name, request.model, request.device,
                             lambda key, view: locate(view, markups_refinement(request, key), True).slice_index)

    def prepare_at(self, volume_node: Any, class_name: str, position: tuple[float, float, float],
                   model_spec: str | None = None, device: str = "auto") -> bool:
        """Make the embedding and class prompt of the slice through `position` (RAS mm), as the module does when the
        user jumps to a slice from the review table; False (nothing made) when it cannot be done."""
        return self._prepare(volume_node, class_name, model_spec, device,
                             lambda key, view: canonical_slice(view, position))

    def _prepare(self, volume_node: Any, class_name: str, model_spec: str | None, device: str,
                 slice_of: Callable[[str, CanonicalView], int]) -> bool:
        """`SliceDecoder.prepare` on the slice `slice_of(key, view)` for a class of the model; False if any check
        fails (no volume, a class the model lacks, prompts outside the volume or on several slices)."""
        if volume_problem(volume_node):
            return False
        try:
            key = parse_classes(class_name, self.segmenter.catalog)[0]
            model = self.segmenter.model(model_spec)
            if key not in model.classes:
                return False
            decoder = self._decoder(volume_node, bridge.volume_from_node(volume_node), model, device)
            decoder.prepare(slice_of(key, decoder.view), model.class_index(key))
        except InputError:
            return False
        return True

    def _decoder(self, node: Any, volume: Volume, model: Any, device: str) -> SliceDecoder:
        """The slice decoder of the last refinement when volume (voxels unchanged), model and device are the same:
        a click after a click does not normalise and hash the whole volume again (about a second on a large CT)."""
        cache = self.segmenter.cache_for(node)       # the run's embeddings (replaced when another volume ran)
        key = (node.GetID(), node.GetImageData().GetMTime(), node.GetMTime(), id(model), device, id(cache))
        if self._kept is None or self._kept[0] != key:
            self._kept = None                        # let the old decoder (and its cache) go first
            self._kept = (key, SliceDecoder(volume, model, EngineOptions(device=device, cache=cache)))
        return self._kept[1]

    def _labels(self, request: RefinementRequest, volume: Volume, view: CanonicalView,
                segment_id: str | None) -> tuple[np.ndarray, set[int]]:
        """The label map refinement works on (1: the segment, 2: any other segment) and the slices edited by hand."""
        node, volume_node = request.segmentation_node, request.volume_node
        labels = np.zeros(volume.array.shape, dtype=np.uint8)
        segmentation = node.GetSegmentation()
        for index in range(segmentation.GetNumberOfSegments()):
            other = segmentation.GetNthSegmentID(index)
            if other != segment_id:
                labels[bridge.segment_mask(node, other, volume_node)] = 2
        if segment_id is None:
            return labels, set()
        mask = bridge.segment_mask(node, segment_id, volume_node)
        labels[mask] = 1
        return labels, edit_record.edited_slices(segmentation.GetSegment(segment_id), mask, view)

    def _write(self, request: RefinementRequest, view: CanonicalView, key: str, segment_id: str | None,
               previous: np.ndarray, result: RefinedLabels) -> tuple[str, bool]:
        """Put the refined mask into the segment (made now if missing) in place of `previous`, its mask before, as
        one undo step; all or nothing."""
        node = request.segmentation_node
        created = segment_id is None
        mask, slices = result.labels == 1, result.slices
        self.save_editor_state(node)
        if created:
            organ = self.segmenter.catalog.get(key)
            segment_id = bridge.add_segment(node, Segment(key, organ.label_value, organ))
        segment = node.GetSegmentation().GetSegment(segment_id)
        before = view.apply(previous)
        step = _UndoStep(segment_id, created, view, {s: before[s].copy() for s in slices},
                         read_tag(segment, edit_record.DIGEST_TAG), edit_record.slice_digests(mask, view))
        try:
            bridge.replace_segment_mask(node, segment_id, mask, request.volume_node)
        except BaseException:
            if created:
                node.GetSegmentation().RemoveSegment(segment_id)
            raise
        edit_record.record(segment, mask, view)
        steps = self._undo.setdefault(node.GetID(), [])
        steps.append(step)
        del steps[:-UNDO_DEPTH]
        return segment_id, created

    # ------------------------------------------------------------------------------------------------ undo
    def can_undo(self, segmentation_node: Any) -> bool:
        """True when this segmentation has a refinement to undo."""
        return segmentation_node is not None and bool(self._undo.get(segmentation_node.GetID()))

    def undo(self, segmentation_node: Any, volume_node: Any) -> str:
        """Undo the last refinement of the segmentation; refused (nothing changed) if the segment was edited since."""
        steps = self._undo.get(segmentation_node.GetID()) if segmentation_node is not None else None
        if not steps:
            raise InputError("there is no refinement to undo in this segmentation")
        step = steps[-1]
        segment = segmentation_node.GetSegmentation().GetSegment(step.segment_id)
        if segment is None:
            steps.pop()
            raise InputError("the refined segment was deleted; there is nothing to undo")
        name = segment.GetName()
        current = bridge.segment_mask(segmentation_node, step.segment_id, volume_node)
        if edit_record.slice_digests(current, step.view) != step.record_after:
            raise InputError(f"{name} was edited after the refinement; undo those edits first (Segment Editor's Undo)")
        self._restore(segmentation_node, volume_node, step, current)
        steps.pop()
        return f"Undid the refinement of {name}."

    @staticmethod
    def _restore(node: Any, volume_node: Any, step: _UndoStep, current: np.ndarray) -> None:
        """Put the step's slices back (or remove the segment it created) and its record."""
        if step.created:
            node.GetSegmentation().RemoveSegment(step.segment_id)
            return
        view = step.view
        canonical = view.apply(current.copy())
        for index, plane in step.before.items():
            canonical[index] = plane
        bridge.replace_segment_mask(node, step.segment_id, view.invert(canonical), volume_node)
        segment = node.GetSegmentation().GetSegment(step.segment_id)
        if step.record_before is None:
            segment.RemoveTag(edit_record.DIGEST_TAG)
        else:
            segment.SetTag(edit_record.DIGEST_TAG, step.record_before)
