"""The class prompt encoder of the official AutoMedSAM code (HP-ML/AutoPromptMedSAM, `AutoMedSAM/class_prompt.py`).

Selected with `ClassPromptConfig(variant="official")`. The architecture is kept: the class index enters as a float
(projected by a Linear(1, 64*64) to an extra input channel, and concatenated as a raw channel to the bottleneck),
T forward noise steps x <- x + noise / (t + 1) + label_projection for t = T..1, then one U-Net pass with a shared
encoder (64, 128 channels) and bottleneck (256 -> 128) and two decoders with skip connections, one for the dense
embedding (256, 64, 64) and one whose output is average-pooled over the top and bottom halves of the image into
the 2 sparse tokens. There is no shared trunk: the whole U-Net (~18 GFLOP) runs for every (slice, class) pair.

Deviations, each needed to make it usable here:
- deterministic inference: the forward noise is zero unless a noise sample is asked for; sample n draws it from a
  generator seeded with `sample_seed + n`, shared by every slice and class (the original draws fresh noise on
  every call, so the same slice gave different masks);
- the T noise steps are applied in closed form, x + T * label_projection + sigma_T * noise with
  sigma_T^2 = sum_{t=1..T} 1 / (t + 1)^2, the same distribution as the original loop in one step;
- batch size 1: the original `sparse.squeeze()` dropped the batch axis for one item; only the pooled width axis
  is squeezed here;
- a presence head (average-pooled bottleneck features and the class channel -> Linear -> 1 logit), which the
  original lacks, so that the output types match `PromptEmbeddings`;
- the original AutoMedSAM wrapper swapped the (dense, sparse) return order and called a missing attribute; the
  composed model here uses the named outputs.
Kept as in the original (known limitations): the final ReLU of both decoders, so the dense embedding and the
sparse tokens are never negative (SAM's box tokens are), and the class index used as a float magnitude, so nearby
indices start out similar. `denoising_loss` noises the embedding with the full T random steps, as the original
forward does during training, and regresses the prompts to the box prompt embeddings.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import NamedTuple

import torch
from torch import nn

from ..errors import InputError
from .class_prompt_base import (
    ClassPromptConfig,
    ClassPromptModule,
    DenoisingLoss,
    PromptEmbeddings,
    combine_losses,
    start_noise,
)


def _conv_pair(in_channels: int, mid_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by ReLU (the original's building block)."""
    return nn.Sequential(nn.Conv2d(in_channels, mid_channels, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(mid_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True))


class OfficialUNet(nn.Module):
    """The original U-Net: shared encoder and bottleneck, label-gated dense and sparse decoders (+ presence head)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.enc1 = _conv_pair(in_channels, 64, 64)
        self.enc2 = _conv_pair(64, 128, 128)
        self.middle = _conv_pair(128, 256, 128)
        self.dense_attention = nn.Conv2d(128 + 1, 128, kernel_size=1)
        self.dense_dec1 = _conv_pair(256, 128, 64)
        self.dense_dec2 = _conv_pair(128, 64, out_channels)
        self.sparse_attention = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(128 + 1, 128, kernel_size=1),
                                              nn.Sigmoid())
        self.sparse_dec1 = _conv_pair(256, 128, 64)
        self.sparse_dec2 = _conv_pair(128, 64, out_channels)
        self.presence = nn.Linear(128 + 1, 1)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, 257, 64, 64), label (N,) float -> dense map, sparse map (N, 256, 64, 64), presence logit (N,)."""
        enc1 = self.enc1(x)
        enc2 = self.enc2(enc1)
        middle = self.middle(enc2)
        label_channel = label.view(-1, 1, 1, 1).expand(-1, 1, middle.shape[2], middle.shape[3]).to(middle.dtype)
        with_label = torch.cat([middle, label_channel], dim=1)
        dense = middle * self.dense_attention(with_label)
        dense = self.dense_dec2(torch.cat([self.dense_dec1(torch.cat([dense, enc2], dim=1)), enc1], dim=1))
        sparse = middle * self.sparse_attention(with_label)
        sparse = self.sparse_dec2(torch.cat([self.sparse_dec1(torch.cat([sparse, enc2], dim=1)), enc1], dim=1))
        presence = self.presence(with_label.mean(dim=(2, 3))).squeeze(1)
        return dense, sparse, presence


class OfficialCondition(NamedTuple):
    """The official variant has no sample-independent work to share: embeddings and labels per pair."""

    batch: tuple[int, int]          # (B, C)
    embeddings: torch.Tensor        # (B, 256, 64, 64)
    labels: torch.Tensor            # (B*C,) class indices as floats, b-major


class OfficialClassPromptEncoder(ClassPromptModule):
    """AutoPromptMedSAM's `DiffusionModel` with the fixes listed in the module docstring."""

    def __init__(self, config: ClassPromptConfig) -> None:
        super().__init__()
        self.config = config
        self.fc_label = nn.Linear(1, config.grid_size * config.grid_size)
        self.unet = OfficialUNet(config.prompt_dim + 1, config.prompt_dim)
        self.sparse_out = nn.AdaptiveAvgPool2d((2, 1))

    def condition(self, embeddings: torch.Tensor, class_indices: torch.Tensor) -> OfficialCondition:
        """(B, 256, 64, 64), (C,) -> `OfficialCondition` (no computation)."""
        self._check_inputs(embeddings, class_indices)
        b, c = embeddings.shape[0], class_indices.shape[0]
        labels = class_indices.to(embeddings.device, torch.float32).repeat(b)
        return OfficialCondition((b, c), embeddings, labels)

    def select(self, condition: OfficialCondition, pairs: torch.Tensor) -> OfficialCondition:
        """Only the pairs `pairs` (flat b-major indices): each with its own slice's embedding."""
        classes = condition.batch[1]
        images = torch.div(pairs, classes, rounding_mode="floor")
        return OfficialCondition((len(pairs), 1), condition.embeddings[images], condition.labels[pairs])

    def _noise_scale(self, steps: int) -> float:
        """Standard deviation of the summed forward noise of `steps` original steps t = T..T-steps+1."""
        top = self.config.official_timesteps
        return math.sqrt(sum(1.0 / (t + 1) ** 2 for t in range(top - steps + 1, top + 1)))

    def _run(self, condition: OfficialCondition, noise: torch.Tensor) -> PromptEmbeddings:
        """Forward noising with `noise` (broadcastable to (B*C, 256, 64, 64)), then the U-Net; (B, C, ...) outputs."""
        b, c = condition.batch
        grid = self.config.grid_size
        label_map = self.fc_label(condition.labels[:, None].to(condition.embeddings.dtype)).view(b, c, 1, grid, grid)
        noisy = condition.embeddings[:, None] + self.config.official_timesteps * label_map
        noisy = noisy.flatten(0, 1) + self._noise_scale(self.config.official_timesteps) * noise
        dense, sparse_map, presence = self.unet(torch.cat([noisy, label_map.flatten(0, 1)], dim=1), condition.labels)
        sparse = self.sparse_out(sparse_map).squeeze(-1).transpose(1, 2)             # (B*C, 2, 256)
        return PromptEmbeddings(sparse.unflatten(0, (b, c)), dense.unflatten(0, (b, c)), presence.view(b, c))

    def prompts(self, condition: OfficialCondition, sample: int | None = None) -> PromptEmbeddings:
        """Zero forward noise for `sample=None`, else the noise of sample number `sample`."""
        grid = self.config.grid_size
        noise = start_noise((self.config.prompt_dim, grid, grid), sample, self.config.sample_seed)
        return self._run(condition, noise.to(condition.embeddings))

    def denoising_loss(self, embeddings: torch.Tensor, class_indices: torch.Tensor, target_sparse: torch.Tensor,
                       target_dense: torch.Tensor, generator: torch.Generator | None = None,
                       present: torch.Tensor | None = None) -> DenoisingLoss:
        """MSE of the prompts from randomly noised embeddings to the box prompt embeddings (+ presence BCE).

        Shapes as `ClassPromptEncoder.denoising_loss`; the noise is drawn per pair from `generator`.
        """
        return self.condition_loss(self.condition(embeddings, class_indices), target_sparse, target_dense,
                                   generator, present)

    def condition_loss(self, condition: OfficialCondition, target_sparse: torch.Tensor, target_dense: torch.Tensor,
                       generator: torch.Generator | None = None,
                       present: torch.Tensor | None = None) -> DenoisingLoss:
        """`denoising_loss` on a condition from `condition(embeddings, class_indices)` (shapes as there)."""
        b, c = condition.batch
        embeddings = condition.embeddings
        grid, source = self.config.grid_size, generator.device if generator is not None else embeddings.device
        noise = torch.randn((b * c, self.config.prompt_dim, grid, grid), generator=generator, device=source)
        prompts = self._run(condition, noise.to(embeddings))
        sparse_error = (prompts.sparse - target_sparse.to(prompts.sparse)).pow(2).mean(dim=(2, 3))
        return combine_losses(sparse_error, prompts, target_dense, present)

    def extend_classes(self, count: int) -> range:
        """The class index is an input value here, so new classes need no new parameters: only the count grows."""
        if count < 1:
            raise InputError(f"the number of classes to add must be positive, got {count}")
        old = self.config.num_classes
        self.config = replace(self.config, num_classes=old + count)
        return range(old, old + count)
