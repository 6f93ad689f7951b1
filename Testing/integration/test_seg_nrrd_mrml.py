"""A `.seg.nrrd` from `automedsam.io.write_seg_nrrd` loads into a real MRML segmentation node (`slicer-core`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from automedsam import io
from automedsam.catalog import Code, OrganClass
from automedsam.result import LabelVolume, Segment
from automedsam.volume import Volume

slicer = pytest.importorskip("slicer")
from vtkmodules.util import numpy_support  # noqa: E402
from vtkmodules.vtkCommonCore import reference  # noqa: E402
from vtkmodules.vtkCommonDataModel import vtkImageData  # noqa: E402

from automedsam.slicer import bridge as slicer_bridge  # noqa: E402 (needs slicer)

pytestmark = pytest.mark.slicer

ANATOMY = Code("SCT", "123037004", "Anatomical Structure")
SPLEEN = OrganClass("spleen", "Spleen", 1, "abdomen", ANATOMY, Code("SCT", "78961009", "Spleen"), None, None,
                    (157, 108, 162), ("CT",), (50.0, 400.0))
KIDNEY_RIGHT = OrganClass("kidney_right", "Right kidney", 2, "abdomen", ANATOMY, Code("SCT", "64033007", "Kidney"),
                          Code("SCT", "24028007", "Right"), None, (185, 102, 83), ("CT",), (50.0, 400.0))


@pytest.fixture
def result() -> LabelVolume:
    """Two organs on an oblique, flipped, anisotropic 7x9x11 (KJI) grid; the kidney touches the grid's corner."""
    angle = np.deg2rad(-35.0)
    directions = np.array([[np.cos(angle), 0, np.sin(angle)], [0, -1.0, 0], [-np.sin(angle), 0, np.cos(angle)]])
    volume = Volume.from_array(np.random.default_rng(11).integers(-1000, 800, (7, 9, 11)).astype(np.int16),
                               spacing=(0.6, 1.3, 3.0), origin_ras=(-40.0, 12.0, 7.5), directions_ras=directions)
    labels = np.zeros((7, 9, 11), np.uint8)
    labels[1:5, 2:6, 3:9] = 1
    labels[4:7, 6:9, 7:11] = 2
    return LabelVolume(labels, volume, (Segment("spleen", 1, SPLEEN), Segment("kidney_right", 2, KIDNEY_RIGHT)))


def volume_node(scene, volume: Volume):
    """A scalar volume node on the result's grid, the reference for reading masks back."""
    image = vtkImageData()
    image.SetDimensions(*volume.shape_ijk)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(volume.array.ravel(), deep=True))
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    node.SetAndObserveImageData(image)
    node.SetIJKToRASMatrix(slicer_bridge.vtk_matrix(volume.ijk_to_ras))
    return node


def read_into_scene(scene, path: Path):
    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "loaded")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode", "loaded storage")
    storage.SetFileName(str(path))
    segmentation_node.SetAndObserveStorageNodeID(storage.GetID())
    assert storage.ReadData(segmentation_node) == 1
    return segmentation_node


def test_seg_nrrd_loads_into_mrml(tmp_path: Path, result: LabelVolume) -> None:
    slicer_bridge.register_segmentation_converters()
    scene = slicer.vtkMRMLScene()
    path = io.write_seg_nrrd(result, tmp_path / "organs.seg.nrrd")
    segmentation_node = read_into_scene(scene, path)
    segmentation = segmentation_node.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    assert ids == ["spleen", "kidney_right"]
    kidney = segmentation.GetSegment("kidney_right")
    assert kidney.GetName() == "Right kidney"
    np.testing.assert_allclose(kidney.GetColor(), np.array([185, 102, 83]) / 255, atol=1e-5)
    assert kidney.GetTerminology() == KIDNEY_RIGHT.slicer_terminology()
    key = reference("")
    assert kidney.GetTag("AutoMedSAM.ClassKey", key) and str(key) == "kidney_right"
    labelmap = slicer.vtkOrientedImageData()
    slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
        segmentation_node, "kidney_right", labelmap, False)
    matrix = slicer_bridge.vtk_matrix(np.eye(4))
    labelmap.GetImageToWorldMatrix(matrix)
    np.testing.assert_allclose(slicer_bridge.numpy_matrix(matrix), result.ijk_to_ras, atol=1e-5)   # RAS in MRML
    reference_node = volume_node(scene, result.volume)
    for segment in result.segments:
        mask = slicer_bridge.segment_mask(segmentation_node, segment.key, reference_node)
        assert mask.any() and np.array_equal(mask, result.mask(segment.key)), segment.key
