"""The model being trained (built, frozen where it must be) and its export as an `*.automedsam.pt`.

Fresh runs attach an untrained class prompt encoder to the registry's frozen base model (LiteMedSAM). With
`model.init` an existing checkpoint is loaded and the classes it lacks are appended (`AutoMedSAM.add_classes`), so
its old classes keep their embeddings. The export records the training configuration, the data it saw (file names
and SHA-256, slice ranges) and the validation metrics inside the checkpoint.
"""

from __future__ import annotations

import hashlib
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from automedsam import __version__ as automedsam_version
from automedsam.loading import load_model
from automedsam.model import AutoMedSAM, ClassPromptConfig, save_checkpoint
from automedsam.model.checkpoint import sha256_of

from . import __version__
from .config import TrainConfig
from .dataset import TrainingSet
from .spec import DatasetSpec


def build_training_model(config: TrainConfig, classes: Sequence[str]) -> AutoMedSAM:
    """The model to train for `classes` (catalog keys); random initialisation follows `run.seed`."""
    torch.manual_seed(config.run.seed)
    if config.model.init:
        model = load_model(config.model.init)
        new = [key for key in classes if key not in model.classes]
        if new:
            model.add_classes(new)
        return model
    model = load_model(config.model.base)
    model.attach_new_class_prompt_encoder(list(classes), ClassPromptConfig(**config.model.class_prompt))
    return model


def freeze_for_training(model: AutoMedSAM, train_mask_decoder: bool) -> list[torch.nn.Parameter]:
    """Freeze everything but the class prompt encoder (and the mask decoder if asked); returns the trained params."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    trained = list(model.class_prompt_encoder.parameters())
    if train_mask_decoder:
        trained += list(model.mask_decoder.parameters())
        model.mask_decoder_tuned = True
    for parameter in trained:
        parameter.requires_grad_(True)
    return trained


def trained_state(model: AutoMedSAM) -> dict[str, dict[str, torch.Tensor]]:
    """State dicts of the trained parts (what a training state and a checkpoint carry)."""
    state = {"class_prompt_encoder": _copy(model.class_prompt_encoder.state_dict())}
    if model.mask_decoder_tuned:
        state["mask_decoder"] = _copy(model.mask_decoder.state_dict())
    return state


def load_trained_state(model: AutoMedSAM, state: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
    """Inverse of `trained_state`."""
    model.class_prompt_encoder.load_state_dict(state["class_prompt_encoder"])
    if "mask_decoder" in state:
        model.mask_decoder.load_state_dict(state["mask_decoder"])


def _copy(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().to("cpu", copy=True) for key, value in state.items()}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files (names and contents, in sorted order) for DICOM series."""
    path = Path(path)
    if path.is_file():
        return sha256_of(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(item.relative_to(path).as_posix().encode())
        digest.update(bytes.fromhex(sha256_of(item)))
    return digest.hexdigest()


def provenance(spec: DatasetSpec, data: TrainingSet | None, holdout: Sequence[str]) -> dict[str, Any]:
    """What the model was trained on: the spec's name and source, and per case files, checksums and slices."""
    trained = {case.case_id: case for case in data.cases} if data is not None else {}
    cases = []
    for case in spec.cases:
        entry = {"id": case.id, "patient": case.patient_id, "modality": case.modality, "image": case.image.name,
                 "image_sha256": file_sha256(case.image), "label": case.label.name,
                 "label_sha256": file_sha256(case.label), "role": "holdout" if case.id in holdout else "train"}
        if case.id in trained:
            entry["slices"] = trained[case.id].slices
            entry["validation_slices"] = data.val_ranges.get(case.id)
        cases.append(entry)
    return {"dataset": spec.name, "source": spec.source, "cases": cases}


def export_model(path: Path, model: AutoMedSAM, config: TrainConfig, spec: DatasetSpec, data: TrainingSet | None,
                 step: int, metrics: Mapping[str, Any]) -> Path:
    """Write the trained model as an `*.automedsam.pt` with its recipe, data provenance and metrics inside."""
    training = {"config": config.to_dict(), "steps": step, "data": provenance(spec, data, config.data.holdout_cases),
                "trained_classes": list(data.classes) if data is not None else list(model.classes),
                "software": {"automedsam": automedsam_version, "automedsam_training": __version__,
                             "torch": str(torch.__version__), "python": platform.python_version()}}
    return save_checkpoint(path, model, training=training, metrics=metrics)
