"""The module's "Refine with points and boxes" section: + and - point lists and a box placed in the slice views,
keyboard shortcuts while the module is shown, Refine and Undo refinement.

Qt and application calls only; what a refinement does (which slices change, what is protected, undo) is
`automedsam.slicer.refinement.SceneRefiner`, tested without the application."""

import qt
import slicer
from slicer.i18n import tr as _

# prompt kind -> (parameter-node field, node class, colour, name of a new node)
PROMPTS = {
    "positive": ("positivePoints", "vtkMRMLMarkupsFiducialNode", (0.2, 0.85, 0.3), "AutoMedSAM +"),
    "negative": ("negativePoints", "vtkMRMLMarkupsFiducialNode", (0.95, 0.25, 0.2), "AutoMedSAM -"),
    "box": ("refineBox", "vtkMRMLMarkupsROINode", (1.0, 0.85, 0.2), "AutoMedSAM box"),
}
# Shift + letter: the plain letters belong to the slice views (b / f move through slices, r resets the view, ...)
SHORTCUTS = {"Shift+A": "positive", "Shift+X": "negative", "Shift+B": "box", "Shift+R": "refine"}


class RefinePanel:
    """Wires the section's buttons to placement and to the logic's `refine` / `undoRefinement`."""

    def __init__(self, ui, logic, parameterNode) -> None:
        """`parameterNode()` gives the module's current parameter node (it changes with the scene)."""
        self.ui, self.logic, self.parameterNode = ui, logic, parameterNode
        self._shortcuts, self._observed, self._classes, self._filling = [], [], [], False
        ui.refineClassComboBox.connect("currentIndexChanged(int)", self.onClassChanged)
        ui.positivePointsPlaceButton.connect("clicked(bool)", lambda checked: self.place("positive"))
        ui.negativePointsPlaceButton.connect("clicked(bool)", lambda checked: self.place("negative"))
        ui.refineBoxPlaceButton.connect("clicked(bool)", lambda checked: self.place("box"))
        ui.clearPromptsButton.connect("clicked(bool)", self.clearPrompts)
        ui.refineButton.connect("clicked(bool)", self.onRefine)
        ui.undoRefinementButton.connect("clicked(bool)", self.onUndo)

    # ----------------------------------------------------------------------------------------------- state
    def update(self, classes: list) -> None:
        """Offer `classes` ((key, name): segments first, then the model's other classes); enable Refine and Undo
        when they can run, with the reason in the tooltip otherwise."""
        combo = self.ui.refineClassComboBox
        current = combo.currentData
        self._classes = list(classes)
        if [(combo.itemData(i), combo.itemText(i)) for i in range(combo.count)] != self._classes:
            self._filling = True
            try:
                combo.clear()
                for key, name in self._classes:
                    combo.addItem(name, key)
                combo.setCurrentIndex(max(combo.findData(current), 0))
            finally:
                self._filling = False
        self._observePrompts()
        parameters = self.parameterNode()
        problem = self.logic.refinementProblem(parameters, self.classKey()) if parameters else _("No parameters.")
        self.ui.refineButton.enabled = problem is None
        self.ui.refineButton.toolTip = problem or _("Decode the class again on the prompts' slice (Shift+R).")
        self.ui.undoRefinementButton.enabled = parameters is not None and self.logic.canUndoRefinement(parameters)

    def onClassChanged(self, index: int) -> None:
        """Another class chosen: say again whether it can be refined."""
        if not self._filling:
            self.update(self._classes)

    def selectClass(self, key: str) -> bool:
        """Make `key` the class to refine, if it is offered."""
        index = self.ui.refineClassComboBox.findData(key)
        if index >= 0:
            self.ui.refineClassComboBox.setCurrentIndex(index)
        return index >= 0

    def classKey(self) -> str:
        """Catalog key of the chosen class ("" when there is none)."""
        return self.ui.refineClassComboBox.currentData or ""

    def _observePrompts(self) -> None:
        """Follow the prompt nodes, so that Refine is enabled as soon as a point or a box is placed."""
        parameters = self.parameterNode()
        nodes = [getattr(parameters, PROMPTS[kind][0]) if parameters else None for kind in PROMPTS]
        if nodes == [node for node, _tags in self._observed]:
            return
        for node, tags in self._observed:
            for tag in tags:
                node.RemoveObserver(tag)
        self._observed = []
        for node in nodes:
            tags = [] if node is None else [
                node.AddObserver(node.PointPositionDefinedEvent, lambda *args: self.onPromptPlaced()),
                node.AddObserver(node.PointRemovedEvent, lambda *args: self.update(self._classes))]
            self._observed.append((node, tags))

    def onPromptPlaced(self) -> None:
        """A point or box was placed: Refine may run now, and its slice's class prompt is made at once, while the
        user places the rest, so that Refine runs the mask decoder only."""
        self.update(self._classes)
        parameters = self.parameterNode()
        if parameters is not None and self.classKey():
            self.logic.prepareRefinement(parameters, self.classKey())

    def promptNode(self, kind: str, create: bool = True):
        """The markups node of a prompt kind, made (coloured, named) and stored in the parameter node if missing."""
        field, nodeClass, color, name = PROMPTS[kind]
        parameters = self.parameterNode()
        node = getattr(parameters, field)
        if node is None and create:
            node = slicer.mrmlScene.AddNewNodeByClass(nodeClass, slicer.mrmlScene.GenerateUniqueName(name))
            node.CreateDefaultDisplayNodes()
            node.GetDisplayNode().SetSelectedColor(*color)
            node.GetDisplayNode().SetColor(*color)
            setattr(parameters, field, node)
        return node

    # ------------------------------------------------------------------------------------------- actions
    def place(self, kind: str) -> None:
        """Start placing points of a kind (persistent: click on, Escape ends) or a new box in the slice views."""
        if self.parameterNode() is None:
            return
        node = self.promptNode(kind)
        if kind == "box":
            node.RemoveAllControlPoints()
        selection = slicer.app.applicationLogic().GetSelectionNode()
        selection.SetReferenceActivePlaceNodeClassName(node.GetClassName())
        selection.SetActivePlaceNodeID(node.GetID())
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        interaction.SetPlaceModePersistence(kind != "box")
        interaction.SetCurrentInteractionMode(interaction.Place)

    def clearPrompts(self) -> None:
        """Remove every placed point and the box (the nodes stay, for the next correction)."""
        if self.parameterNode() is None:
            return
        for kind in PROMPTS:
            node = self.promptNode(kind, create=False)
            if node is not None:
                node.RemoveAllControlPoints()

    def onRefine(self) -> None:
        """Refine the chosen class; the prompts are cleared after a refinement, ready for the next slice."""
        parameters = self.parameterNode()
        if parameters is None or not self.ui.refineButton.enabled:
            return
        slicer.app.applicationLogic().GetInteractionNode().SwitchToViewTransformMode()
        with slicer.util.tryWithErrorDisplay(_("AutoMedSAM could not refine the segment."), waitCursor=True):
            outcome = self.logic.refine(parameters, self.classKey())
            self.ui.statusLabel.text = outcome.summary()
            self.clearPrompts()
        self.update(self._classes)

    def onUndo(self) -> None:
        """Take back the last refinement of the output segmentation."""
        with slicer.util.tryWithErrorDisplay(_("The refinement could not be undone."), waitCursor=True):
            self.ui.statusLabel.text = self.logic.undoRefinement(self.parameterNode())
        self.update(self._classes)

    # ----------------------------------------------------------------------------------------- shortcuts
    def installShortcuts(self) -> None:
        """Shift+A, Shift+X, Shift+B and Shift+R place +, - and box prompts and refine, while the module is shown
        (typing in a text field is not affected: the field takes the key)."""
        self.removeShortcuts()
        actions = {"positive": lambda: self.place("positive"), "negative": lambda: self.place("negative"),
                   "box": lambda: self.place("box"), "refine": self.onRefine}
        for key, action in SHORTCUTS.items():
            shortcut = qt.QShortcut(qt.QKeySequence(key), slicer.util.mainWindow())
            shortcut.connect("activated()", actions[action])
            self._shortcuts.append(shortcut)

    def removeShortcuts(self) -> None:
        """Release the keys when the user leaves the module."""
        for shortcut in self._shortcuts:
            shortcut.setEnabled(False)
            shortcut.setParent(None)
            shortcut.deleteLater()
        self._shortcuts = []


def saveEditorUndoState(segmentationNode) -> None:
    """Record the segmentation's state in the Segment Editor's undo history, so that its Undo takes back the change
    that follows (the editor is pointed at this segmentation first if it shows another one)."""
    editor = slicer.util.getModuleWidget("SegmentEditor").editor
    if editor.mrmlSegmentEditorNode() is None:    # never opened: the module's "Undo refinement" is the undo step
        return
    if editor.segmentationNode() is None or editor.segmentationNode().GetID() != segmentationNode.GetID():
        editor.setSegmentationNode(segmentationNode)
    editor.saveStateForUndo()
