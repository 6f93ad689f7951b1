"""From a model id (registry) or a checkpoint path to a ready model, every file SHA-256-verified first."""

from __future__ import annotations

from pathlib import Path

from .errors import InputError, ModelError
from .model import CHECKPOINT_SUFFIX, AutoMedSAM, build_automedsam, load_checkpoint
from .registry import ModelEntry, ModelRegistry, Progress, is_model_path


def load_model(spec: str | Path | None = None, registry: ModelRegistry | None = None, download: bool = False,
               progress: Progress | None = None) -> AutoMedSAM:
    """A model by registry id (None: the registry's default) or by the path of a `*.automedsam.pt` file.

    A user's own checkpoint has no registry checksum; its recorded base model SHA-256 is checked instead.
    """
    registry = registry or ModelRegistry.load()
    if spec is not None and is_model_path(str(spec)):
        return _load_checkpoint_file(Path(spec), registry, download, progress)
    entry = registry.get(str(spec)) if spec is not None else registry.default()
    return _load_entry(entry, registry, download, progress)


def _base_files(entry: ModelEntry, registry: ModelRegistry, download: bool,
                progress: Progress | None) -> tuple[Path, str]:
    if entry.encoder != "tinyvit":
        raise ModelError(f"model {entry.id!r} ({entry.title}) uses the {entry.encoder} encoder, which this version "
                         "runs only for benchmarks; choose a LiteMedSAM-based model (see `automedsam models list`)")
    file = entry.files[0]
    return registry.resolve_file(entry, file, download=download, progress=progress), file.sha256


def _load_entry(entry: ModelEntry, registry: ModelRegistry, download: bool, progress: Progress | None) -> AutoMedSAM:
    if entry.kind == "base":
        base_path, base_sha = _base_files(entry, registry, download, progress)
        return build_automedsam(base_path, base_sha)
    if entry.base is None:
        raise ModelError(f"model {entry.id!r} names no base model in models.json")
    base_path, base_sha = _base_files(registry.get(entry.base), registry, download, progress)
    file = entry.files[0]
    checkpoint = registry.resolve_file(entry, file, download=download, progress=progress)
    return build_automedsam(base_path, base_sha, checkpoint, file.sha256)


def _load_checkpoint_file(path: Path, registry: ModelRegistry, download: bool,
                          progress: Progress | None) -> AutoMedSAM:
    if not path.is_file():
        raise InputError(f"model file {path} does not exist")
    if not path.name.endswith(CHECKPOINT_SUFFIX):
        raise InputError(f"{path.name} is not an AutoMedSAM checkpoint (expected a *{CHECKPOINT_SUFFIX} file)")
    checkpoint = load_checkpoint(path)   # read once; the model is built from this, not from the file again
    base_path, base_sha = _base_files(registry.get(checkpoint.base_model_id), registry, download, progress)
    return build_automedsam(base_path, base_sha, checkpoint)
