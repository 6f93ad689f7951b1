"""The module's model: a registry id, or a model file (`*.automedsam.pt`, e.g. one `automedsam-train finetune`
wrote) that replaces it; and what the model selector shows, read without building the model.

No Qt, and torch only to read a file's classes (`load_checkpoint`: weights only, no code), so before the Python
packages are installed a file's classes are unknown rather than an error. A file is read once per version: its
resolved path, modification time and size (`file_version`), which is also how the logic's model cache notices that a
new training run replaced the file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import AutoMedSAMError
from ..registry import ModelRegistry, is_model_path

FILE_SUFFIX = ".automedsam.pt"
FileVersion = tuple[str, int, int]


def file_chosen(model_file: object) -> bool:
    """Whether the module's model file parameter holds a path (an unset path parameter reads as "" or ".")."""
    return model_file is not None and str(model_file) not in ("", ".")


def file_version(path: Path | str) -> FileVersion:
    """(resolved path, modification time in ns, size in bytes): changes when the file is replaced or rewritten."""
    resolved = Path(path).expanduser().resolve()
    status = resolved.stat()
    return str(resolved), status.st_mtime_ns, status.st_size


def model_version(spec: str | None) -> tuple[Any, ...]:
    """What a loaded model must match to be reused: a registry id as it is, a model file by `file_version`."""
    if spec is None or not is_model_path(spec):
        return (spec,)
    try:
        return file_version(spec)
    except OSError:
        return (spec,)       # missing or unreadable: loading it says why


@dataclass(frozen=True)
class ModelSummary:
    """What a run with this model needs and what the selector shows. `spec` is what `SegmentationRequest.model`
    gets (a registry id or a resolved file path); `classes` None: not known until the packages are installed;
    `problem`: why the model cannot be used."""

    spec: str
    title: str
    license: str = ""
    classes: tuple[str, ...] | None = ()
    problem: str | None = None
    version: tuple[Any, ...] = ()


def read_model_file(path: Path) -> ModelSummary:
    """A model file's classes and origin (its training record), or the problem that keeps it from being used."""
    spec = str(path)
    if not path.is_file():
        return ModelSummary(spec, path.name, problem=f"Model file {path} does not exist; choose another file or "
                                                     "clear it to use the selected model.")
    if not path.name.endswith(FILE_SUFFIX):
        return ModelSummary(spec, path.name, problem=f"{path.name} is not an AutoMedSAM model (*{FILE_SUFFIX}).")
    try:
        from ..model.checkpoint import load_checkpoint
    except ImportError:
        return ModelSummary(spec, f"Model file {path.name}", classes=None)
    try:
        checkpoint = load_checkpoint(path)
    except AutoMedSAMError as error:
        return ModelSummary(spec, path.name, problem=str(error))
    return ModelSummary(spec, f"Model file {path.name}{_origin(checkpoint.training)}", classes=checkpoint.classes)


def _origin(training: dict[str, Any]) -> str:
    """How the file was made, from its training record: fine-tuned from which model, on which data."""
    init = training.get("init") if isinstance(training.get("init"), dict) else {}
    data = training.get("data") if isinstance(training.get("data"), dict) else {}
    dataset = f" on {data['dataset']}" if data.get("dataset") else ""
    if init.get("model"):
        return f"\nFine-tuned from {init['model']}{dataset} ({training.get('steps', '?')} steps)"
    return f"\nTrained{dataset}" if dataset else ""


class ModelChoice:
    """The model file when one is set, else the registry model; each file version is read once."""

    def __init__(self, registry: ModelRegistry, read_file: Callable[[Path], ModelSummary] = read_model_file) -> None:
        self.registry = registry
        self._read_file = read_file
        self._files: dict[str, ModelSummary] = {}

    def summary(self, model_id: str | None, model_file: object = None) -> ModelSummary:
        """The chosen model: `model_file` when set, else the registry entry `model_id` (None: the default)."""
        if file_chosen(model_file):
            return self._file_summary(Path(str(model_file)).expanduser())
        try:
            entry = self.registry.get(model_id) if model_id else self.registry.default()
        except AutoMedSAMError as error:
            return ModelSummary(str(model_id), str(model_id), problem=str(error))
        return ModelSummary(entry.id, entry.title, entry.license, entry.classes, version=(entry.id,))

    def _file_summary(self, path: Path) -> ModelSummary:
        version = model_version(str(path.resolve()))
        known = self._files.get(version[0])
        if known is not None and known.version == version:
            return known
        summary = self._read_file(path.resolve())
        summary = ModelSummary(summary.spec, summary.title, summary.license, summary.classes, summary.problem,
                               version)
        if summary.classes is not None or summary.problem:       # an unknown reading is tried again later
            self._files[version[0]] = summary
        return summary
