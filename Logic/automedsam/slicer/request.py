"""What the Slicer module asks the logic to do, and every reason it cannot be done yet, checked without running.

Imports neither torch nor Qt nor `slicer` (node objects are used through their own methods), so the module's
Apply button can be checked before the Python dependencies are installed. `automedsam.slicer.logic` runs a
`SegmentationRequest`; `request_problems` is what the module shows while Apply is disabled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from vtkmodules.vtkCommonCore import reference
from vtkmodules.vtkCommonMath import vtkMatrix4x4

from ..catalog import ClassCatalog
from ..errors import AutoMedSAMError, InputError
from ..registry import ModelRegistry, is_model_path
from ..segment_tags import CLASS_KEY_TAG
from .class_picker import parse_classes

BINARY_LABELMAP = "Binary labelmap"
DEVICES = ("auto", "cuda", "cpu")
STATUS_TAG = "Segmentation.Status"      # Slicer's segment status tag ("inprogress", "completed", ...)


@dataclass(frozen=True)
class SegmentationRequest:
    """One Apply: which volume, classes, model, device and region, and where the segments go.

    `axial_range` is (inferior, superior) in mm along S in the volume node's own frame; `roi_node` is a markups ROI
    node (its world bounds are used). At most one of the two. `segmentation_node` None: a new segmentation node
    is made when the run succeeds (nothing is made when it fails or is cancelled).
    """

    volume_node: Any
    classes: tuple[str, ...]
    model: str | None = None
    segmentation_node: Any = None
    device: str = "auto"
    fast: bool = False
    axial_range: tuple[float, float] | None = None
    roi_node: Any = None
    uncertainty: bool = False
    uncertainty_samples: int = 4


def model_classes(model: str | None, registry: ModelRegistry) -> tuple[str, ...] | None:
    """The catalog keys a registry model segments (None: the registry's default); None for a checkpoint path.

    Read from `models.json`, without loading weights, so the Apply button can be checked at once.
    """
    if model is not None and (model.endswith(".pt") or "/" in model or "\\" in model):
        return None
    return (registry.get(model) if model else registry.default()).classes


def volume_problem(node: Any) -> str | None:
    """Why this node cannot be segmented (no node, labelmap, RGB/vector, 2D, 4D frame), or None."""
    if node is None:
        return "Select the input volume (a CT or MR scan)."
    name = node.GetName()
    if node.IsA("vtkMRMLLabelMapVolumeNode"):
        return f"'{name}' is a labelmap (a segmentation), not an image; select the CT or MR volume."
    image = node.GetImageData()
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        return f"'{name}' has no voxels; load an image into it or select another volume."
    components = image.GetNumberOfScalarComponents()
    if not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLVectorVolumeNode") or components != 1:
        return (f"'{name}' has {components} components per voxel (RGB, vector or multi-volume); "
                "select a scalar CT or MR volume.")
    dims = image.GetDimensions()
    if min(dims) < 2:
        return (f"'{name}' is a 2D image ({dims[0]} x {dims[1]} x {dims[2]} voxels); AutoMedSAM segments 3D "
                "volumes: load the whole series.")
    if is_sequence_proxy(node):
        return (f"'{name}' is the current frame of a 4D sequence; clone the frame you want (Data module) and "
                "segment the copy.")
    return None


def is_sequence_proxy(node: Any) -> bool:
    """True if a sequence browser in the node's scene shows a 4D sequence through this node."""
    scene = node.GetScene()
    if scene is None:
        return False
    browsers = scene.GetNodesByClass("vtkMRMLSequenceBrowserNode")
    return any(browsers.GetItemAsObject(i).IsProxyNodeID(node.GetID()) for i in range(browsers.GetNumberOfItems()))


def class_problem(classes: str | tuple[str, ...], model: str | None, model_keys: tuple[str, ...] | None,
                  catalog: ClassCatalog) -> str | None:
    """Why these classes cannot be run with this model (none ticked, unknown name, not in the model), or None."""
    text = "; ".join(classes) if isinstance(classes, tuple) else classes
    try:
        keys = parse_classes(text, catalog)
    except InputError as error:
        return f"{error}."
    if not keys:
        return "Tick at least one class to segment."
    if model_keys is None:
        return None
    label = (Path(model).name if is_model_path(model) else model) if model else "the default model"
    if not model_keys:
        return f"Model '{label}' runs box prompts only and has no classes; choose a class model."
    missing = [catalog.get(key).name for key in keys if key not in model_keys]
    if missing:
        return (f"Model '{label}' was not trained for {', '.join(missing)}; untick "
                f"{'it' if len(missing) == 1 else 'them'} or choose another model.")
    return None


def segmentation_problem(node: Any, class_keys: list[str]) -> str | None:
    """Why the run may not write into this segmentation node (None is fine: a new node is made), or None.

    Refused: a node edited as closed surfaces, a node the Segment Editor is editing with an active effect, and
    segments of the classes to replace that a reviewer marked "Completed".
    """
    if node is None:
        return None
    name = node.GetName()
    segmentation = node.GetSegmentation()
    if segmentation.GetSourceRepresentationName() != BINARY_LABELMAP:
        return (f"Segmentation '{name}' is edited as {segmentation.GetSourceRepresentationName()}; choose another "
                "output segmentation or create a new one.")
    effect = active_editor_effect(node)
    if effect:
        return (f"Segment Editor is editing '{name}' with the '{effect}' effect; finish or deactivate the effect "
                "(press Escape), then Apply.")
    completed = [segmentation.GetSegment(segment_id).GetName() for key, segment_id in tagged_segments(node).items()
                 if key in class_keys and read_tag(segmentation.GetSegment(segment_id), STATUS_TAG) == "completed"]
    if completed:
        return (f"{', '.join(completed)} in '{name}' {'is' if len(completed) == 1 else 'are'} marked Completed "
                "(reviewed) and would be replaced; set the status back to In progress (Segment Editor) or choose "
                "another output segmentation.")
    return None


def active_editor_effect(segmentation_node: Any) -> str | None:
    """Name of the effect a Segment Editor parameter node has active on this segmentation, or None."""
    scene = segmentation_node.GetScene()
    editors = scene.GetNodesByClass("vtkMRMLSegmentEditorNode") if scene is not None else None
    for index in range(editors.GetNumberOfItems() if editors is not None else 0):
        editor = editors.GetItemAsObject(index)
        if editor.GetSegmentationNode() is segmentation_node and editor.GetActiveEffectName():
            return editor.GetActiveEffectName()
    return None


def tagged_segments(segmentation_node: Any) -> dict[str, str]:
    """Class key -> segment ID of the segments AutoMedSAM made (tag `AutoMedSAM.ClassKey`), first one wins."""
    segmentation = segmentation_node.GetSegmentation()
    found: dict[str, str] = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        key = read_tag(segmentation.GetSegment(segment_id), CLASS_KEY_TAG)
        if key and key not in found:
            found[key] = segment_id
    return found


def request_problems(request: SegmentationRequest, registry: ModelRegistry, catalog: ClassCatalog,
                     model_keys: tuple[str, ...] | None = None) -> list[str]:
    """Every reason the request cannot run, in the order a user fixes them (empty: Apply may run). `model_keys`:
    the classes of a model file, when they are known (the registry lists those of registry models)."""
    problems = [volume_problem(request.volume_node)]
    try:
        keys_of_model = model_keys if model_keys is not None else model_classes(request.model, registry)
    except AutoMedSAMError as error:
        return [p for p in problems if p] + [str(error)]
    problems.append(class_problem(request.classes, request.model, keys_of_model, catalog))
    try:
        keys = parse_classes("; ".join(request.classes), catalog)
    except InputError:
        keys = []
    problems.append(segmentation_problem(request.segmentation_node, keys))
    if request.device not in DEVICES:
        problems.append(f"Unknown device {request.device!r}; use one of {', '.join(DEVICES)}.")
    if request.axial_range is not None and request.roi_node is not None:
        problems.append("Give either a slice range or a markups ROI, not both.")
    if request.roi_node is not None and request.roi_node.GetScene() is None:
        problems.append("The markups ROI was deleted; select another ROI or segment the whole volume.")
    return [problem for problem in problems if problem]


def axial_extent(volume_node: Any) -> tuple[float, float]:
    """(inferior, superior) S coordinate in mm of the volume's voxel centres, in the node's own frame.

    What the module's slice-range slider spans; parent transforms are not applied.
    """
    extent = volume_node.GetImageData().GetExtent()
    matrix = vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    ijk_to_ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    corners = np.array([[i, j, k, 1.0] for i in extent[0:2] for j in extent[2:4] for k in extent[4:6]])
    s_values = (ijk_to_ras @ corners.T)[2]
    return float(s_values.min()), float(s_values.max())


def read_tag(segment: Any, name: str) -> str | None:
    """Value of a segment tag, None when absent or empty."""
    value = reference("")
    return (str(value) or None) if segment.GetTag(name, value) else None


def refinable_classes(segmentation_node: Any, model_keys: tuple[str, ...],
                      catalog: ClassCatalog) -> list[tuple[str, str]]:
    """(class key, name shown) of the classes a refinement can correct: the segmentation's AutoMedSAM segments (named
    as they are now), then the model's classes that have no segment yet (refining one makes its segment)."""
    segments = tagged_segments(segmentation_node) if segmentation_node is not None else {}
    found = [(key, segmentation_node.GetSegmentation().GetSegment(segment_id).GetName())
             for key, segment_id in segments.items()]
    return found + [(key, catalog.get(key).name) for key in model_keys if key not in segments and key in catalog]
