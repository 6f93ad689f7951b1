"""Qt and application helpers of the AutoMedSAM module, kept out of the module file so that it stays a thin wiring
of the `.ui`, the parameter node and `automedsam` (as SlicerNNUnet's `SlicerNNUNetLib` does)."""

from .ClassTree import ClassTree
from .ExportDialog import askExportPath
from .InstallHost import SlicerInstallHost, dicomFiles, dicomPatient
from .ModelInfo import ModelInfo, describeModel
from .RefinePanel import RefinePanel, saveEditorUndoState
from .ReviewTable import ReviewTable, openSegmentEditor

__all__ = ["ClassTree", "ModelInfo", "RefinePanel", "ReviewTable", "SlicerInstallHost", "askExportPath",
           "describeModel", "dicomFiles", "dicomPatient", "openSegmentEditor", "saveEditorUndoState"]
