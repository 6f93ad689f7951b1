"""Fixtures for the Slicer module's tests: a real MRML scene (`slicer-core`) holding a phantom CT in a study."""

from __future__ import annotations

import pytest
from mrml_nodes import add_volume_node


@pytest.fixture
def scene():
    """A fresh MRML scene with the node classes Slicer's modules register at startup."""
    slicer = pytest.importorskip("slicer")
    from automedsam.slicer import bridge as slicer_bridge

    slicer_bridge.register_segmentation_converters()
    scene = slicer.vtkMRMLScene()
    for node_class in ("vtkMRMLSegmentEditorNode", "vtkMRMLSequenceBrowserNode"):
        scene.RegisterNodeClass(getattr(slicer, node_class)())
    return scene


@pytest.fixture
def study(scene):
    """Subject hierarchy item of a study (patient -> study), as the DICOM module makes them."""
    import slicer

    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Patient 1")
    return hierarchy.CreateStudyItem(patient, "CT study")


@pytest.fixture
def ct_node(scene, study):
    """The engine fakes' phantom CT as a volume node inside the study."""
    import slicer
    from engine_fakes import phantom

    node = add_volume_node(scene, phantom(), "Phantom CT")
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    hierarchy.CreateItem(study, node)
    return node


@pytest.fixture
def model():
    """The engine fakes' transparent stand-in model (classes by intensity on the phantom)."""
    from engine_fakes import FakeModel

    return FakeModel()


@pytest.fixture
def logic(model):
    """The module's scene logic running `model`."""
    pytest.importorskip("slicer")
    from automedsam.slicer.logic import SceneSegmenter

    return SceneSegmenter(model_loader=lambda spec: model)
