"""What a user sees of a segmentation node, for before/after comparisons in the MRML tests (needs slicer-core)."""

from __future__ import annotations

import numpy as np
from vtkmodules.vtkCommonCore import reference

from automedsam.slicer import bridge as slicer_bridge


def tag(segment, name: str) -> str | None:
    """A segment tag's value ("" when set empty), None when absent."""
    value = reference("")
    return str(value) if segment.GetTag(name, value) else None


def node_state(segmentation_node, reference_node) -> list[tuple]:
    """The reference geometry, then per segment: ID, name, colour, tags, voxels on the reference grid."""
    segmentation = segmentation_node.GetSegmentation()
    state: list[tuple] = [(segmentation.GetConversionParameter("Reference image geometry"),)]
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segment_id)
        tags = tuple(tag(segment, t) for t in ("AutoMedSAM.ClassKey", "TerminologyEntry", "Segmentation.Status"))
        mask = slicer_bridge.segment_mask(segmentation_node, segment_id, reference_node)
        state.append((segment_id, segment.GetName(), tuple(np.round(segment.GetColor(), 6)), tags, mask.tobytes()))
    return state
