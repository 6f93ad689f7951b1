"""Tiny stand-ins for training tests: a small AutoMedSAM (same classes and code paths, 64 px input, 32-channel
prompts), labelled phantom volumes in an nnU-Net folder, and a matching configuration.

The model keeps every real component (SAM prompt encoder, paired mask decoder, the class prompt encoder) at a small
width, with a one-convolution image encoder, so a training step takes milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from segment_anything.modeling import PromptEncoder, TwoWayTransformer
from torch import nn

from automedsam.model import AutoMedSAM, ClassPromptConfig, PairedMaskDecoder
from automedsam.volume import Volume
from automedsam_training.config import TrainConfig, load_config
from automedsam_training.training.trainer import Trainer

IMAGE_SIZE = 64
PROMPT_DIM = 32
GRID = 16
TINY_PROMPT_CONFIG = dict(prompt_dim=PROMPT_DIM, grid_size=GRID, class_dim=16, trunk_channels=16,
                          trunk_mid_channels=16, head_channels=16, token_dim=32, denoiser_heads=2, denoiser_depth=1)
TINY_SHA256 = "ab" * 32


class TinyImageEncoder(nn.Module):
    """(B, 3, 64, 64) -> (B, 32, 16, 16): one fixed 4x4 stride-4 convolution and a tanh."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, PROMPT_DIM, 4, stride=4)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(images * 4.0 - 2.0))


def tiny_model(classes: tuple[str, ...] | list[str] = ("liver", "spleen"), seed: int = 0,
               **prompt_config: object) -> AutoMedSAM:
    """A small AutoMedSAM with an untrained class prompt encoder for `classes` (`prompt_config` overrides the
    tiny class prompt settings, e.g. `variant="anatomy"`)."""
    torch.manual_seed(seed)
    prompt_encoder = PromptEncoder(embed_dim=PROMPT_DIM, image_embedding_size=(GRID, GRID),
                                   input_image_size=(IMAGE_SIZE, IMAGE_SIZE), mask_in_chans=4)
    transformer = TwoWayTransformer(depth=1, embedding_dim=PROMPT_DIM, mlp_dim=64, num_heads=2)
    decoder = PairedMaskDecoder(num_multimask_outputs=3, transformer=transformer, transformer_dim=PROMPT_DIM,
                                iou_head_depth=1, iou_head_hidden_dim=16)
    preprocessing = {"image_size": IMAGE_SIZE, "ct_window": [40.0, 400.0], "mr_percentiles": [0.5, 99.5]}
    model = AutoMedSAM(TinyImageEncoder(), prompt_encoder, decoder, preprocessing=preprocessing,
                       base_sha256=TINY_SHA256)
    model.image_size = IMAGE_SIZE
    model.attach_new_class_prompt_encoder(list(classes), ClassPromptConfig(**{**TINY_PROMPT_CONFIG, **prompt_config}))
    return model


def tiny_factory(config: TrainConfig, classes: tuple[str, ...]) -> AutoMedSAM:
    """Model factory for the trainer (module level, so DDP worker processes can import it)."""
    return tiny_model(classes, seed=config.run.seed, **config.model.class_prompt)


def phantom_case(shift: int = 0, shape: tuple[int, int, int] = (10, 40, 48),
                 spacing: tuple[float, float, float] = (1.5, 1.5, 3.0)) -> tuple[Volume, np.ndarray]:
    """A CT-like phantom (air, body, a 'liver' block at 100 HU, a 'spleen' block at 200 HU) and its labels (KJI).

    `shift` moves the organs by a few voxels (another 'patient').
    """
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    image = np.full(shape, -1000, dtype=np.int16)
    labels = np.zeros(shape, dtype=np.uint8)
    image[:, 4:-4, 3:-3] = 0
    liver = (k >= 1) & (k <= 7) & (j >= 8 + shift) & (j <= 22 + shift) & (i >= 5) & (i <= 22)
    spleen = (k >= 3) & (k <= 9) & (j >= 12) & (j <= 24) & (i >= 29 - shift) & (i <= 40 - shift)
    image[liver], labels[liver] = 100, 1
    image[spleen], labels[spleen] = 200, 2
    rng = np.random.default_rng(shift)
    image = (image + rng.normal(0, 5, shape)).astype(np.int16)
    return Volume.from_array(image, spacing=spacing, origin_ras=(10.0, -20.0, 30.0)), labels


def write_nnunet_folder(folder: Path, shifts: tuple[int, ...] = (0, 3)) -> Path:
    """An nnU-Net v2 raw dataset folder of phantom cases (liver = 1, spleen = 2)."""
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    for index, shift in enumerate(shifts):
        volume, labels = phantom_case(shift)
        sitk.WriteImage(volume.to_sitk(), str(folder / "imagesTr" / f"case_{index:03d}_0000.nii.gz"))
        sitk.WriteImage(volume.to_sitk(labels), str(folder / "labelsTr" / f"case_{index:03d}.nii.gz"))
    manifest = {"name": "Phantoms", "channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1,
                                                                              "spleen": 2},
                "numTraining": len(shifts), "file_ending": ".nii.gz"}
    (folder / "dataset.json").write_text(json.dumps(manifest))
    return folder


def tiny_config(tmp: Path, spec: Path, **overrides: object) -> TrainConfig:
    """A fast configuration on the phantom dataset; `overrides` as {"optim.steps": 4, ...}."""
    base = {"data.spec": str(spec), "data.classes": ["liver", "spleen"], "data.samples_per_class": 4,
            "data.classes_per_slice": 2, "data.min_area_mm2": 5.0, "data.val_fraction": 0.2,
            "optim.steps": 6, "optim.batch_size": 2, "optim.warmup_steps": 2, "optim.lr": 3e-3,
            "run.output": str(tmp / "run"), "run.cache_dir": str(tmp / "cache"), "run.checkpoint_every": 2,
            "run.validate_every": 3, "run.log_every": 1, "run.tensorboard": False, "run.device": "cpu",
            "run.threads": 1}
    base.update(overrides)
    return load_config(None, [f"{key}={_toml_value(value)}" for key, value in base.items()])


def _toml_value(value: object) -> str:
    """A TOML value for an override (JSON is TOML for scalars and lists; tables need `key = value`)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key} = {_toml_value(item)}" for key, item in value.items()) + "}"
    return json.dumps(value)


def tiny_trainer(tmp: Path, spec: Path, **overrides: object) -> Trainer:
    """A quiet trainer of the tiny model with `tiny_config(tmp, spec, **overrides)`."""
    return Trainer(tiny_config(tmp, spec, **overrides), model_factory=tiny_factory, say=lambda message: None)
