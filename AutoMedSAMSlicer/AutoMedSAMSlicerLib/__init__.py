"""Qt and application helpers of the AutoMedSAM module, kept out of the module file so that it stays a thin wiring
of the `.ui`, the parameter node and `automedsam` (as SlicerNNUnet's `SlicerNNUNetLib` does)."""

from .ClassTree import ClassTree
from .ExportDialog import askExportPath
from .InstallHost import SlicerInstallHost, dicomFiles, dicomPatient
from .ModelInfo import ModelInfo, describeModel
from .ReviewTable import ReviewTable, openSegmentEditor

__all__ = ["ClassTree", "ModelInfo", "ReviewTable", "SlicerInstallHost", "askExportPath", "describeModel", "dicomFiles",
           "dicomPatient", "openSegmentEditor"]
