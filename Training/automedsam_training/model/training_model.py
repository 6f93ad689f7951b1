"""The model being trained: built, frozen where it must be, and the state dicts of the parts that train.

Fresh runs attach an untrained class prompt encoder to the registry's frozen base model (LiteMedSAM). With
`model.init` an existing checkpoint is loaded and the classes it lacks are appended (`AutoMedSAM.add_classes`), so
its old classes keep their embeddings. Writing the result is `export.py`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from automedsam.loading import load_model
from automedsam.model import AutoMedSAM, ClassPromptConfig

from ..config import TrainConfig


def build_training_model(config: TrainConfig, classes: Sequence[str]) -> AutoMedSAM:
    """The model to train for `classes` (catalog keys); random initialisation follows `run.seed`."""
    torch.manual_seed(config.run.seed)
    if config.model.init:
        return with_classes(load_model(config.model.init), classes)
    model = load_model(config.model.base)
    model.attach_new_class_prompt_encoder(list(classes), ClassPromptConfig(**config.model.class_prompt))
    return model


def with_classes(model: AutoMedSAM, classes: Sequence[str]) -> AutoMedSAM:
    """`model` with the classes of `classes` it lacks appended (`AutoMedSAM.add_classes`, initialised from the torch
    generator); its own classes keep their embeddings."""
    new = [key for key in classes if key not in model.classes]
    if new:
        model.add_classes(new)
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
