"""The file dialog of the module's Export button."""

import qt
import slicer
from slicer.i18n import tr as _


def askExportPath(suffix: str, label: str, name: str, folder: bool) -> str:
    """The path the user picks: a folder (DICOM SEG) or a file ending in `suffix`; "" when they cancel."""
    if folder:
        return qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Folder for the DICOM SEG"))
    path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), _("Export segmentation"), name + suffix,
                                          f"{label} (*{suffix})")
    if path and not path.lower().endswith(suffix):
        path += suffix
    return path
