"""`automedsam.slicer_bridge` on the real MRML library (`slicer-core`), headless: nodes in a fresh scene."""

from __future__ import annotations

import numpy as np
import pytest

from automedsam.catalog import Code, OrganClass
from automedsam.errors import InputError
from automedsam.result import LabelVolume, Segment
from automedsam.volume import Volume

slicer = pytest.importorskip("slicer")
from mrml_state import node_state, tag  # noqa: E402 (needs slicer)
from vtkmodules.util import numpy_support  # noqa: E402
from vtkmodules.vtkCommonDataModel import vtkImageData  # noqa: E402

from automedsam.slicer import bridge as slicer_bridge  # noqa: E402 (needs slicer)

pytestmark = pytest.mark.slicer

ANATOMY = Code("SCT", "123037004", "Anatomical Structure")
LIVER = OrganClass("liver", "Liver", 5, "abdomen", ANATOMY, Code("SCT", "10200004", "Liver"), None, None,
                   (221, 130, 101), ("CT",), (50.0, 400.0))
KIDNEY_LEFT = OrganClass("kidney_left", "Left kidney", 3, "abdomen", ANATOMY, Code("SCT", "64033007", "Kidney"),
                         Code("SCT", "7771000", "Left"), None, (185, 102, 83), ("CT",), (50.0, 400.0))
SHAPE = (6, 7, 8)                                                # K, J, I


def oblique_ijk_to_ras() -> np.ndarray:
    """Anisotropic spacing (0.7, 0.9, 2.5 mm), axes permuted, flipped and rotated 25 degrees (det < 0)."""
    angle = np.deg2rad(25.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1.0]])
    permuted_flipped = np.array([[0, 0, -1.0], [-1.0, 0, 0], [0, 1.0, 0]])
    matrix = np.eye(4)
    matrix[:3, :3] = rotation @ permuted_flipped @ np.diag([0.7, 0.9, 2.5])
    matrix[:3, 3] = (10.0, -20.0, 35.0)
    return matrix


def add_volume(scene, array_kji: np.ndarray, ijk_to_ras: np.ndarray, class_name: str = "vtkMRMLScalarVolumeNode",
               name: str = "CT"):
    """A volume node whose image data holds `array_kji` (last axis: components when 4D)."""
    image = vtkImageData()
    image.SetDimensions(*array_kji.shape[2::-1])
    components = array_kji.shape[3] if array_kji.ndim == 4 else 1
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(array_kji).reshape(-1, components), deep=True)
    image.GetPointData().SetScalars(scalars)
    node = scene.AddNewNodeByClass(class_name, name)
    node.SetAndObserveImageData(image)
    node.SetIJKToRASMatrix(slicer_bridge.vtk_matrix(ijk_to_ras))
    return node


@pytest.fixture
def scene():
    slicer_bridge.register_segmentation_converters()
    return slicer.vtkMRMLScene()


@pytest.fixture
def ct_node(scene):
    array = np.random.default_rng(5).integers(-1000, 1200, size=SHAPE).astype(np.int16)
    return add_volume(scene, array, oblique_ijk_to_ras())


def two_class_result(volume: Volume, shift: int = 0) -> LabelVolume:
    labels = np.zeros(SHAPE, np.uint8)
    labels[1:4, 1 + shift:5, 1:4] = 5
    labels[2:6, 3:6, 4:8 - shift] = 3                            # overlaps nothing: written after the liver
    return LabelVolume(labels, volume, (Segment("liver", 5, LIVER), Segment("kidney_left", 3, KIDNEY_LEFT)))


# ------------------------------------------------------------------------------------------------ volume in
def test_volume_from_node_keeps_geometry_and_voxel_order(scene, ct_node) -> None:
    volume = slicer_bridge.volume_from_node(ct_node)
    np.testing.assert_allclose(volume.ijk_to_ras, oblique_ijk_to_ras(), atol=1e-12)
    np.testing.assert_allclose(volume.spacing, [0.7, 0.9, 2.5])
    assert volume.array.shape == SHAPE and volume.modality == "CT"
    image = ct_node.GetImageData()
    for i, j, k in [(0, 0, 0), (7, 0, 0), (0, 6, 0), (0, 0, 5), (3, 4, 2)]:
        assert volume.array[k, j, i] == image.GetScalarComponentAsDouble(i, j, k, 0)
    ras = np.zeros(4)
    ct_node.GetIJKToRASMatrix(matrix := slicer_bridge.vtk_matrix(np.eye(4)))
    matrix.MultiplyPoint([3, 4, 2, 1], ras)
    np.testing.assert_allclose(volume.ijk_to_ras @ [3, 4, 2, 1], ras)
    volume.array[0, 0, 0] = 1234                                  # a copy: the node is not changed
    assert image.GetScalarComponentAsDouble(0, 0, 0, 0) != 1234


def test_modality_from_attribute_or_guess(scene) -> None:
    array = np.random.default_rng(1).integers(0, 900, size=SHAPE).astype(np.int16)
    node = add_volume(scene, array, oblique_ijk_to_ras(), name="T1")
    assert slicer_bridge.volume_from_node(node).modality == "MR"
    node.SetAttribute("DICOM.Modality", "CT")
    assert slicer_bridge.volume_from_node(node).modality == "CT"
    node.SetAttribute("DICOM.Modality", "PT")
    with pytest.raises(InputError, match="'T1' is PT"):
        slicer_bridge.volume_from_node(node)


def test_refuses_labelmap_vector_and_sequence_nodes(scene) -> None:
    labelmap = add_volume(scene, np.zeros(SHAPE, np.uint8), np.eye(4), "vtkMRMLLabelMapVolumeNode", "Labels")
    with pytest.raises(InputError, match="'Labels' is a labelmap.*select a scalar CT or MR volume"):
        slicer_bridge.volume_from_node(labelmap)
    rgb = add_volume(scene, np.zeros((*SHAPE, 3), np.uint8), np.eye(4), "vtkMRMLVectorVolumeNode", "Photo")
    with pytest.raises(InputError, match="3 components per voxel.*select a scalar CT or MR volume"):
        slicer_bridge.volume_from_node(rgb)
    scene.RegisterNodeClass(slicer.vtkMRMLSequenceBrowserNode())
    frame = add_volume(scene, np.ones(SHAPE, np.int16), np.eye(4), name="Cine")
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "Cine sequence")
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "Cine browser")
    browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    browser.AddProxyNode(frame, sequence, False)
    with pytest.raises(InputError, match="'Cine' is the current frame of a 4D sequence"):
        slicer_bridge.volume_from_node(frame)


# ----------------------------------------------------------------------------------------------- result out
def test_apply_two_classes(scene, ct_node) -> None:
    result = two_class_result(slicer_bridge.volume_from_node(ct_node))
    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "AutoMedSAM")
    nodes_before = scene.GetNumberOfNodes()
    ids = slicer_bridge.apply_result(result, segmentation_node, ct_node)
    assert ids == {"liver": "liver", "kidney_left": "kidney_left"}
    segmentation = segmentation_node.GetSegmentation()
    kidney = segmentation.GetSegment(ids["kidney_left"])
    assert kidney.GetName() == "Left kidney"
    np.testing.assert_allclose(kidney.GetColor(), np.array([185, 102, 83]) / 255)
    assert tag(kidney, "AutoMedSAM.ClassKey") == "kidney_left"
    assert tag(kidney, "Segmentation.Status") == "inprogress"
    entry = slicer.vtkSlicerTerminologyEntry()
    assert slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(kidney.GetTerminology(), entry)
    assert entry.GetTypeObject().GetCodeValue() == "64033007"
    assert entry.GetTypeModifierObject().GetCodeMeaning() == "Left"
    assert segmentation.GetSegment(ids["liver"]).GetName() == "Liver"
    for key, segment_id in ids.items():
        mask = slicer_bridge.segment_mask(segmentation_node, segment_id, ct_node)
        assert mask.any() and np.array_equal(mask, result.mask(key)), key
    role = segmentation_node.GetReferenceImageGeometryReferenceRole()
    assert segmentation_node.GetNodeReferenceID(role) == ct_node.GetID()
    assert scene.GetNumberOfNodes() - nodes_before == 1        # only the segmentation's display node
    assert scene.GetNodesByClass("vtkMRMLLabelMapVolumeNode").GetNumberOfItems() == 0


def add_user_segment(scene, segmentation_node, reference_node, mask_kji: np.ndarray) -> str:
    """A segment drawn by the user: named like a class ("Liver") but without the class key tag."""
    labelmap = add_volume(scene, mask_kji.astype(np.uint8), slicer_bridge.node_ijk_to_ras(reference_node),
                          "vtkMRMLLabelMapVolumeNode", "user")
    before = segmentation_node.GetSegmentation().GetNumberOfSegments()
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation_node)
    slicer_bridge.remove_nodes(scene, [labelmap])
    segment_id = segmentation_node.GetSegmentation().GetNthSegmentID(before)
    segmentation_node.GetSegmentation().GetSegment(segment_id).SetName("Liver")
    return segment_id


def test_rerun_replaces_only_the_classes_that_ran(scene, ct_node) -> None:
    volume = slicer_bridge.volume_from_node(ct_node)
    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "AutoMedSAM")
    first = slicer_bridge.apply_result(two_class_result(volume), segmentation_node, ct_node)
    user_mask = np.zeros(SHAPE, bool)
    user_mask[0:3, 0:3, 0:3] = True                               # overlaps the liver
    user_id = add_user_segment(scene, segmentation_node, ct_node, user_mask)
    untouched = [s for s in node_state(segmentation_node, ct_node) if s[0] in (first["kidney_left"], user_id)]
    rerun = LabelVolume(np.where(two_class_result(volume, shift=2).labels == 5, 5, 0).astype(np.uint8), volume,
                        (Segment("liver", 5, LIVER),))
    ids = slicer_bridge.apply_result(rerun, segmentation_node, ct_node)
    assert ids == {"liver": first["liver"]}
    segmentation = segmentation_node.GetSegmentation()
    assert [segmentation.GetNthSegmentID(i) for i in range(3)] == ["liver", "kidney_left", user_id]
    assert np.array_equal(slicer_bridge.segment_mask(segmentation_node, "liver", ct_node), rerun.mask("liver"))
    assert [s for s in node_state(segmentation_node, ct_node) if s[0] in ("kidney_left", user_id)] == untouched
    assert np.array_equal(slicer_bridge.segment_mask(segmentation_node, user_id, ct_node), user_mask)


def test_empty_result_empties_the_class_segment(scene, ct_node) -> None:
    volume = slicer_bridge.volume_from_node(ct_node)
    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "AutoMedSAM")
    slicer_bridge.apply_result(two_class_result(volume), segmentation_node, ct_node)
    kidney_before = [s for s in node_state(segmentation_node, ct_node) if s[0] == "kidney_left"]
    empty_liver = LabelVolume(np.zeros(SHAPE, np.uint8), volume, (Segment("liver", 5, LIVER),))
    assert slicer_bridge.apply_result(empty_liver, segmentation_node, ct_node) == {"liver": "liver"}
    assert not slicer_bridge.segment_mask(segmentation_node, "liver", ct_node).any()
    assert segmentation_node.GetSegmentation().GetSegment("liver").GetName() == "Liver"
    # a class that ran and is absent from the result's segments: emptied through replace_keys
    nothing = LabelVolume(np.zeros(SHAPE, np.uint8), volume, ())
    assert slicer_bridge.apply_result(nothing, segmentation_node, ct_node, replace_keys=["kidney_left"]) \
        == {"kidney_left": "kidney_left"}
    assert not slicer_bridge.segment_mask(segmentation_node, "kidney_left", ct_node).any()
    assert kidney_before[0][4] != slicer_bridge.segment_mask(segmentation_node, "kidney_left", ct_node).tobytes()
    assert segmentation_node.GetSegmentation().GetNumberOfSegments() == 2


@pytest.mark.parametrize("failing_step", ["_import_labels", "_describe_segment"])
def test_failing_import_leaves_the_node_unchanged(scene, ct_node, monkeypatch: pytest.MonkeyPatch,
                                                  failing_step: str) -> None:
    volume = slicer_bridge.volume_from_node(ct_node)
    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "AutoMedSAM")
    slicer_bridge.apply_result(two_class_result(volume), segmentation_node, ct_node)
    add_user_segment(scene, segmentation_node, ct_node, np.pad(np.ones((2, 2, 2), bool), ((0, 4), (0, 5), (0, 6))))
    other = add_volume(scene, volume.array, oblique_ijk_to_ras(), name="CT copy")
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(other)
    before, nodes_before = node_state(segmentation_node, ct_node), scene.GetNumberOfNodes()
    real_step = getattr(slicer_bridge, failing_step)

    def fail_after_real_work(*args: object) -> None:
        real_step(*args)                                          # the node is really modified, then it fails
        raise RuntimeError("simulated failure midway")

    monkeypatch.setattr(slicer_bridge, failing_step, fail_after_real_work)
    with pytest.raises(RuntimeError, match="simulated failure midway"):
        slicer_bridge.apply_result(two_class_result(volume, shift=2), segmentation_node, ct_node)
    monkeypatch.undo()
    assert node_state(segmentation_node, ct_node) == before
    role = segmentation_node.GetReferenceImageGeometryReferenceRole()
    assert segmentation_node.GetNodeReferenceID(role) == other.GetID()
    assert scene.GetNumberOfNodes() == nodes_before


def add_linear_transform(scene, matrix: np.ndarray, name: str):
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    transform.SetMatrixTransformToParent(slicer_bridge.vtk_matrix(matrix))
    return transform


@pytest.mark.parametrize("segmentation_moved", [False, True])
def test_nodes_under_transforms(scene, ct_node, segmentation_moved: bool) -> None:
    volume_transform = add_linear_transform(
        scene, np.array([[1, 0, 0, 15.0], [0, 0, -1, 4.0], [0, 1, 0, -7.0], [0, 0, 0, 1]]), "volume moved")
    ct_node.SetAndObserveTransformNodeID(volume_transform.GetID())
    result = two_class_result(slicer_bridge.volume_from_node(ct_node))
    np.testing.assert_allclose(result.ijk_to_ras, oblique_ijk_to_ras())  # the node's own frame
    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "AutoMedSAM")
    if segmentation_moved:
        segmentation_transform = add_linear_transform(
            scene, np.array([[0, -1, 0, -3.0], [1, 0, 0, 9.0], [0, 0, 1, 2.5], [0, 0, 0, 1]]), "segmentation moved")
        segmentation_node.SetAndObserveTransformNodeID(segmentation_transform.GetID())
    ids = slicer_bridge.apply_result(result, segmentation_node, ct_node)
    for key, segment_id in ids.items():
        assert np.array_equal(slicer_bridge.segment_mask(segmentation_node, segment_id, ct_node), result.mask(key))


def test_non_linear_transform_between_nodes_is_refused(scene, ct_node) -> None:
    from vtkmodules.vtkCommonCore import vtkPoints
    from vtkmodules.vtkCommonTransforms import vtkThinPlateSplineTransform

    source, target = vtkPoints(), vtkPoints()
    landmarks = [((0, 0, 0), 0.0), ((50, 0, 0), 3.0), ((0, 50, 0), -2.0), ((0, 0, 50), 1.0), ((30, 30, 30), 4.0)]
    for point, shift in landmarks:
        source.InsertNextPoint(point)
        target.InsertNextPoint(point[0] + shift, point[1], point[2])
    warp = vtkThinPlateSplineTransform()
    warp.SetSourceLandmarks(source)
    warp.SetTargetLandmarks(target)
    warp.SetBasisToR()
    transform = scene.AddNewNodeByClass("vtkMRMLTransformNode", "warp")
    transform.SetAndObserveTransformToParent(warp)
    ct_node.SetAndObserveTransformNodeID(transform.GetID())
    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "AutoMedSAM")
    with pytest.raises(InputError, match="non-linear transform lies between volume 'CT' and segmentation"):
        slicer_bridge.apply_result(two_class_result(slicer_bridge.volume_from_node(ct_node)), segmentation_node,
                                   ct_node)
    assert segmentation_node.GetSegmentation().GetNumberOfSegments() == 0


def test_result_on_another_grid_is_refused(scene, ct_node) -> None:
    volume = slicer_bridge.volume_from_node(ct_node)
    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "AutoMedSAM")
    moved = np.array(volume.ijk_to_ras)
    moved[0, 3] += 1.0
    wrong = two_class_result(Volume(volume.array, moved, "CT"))
    with pytest.raises(InputError, match=r"origin \[11\.0, -20\.0, 35\.0\] mm RAS\) differs from volume 'CT'"):
        slicer_bridge.apply_result(wrong, segmentation_node, ct_node)
    assert segmentation_node.GetSegmentation().GetNumberOfSegments() == 0
    with pytest.raises(InputError, match="no segment with ID 'liver'"):
        slicer_bridge.segment_mask(segmentation_node, "liver", ct_node)


@pytest.mark.parametrize("shift", [(0, 0, 0), (2, -3, 5), (-4, 7, -1), (30, 0, 0)])
def test_aligned_segments_are_copied_as_resampling_would_sample_them(shift) -> None:
    """The block copy of a segment on a grid that differs by whole voxels equals nearest-neighbour resampling,
    including a labelmap that lies partly (or wholly) outside the reference grid; other grids are resampled."""
    from scipy import ndimage

    rng = np.random.default_rng(sum(shift) + 5)
    source = rng.random((9, 14, 11)) > 0.6
    shape = (12, 10, 13)
    kji_map = np.eye(4)
    kji_map[:3, 3] = shift
    copied = slicer_bridge._copy_if_aligned(source, kji_map, shape)
    resampled = ndimage.affine_transform(source.astype(np.uint8), kji_map[:3, :3], offset=kji_map[:3, 3],
                                         output_shape=shape, order=0, mode="grid-constant").astype(bool)
    assert copied is not None and np.array_equal(copied, resampled)
    half_voxel = kji_map.copy()
    half_voxel[0, 3] += 0.5
    flipped = kji_map.copy()
    flipped[1, 1] = -1.0
    assert slicer_bridge._copy_if_aligned(source, half_voxel, shape) is None
    assert slicer_bridge._copy_if_aligned(source, flipped, shape) is None
