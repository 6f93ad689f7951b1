"""MRML bridge: a Slicer volume node -> `Volume`, and a `LabelVolume` -> segments of a segmentation node.

Works on the real MRML library, inside 3D Slicer or headless with the `slicer-core` wheel. No Qt and no
global `slicer.mrmlScene`: every function receives the nodes it works on and uses their own scene.

Segments made here carry the tag `AutoMedSAM.ClassKey` (the catalog key). A re-run finds the segment of
a class by that tag, never by name, and refills it in place (same segment ID); segments of other classes
and segments the user made are not touched.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import slicer
from scipy import ndimage
from vtkmodules.util import numpy_support
from vtkmodules.vtkCommonCore import vtkStringArray
from vtkmodules.vtkCommonDataModel import vtkImageData
from vtkmodules.vtkCommonMath import vtkMatrix4x4

from ..errors import InputError, OutputError
from ..io import guess_modality
from ..result import LabelVolume, Segment
from ..segment_tags import CLASS_KEY_TAG
from ..volume import MODALITIES, Volume
from .request import is_sequence_proxy, tagged_segments

_LOGIC = slicer.vtkSlicerSegmentationsModuleLogic
_CONVERTER_RULES = ("vtkBinaryLabelmapToClosedSurfaceConversionRule", "vtkClosedSurfaceToBinaryLabelmapConversionRule",
                    "vtkClosedSurfaceToFractionalLabelmapConversionRule",
                    "vtkFractionalLabelmapToClosedSurfaceConversionRule")
_BINARY_LABELMAP = "Binary labelmap"


def register_segmentation_converters() -> None:
    """Register Slicer's labelmap <-> surface converter rules once (Slicer's Segmentations module does it at startup).

    Headless MRML starts without them; segmentation nodes then cannot make a closed surface or a
    labelmap from one.
    """
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    present = {rule.GetClassName() for rule in factory.GetConverterRules()}
    for name in _CONVERTER_RULES:
        if name not in present:
            factory.RegisterConverterRule(getattr(slicer, name)())


# ------------------------------------------------------------------------------------------ volume in
def volume_from_node(node) -> Volume:
    """The node's voxels (KJI copy), IJK->RAS (mm, node frame) and modality as a `Volume`.

    Modality: the node's `DICOM.Modality` attribute (CT or MR) when set, else guessed from the
    intensities. Labelmap, vector (RGB), multi-volume and sequence (4D) nodes are refused.
    """
    _refuse_non_scalar(node)
    image = node.GetImageData()
    if image is None or image.GetPointData().GetScalars() is None:
        raise InputError(f"volume '{node.GetName()}' has no voxels; load an image into it or select another volume")
    dims = image.GetDimensions()
    array = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1]).copy()
    modality = (node.GetAttribute("DICOM.Modality") or "").strip().upper()
    if modality and modality not in MODALITIES:
        raise InputError(f"volume '{node.GetName()}' is {modality} (DICOM Modality); AutoMedSAM segments "
                         f"{' or '.join(MODALITIES)} volumes only")
    return Volume(array, node_ijk_to_ras(node), modality or guess_modality(array))


def node_ijk_to_ras(node) -> np.ndarray:
    """4x4 matrix from array index (i, j, k) of the node's image data to RAS mm in the node's frame.

    Accounts for image data whose extent does not start at 0; parent transforms are not included.
    """
    matrix = vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    ijk_to_ras = numpy_matrix(matrix)
    extent = node.GetImageData().GetExtent()
    shift = np.eye(4)
    shift[:3, 3] = extent[0::2]
    return ijk_to_ras @ shift


def _refuse_non_scalar(node) -> None:
    name = node.GetName() if node is not None else None
    if node is None or not node.IsA("vtkMRMLVolumeNode"):
        raise InputError("no input volume; select a scalar CT or MR volume")
    if node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputError(f"'{name}' is a labelmap (a segmentation), not an image; select a scalar CT or MR volume")
    image = node.GetImageData()
    components = image.GetNumberOfScalarComponents() if image is not None else 1
    if not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLVectorVolumeNode") or components != 1:
        raise InputError(f"'{name}' is a {node.GetClassName()} with {components} components per voxel (RGB, vector "
                         "or multi-volume); select a scalar CT or MR volume")
    if is_sequence_proxy(node):
        raise InputError(f"'{name}' is the current frame of a 4D sequence; select a scalar CT or MR volume "
                         "(to segment this time point, clone the volume first)")


# ----------------------------------------------------------------------------------------- result out
def apply_result(result: LabelVolume, segmentation_node, reference_volume_node,
                 replace_keys: Iterable[str] | None = None) -> dict[str, str]:
    """Put a result into a segmentation node in one labelmap import; returns class key -> segment ID.

    Classes that ran are the result's segments plus `replace_keys` (classes that ran and found nothing,
    even if the result lists no segment for them). A segment of such a class already in the node (found
    by its `AutoMedSAM.ClassKey` tag) keeps its ID and gets the new voxels (none, if the class found
    nothing); other segments are untouched. Each written segment gets its name, colour, terminology,
    class key and status ("inprogress") from the result. The node's reference geometry becomes the
    reference volume's. All or nothing: if anything fails, the node is restored as it was.
    """
    _check_target(result, segmentation_node, reference_volume_node)
    register_segmentation_converters()
    existing = tagged_segments(segmentation_node)
    ids = _segment_ids_for(result.segments, existing, segmentation_node)
    emptied = {key: existing[key] for key in (replace_keys or ()) if key in existing and key not in ids}
    snapshot = slicer.vtkSegmentation()
    snapshot.DeepCopy(segmentation_node.GetSegmentation())
    reference_id = segmentation_node.GetNodeReferenceID(segmentation_node.GetReferenceImageGeometryReferenceRole())
    was_modifying = segmentation_node.StartModify()
    try:
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
        labels = _consecutive_labels(result)
        _import_labels(labels, [ids[s.key] for s in result.segments] + list(emptied.values()),
                       segmentation_node, reference_volume_node)
        for spec in result.segments:
            _describe_segment(segmentation_node.GetSegmentation().GetSegment(ids[spec.key]), spec)
    except BaseException:
        segmentation_node.GetSegmentation().DeepCopy(snapshot)
        segmentation_node.SetNodeReferenceID(segmentation_node.GetReferenceImageGeometryReferenceRole(), reference_id)
        raise
    finally:
        segmentation_node.EndModify(was_modifying)
    return {**ids, **emptied}


def _segment_ids_for(segments: tuple[Segment, ...], existing: dict[str, str], segmentation_node) -> dict[str, str]:
    """Existing segment ID per class that has one, else a new unique ID based on the class key."""
    segmentation = segmentation_node.GetSegmentation()
    ids: dict[str, str] = {}
    taken = {segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())}
    for segment in segments:
        if segment.key in existing:
            ids[segment.key] = existing[segment.key]
            continue
        candidate, suffix = segment.key, 1
        while candidate in taken:
            suffix += 1
            candidate = f"{segment.key}_{suffix}"
        ids[segment.key] = candidate
        taken.add(candidate)
    return ids


def replace_segment_mask(segmentation_node, segment_id: str, mask_kji: np.ndarray, reference_volume_node) -> None:
    """The segment's voxels become `mask_kji` (KJI, on the reference volume's grid); all other segments stay as they
    are. A new `segment` spec (name, colour, terminology, tags) is applied by the caller."""
    if segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
        raise InputError(f"segmentation '{segmentation_node.GetName()}' has no segment with ID {segment_id!r}")
    register_segmentation_converters()
    _import_labels(np.asarray(mask_kji, dtype=bool).astype(np.uint8), [segment_id], segmentation_node,
                   reference_volume_node)


def add_segment(segmentation_node, spec: Segment) -> str:
    """A new, empty segment of a class (named, coloured and tagged like a run's), with an unused ID; its ID."""
    segment_id = _segment_ids_for((spec,), {}, segmentation_node)[spec.key]
    segmentation_node.GetSegmentation().AddEmptySegment(segment_id, spec.name, list(spec.organ.color_float()))
    _describe_segment(segmentation_node.GetSegmentation().GetSegment(segment_id), spec)
    return segment_id


def world_to_node(node) -> np.ndarray:
    """4x4 matrix from world RAS to the node's own frame (through its linear parent transforms)."""
    matrix = vtkMatrix4x4()
    if not slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(None, node.GetParentTransformNode(), matrix):
        raise InputError(f"'{node.GetName()}' is under a non-linear transform; harden the transform first")
    return numpy_matrix(matrix)


def _check_target(result: LabelVolume, segmentation_node, reference_volume_node) -> None:
    """Refuse before touching anything: no node, not a labelmap-based segmentation, or another grid."""
    if segmentation_node is None or not segmentation_node.IsA("vtkMRMLSegmentationNode"):
        raise InputError("no output segmentation; select or create a segmentation node")
    if segmentation_node.GetScene() is None:
        raise InputError(f"segmentation '{segmentation_node.GetName()}' is not in a scene; add it to the scene first")
    source = segmentation_node.GetSegmentation().GetSourceRepresentationName()
    if source != _BINARY_LABELMAP:
        raise InputError(f"segmentation '{segmentation_node.GetName()}' is edited as '{source}'; switch its source "
                         f"representation to '{_BINARY_LABELMAP}' or choose another segmentation")
    if reference_volume_node is None or reference_volume_node.GetImageData() is None:
        raise InputError("no reference volume; select the volume that was segmented")
    dims = tuple(reference_volume_node.GetImageData().GetDimensions()[::-1])
    geometry = node_ijk_to_ras(reference_volume_node)
    if tuple(result.labels.shape) != dims or not np.allclose(geometry, result.ijk_to_ras, atol=1e-4):
        raise InputError(f"the result's voxel grid (KJI shape {tuple(result.labels.shape)}, origin "
                         f"{np.round(result.ijk_to_ras[:3, 3], 2).tolist()} mm RAS) differs from volume "
                         f"'{reference_volume_node.GetName()}' (KJI shape {dims}, origin "
                         f"{np.round(geometry[:3, 3], 2).tolist()} mm); run the segmentation on this volume")
    if _volume_to_segmentation(reference_volume_node, segmentation_node) is None:
        raise InputError(f"a non-linear transform lies between volume '{reference_volume_node.GetName()}' and "
                         f"segmentation '{segmentation_node.GetName()}'; harden the transform or put both nodes "
                         "under the same transform")
    values = [s.label_value for s in result.segments]
    keys = [s.key for s in result.segments]
    if len(set(values)) != len(values) or len(set(keys)) != len(keys):
        raise InputError(f"the result's segments must have distinct keys and label values, got {keys} / {values}")


def _consecutive_labels(result: LabelVolume) -> np.ndarray:
    """Labels renumbered 1..N in the order of `result.segments` (the import fills the N given IDs in order)."""
    lookup = np.zeros(int(max([s.label_value for s in result.segments] + [result.labels.max(), 0])) + 1, np.uint16)
    for number, segment in enumerate(result.segments, start=1):
        lookup[segment.label_value] = number
    labels = lookup[np.asarray(result.labels)]
    return labels.astype(np.uint8) if len(result.segments) < 256 else labels


def _import_labels(labels_kji: np.ndarray, segment_ids: list[str], segmentation_node, reference_volume_node) -> None:
    """One import of a temporary labelmap node: label n fills (and first clears) segment `segment_ids[n - 1]`.

    The labelmap is placed in the segmentation's own frame (same parent transform, geometry mapped by the
    linear transform between the two nodes): Slicer's ID-keeping import would otherwise apply a
    transform between the nodes twice. The temporary node is removed whatever happens.
    """
    if not segment_ids:
        return
    scene = segmentation_node.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", scene.GenerateUniqueName("AutoMedSAM import"))
    try:
        labelmap.SetAndObserveImageData(image_data(labels_kji))
        volume_to_segmentation = _volume_to_segmentation(reference_volume_node, segmentation_node)
        labelmap.SetIJKToRASMatrix(vtk_matrix(volume_to_segmentation @ node_ijk_to_ras(reference_volume_node)))
        labelmap.SetAndObserveTransformNodeID(segmentation_node.GetTransformNodeID())
        updated = vtkStringArray()
        for segment_id in segment_ids:
            updated.InsertNextValue(segment_id)
        if not _LOGIC.ImportLabelmapToSegmentationNode(labelmap, segmentation_node, updated):
            raise OutputError(f"Slicer could not import the result into segmentation '{segmentation_node.GetName()}'; "
                              "the segmentation was left unchanged")
    finally:
        remove_nodes(scene, [labelmap])


def _volume_to_segmentation(reference_volume_node, segmentation_node) -> np.ndarray | None:
    """4x4 matrix from the volume's frame to the segmentation's frame; None if a non-linear transform lies between."""
    matrix = vtkMatrix4x4()
    linear = slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(
        reference_volume_node.GetParentTransformNode(), segmentation_node.GetParentTransformNode(), matrix)
    return numpy_matrix(matrix) if linear else None


def _describe_segment(segment, spec: Segment) -> None:
    """Name, colour, terminology, class key and status of one written segment."""
    segment.SetName(spec.name)
    segment.SetNameAutoGenerated(False)
    segment.SetColor(*spec.organ.color_float())
    segment.SetColorAutoGenerated(False)
    segment.SetTerminology(spec.organ.slicer_terminology())
    segment.SetTag(CLASS_KEY_TAG, spec.key)
    _LOGIC.SetSegmentStatus(segment, _LOGIC.InProgress)


# ------------------------------------------------------------------------------------------- helpers
def segment_mask(segmentation_node, segment_id: str, reference_volume_node) -> np.ndarray:
    """Boolean KJI mask of one segment on the reference volume's grid (nearest neighbour, parent transforms included).

    Samples the segment's own labelmap through the linear transform between the two nodes' frames
    (Slicer's merged-labelmap export disagreed with this exact mapping when both nodes have transforms).
    """
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        raise InputError(f"segmentation '{segmentation_node.GetName()}' has no segment with ID {segment_id!r}")
    volume_to_segmentation = _volume_to_segmentation(reference_volume_node, segmentation_node)
    if volume_to_segmentation is None:
        raise InputError(f"a non-linear transform lies between volume '{reference_volume_node.GetName()}' and "
                         f"segmentation '{segmentation_node.GetName()}'; harden the transform first")
    shape = tuple(reference_volume_node.GetImageData().GetDimensions()[::-1])
    labelmap = slicer.vtkOrientedImageData()
    _LOGIC.GetSegmentBinaryLabelmapRepresentation(segmentation_node, segment_id, labelmap, False)
    extent = labelmap.GetExtent()
    if labelmap.GetPointData().GetScalars() is None or extent[1] < extent[0]:
        return np.zeros(shape, dtype=bool)
    inside = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(labelmap.GetDimensions()[::-1])
    image_to_segmentation = vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(image_to_segmentation)
    index_shift = np.eye(4)
    index_shift[:3, 3] = [-e for e in extent[0::2]]                # labelmap extent coordinates -> array index
    ijk_map = (index_shift @ np.linalg.inv(numpy_matrix(image_to_segmentation)) @ volume_to_segmentation
               @ node_ijk_to_ras(reference_volume_node))            # reference (i, j, k) -> labelmap array (i, j, k)
    reverse = np.eye(4)[[2, 1, 0, 3]]
    kji_map = reverse @ ijk_map @ reverse
    selected = inside == segment.GetLabelValue()
    copied = _copy_if_aligned(selected, kji_map, shape)
    if copied is not None:
        return copied
    # "grid-constant": a voxel centre computed at n - 1 + 1e-15 still samples voxel n - 1 (plain "constant" drops it)
    sampled = ndimage.affine_transform(selected.astype(np.uint8), kji_map[:3, :3], offset=kji_map[:3, 3],
                                       output_shape=shape, order=0, mode="grid-constant")
    return sampled.astype(bool)


def _copy_if_aligned(source: np.ndarray, kji_map: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """The nearest-neighbour sampling of `segment_mask` as a block copy when the two grids share their axes and
    spacing and differ by whole voxels (the usual case: segments on their volume's grid), 20-40x faster than
    resampling a 512 x 512 x 300 volume; None when they do not."""
    offset = kji_map[:3, 3]
    if not np.allclose(kji_map[:3, :3], np.eye(3), atol=1e-6) or not np.allclose(offset, np.round(offset), atol=1e-4):
        return None
    shift = np.round(offset).astype(int)                       # output index o samples source index o + shift
    out = np.zeros(shape, dtype=bool)
    lo = np.maximum(0, -shift)
    hi = np.minimum(np.array(shape), np.array(source.shape) - shift)
    if np.any(hi <= lo):
        return out
    target = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    origin = tuple(slice(a + d, b + d) for a, b, d in zip(lo, hi, shift, strict=True))
    out[target] = source[origin]
    return out


def remove_nodes(scene, nodes: list) -> None:
    """Remove temporary nodes together with their display and storage nodes."""
    for node in nodes:
        if node is None or node.GetScene() is None:
            continue
        for index in range(node.GetNumberOfDisplayNodes() if node.IsA("vtkMRMLDisplayableNode") else 0):
            display = node.GetNthDisplayNode(index)
            if display is not None:
                scene.RemoveNode(display)
        storage = node.GetStorageNode() if node.IsA("vtkMRMLStorableNode") else None
        if storage is not None:
            scene.RemoveNode(storage)
        scene.RemoveNode(node)


def image_data(array_kji: np.ndarray, dtype: np.dtype | type | None = None) -> vtkImageData:
    """vtkImageData (extent from 0) holding a copy of a KJI array, in `dtype` when given."""
    image = vtkImageData()
    image.SetDimensions(*array_kji.shape[::-1])
    values = np.ascontiguousarray(array_kji, dtype=dtype).ravel()
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(values, deep=True))
    return image


def numpy_matrix(matrix: vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def vtk_matrix(array: np.ndarray) -> vtkMatrix4x4:
    matrix = vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            matrix.SetElement(row, column, float(array[row, column]))
    return matrix
