"""AutoMedSAM checkpoints (`*.automedsam.pt`) and safe loading of weight files.

A checkpoint is one `torch.save`d dict holding only what was trained; the frozen LiteMedSAM weights are referenced by
their SHA-256, not copied:

    {"format_version": 1, "kind": "automedsam",
     "base_model": {"id": "litemedsam", "sha256": "<64 hex>"},
     "model_config": ClassPromptConfig.to_dict(), "classes": [catalog keys, one per class index],
     "preprocessing": {...}, "training": {...}, "metrics": {...},
     "state_dicts": {"class_prompt_encoder": {...}, "mask_decoder": {...}  (only when it was fine-tuned)}}

`load_checkpoint` reads it once into a typed `Checkpoint` (the class prompt encoder already restored), which model
building (`automedsam.model.build_automedsam`, `apply_checkpoint`) and the loaders take as it is.
Every file is read with `torch.load(map_location="cpu", weights_only=True)` after its SHA-256 is checked (when one is
known), so a file cannot run code when it is loaded; every failure becomes a `ModelError` that says what is wrong
and what to do. Checkpoints are written atomically (temporary file in the same folder + `os.replace`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError, ModelError, OutputError
from ..registry import file_sha256
from .class_prompt import build_class_prompt_encoder
from .class_prompt_base import ClassPromptConfig, ClassPromptModule

if TYPE_CHECKING:
    from .automedsam import AutoMedSAM

FORMAT_VERSION = 1
KIND = "automedsam"
BASE_MODEL_ID = "litemedsam"
CHECKPOINT_SUFFIX = ".automedsam.pt"


def sha256_of(path: Path | str) -> str:
    """Lower-case hex SHA-256 of a file; the registry's memoised helper, so a file is hashed once per version."""
    return file_sha256(Path(path))


def verify_sha256(path: Path, expected: str, what: str) -> None:
    """`ModelError` unless `path` exists and its SHA-256 equals `expected` (message: expected vs actual)."""
    if not path.is_file():
        raise ModelError(f"{what} {path} does not exist; check the path or download the model again")
    try:
        actual = sha256_of(path)
    except OSError as error:
        raise ModelError(f"{what} {path} cannot be read ({error.strerror or error}); check its permissions") from error
    if actual != expected.strip().lower():
        raise ModelError(f"{what} {path} has the wrong checksum: expected SHA-256 {expected.strip().lower()}, "
                         f"actual {actual}; the file is corrupt, incomplete or a different version: delete it and "
                         "download or install it again")


def load_weights_file(path: Path, what: str) -> Any:
    """`torch.load(path, map_location="cpu", weights_only=True)` with every failure turned into a `ModelError`.

    The messages never repeat torch's own hint to retry with `weights_only=False`: that would run code from the file.
    """
    if not path.is_file():
        raise ModelError(f"{what} {path} does not exist; check the path or download the model again")
    _check_weights_container(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "GLOBAL" in str(error) or "global" in str(error):
            raise ModelError(f"{what} {path} contains executable code (Python objects other than weights) and was not "
                             "loaded; use only model files from a source you trust, in the safe weights format"
                             ) from error
        raise ModelError(f"{what} {path} is not a weights-only PyTorch file and was not loaded; use a model file "
                         "saved by AutoMedSAM or by torch.save of a state dict") from error
    except (RuntimeError, EOFError, ValueError, KeyError) as error:
        raise ModelError(f"{what} {path} is truncated or corrupt ({_first_line(error)}); download or save it "
                         "again") from error
    except OSError as error:
        if error.errno in (errno.EACCES, errno.EPERM):
            raise ModelError(f"{what} {path} cannot be read ({error.strerror}); check its permissions") from error
        # torch's zip reader reports some cut-off archives as EINVAL: the file opened, its content is broken
        raise ModelError(f"{what} {path} is truncated or corrupt ({error.strerror or error}); download or save it "
                         "again") from error


def _check_weights_container(path: Path, what: str) -> None:
    """Refuse files that are not torch.save's zip container, before torch looks inside (a raw pickle is code)."""
    try:
        with open(path, "rb") as stream:
            magic = stream.read(4)
    except OSError as error:
        raise ModelError(f"{what} {path} cannot be read ({error.strerror or error}); check its permissions") from error
    if magic == b"PK\x03\x04":
        return
    if magic[:1] == b"\x80":
        raise ModelError(f"{what} {path} is a Python pickle, not an AutoMedSAM/PyTorch weights file; it was not "
                         "loaded, because unpickling can run code: use a model file saved by AutoMedSAM")
    raise ModelError(f"{what} {path} is truncated or corrupt (not a PyTorch weights file: no zip container); "
                     "download or save it again")


def _first_line(error: BaseException) -> str:
    """The first sentence of an error, without torch's advice to load unsafely."""
    text = " ".join(str(error).split())
    sentence = text.split(". ")[0].rstrip(".")
    if "weights_only" in sentence or not sentence:
        return type(error).__name__
    return sentence


def state_dict_mismatch(error: BaseException) -> str:
    """`load_state_dict`'s multi-line error as one short line (missing / unexpected keys, shape mismatches)."""
    text = " ".join(str(error).split())
    return text if len(text) <= 400 else text[:400] + " ..."


def _plain(value: Any, where: str) -> Any:
    """`value` as plain Python data a weights-only load accepts (numbers, strings, lists, dicts, None)."""
    if value is None:
        return value
    for kind in (bool, int, float, str):   # exact types: subclasses (numpy.float64, TorchVersion) would not load
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): _plain(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if hasattr(value, "tolist"):   # numpy scalars and arrays, 0-d tensors
        return _plain(value.tolist(), where)
    raise InputError(f"{where} is a {type(value).__name__}, which a checkpoint cannot store; use numbers, strings, "
                     "lists or dicts")


def _state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of a module's tensors (own storage each, so nothing else is pickled)."""
    return {key: value.detach().to("cpu", copy=True) for key, value in module.state_dict().items()}


def checkpoint_payload(model: AutoMedSAM, training: Mapping[str, Any] | None = None,
                       metrics: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The dict `save_checkpoint` writes for `model` (trained parts only)."""
    if model.class_prompt_encoder is None:
        raise ModelError("the model has no class prompt encoder; only a model with a trained class prompt encoder "
                         "can be saved as an AutoMedSAM checkpoint")
    if not model.base_sha256:
        raise ModelError("the model's LiteMedSAM weights are not identified by a SHA-256; build the model with "
                         "build_automedsam(...) from the real weights before saving a checkpoint")
    state_dicts = {"class_prompt_encoder": _state_dict(model.class_prompt_encoder)}
    if model.mask_decoder_tuned:
        state_dicts["mask_decoder"] = _state_dict(model.mask_decoder)
    return {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "base_model": {"id": BASE_MODEL_ID, "sha256": model.base_sha256},
        "model_config": model.class_prompt_encoder.config.to_dict(),
        "classes": list(model.classes),
        "preprocessing": _plain(model.preprocessing, "preprocessing"),
        "training": _plain(dict(training or {}), "training"),
        "metrics": _plain(dict(metrics or {}), "metrics"),
        "state_dicts": state_dicts,
    }


def save_checkpoint(path: Path | str, model: AutoMedSAM, training: Mapping[str, Any] | None = None,
                    metrics: Mapping[str, Any] | None = None) -> Path:
    """Write `model`'s trained parts to `path` atomically; on any failure no file (not even a partial one) remains.

    `training`/`metrics` are plain metadata (numbers, strings, lists, dicts). Raises `OutputError` when the file
    cannot be written (missing folder, no permission, disk full); an existing file at `path` is then left unchanged.
    """
    payload = checkpoint_payload(model, training, metrics)
    return atomic_torch_save(payload, Path(path), "checkpoint",
                             "nothing was written (free some disk space or choose another folder)")


def atomic_torch_save(payload: Any, path: Path, what: str, advice: str) -> Path:
    """`torch.save` to a temp file beside `path`, fsync, then rename: a failure (disk full, no permission) raises
    `OutputError` naming `what` and ending with `advice`, and leaves any previous file at `path` unchanged."""
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as error:
        raise OutputError(f"cannot write the {what} {path}: {_os_reason(error)}; choose a folder that exists "
                          "and is writable") from error
    written = False
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        written = True
    except (OSError, RuntimeError) as error:
        raise OutputError(f"cannot write the {what} {path}: {_os_reason(error)}; {advice}") from error
    finally:
        if not written:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
    return path


def _os_reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return "the disk is full"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return _first_line(error)


@dataclass(frozen=True)
class Checkpoint:
    """A read and checked `*.automedsam.pt`: its class prompt encoder, restored, and what the file records.

    Loading and model building both take this object, so a file is unpickled once and its encoder built once.
    """

    path: Path
    base_model_id: str                                  # registry id of the frozen base model ("litemedsam")
    base_sha256: str                                    # SHA-256 of the base weights it was trained on
    class_prompt_encoder: ClassPromptModule             # weights restored, on the CPU, in eval mode
    classes: tuple[str, ...]                            # catalog keys, one per class index
    preprocessing: dict[str, Any]
    mask_decoder_state: dict[str, torch.Tensor] | None  # only when the mask decoder was fine-tuned
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def check_base(self, base_sha256: str) -> None:
        """`ModelError` unless the checkpoint was trained on the base weights whose SHA-256 is `base_sha256`."""
        _check_same_base(self.path, self.base_sha256, base_sha256)


def load_checkpoint(path: Path | str, expected_sha256: str | None = None,
                    base_sha256: str | None = None) -> Checkpoint:
    """Read and validate an AutoMedSAM checkpoint (see the module docstring) into a `Checkpoint`.

    Checks, each failing with a specific `ModelError`: the file exists; its SHA-256 equals `expected_sha256` (when
    given, before anything is unpickled); it loads as weights only (no code); format version and kind; the base model
    SHA-256 equals `base_sha256` (when given); the configuration, class list and state dicts fit together.
    """
    path = Path(path)
    if expected_sha256 is not None:
        verify_sha256(path, expected_sha256, "checkpoint")
    data = load_weights_file(path, "checkpoint")
    _check_format(path, data)
    base = _check_base_model(path, data.get("base_model"))
    if base_sha256 is not None:
        _check_same_base(path, base["sha256"], base_sha256)
    config = ClassPromptConfig.from_dict(_field(path, data, "model_config", dict))
    classes = _field(path, data, "classes", list)
    _check_classes(path, classes, config)
    preprocessing = _field(path, data, "preprocessing", dict)
    state_dicts = _field(path, data, "state_dicts", dict)
    encoder = _restore_class_prompt_encoder(config, state_dicts.get("class_prompt_encoder"), path)
    decoder = state_dicts.get("mask_decoder")
    if "mask_decoder" in state_dicts and not _is_tensor_dict(decoder):
        raise ModelError(f"checkpoint {path}: the mask decoder state is not a dict of tensors; the file is damaged")
    return Checkpoint(path, base["id"], base["sha256"], encoder, tuple(classes), dict(preprocessing), decoder,
                      _metadata(data, "training"), _metadata(data, "metrics"))


def _check_format(path: Path, data: Any) -> None:
    if not isinstance(data, dict) or "format_version" not in data:
        raise ModelError(f"{path} is not an AutoMedSAM checkpoint (no format_version); it may be a plain weights "
                         "file: pass it as base weights instead")
    if data["format_version"] != FORMAT_VERSION:
        raise ModelError(f"checkpoint {path} has format version {data['format_version']!r}; this AutoMedSAM reads "
                         f"version {FORMAT_VERSION}: update AutoMedSAM or use a checkpoint made for this version")
    if data.get("kind") != KIND:
        raise ModelError(f"{path} is a {data.get('kind')!r} file, not an AutoMedSAM class prompt checkpoint")


def _metadata(data: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The plain `training` / `metrics` record (empty when the file has none)."""
    value = data.get(name)
    return dict(value) if isinstance(value, dict) else {}


def _field(path: Path, data: Mapping[str, Any], name: str, kind: type) -> Any:
    value = data.get(name)
    if not isinstance(value, kind):
        raise ModelError(f"checkpoint {path} lacks a valid {name!r} entry ({kind.__name__} expected); the file is "
                         "damaged or was not written by AutoMedSAM")
    return value


def _check_base_model(path: Path, base: Any) -> dict[str, str]:
    if not isinstance(base, dict) or base.get("id") != BASE_MODEL_ID or not isinstance(base.get("sha256"), str):
        raise ModelError(f"checkpoint {path} does not name its base model as {BASE_MODEL_ID!r} with a SHA-256; "
                         "this version supports LiteMedSAM-based checkpoints only")
    return base


def _check_same_base(path: Path, recorded: str, base_sha256: str) -> None:
    if recorded.lower() != base_sha256.strip().lower():
        raise ModelError(f"checkpoint {path} was trained on LiteMedSAM weights with SHA-256 {recorded}, but the base "
                         f"weights given have SHA-256 {base_sha256}; use the base weights it was trained on")


def _check_classes(path: Path, classes: list[Any], config: ClassPromptConfig) -> None:
    if not all(isinstance(key, str) and key for key in classes) or len(set(classes)) != len(classes):
        raise ModelError(f"checkpoint {path}: the class list must hold distinct class keys, got {classes}")
    if len(classes) != config.num_classes:
        raise ModelError(f"checkpoint {path} lists {len(classes)} classes but its class prompt encoder has "
                         f"{config.num_classes}; the file is inconsistent")


def _is_tensor_dict(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def _restore_class_prompt_encoder(config: ClassPromptConfig, state: Any, path: Path) -> ClassPromptModule:
    """The class prompt encoder of `config` with the checkpoint's weights in place (CPU, eval mode)."""
    if not _is_tensor_dict(state):
        raise ModelError(f"checkpoint {path} has no class prompt encoder weights; the file is damaged")
    module = build_class_prompt_encoder(config)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ModelError(f"checkpoint {path}: the class prompt encoder weights do not fit its configuration "
                         f"({state_dict_mismatch(error)}); the file is damaged or was edited") from error
    return module.eval()
