"""A transparent stand-in model and a phantom for engine tests (the real model is tested elsewhere).

The phantom has air (-1000 HU), a body (0 HU), a "liver" (100 HU), a "spleen" (200 HU) and a bright table line
(1000 HU) on every slice, so LiteMedSAM's per-slice min-max normalisation keeps each tissue at a fixed level and the
fake model can recognise classes by intensity after the engine's real preprocessing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from automedsam.volume import Volume

if TYPE_CHECKING:
    from automedsam.model import AutoMedSAM, ClassPromptConfig

# Normalised levels after the default CT window (level 40, width 400) and per-slice min-max.
LEVELS = {"liver": (100 + 160) / 400, "spleen": (200 + 160) / 400}


@dataclass
class ClassOutput:
    logits: torch.Tensor
    presence_logits: torch.Tensor
    probability_std: torch.Tensor | None


@dataclass
class BoxOutput:
    logits: torch.Tensor
    iou: torch.Tensor


@dataclass
class PromptOutput:
    logits: torch.Tensor
    presence_logits: torch.Tensor | None


class FakeModel:
    """Classes by intensity band, boxes as 'inside the box and not air'. Counts encoder calls."""

    def __init__(self, classes: tuple[str, ...] = ("liver", "spleen"), image_size: int = 64,
                 oom_above_batch: int | None = None, oom_unless_cpu: bool = False) -> None:
        self.classes = classes
        self.image_size = image_size
        self.preprocessing = {"image_size": image_size, "ct_window": [40.0, 400.0]}
        self.encoded_slices = 0
        self.oom_above_batch = oom_above_batch
        self.oom_unless_cpu = oom_unless_cpu
        self.device = torch.device("cpu")
        self.strength = {key: 10.0 for key in classes}

    def to(self, device: torch.device) -> FakeModel:
        self.device = torch.device(device)
        return self

    def class_index(self, key: str) -> int:
        return self.classes.index(key)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if self.oom_unless_cpu and self.device.type != "cpu":
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        if self.oom_above_batch is not None and images.shape[0] > self.oom_above_batch:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        self.encoded_slices += images.shape[0]
        return images.float().cpu()

    def segment_classes(self, embeddings: torch.Tensor, class_indices: torch.Tensor, noise_samples: int = 0,
                        presence_threshold: float | None = None) -> ClassOutput:
        intensity = embeddings[:, :1]
        uniform = (F.max_pool2d(intensity, 3, 1, 1) + F.max_pool2d(-intensity, 3, 1, 1)) < 0.02
        logits = []
        for index in class_indices.tolist():
            key = self.classes[index]
            core = uniform & ((intensity - LEVELS[key]).abs() < 0.02)
            inside = (F.max_pool2d(core.float(), 5, 1, 2) > 0) & ((intensity - LEVELS[key]).abs() < 0.15)
            logits.append(torch.where(inside[:, 0], self.strength[key], -10.0))
        stacked = torch.stack(logits, dim=1)
        presence = torch.where(stacked.flatten(2).amax(dim=2) > 0, 10.0, -10.0)
        std = torch.full_like(stacked, 0.1) if noise_samples > 0 else None
        return ClassOutput(stacked, presence, std)

    def segment_boxes(self, embeddings: torch.Tensor, boxes: torch.Tensor) -> BoxOutput:
        size = embeddings.shape[-1]
        xs = torch.arange(size, dtype=torch.float32) + 0.5
        logits = []
        for item, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
            inside_x = (xs >= x0) & (xs <= x1)
            inside_y = (xs >= y0) & (xs <= y1)
            inside = inside_y[:, None] & inside_x[None, :] & (embeddings[item, 0] > 0.2)
            logits.append(torch.where(inside, 10.0, -10.0))
        stacked = torch.stack(logits)[:, None]
        return BoxOutput(F.interpolate(stacked, size=(size, size)), torch.ones(len(boxes), 1))


    def slice_class_prompt(self, embeddings: torch.Tensor, class_index: int) -> tuple[int, int]:
        """Stands for the class prompt: counts how often one is made (`class_prompts_made`)."""
        self.class_prompts_made = getattr(self, "class_prompts_made", 0) + 1
        return (class_index, self.class_prompts_made)

    def segment_prompts(self, embeddings: torch.Tensor, class_index: int | None, points: torch.Tensor,
                        point_labels: torch.Tensor, box: torch.Tensor | None,
                        class_prompt: object = None, decode: object = None) -> PromptOutput:
        """A box: 'inside the box and not air'; else the class's band (or 'not air' without a class); negative
        points clear a 5-pixel square around them. Presence: the class's band is on the slice."""
        if box is not None:
            logits = self.segment_boxes(embeddings, box.reshape(1, 4)).logits.clone()
        elif class_index is not None:
            logits = self.segment_classes(embeddings, torch.tensor([class_index])).logits.clone()
        else:
            logits = torch.where(embeddings[:, :1] > 0.2, 10.0, -10.0)
        for (x, y), label in zip(points.tolist(), point_labels.tolist(), strict=True):
            if label == 0:
                logits[..., max(int(y) - 2, 0):int(y) + 3, max(int(x) - 2, 0):int(x) + 3] = -10.0
        presence = None
        if class_index is not None:
            band = self.segment_classes(embeddings, torch.tensor([class_index])).presence_logits[:, 0]
            presence = band
        return PromptOutput(logits, presence)


def phantom(shape_kji: tuple[int, int, int] = (12, 40, 48), spacing: tuple[float, float, float] = (1.5, 1.2, 3.0),
            directions: np.ndarray | None = None) -> Volume:
    """Asymmetric abdomen-like phantom in a canonical (LPS-on-disk-like) orientation."""
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape_kji], indexing="ij")
    array = np.full(shape_kji, -1000, dtype=np.int16)
    array[:, 4:-4, 3:-3] = 0
    array[(k >= 2) & (k <= 8) & (j >= 8) & (j <= 20) & (i >= 6) & (i <= 22)] = 100
    array[(k >= 4) & (k <= 9) & (j >= 18) & (j <= 28) & (i >= 30) & (i <= 40)] = 200
    array[:, -5:-1, :] = 1000
    return Volume.from_array(array, spacing=spacing, origin_ras=(10.0, -20.0, 30.0), directions_ras=directions)


def reorient(volume: Volume, perm: tuple[int, int, int], flips: tuple[bool, bool, bool]) -> Volume:
    """The same physical image stored with KJI axes permuted by `perm` and flipped: exact, no resampling."""
    array = np.transpose(volume.array, perm)
    for axis, flip in enumerate(flips):
        if flip:
            array = np.flip(array, axis)
    old_shape = np.array(volume.array.shape)
    a = np.zeros((3, 3))
    b = np.zeros(3)
    for new_axis, old_axis in enumerate(perm):
        if flips[new_axis]:
            a[old_axis, new_axis] = -1
            b[old_axis] = old_shape[old_axis] - 1
        else:
            a[old_axis, new_axis] = 1
    reverse = np.eye(3)[::-1]  # KJI <-> IJK
    index_map = np.eye(4)
    index_map[:3, :3] = reverse @ a @ reverse
    index_map[:3, 3] = reverse @ b
    return Volume(np.ascontiguousarray(array), volume.ijk_to_ras @ index_map, volume.modality)


def back_to_reference(labels: np.ndarray, perm: tuple[int, int, int], flips: tuple[bool, bool, bool]) -> np.ndarray:
    """Undo `reorient` on a label array."""
    for axis, flip in enumerate(flips):
        if flip:
            labels = np.flip(labels, axis)
    return np.transpose(labels, np.argsort(perm))


LIGHT_CLASSES = ("liver", "spleen", "aorta")


def light_prompt_config() -> ClassPromptConfig:
    """A small class prompt encoder configuration (the real design, narrow layers)."""
    from automedsam.model import ClassPromptConfig

    return ClassPromptConfig(trunk_channels=32, trunk_mid_channels=32, head_channels=16, token_dim=32, class_dim=16)


def light_automedsam(classes: tuple[str, ...] = LIGHT_CLASSES) -> AutoMedSAM:
    """The real AutoMedSAM (randomly initialised LiteMedSAM) with a small class prompt encoder: fast model tests."""
    from automedsam.model import AutoMedSAM, build_lite_medsam

    torch.manual_seed(0)
    model = AutoMedSAM.from_lite_medsam(build_lite_medsam(), base_sha256="ab" * 32)
    model.attach_new_class_prompt_encoder(classes, light_prompt_config())
    return model.eval()


def random_embeddings(slices: int = 2) -> torch.Tensor:
    """Seeded stand-ins for image embeddings, (slices, 256, 64, 64)."""
    return torch.randn(slices, 256, 64, 64, generator=torch.Generator().manual_seed(1))
