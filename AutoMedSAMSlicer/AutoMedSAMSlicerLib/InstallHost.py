"""The application side of the module's installer and DICOM export: Slicer's dialogs, SlicerPyTorch, pip and the
DICOM database, behind the `automedsam.slicer.install.InstallHost` protocol that the installer is tested with."""

import contextlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path

import slicer
from slicer.i18n import tr as _

from automedsam.errors import Cancelled


class SlicerInstallHost:
    """`automedsam.slicer.install.InstallHost` on the running application: its dialogs, SlicerPyTorch and pip."""

    def __init__(self) -> None:
        self.python_version = tuple(sys.version_info[:2])
        self.has_pip_ensure = _hasPipEnsure()

    def installed_version(self, distribution: str):
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            return None

    def importable(self, module: str) -> bool:
        return importlib.util.find_spec(module) is not None

    def confirm(self, title: str, message: str, details: str) -> bool:
        return slicer.util.confirmOkCancelDisplay(message, windowTitle=_("AutoMedSAM: {title}").format(title=title),
                                                  detailedText=details)

    def retry(self, title: str, message: str) -> bool:
        return slicer.util.confirmRetryCloseDisplay(message, windowTitle=_("AutoMedSAM: {title}").format(title=title))

    def torch_installer(self):
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            return None
        return PyTorchUtils.PyTorchUtilsLogic()

    def pip_ensure(self, requirements: list, skip_packages: list) -> None:
        import slicer.packaging

        slicer.packaging.pip_ensure(requirements, skip_packages=skip_packages, prompt_install=False,
                                    requester="AutoMedSAM")

    def pip_install(self, arguments: str) -> None:
        slicer.util.pip_install(arguments)

    @contextlib.contextmanager
    def download_progress(self, title: str):
        dialog = slicer.util.createProgressDialog(labelText=title, windowTitle=_("AutoMedSAM"), maximum=100)

        def update(done: int, total: int) -> None:
            dialog.value = int(100 * done / max(total, 1))
            slicer.app.processEvents()
            if dialog.wasCanceled:
                raise Cancelled(_("download cancelled; the partial file is kept and resumes next time"))

        try:
            yield update
        finally:
            dialog.close()


def _hasPipEnsure() -> bool:
    """True on Slicer 5.12+, whose `slicer.packaging` checks and installs requirements."""
    try:
        import slicer.packaging
    except ImportError:
        return False
    return hasattr(slicer.packaging, "pip_ensure")


def dicomFiles(volumeNode) -> list:
    """The DICOM files a volume was loaded from (Slicer's DICOM database), for DICOM SEG export."""
    database = getattr(slicer, "dicomDatabase", None)
    uids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
    files = [database.fileForInstance(uid) for uid in uids] if database is not None else []
    return [Path(file) for file in files if file]


def dicomPatient(volumeNode):
    """The DICOM Patient ID of a volume loaded from DICOM (Slicer's DICOM database), else None."""
    database = getattr(slicer, "dicomDatabase", None)
    uids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split() if volumeNode is not None else []
    if database is None or not uids:
        return None
    return database.instanceValue(uids[0], "0010,0020").strip() or None
