"""The Slicer module's logic on the real MRML scene (`slicer-core`): node selection -> engine -> segmentation node,
re-run semantics, cancel, nodes deleted mid-run, bad input, uncertainty, ROI and export.

The model is the transparent stand-in of `engine_fakes` (classes by intensity on the phantom); the real model's
accuracy is tested elsewhere.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from engine_fakes import FakeModel, phantom
from mrml_nodes import add_volume_node
from reference_data import dicom_with_uids

from automedsam.catalog import default_catalog
from automedsam.engine import EngineOptions, segment
from automedsam.errors import AutoMedSAMError, Cancelled, InputError, ModelError
from automedsam.volume import Volume

slicer = pytest.importorskip("slicer")
import slicerio  # noqa: E402
from mrml_state import node_state, tag  # noqa: E402 (needs slicer)
from vtkmodules.vtkCommonCore import vtkStringArray  # noqa: E402

from automedsam.slicer import bridge as slicer_bridge  # noqa: E402 (needs slicer)
from automedsam.slicer.logic import UNCERTAINTY_ROLE, SceneSegmenter, segmentation_result  # noqa: E402
from automedsam.slicer.request import SegmentationRequest  # noqa: E402

pytestmark = pytest.mark.slicer
SEGMENTATIONS = slicer.vtkSlicerSegmentationsModuleLogic


def paint(scene, segmentation_node, volume_node, mask: np.ndarray, segment_id: str | None = None,
          name: str = "Lesion") -> str:
    """A user's edit: replace a segment's voxels with `mask`, or add a new segment (no class tag)."""
    volume = slicer_bridge.volume_from_node(volume_node)
    labelmap = add_volume_node(scene, volume.with_array(mask.astype(np.uint8)), "edit", "vtkMRMLLabelMapVolumeNode")
    before = segmentation_node.GetSegmentation().GetNumberOfSegments()
    if segment_id is None:
        assert SEGMENTATIONS.ImportLabelmapToSegmentationNode(labelmap, segmentation_node)
    else:
        ids = vtkStringArray()
        ids.InsertNextValue(segment_id)
        assert SEGMENTATIONS.ImportLabelmapToSegmentationNode(labelmap, segmentation_node, ids)
    slicer_bridge.remove_nodes(scene, [labelmap])
    if segment_id is None:
        segment_id = segmentation_node.GetSegmentation().GetNthSegmentID(before)
        segmentation_node.GetSegmentation().GetSegment(segment_id).SetName(name)
    return segment_id


def count(scene, class_name: str) -> int:
    return scene.GetNodesByClass(class_name).GetNumberOfItems()


# ---------------------------------------------------------------------------------------------------- run
def test_run_makes_a_segmentation_under_the_study(scene, study, ct_node, logic, model) -> None:
    progress: list[tuple[int, int]] = []
    outcome = logic.run(SegmentationRequest(ct_node, ("liver", "spleen")),
                        progress=lambda done, total, message: progress.append((done, total)))
    node = outcome.segmentation_node
    assert outcome.created and outcome.segment_ids == {"liver": "liver", "spleen": "spleen"} and not outcome.empty
    assert node.GetName() == "Phantom CT AutoMedSAM"
    expected = segment(phantom(), ["liver", "spleen"], FakeModel(), EngineOptions(device="cpu"))
    catalog = default_catalog()
    for key in ("liver", "spleen"):
        segment_ = node.GetSegmentation().GetSegment(key)
        organ = catalog.get(key)
        assert segment_.GetName() == organ.name
        np.testing.assert_allclose(segment_.GetColor(), organ.color_float())
        assert tag(segment_, "TerminologyEntry") == organ.slicer_terminology()
        assert tag(segment_, "AutoMedSAM.ClassKey") == key
        mask = slicer_bridge.segment_mask(node, key, ct_node)
        assert mask.sum() > 100 and np.array_equal(mask, expected.mask(key))
    role = node.GetReferenceImageGeometryReferenceRole()
    assert node.GetNodeReferenceID(role) == ct_node.GetID()
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == study
    assert progress[0] == (0, 12) and progress[-1] == (12, 12)
    assert count(scene, "vtkMRMLLabelMapVolumeNode") == 0
    assert outcome.summary().startswith("2 of 2 classes segmented in ")


def test_rerun_replaces_only_the_classes_that_ran(scene, ct_node, logic, model) -> None:
    node = logic.run(SegmentationRequest(ct_node, ("liver", "spleen"))).segmentation_node
    spleen_edit = slicer_bridge.segment_mask(node, "spleen", ct_node)
    spleen_edit[6:] = False                                        # the user erases part of the spleen
    paint(scene, node, ct_node, spleen_edit, "spleen")
    lesion = np.zeros(spleen_edit.shape, bool)
    lesion[3:5, 10:14, 10:14] = True                               # overlaps the liver
    lesion_id = paint(scene, node, ct_node, lesion)
    kept = [s for s in node_state(node, ct_node) if s[0] in ("spleen", lesion_id)]
    encoded = model.encoded_slices
    # the phantom's slice k has S = 30 + 3k mm: the range 36..45 mm is slices 2..5
    outcome = logic.run(SegmentationRequest(ct_node, ("Liver",), segmentation_node=node, axial_range=(45.0, 36.0)))
    assert not outcome.created and outcome.segment_ids == {"liver": "liver"}
    segmentation = node.GetSegmentation()
    assert [segmentation.GetNthSegmentID(i) for i in range(3)] == ["liver", "spleen", lesion_id]
    liver = slicer_bridge.segment_mask(node, "liver", ct_node)
    assert liver.any() and not liver[:2].any() and not liver[6:].any()
    assert [s for s in node_state(node, ct_node) if s[0] in ("spleen", lesion_id)] == kept
    assert model.encoded_slices == encoded                         # embeddings of the first run were reused


def test_a_class_found_nowhere_is_reported_and_its_segment_emptied(scene, ct_node, logic, model) -> None:
    node = logic.run(SegmentationRequest(ct_node, ("liver", "spleen"))).segmentation_node
    model.strength["spleen"] = -10.0                               # the spleen is not found any more
    outcome = logic.run(SegmentationRequest(ct_node, ("spleen",), segmentation_node=node))
    assert outcome.empty == ["Spleen"] and "not found: Spleen" in outcome.summary()
    assert not slicer_bridge.segment_mask(node, "spleen", ct_node).any()
    assert slicer_bridge.segment_mask(node, "liver", ct_node).any()


# ------------------------------------------------------------------------------------------ cancel, delete
def cancel_after(batches: int):
    calls = {"n": 0}

    def progress(done: int, total: int, message: str) -> None:
        calls["n"] += 1

    return progress, (lambda: calls["n"] > batches)


def test_cancel_leaves_the_segmentation_unchanged(scene, ct_node, logic, model) -> None:
    node = logic.run(SegmentationRequest(ct_node, ("liver", "spleen"))).segmentation_node
    paint(scene, node, ct_node, np.pad(np.ones((2, 3, 3), bool), ((0, 10), (0, 37), (0, 45))))
    before, nodes = node_state(node, ct_node), scene.GetNumberOfNodes()
    model.strength["liver"] = -10.0                                # a finished run would change the liver
    progress, cancel = cancel_after(3)
    with pytest.raises(Cancelled, match="cancelled; nothing was changed"):
        logic.run(SegmentationRequest(ct_node, ("liver",), segmentation_node=node, uncertainty=True),
                  progress=progress, cancel=cancel)
    assert node_state(node, ct_node) == before and scene.GetNumberOfNodes() == nodes
    assert node.GetNodeReference(UNCERTAINTY_ROLE) is None


def test_cancel_makes_no_new_node(scene, ct_node, logic) -> None:
    nodes = scene.GetNumberOfNodes()
    progress, cancel = cancel_after(1)
    with pytest.raises(Cancelled):
        logic.run(SegmentationRequest(ct_node, ("liver",)), progress=progress, cancel=cancel)
    assert scene.GetNumberOfNodes() == nodes and count(scene, "vtkMRMLSegmentationNode") == 0


def test_deleting_the_output_node_mid_run_stops_cleanly(scene, ct_node, logic) -> None:
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Output")

    def delete_at_third_batch(done: int, total: int, message: str) -> None:
        if done == 3:
            scene.RemoveNode(node)

    with pytest.raises(Cancelled, match="'Output' was deleted during the run; nothing was written"):
        logic.run(SegmentationRequest(ct_node, ("liver",), segmentation_node=node), progress=delete_at_third_batch)
    assert node.GetSegmentation().GetNumberOfSegments() == 0
    assert count(scene, "vtkMRMLSegmentationNode") == 0 and count(scene, "vtkMRMLLabelMapVolumeNode") == 0


def test_closing_the_scene_mid_run_stops_cleanly(scene, ct_node, logic) -> None:
    def close_scene(done: int, total: int, message: str) -> None:
        if done == 2:
            scene.Clear(0)

    with pytest.raises(Cancelled, match="'Phantom CT' was removed \\(or the scene closed\\)"):
        logic.run(SegmentationRequest(ct_node, ("liver", "spleen")), progress=close_scene)
    assert count(scene, "vtkMRMLSegmentationNode") == 0 and count(scene, "vtkMRMLScalarVolumeNode") == 0


# -------------------------------------------------------------------------------------------- bad input
def test_refused_inputs_change_nothing(scene, ct_node, logic) -> None:
    labelmap = add_volume_node(scene, phantom().with_array(np.zeros((12, 40, 48), np.uint8)), "Labels",
                               "vtkMRMLLabelMapVolumeNode")
    flat = add_volume_node(scene, Volume(np.arange(2 * 40 * 48, dtype=np.int16).reshape(1, 40, 96)), "Slice")
    nodes = scene.GetNumberOfNodes()
    cases = [
        (SegmentationRequest(None, ("liver",)), "Select the input volume"),
        (SegmentationRequest(labelmap, ("liver",)), "'Labels' is a labelmap"),
        (SegmentationRequest(flat, ("liver",)), "'Slice' is a 2D image \\(96 x 40 x 1 voxels\\)"),
        (SegmentationRequest(ct_node, ()), "Tick at least one class"),
        (SegmentationRequest(ct_node, ("livr",)), "did you mean 'liver'"),
        (SegmentationRequest(ct_node, ("liver", "left kidney")), "was not trained for Left kidney; untick it"),
    ]
    for request, message in cases:
        with pytest.raises(InputError, match=message):
            logic.run(request)
    assert scene.GetNumberOfNodes() == nodes


def test_segment_editor_effect_and_completed_segments_block_the_output(scene, ct_node, logic) -> None:
    node = logic.run(SegmentationRequest(ct_node, ("liver", "spleen"))).segmentation_node
    editor = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode", "Editor")
    editor.SetAndObserveSegmentationNode(node)
    editor.SetActiveEffectName("Paint")
    with pytest.raises(InputError, match="Segment Editor is editing .* with the 'Paint' effect"):
        logic.run(SegmentationRequest(ct_node, ("liver",), segmentation_node=node))
    editor.SetActiveEffectName("")
    SEGMENTATIONS.SetSegmentStatus(node.GetSegmentation().GetSegment("liver"), SEGMENTATIONS.Completed)
    before = node_state(node, ct_node)
    with pytest.raises(InputError, match="Liver in .* is marked Completed"):
        logic.run(SegmentationRequest(ct_node, ("liver",), segmentation_node=node))
    logic.run(SegmentationRequest(ct_node, ("spleen",), segmentation_node=node))   # other classes still run
    assert [s for s in node_state(node, ct_node) if s[0] == "liver"] == [s for s in before if s[0] == "liver"]


def test_no_gpu_falls_back_to_the_cpu_and_says_so(ct_node, logic) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    outcome = logic.run(SegmentationRequest(ct_node, ("liver",), device="cuda"))
    assert outcome.messages == ["No CUDA GPU is available; AutoMedSAM ran on the CPU (slower)."]


class MemoryHungryModel(FakeModel):
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        raise MemoryError


def test_out_of_memory_is_a_user_error_and_changes_nothing(scene, ct_node) -> None:
    nodes = scene.GetNumberOfNodes()
    logic = SceneSegmenter(model_loader=lambda spec: MemoryHungryModel())
    with pytest.raises(AutoMedSAMError, match="out of memory; close other programs, choose a region of interest"):
        logic.run(SegmentationRequest(ct_node, ("liver",)))
    oom_on_cpu = SceneSegmenter(model_loader=lambda spec: FakeModel(oom_above_batch=0))
    with pytest.raises(AutoMedSAMError, match="out of memory on the CPU with batch size 1"):
        oom_on_cpu.run(SegmentationRequest(ct_node, ("liver",), device="cpu"))
    assert scene.GetNumberOfNodes() == nodes


def test_the_model_is_loaded_once_per_id(ct_node) -> None:
    loaded: list[str | None] = []

    def loader(spec: str | None) -> FakeModel:
        loaded.append(spec)
        return FakeModel()

    logic = SceneSegmenter(model_loader=loader)
    logic.run(SegmentationRequest(ct_node, ("liver",)))
    logic.run(SegmentationRequest(ct_node, ("spleen",)))
    assert loaded == [None]


def test_a_model_file_is_used_and_a_replaced_file_is_loaded_again(ct_node, tmp_path) -> None:
    """The module's model file (e.g. `automedsam-train finetune` output): loaded once, and again when a new training
    run replaces it (other size, or the same size with a newer modification time), without a restart."""
    path = tmp_path / "mine-ft1.automedsam.pt"
    loaded: list[str | None] = []

    def loader(spec: str | None) -> FakeModel:
        loaded.append(spec)
        model = FakeModel()
        if spec is not None and path.read_bytes().startswith(b"retrained"):
            model.strength["liver"] = -10.0                       # the new file's model finds no liver
        return model

    logic = SceneSegmenter(model_loader=loader)
    path.write_bytes(b"first model")
    request = SegmentationRequest(ct_node, ("liver",), model=str(path))
    assert not logic.run(request).empty and not logic.run(request).empty
    assert loaded == [str(path)]
    path.write_bytes(b"retrained, longer")
    assert logic.run(request).empty == ["Liver"] and loaded == [str(path)] * 2
    path.write_bytes(b"retrained, other!")                          # same size
    stamp = path.stat().st_mtime_ns + 10**9
    os.utime(path, ns=(stamp, stamp))
    logic.run(request)
    assert loaded == [str(path)] * 3
    assert not logic.run(SegmentationRequest(ct_node, ("liver",))).empty and loaded[-1] is None


def test_a_bad_model_file_is_a_clear_error_and_changes_nothing(scene, ct_node, tmp_path) -> None:
    from automedsam.loading import load_model

    logic = SceneSegmenter(model_loader=lambda spec: FakeModel() if spec is None else load_model(spec))
    node = logic.run(SegmentationRequest(ct_node, ("liver", "spleen"))).segmentation_node
    before, nodes = node_state(node, ct_node), scene.GetNumberOfNodes()
    damaged = tmp_path / "mine.automedsam.pt"
    damaged.write_bytes(b"\x80\x04K\x01.")                              # a pickle: refused, never unpickled
    cases = [(damaged, ModelError, "mine.automedsam.pt is a Python pickle, not an AutoMedSAM/PyTorch weights file"),
             (tmp_path / "gone.automedsam.pt", InputError, "model file .*gone.automedsam.pt does not exist")]
    for path, error, message in cases:
        with pytest.raises(error, match=message):
            logic.run(SegmentationRequest(ct_node, ("liver",), model=str(path), segmentation_node=node))
    assert node_state(node, ct_node) == before and scene.GetNumberOfNodes() == nodes


# ----------------------------------------------------------------------------------------- uncertainty, ROI
def test_uncertainty_map_is_a_volume_next_to_the_input(scene, study, ct_node, logic) -> None:
    outcome = logic.run(SegmentationRequest(ct_node, ("liver", "spleen"), uncertainty=True))
    uncertainty = outcome.uncertainty_node
    assert uncertainty.GetName() == "Phantom CT AutoMedSAM uncertainty"
    np.testing.assert_allclose(slicer_bridge.node_ijk_to_ras(uncertainty), slicer_bridge.node_ijk_to_ras(ct_node))
    values = slicer_bridge.volume_from_node(uncertainty).array
    assert values.shape == (12, 40, 48) and values.dtype == np.float32
    np.testing.assert_allclose(values.max(), 0.1, rtol=1e-3)   # the fake model's std on every decoded pixel
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(uncertainty)) == study
    volumes = count(scene, "vtkMRMLScalarVolumeNode")
    again = logic.run(SegmentationRequest(ct_node, ("liver",), segmentation_node=outcome.segmentation_node,
                                          uncertainty=True))
    assert again.uncertainty_node is uncertainty and count(scene, "vtkMRMLScalarVolumeNode") == volumes


def test_review_lists_each_segment_slice_with_a_point_on_it(ct_node, logic) -> None:
    """With uncertainty on, the outcome ranks every (segment, slice); each row's point lies in that segment."""
    outcome = logic.run(SegmentationRequest(ct_node, ("liver", "spleen"), uncertainty=True))
    volume = slicer_bridge.volume_from_node(ct_node)
    rows = outcome.review
    assert {row.key for row in rows} == {"liver", "spleen"} and {row.axis for row in rows} == {"K"}
    assert [row.score for row in rows] == sorted((row.score for row in rows), reverse=True)
    for key in ("liver", "spleen"):
        mask = slicer_bridge.segment_mask(outcome.segmentation_node, outcome.segment_ids[key], ct_node)
        assert sorted(row.index for row in rows if row.key == key) == list(np.flatnonzero(mask.any(axis=(1, 2))))
        for row in (row for row in rows if row.key == key):
            i, j, k = np.rint(volume.ras_to_ijk(np.array([row.center_ras]))[0]).astype(int)
            assert k == row.index and mask[k, j, i]
    assert logic.run(SegmentationRequest(ct_node, ("liver",))).review == []


def test_markups_roi_limits_the_result_to_its_box(scene, ct_node, logic) -> None:
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    transform.SetMatrixTransformToParent(slicer_bridge.vtk_matrix(np.array(
        [[1, 0, 0, 5.0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])))
    ct_node.SetAndObserveTransformNodeID(transform.GetID())
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "ROI")
    # voxel (i, j, k) is at RAS (10 + 1.5 i, -20 + 1.2 j, 30 + 3 k) in the volume's frame, +5 mm R in the world
    roi.SetXYZ(5 + 10 + 1.5 * 12, -20 + 1.2 * 14, 30 + 3 * 5)
    roi.SetRadiusXYZ(1.5 * 4, 1.2 * 4, 3 * 2)
    outcome = logic.run(SegmentationRequest(ct_node, ("liver",), roi_node=roi))
    liver = slicer_bridge.segment_mask(outcome.segmentation_node, "liver", ct_node)
    k, j, i = np.nonzero(liver)
    assert liver.any() and (k.min(), k.max()) == (3, 7)
    assert j.min() >= 10 and j.max() <= 18 and i.min() >= 8 and i.max() <= 16


# ---------------------------------------------------------------------------------------------------- export
def test_export_writes_what_the_user_sees(scene, ct_node, logic, tmp_path) -> None:
    node = logic.run(SegmentationRequest(ct_node, ("liver", "spleen"))).segmentation_node
    liver = slicer_bridge.segment_mask(node, "liver", ct_node)
    liver[:4] = False
    paint(scene, node, ct_node, liver, "liver")                  # the user corrects the liver ...
    node.GetSegmentation().GetSegment("liver").SetName("Liver (corrected)")
    lesion = np.zeros(liver.shape, bool)
    lesion[8:10, 20:24, 30:34] = True
    paint(scene, node, ct_node, lesion, name="Lesion")           # ... and adds a lesion
    written = logic.export(node, ct_node, tmp_path / "result.seg.nrrd")
    seg = slicerio.read_segmentation(str(written))
    names = [s["name"] for s in seg["segments"]]
    assert names == ["Liver (corrected)", "Spleen", "Lesion"]
    liver_value, spleen_value, lesion_value = (s["labelValue"] for s in seg["segments"])
    catalog = default_catalog()
    assert (liver_value, spleen_value) == (catalog.get("liver").label_value, catalog.get("spleen").label_value)
    liver_type = catalog.get("liver").type
    assert seg["segments"][0]["terminology"]["type"] == [liver_type.scheme, liver_type.value, liver_type.meaning]
    assert [s["tags"]["AutoMedSAM.ClassKey"] for s in seg["segments"]] == ["liver", "spleen", "lesion"]
    voxels = seg["voxels"].transpose(2, 1, 0)                    # IJK -> KJI
    assert np.array_equal(voxels == liver_value, liver & ~lesion)
    assert np.array_equal(voxels == lesion_value, lesion)
    nifti, sidecar = logic.export(node, ct_node, tmp_path / "result.nii.gz"), tmp_path / "result.json"
    assert nifti.exists() and json.loads(sidecar.read_text())[str(lesion_value)]["name"] == "Lesion"
    with pytest.raises(InputError, match="a DICOM SEG output, which needs a DICOM series as input"):
        logic.export(node, ct_node, tmp_path / "dicom_seg")


def test_export_notes_overlapping_segments(scene, ct_node, logic) -> None:
    node = logic.run(SegmentationRequest(ct_node, ("liver",))).segmentation_node
    overlap = np.zeros((12, 40, 48), bool)
    overlap[3, 10:12, 10:12] = True                               # inside the liver
    paint(scene, node, ct_node, overlap, name="Lesion")
    paint(scene, node, ct_node, overlap, name="Lesion")           # a second segment with the same name
    result = segmentation_result(node, ct_node)
    assert [s.key for s in result.segments] == ["liver", "lesion", "lesion_3"]
    assert result.messages == ["8 voxels belong to more than one segment; the later segment was kept"]


def test_save_as_training_case_keeps_the_users_corrections(scene, ct_node, logic, tmp_path) -> None:
    from automedsam_training.data.folder_import import import_nnunet_folder

    node = logic.run(SegmentationRequest(ct_node, ("liver", "spleen"))).segmentation_node
    liver = slicer_bridge.segment_mask(node, "liver", ct_node)
    liver[:4] = False
    paint(scene, node, ct_node, liver, "liver")                   # the user corrects the liver ...
    gallbladder = np.zeros(liver.shape, bool)
    gallbladder[8:10, 16:20, 20:24] = True
    gallbladder &= ~liver & ~slicer_bridge.segment_mask(node, "spleen", ct_node)
    paint(scene, node, ct_node, gallbladder, name="Gallbladder")  # ... and draws a class the model lacks
    first = logic.save_training_case(node, ct_node, tmp_path / "dataset", patient="P7")
    second = logic.save_training_case(node, ct_node, tmp_path / "dataset", patient="P7")
    assert ct_node.GetName() == "Phantom CT"
    assert (first.case_id, second.case_id) == ("Phantom_CT", "Phantom_CT_2")   # a file name; nothing replaced
    catalog = default_catalog()
    saved = slicer_bridge.volume_from_node(ct_node).with_array(
        sitk.GetArrayFromImage(sitk.ReadImage(str(first.label))))
    assert np.array_equal(saved.array == catalog.get("liver").label_value, liver)
    assert np.array_equal(saved.array == catalog.get("gallbladder").label_value, gallbladder) and gallbladder.any()
    spec = import_nnunet_folder(tmp_path / "dataset")
    assert [c.patient_id for c in spec.cases] == ["P7", "P7"]
    assert {"liver", "spleen", "gallbladder"} <= set(spec.classes())


def test_save_as_training_case_refuses_overlaps_and_unknown_segments(scene, ct_node, logic, tmp_path) -> None:
    node = logic.run(SegmentationRequest(ct_node, ("liver",))).segmentation_node
    lesion = np.zeros((12, 40, 48), bool)
    lesion[8:10, 30:34, 40:44] = True
    paint(scene, node, ct_node, lesion, name="Lesion")
    with pytest.raises(InputError, match=r"segments \['Lesion'\] are no catalog class"):
        logic.save_training_case(node, ct_node, tmp_path / "dataset")
    inside = slicer_bridge.segment_mask(node, "liver", ct_node)
    paint(scene, node, ct_node, inside, name="Spleen")
    with pytest.raises(InputError, match="a training label map holds one class per voxel"):
        logic.save_training_case(node, ct_node, tmp_path / "dataset")
    assert not (tmp_path / "dataset").exists()


def test_export_refuses_a_missing_segmentation(scene, ct_node, logic, tmp_path) -> None:
    with pytest.raises(InputError, match="no segmentation to export"):
        logic.export(None, ct_node, tmp_path / "x.seg.nrrd")


@pytest.mark.realdata
def test_export_dicom_seg_next_to_the_dicom_series(scene, reference_files, tmp_path) -> None:
    import pydicom

    from automedsam.io import read_dicom_series
    from automedsam.result import LabelVolume, Segment

    volume, anonymised = read_dicom_series(reference_files / "example_ct_dicom")
    files = dicom_with_uids(anonymised, tmp_path, pydicom.uid.generate_uid(), pydicom.uid.generate_uid())
    node = add_volume_node(scene, volume, "DICOM CT")
    node.SetAttribute("DICOM.Modality", "CT")
    labels = np.zeros(volume.array.shape, np.uint8)
    labels[5:12, 200:260, 180:250] = 5
    liver = default_catalog().get("liver")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Result")
    slicer_bridge.apply_result(LabelVolume(labels, volume, (Segment("liver", liver.label_value, liver),)),
                               segmentation, node)
    logic = SceneSegmenter(model_loader=lambda spec: FakeModel(), dicom_files=lambda n: files)
    written = logic.export(segmentation, node, tmp_path / "seg")
    dataset = pydicom.dcmread(written)
    assert dataset.Modality == "SEG" and dataset.SegmentSequence[0].SegmentLabel == "Liver"
    assert dataset.NumberOfFrames == 7


@pytest.mark.realmodel
def test_real_model_checkpoint_runs_through_the_module_logic(scene, sample_ct_path, tmp_path) -> None:
    """The real LiteMedSAM with a (untrained) class prompt encoder, loaded from a checkpoint path like a user's own
    model: two slices of the sample CT, bf16 fast mode and the uncertainty map, written into MRML."""
    from automedsam.io import read_volume
    from automedsam.loading import load_model
    from automedsam.model import save_checkpoint

    model = load_model(None)
    encoder = model.attach_new_class_prompt_encoder(["liver", "spleen"])
    with torch.no_grad():
        encoder.presence[-1].bias.fill_(10.0)  # untrained, but "present" everywhere: every pair is decoded
    checkpoint = save_checkpoint(tmp_path / "mine.automedsam.pt", model, training={"note": "untrained, for tests"})
    volume = read_volume(sample_ct_path)
    node = add_volume_node(scene, volume, "Sample CT")
    s_values = volume.ijk_to_ras[2, 2] * np.arange(volume.array.shape[0]) + volume.ijk_to_ras[2, 3]
    request = SegmentationRequest(node, ("liver", "spleen"), model=str(checkpoint), device="cpu", fast=True,
                                  axial_range=(float(s_values[14]), float(s_values[15])), uncertainty=True,
                                  uncertainty_samples=2)
    outcome = SceneSegmenter().run(request)
    segmentation = outcome.segmentation_node.GetSegmentation()
    assert [segmentation.GetSegment(outcome.segment_ids[k]).GetName() for k in ("liver", "spleen")] == \
        ["Liver", "Spleen"]
    for key in ("liver", "spleen"):
        mask = slicer_bridge.segment_mask(outcome.segmentation_node, outcome.segment_ids[key], node)
        assert not mask[:14].any() and not mask[16:].any()
    spread = slicer_bridge.volume_from_node(outcome.uncertainty_node).array
    assert spread.shape == volume.array.shape and np.isfinite(spread).all()
    assert spread[14:16].max() > 0 and not spread[:14].any() and not spread[16:].any()


def test_cancel_during_the_last_batch_still_changes_nothing(scene, ct_node, logic) -> None:
    pressed = {"cancel": False}

    def press_cancel_in_last_batch(done: int, total: int, message: str) -> None:
        pressed["cancel"] = done == total                           # the engine has no batch left to stop before

    with pytest.raises(Cancelled, match="cancelled; nothing was changed"):
        logic.run(SegmentationRequest(ct_node, ("liver",)), progress=press_cancel_in_last_batch,
                  cancel=lambda: pressed["cancel"])
    assert count(scene, "vtkMRMLSegmentationNode") == 0
