"""AutoMedSAM for 3D Slicer: tick organ classes, press Apply, get one editable segment per class.

Thin on purpose: the widget binds the `.ui` to a parameter node and turns `automedsam` objects into Qt items;
everything else (checks, installation, the run, re-run semantics, export) is in the Qt-free `automedsam` package
(`automedsam.slicer`: `class_picker`, `request`, `install`, `logic`), tested without the application.
"""

import enum
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import slicer
import vtk
from slicer import (
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLMarkupsROINode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, FloatRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


def _addBundledPackagesToPath() -> None:
    """Make `automedsam` importable: `Logic/` and `Training/` sit next to this file once installed, and one folder
    up in the source tree."""
    here = os.path.dirname(os.path.abspath(__file__))
    for root in (here, os.path.dirname(here)):
        for folder, package in (("Logic", "automedsam"), ("Training", "automedsam_training")):
            path = os.path.join(root, folder)
            if os.path.isdir(os.path.join(path, package)) and path not in sys.path:
                sys.path.insert(0, path)


_addBundledPackagesToPath()

import AutoMedSAMSlicerLib as lib  # noqa: E402 (the Qt and application helpers)

from automedsam.catalog import default_catalog  # noqa: E402 (needs the path above)
from automedsam.errors import Cancelled, InputError  # noqa: E402
from automedsam.registry import ModelRegistry  # noqa: E402
from automedsam.resources import resource_path  # noqa: E402
from automedsam.slicer.class_picker import (  # noqa: E402
    default_classes,
    format_classes,
    group_classes,
    parse_classes,
    set_region,
)
from automedsam.slicer.install import MINIMUM_PYTHON, DependencyInstaller, ensure_ready  # noqa: E402
from automedsam.slicer.model_choice import ModelChoice  # noqa: E402
from automedsam.slicer.request import (  # noqa: E402
    SegmentationRequest,
    axial_extent,
    refinable_classes,
    request_problems,
    volume_problem,
)

SAMPLE_CATEGORY = "AutoMedSAM"
SAMPLE_NAME = "AutoMedSAMAbdomenCT"
SAMPLE_FILE = "example_ct_sm.nii.gz"
SAMPLE_LABELS_FILE = "example_ct_sm_seg.nii.gz"
SAMPLE_SHA256 = "e50c00b2914e2cac0aaee8e7f3b5f57d44d9f21bfd5c0577271c54c0cb49e9fb"
_REGISTRY = ModelRegistry.load()
MODEL_IDS = tuple(entry.id for entry in _REGISTRY.entries())
DEFAULT_MODEL = _REGISTRY.default().id


class AutoMedSAMSlicer(ScriptedLoadableModule):
    """Module description shown in Slicer's module panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("AutoMedSAM")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["SlicerAutoMedSAM developers"]
        self.parent.helpText = _("""
Organ segmentation of CT and MR volumes by class prompts: tick the organs, press Apply, and get one editable
segment per class (names, colours and SNOMED CT terminology from the class catalog). AutoMedSAM is LiteMedSAM whose
box prompt is replaced by a learned class prompt encoder. Running again replaces only the classes that ran.
See the <a href="https://github.com/SlicerAutoMedSAM/SlicerAutoMedSAM/blob/main/docs/user-guide.md">user guide</a>.
""")
        self.parent.acknowledgementText = _("""
Built on LiteMedSAM and MedSAM (bowang-lab, Apache-2.0), Segment Anything's modelling code (Meta, Apache-2.0) and
the sample CT from TotalSegmentator's reference files (Apache-2.0). Results are for research; review them before use.
""")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData() -> None:
    """Add the bundled abdominal CT to the Sample Data module (copied from the extension, checked by SHA-256)."""
    import SampleData

    iconsPath = os.path.join(os.path.dirname(__file__), "Resources", "Icons")
    if hasattr(SampleData.SampleDataLogic, "registerCustomSampleDataCategory"):
        SampleData.SampleDataLogic.registerCustomSampleDataCategory(SAMPLE_CATEGORY, title=_("AutoMedSAM"))
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category=SAMPLE_CATEGORY,
        sampleName=SAMPLE_NAME,
        thumbnailFileName=os.path.join(iconsPath, "AutoMedSAMSample.png"),
        uris=resource_path("SampleData", SAMPLE_FILE).as_uri(),
        fileNames=SAMPLE_FILE,
        checksums=f"SHA256:{SAMPLE_SHA256}",
        nodeNames=SAMPLE_NAME,
    )


class Device(enum.Enum):
    """Where the model runs (the value is the engine's device name)."""

    AUTO = "auto"
    GPU = "cuda"
    CPU = "cpu"

    def label(self) -> str:
        return {"auto": _("Automatic (GPU if available)"), "cuda": _("GPU (CUDA)"), "cpu": _("CPU")}[self.value]


class RegionOfInterest(enum.Enum):
    """Which part of the volume is segmented."""

    WHOLE = "whole"
    AXIAL = "axial"
    MARKUPS = "markups"

    def label(self) -> str:
        return {"whole": _("Whole volume"), "axial": _("Slice range"), "markups": _("Markups ROI")}[self.value]


class ExportFormat(enum.Enum):
    """File format of Export (the value is the file suffix; DICOM SEG is written into a folder)."""

    SEG_NRRD = ".seg.nrrd"
    NIFTI = ".nii.gz"
    DICOM_SEG = "dicom"

    def label(self) -> str:
        return {".seg.nrrd": _("Slicer segmentation (.seg.nrrd)"), ".nii.gz": _("NIfTI label map + JSON (.nii.gz)"),
                "dicom": _("DICOM SEG (folder)")}[self.value]


@parameterNodeWrapper
class AutoMedSAMSlicerParameterNode:
    """The module's state, saved with the scene.

    inputVolume - the CT or MR volume to segment.
    classes - catalog keys of the ticked classes separated by "; " (typed names and synonyms are accepted).
    model - registry id of the model (Resources/models.json).
    modelFile - an *.automedsam.pt (e.g. from automedsam-train finetune) used instead of `model` when set.
    device - where the model runs; fastMode - bfloat16 computation, also on the CPU.
    regionOfInterest - whole volume, axialRange (S limits in mm, node frame) or the box of roiNode.
    uncertainty - also add the uncertainty map as a volume.
    outputSegmentation - where the segments go; none: a new segmentation next to the input volume.
    exportFormat - format written by Export.
    trainingDataset - folder that "Save as training case" adds cases to (nnU-Net layout).
    positivePoints, negativePoints, refineBox - refinement prompts: clicks inside / outside the organ, a box.
    propagate - carry a refinement to the neighbouring slices.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    classes: str = ""
    model: Annotated[str, Choice(list(MODEL_IDS))] = DEFAULT_MODEL
    modelFile: Path
    device: Device = Device.AUTO
    fastMode: bool = False
    regionOfInterest: RegionOfInterest = RegionOfInterest.WHOLE
    axialRange: FloatRange
    roiNode: vtkMRMLMarkupsROINode
    uncertainty: bool = False
    outputSegmentation: vtkMRMLSegmentationNode
    exportFormat: ExportFormat = ExportFormat.SEG_NRRD
    trainingDataset: Path
    positivePoints: vtkMRMLMarkupsFiducialNode
    negativePoints: vtkMRMLMarkupsFiducialNode
    refineBox: vtkMRMLMarkupsROINode
    propagate: bool = True


class AutoMedSAMSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The GUI: parameter node <-> .ui, the class tree, Apply/Cancel with progress, Segment Editor and Export."""

    def __init__(self, parent=None) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._running = False
        self._cancelRequested = False
        self._classTree = None
        self._modelInfo = None
        self._shownVolumeID = None
        self._statusIsProblem = False

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/AutoMedSAMSlicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        if sys.version_info < MINIMUM_PYTHON:
            uiWidget.enabled = False
            self.ui.statusLabel.text = _("AutoMedSAM needs 3D Slicer 5.10 or later (Python 3.10+); this Slicer runs "
                                         "Python {version}.").format(version=sys.version.split()[0])
            return
        self.logic = AutoMedSAMSlicerLogic()
        self._classTree = lib.ClassTree(self.ui.classTreeWidget)
        self._reviewTable = lib.ReviewTable(self.ui.reviewTable, self.onReviewJump)
        self._modelInfo = lib.ModelInfo(self.ui.modelInfoLabel, self.logic.catalog)
        self._refinePanel = lib.RefinePanel(self.ui, self.logic, lambda: self._parameterNode)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.classSearchBox.connect("textChanged(QString)", self._fillClassTree)
        self.ui.modalityFilterComboBox.connect("currentIndexChanged(int)", self._fillClassTree)
        self.ui.onlyModelClassesCheckBox.connect("toggled(bool)", self._fillClassTree)
        self.ui.classTreeWidget.connect("itemChanged(QTreeWidgetItem*,int)", self.onClassItemChanged)
        self.ui.selectRegionButton.connect("clicked(bool)", self.onSelectRegionButton)
        self.ui.clearClassesButton.connect("clicked(bool)", self.onClearClassesButton)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.segmentEditorButton.connect("clicked(bool)", self.onSegmentEditorButton)
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)
        self.ui.saveTrainingCaseButton.connect("clicked(bool)", self.onSaveTrainingCaseButton)
        self.ui.progressBar.hide()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        self._cancelRequested = True
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        self.initializeParameterNode()
        if self.logic is not None:
            self._refinePanel.installShortcuts()

    def exit(self) -> None:
        """Called each time the user opens a different module."""
        if self.logic is not None:
            self._refinePanel.removeShortcuts()
        if self._parameterNode and not self._running:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed: a running segmentation stops after its current batch."""
        self._cancelRequested = True
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Ensure the parameter node exists and is observed; preselect a volume and two classes for a new user."""
        if self.logic is None:                  # this Slicer's Python is too old (setup said so)
            return
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode and not firstVolumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = firstVolumeNode
        if not self._parameterNode.classes:
            self._parameterNode.classes = format_classes(default_classes(self.logic.modelClasses(
                self._parameterNode)))

    def setParameterNode(self, inputParameterNode) -> None:
        """Set and observe the parameter node; the GUI is bound to it through SlicerParameterName."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        """Keep the derived parts of the GUI (class tree, model text, ROI controls) in step with the parameters."""
        if self._parameterNode is None:
            return
        if self._modelInfo.show(self.logic.modelSummary(self._parameterNode)):   # another model, or a new file
            self._fillClassTree()
        else:
            self._classTree.showTicked(self._selectedKeys())
        self._updateRegionOfInterestControls()
        self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        """Enable Apply when the inputs can run; otherwise its tooltip and the status line say what is missing."""
        if self._running or self._parameterNode is None:
            return
        problems = self.logic.problems(self._parameterNode)
        self.ui.applyButton.enabled = not problems
        self.ui.applyButton.toolTip = problems[0] if problems else _("Segment the ticked classes.")
        if problems or self._statusIsProblem:
            self.ui.statusLabel.text = problems[0] if problems else ""
            self._statusIsProblem = bool(problems)
        output = self._parameterNode.outputSegmentation
        self.ui.segmentEditorButton.enabled = output is not None
        self.ui.exportButton.enabled = output is not None
        dataset = str(self._parameterNode.trainingDataset)
        self.ui.saveTrainingCaseButton.enabled = output is not None and dataset not in ("", ".")
        self._refinePanel.update(refinable_classes(output, self.logic.modelClasses(self._parameterNode),
                                                   self.logic.catalog))

    # --------------------------------------------------------------------------------------------- classes
    def _fillClassTree(self, *unused) -> None:
        """Rebuild the class tree: body regions, then the classes that pass the search, modality and model filters."""
        if self._parameterNode is None:
            return
        modality = ("all", "CT", "MR")[max(self.ui.modalityFilterComboBox.currentIndex, 0)]
        self._classTree.fill(group_classes(self.logic.catalog, self.logic.modelClasses(self._parameterNode),
                                           modality, self.ui.classSearchBox.text,
                                           self.ui.onlyModelClassesCheckBox.checked))
        self._classTree.showTicked(self._selectedKeys())

    def _selectedKeys(self) -> list:
        """Catalog keys of the ticked classes (an unknown typed name leaves the list as far as it is valid)."""
        try:
            return parse_classes(self._parameterNode.classes, self.logic.catalog) if self._parameterNode else []
        except InputError:
            return []

    def onClassItemChanged(self, item, column) -> None:
        """A class or region was ticked or unticked: update the parameter node's class list."""
        if self._classTree.filling or self._parameterNode is None or column != 0:
            return
        key, checked, group = self._classTree.changedRow(item)
        selected = self._selectedKeys()
        if group is not None:
            selected = set_region(selected, group, checked)
        elif checked and key not in selected:
            selected.append(key)
        elif not checked:
            selected = [k for k in selected if k != key]
        self._parameterNode.classes = format_classes(selected)

    def onSelectRegionButton(self) -> None:
        """Tick every available class of the body region of the selected row."""
        group = self._classTree.currentGroup()
        if group is not None and self._parameterNode is not None:
            self._parameterNode.classes = format_classes(set_region(self._selectedKeys(), group, True))

    def onClearClassesButton(self) -> None:
        """Untick every class."""
        if self._parameterNode:
            self._parameterNode.classes = ""

    def _updateRegionOfInterestControls(self) -> None:
        """Enable the slice range or ROI selector for the chosen region; span the range over a new input volume."""
        mode = self._parameterNode.regionOfInterest
        self.ui.axialRangeWidget.enabled = mode == RegionOfInterest.AXIAL
        self.ui.roiSelector.enabled = mode == RegionOfInterest.MARKUPS
        volume = self._parameterNode.inputVolume
        if volume is None or volume.GetID() == self._shownVolumeID or volume_problem(volume):
            return
        self._shownVolumeID = volume.GetID()
        low, high = axial_extent(volume)
        self.ui.axialRangeWidget.setRange(low, high)
        self._parameterNode.axialRange = FloatRange(low, high)

    # --------------------------------------------------------------------------------------------- apply
    def onApplyButton(self) -> None:
        """Run the segmentation, or cancel the running one (the button says Cancel while it runs)."""
        if self._running:
            self._cancelRequested = True
            self.ui.statusLabel.text = _("Cancelling after the current batch of slices...")
            return
        with slicer.util.tryWithErrorDisplay(_("AutoMedSAM could not segment the volume."), waitCursor=True):
            self._runSegmentation()

    def _runSegmentation(self) -> None:
        """Install what is missing, run with progress, then show the outcome (a cancelled run changes nothing)."""
        parameters = self._parameterNode
        self._setRunning(True)
        try:
            outcome = self.logic.process(parameters, progress=self._onProgress, cancel=lambda: self._cancelRequested)
            status = "\n".join([outcome.summary(), *outcome.messages])
        except Cancelled as error:
            outcome, status = None, _("Stopped: {reason}").format(reason=error)
        finally:
            self._setRunning(False)
        self.ui.statusLabel.text, self._statusIsProblem = status, False
        if outcome is None:
            return
        for message in outcome.messages:
            logging.warning(message)
        if outcome.created and self._parameterNode is parameters:
            parameters.outputSegmentation = outcome.segmentation_node
        self._reviewTable.show(outcome.review)
        if outcome.uncertainty_node is not None:
            slicer.util.setSliceViewerLayers(foreground=outcome.uncertainty_node, foregroundOpacity=0.4)

    def _setRunning(self, running: bool) -> None:
        """Apply turns into Cancel, a progress bar shows, and the inputs are locked while a run is going on."""
        self._running, self._cancelRequested = running, False
        self.ui.applyButton.text = _("Cancel") if running else _("Apply")
        self.ui.applyButton.toolTip = _("Stop after the current batch; nothing is changed.") if running else ""
        self.ui.applyButton.enabled = True
        self.ui.progressBar.setVisible(running)
        self.ui.progressBar.value = 0
        for widget in (self.ui.inputsCollapsibleButton, self.ui.classesCollapsibleButton,
                       self.ui.outputsCollapsibleButton, self.ui.advancedCollapsibleButton,
                       self.ui.reviewCollapsibleButton, self.ui.refineCollapsibleButton):
            widget.enabled = not running
        if not running:
            self._checkCanApply()

    def _onProgress(self, done: int, total: int, message: str) -> None:
        """Engine progress (once per batch of slices): show it and let Slicer handle clicks and redraws."""
        self.ui.progressBar.maximum = max(total, 1)
        self.ui.progressBar.value = done
        self.ui.statusLabel.text = _("Segmenting: {done} of {total} slices").format(done=done, total=total)
        slicer.app.processEvents()

    # ------------------------------------------------------------------------------------- review, export
    def onReviewJump(self, classKey: str, position) -> None:
        """A review row chosen: that class becomes the one to refine, and its slice is prepared now, so that the first
        correcting click there runs the mask decoder only."""
        self._refinePanel.selectClass(classKey)
        if self._parameterNode is not None:
            self.logic.prepareRefinement(self._parameterNode, classKey, position)

    def onSegmentEditorButton(self) -> None:
        """Open the Segment Editor on the result, with the input volume as its source volume."""
        lib.openSegmentEditor(self._parameterNode.outputSegmentation, self._parameterNode.inputVolume)

    def onExportButton(self) -> None:
        """Write the output segmentation as it is now (with the user's corrections) in the chosen format."""
        parameters = self._parameterNode
        exportFormat = parameters.exportFormat
        path = lib.askExportPath(exportFormat.value, exportFormat.label(), parameters.outputSegmentation.GetName(),
                             folder=exportFormat == ExportFormat.DICOM_SEG)
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("Export failed."), waitCursor=True):
            written = self.logic.export(parameters, path)
            self.ui.statusLabel.text = _("Exported to {path}").format(path=written)

    def onSaveTrainingCaseButton(self) -> None:
        """Add the volume and the corrected segmentation to the training dataset folder as a new case."""
        with slicer.util.tryWithErrorDisplay(_("Saving the training case failed."), waitCursor=True):
            case = self.logic.saveTrainingCase(self._parameterNode)
            self.ui.statusLabel.text = _("Saved training case {case} (patient {patient}, {count} classes) in "
                                         "{folder}.").format(case=case.case_id, patient=case.patient,
                                                             count=len(case.classes), folder=case.label.parent.parent)


class AutoMedSAMSlicerLogic(ScriptedLoadableModuleLogic):
    """Parameter node -> `automedsam`: checks, installation, the run and export. Also usable from scripts:

        logic = AutoMedSAMSlicerLogic()
        outcome = logic.segment(volumeNode, ["liver", "spleen"], device="cpu")
    """

    def __init__(self) -> None:
        """Called when the logic class is instantiated. Can be used for initializing member variables."""
        ScriptedLoadableModuleLogic.__init__(self)
        self.registry = _REGISTRY
        self.catalog = default_catalog()
        self._segmentationLogic = None
        self._refiner = None
        self.models = ModelChoice(self.registry)

    def getParameterNode(self):
        return AutoMedSAMSlicerParameterNode(super().getParameterNode())

    def modelSummary(self, parameters):
        """The chosen model (the model file when one is set), read once per file version, without its weights."""
        return self.models.summary(parameters.model, parameters.modelFile)

    def modelClasses(self, parameters) -> tuple:
        """Catalog keys the chosen model segments (every class while a model file cannot be read yet)."""
        classes = self.modelSummary(parameters).classes
        return tuple(self.catalog.keys()) if classes is None else classes

    def request(self, parameters) -> SegmentationRequest:
        """The run the parameter node describes."""
        region = parameters.regionOfInterest
        return SegmentationRequest(
            volume_node=parameters.inputVolume, classes=tuple(c.strip() for c in parameters.classes.split(";")),
            model=self.modelSummary(parameters).spec, segmentation_node=parameters.outputSegmentation,
            device=parameters.device.value,
            fast=parameters.fastMode, uncertainty=parameters.uncertainty,
            axial_range=(parameters.axialRange.minimum, parameters.axialRange.maximum)
            if region == RegionOfInterest.AXIAL else None,
            roi_node=parameters.roiNode if region == RegionOfInterest.MARKUPS else None)

    def problems(self, parameters) -> list:
        """Why Apply cannot run yet (empty: it can)."""
        if parameters.regionOfInterest == RegionOfInterest.MARKUPS and parameters.roiNode is None:
            return [_("Select a markups ROI, or segment the whole volume.")]
        summary = self.modelSummary(parameters)
        found = request_problems(self.request(parameters), self.registry, self.catalog, summary.classes)
        return [summary.problem, *found] if summary.problem else found

    def segmentationLogic(self):
        """`automedsam.slicer.logic.SceneSegmenter`, imported once the Python packages are installed."""
        if self._segmentationLogic is None:
            from automedsam.slicer.logic import SceneSegmenter

            self._segmentationLogic = SceneSegmenter(dicom_files=lib.dicomFiles)
        return self._segmentationLogic

    def process(self, parameters, progress=None, cancel=None):
        """Install what is missing (asking first), then run; returns `automedsam.slicer.logic.SegmentationOutcome`."""
        ensure_ready(lib.SlicerInstallHost(), self.registry, self.modelSummary(parameters).spec)
        return self.segmentationLogic().run(self.request(parameters), progress, cancel)

    def segment(self, volumeNode, classes, outputSegmentation=None, model=None, device="auto", progress=None,
                cancel=None):
        """Segment `classes` (keys or names) of `volumeNode` without the GUI; returns the run's outcome."""
        request = SegmentationRequest(volumeNode, tuple(classes), model, outputSegmentation, device)
        return self.segmentationLogic().run(request, progress, cancel)

    def refiner(self):
        """`automedsam.slicer.refinement.SceneRefiner`, sharing the segmentation logic's model and embeddings."""
        if self._refiner is None:
            from automedsam.slicer.refinement import SceneRefiner

            self._refiner = SceneRefiner(self.segmentationLogic(), lib.saveEditorUndoState)
        return self._refiner

    def refinementRequest(self, parameters, classKey: str):
        """The refinement of `classKey` that the parameter node's prompts describe."""
        from automedsam.slicer.refinement import RefinementRequest

        return RefinementRequest(parameters.inputVolume, parameters.outputSegmentation, classKey,
                                 parameters.positivePoints, parameters.negativePoints, parameters.refineBox,
                                 parameters.propagate, self.modelSummary(parameters).spec, parameters.device.value)

    def prepareRefinement(self, parameters, classKey: str, position=None) -> bool:
        """Make the class prompt of the prompts' slice (or, with `position`, of the slice through that RAS point) for
        the next Refine (`SceneRefiner.prepare`). Only a head start: when it cannot be made, Refine makes it and
        reports any problem, so a failure here is only logged."""
        if parameters.inputVolume is None or not classKey:
            return False
        try:
            if position is not None:
                return self.refiner().prepare_at(parameters.inputVolume, classKey, tuple(position),
                                                 self.modelSummary(parameters).spec, parameters.device.value)
            return self.refiner().prepare(self.refinementRequest(parameters, classKey))
        except Exception as error:  # noqa: BLE001 - a failed head start must not interrupt the user
            logging.warning(f"AutoMedSAM could not prepare the slice for refinement: {error}")
            return False

    def refinementProblem(self, parameters, classKey: str):
        """Why Refine cannot run now, or None."""
        if parameters.outputSegmentation is None or not classKey:
            return _("Segment the volume first (Apply), or select an output segmentation.")
        try:
            return self.refiner().problem(self.refinementRequest(parameters, classKey))
        except ImportError:
            return _("Press Apply once first: it installs the Python packages AutoMedSAM needs.")

    def canUndoRefinement(self, parameters) -> bool:
        return self._refiner is not None and self._refiner.can_undo(parameters.outputSegmentation)

    def refine(self, parameters, classKey: str):
        """Correct `classKey` with the prompts; returns `automedsam.slicer.refinement.RefinementOutcome`."""
        return self.refiner().refine(self.refinementRequest(parameters, classKey))

    def undoRefinement(self, parameters) -> str:
        return self.refiner().undo(parameters.outputSegmentation, parameters.inputVolume)

    def saveTrainingCase(self, parameters):
        """Add the input volume and the output segmentation (user edits included) to the training dataset; the
        patient is the DICOM Patient ID when the volume came from DICOM, else the volume's name."""
        DependencyInstaller(lib.SlicerInstallHost()).ensure()
        volume = parameters.inputVolume
        return self.segmentationLogic().save_training_case(parameters.outputSegmentation, volume,
                                                            parameters.trainingDataset, lib.dicomPatient(volume))

    def export(self, parameters, path):
        """Write the output segmentation (user edits included) to `path`; a folder means DICOM SEG."""
        DependencyInstaller(lib.SlicerInstallHost()).ensure()
        return self.segmentationLogic().export(parameters.outputSegmentation, parameters.inputVolume, path)


class AutoMedSAMSlicerTest(ScriptedLoadableModuleTest):
    """Runs the default model on the bundled sample CT on the CPU (needs the Python packages installed)."""

    def setUp(self):
        """Do whatever is needed to reset the state - typically a scene clear will be enough."""
        slicer.mrmlScene.Clear()

    def runTest(self):
        """Run as few or as many tests as needed here."""
        self.setUp()
        self.test_AutoMedSAMSlicer_segments_the_sample()
        self.setUp()
        self.test_AutoMedSAMSlicer_cancel_changes_nothing()

    def _loadSample(self):
        """The sample CT (through Sample Data) and its TotalSegmentator label map as a KJI array."""
        import SampleData

        registerSampleData()
        volume = SampleData.downloadSample(SAMPLE_NAME)
        labels = slicer.util.loadLabelVolume(str(resource_path("SampleData", SAMPLE_LABELS_FILE)))
        return volume, slicer.util.arrayFromVolume(labels)

    def _twoClasses(self, logic, referenceLabels) -> list:
        """Two classes of the default model that the sample's reference labels contain (liver, spleen first)."""
        classes = logic.segmentationLogic().model(None).classes
        present = [key for key in classes if logic.catalog.get(key).ts_total is not None
                   and (referenceLabels == logic.catalog.get(key).ts_total).sum() > 500]
        self.assertGreaterEqual(len(present), 2, f"the default model's classes {classes} do not include two of the "
                                                 "organs labelled in the sample")
        return default_classes(present)

    def test_AutoMedSAMSlicer_segments_the_sample(self):
        """Names, terminology, colours, geometry and Dice against the sample's reference labels."""
        self.delayDisplay("Segmenting the sample CT")
        volume, referenceLabels = self._loadSample()
        logic = AutoMedSAMSlicerLogic()
        classes = self._twoClasses(logic, referenceLabels)
        outcome = logic.segment(volume, classes, device="cpu")
        segmentationNode = outcome.segmentation_node
        self.assertEqual(segmentationNode.GetNodeReference(segmentationNode.GetReferenceImageGeometryReferenceRole()),
                         volume)
        for key in classes:
            organ = logic.catalog.get(key)
            segment = segmentationNode.GetSegmentation().GetSegment(outcome.segment_ids[key])
            self.assertEqual(segment.GetName(), organ.name)
            self.assertEqual(segment.GetTerminology(), organ.slicer_terminology())
            self.assertEqual([round(c, 5) for c in segment.GetColor()], [round(c, 5) for c in organ.color_float()])
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, outcome.segment_ids[key], volume)
            self.assertEqual(mask.shape, slicer.util.arrayFromVolume(volume).shape)
            reference = referenceLabels == organ.ts_total
            dice = 2.0 * ((mask > 0) & reference).sum() / ((mask > 0).sum() + reference.sum())
            # the reference labels are TotalSegmentator's output, not manual ground truth
            self.assertGreater(dice, 0.8, f"{organ.name}: Dice {dice:.3f} against the sample's reference labels")
        self.delayDisplay("Test passed")

    def test_AutoMedSAMSlicer_cancel_changes_nothing(self):
        """Cancelling a re-run mid-way leaves the segmentation exactly as it was."""
        volume, referenceLabels = self._loadSample()
        logic = AutoMedSAMSlicerLogic()
        classes = self._twoClasses(logic, referenceLabels)
        segmentationNode = logic.segment(volume, classes[:1], device="cpu").segmentation_node
        before = self._state(segmentationNode, volume)
        batches = []
        with self.assertRaises(Cancelled):
            logic.segment(volume, classes, segmentationNode, device="cpu",
                          progress=lambda done, total, message: batches.append(done), cancel=lambda: len(batches) > 2)
        self.assertEqual(self._state(segmentationNode, volume), before)
        self.delayDisplay("Test passed")

    @staticmethod
    def _state(segmentationNode, volume) -> list:
        segmentation = segmentationNode.GetSegmentation()
        state = []
        for index in range(segmentation.GetNumberOfSegments()):
            segmentId = segmentation.GetNthSegmentID(index)
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volume)
            state.append((segmentId, segmentation.GetSegment(segmentId).GetName(), mask.tobytes()))
        return state

