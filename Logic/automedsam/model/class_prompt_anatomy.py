"""Anatomy class prompt encoder (`variant="anatomy"`): finds a class by what the image shows around it, not where.

The first design (`variant="automedsam"`) imitated SAM's box prompt, whose tokens encode absolute corner coordinates,
and learned where organs sat in its few training images. Here every path that localises is translation-equivariant
(convolutions, softmax attention pooling), nothing regresses coordinates, and the prompt is trained only through the
frozen mask decoder's mask. See `docs/model-card.md` for the leave-one-patient-out comparison.

- Trunk, once per slice: a 1x1 conv 256 -> h, then residual 3x3 blocks with dilations 1, 2, 4, 8, ... (GroupNorm,
  GELU); four blocks see about half the 64 x 64 grid, so a class is recognised relative to the body (spine, organs).
- Presence, for every class at once and cheaply (so training can cover every class on every slice): the projected
  trunk, FiLM-modulated per class (elementwise), max- and mean-pooled over space, then an MLP: one logit per
  (slice, class).
- Per (slice, class) pair, batched over pairs and run only for pairs that are decoded: FiLM of a 1x1 projection of
  the trunk by a learned class embedding, two residual 3x3 blocks (the second dilated) -> class features f;
  dense prompt = zero-initialised 1x1 conv of f + SAM's "no mask" embedding; 2 sparse tokens = linear(class
  embedding) + linear(softmax-attention-pooled f), one attention map per token.

- With `coarse_maps = 1`, a coarse mask per class on the 64 x 64 grid: a 1x1 conv of the presence features (so
  every class costs one elementwise FiLM, like presence). Training supervises it directly with the label map of
  every class on every sampled slice (`coarse_logits`), which is far cheaper than the decoder's mask and teaches
  where each class is from many more examples. Presence also reads its max and mean; the per-pair head adds it
  to its input and biases the token attention by it.

Inference is deterministic and has no noise samples (`stochastic = False`); `AutoMedSAM` derives uncertainty from
the mask probabilities instead.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812 (the conventional alias)
from torch import nn

from .class_prompt_base import (
    ClassPromptConfig,
    ClassPromptModule,
    DenoisingLoss,
    PromptEmbeddings,
    combine_losses,
    norm_groups,
)


class DilatedBlock(nn.Module):
    """GroupNorm-GELU-Conv3x3 (dilated) twice with a residual connection; shape preserving."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(norm_groups(channels), channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.norm2 = nn.GroupNorm(norm_groups(channels), channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H, W)."""
        h = self.conv1(F.gelu(self.norm1(x)))
        return x + self.conv2(F.gelu(self.norm2(h)))


class AnatomyCondition(NamedTuple):
    """Work shared by a slice's classes: the trunk per slice, presence per pair, and which pairs to prompt."""

    batch: tuple[int, int]          # (B, C) of the prompts this condition gives
    trunk: torch.Tensor             # (B0, trunk_channels, 64, 64), one per encoded slice
    pair_slices: torch.Tensor       # (B*C,) trunk row of each pair, b-major
    pair_classes: torch.Tensor      # (B*C,) class index of each pair
    presence_logits: torch.Tensor   # (B, C)
    coarse_logits: torch.Tensor | None = None  # (B, C, G, G) with `coarse_maps`, else None


class AnatomyClassPromptEncoder(ClassPromptModule):
    """See the module docstring; configured by `ClassPromptConfig` (`trunk_channels`, `trunk_depth`,
    `head_channels`, `class_dim`, `token_dim`)."""

    stochastic = False

    def __init__(self, config: ClassPromptConfig) -> None:
        super().__init__()
        self.config = config
        width, head, dim = config.trunk_channels, config.head_channels, config.token_dim
        self.class_embedding = nn.Embedding(config.num_classes, config.class_dim)
        self.stem = nn.Conv2d(config.prompt_dim, width, 1)
        self.trunk = nn.Sequential(*(DilatedBlock(width, 2 ** (i % 4)) for i in range(config.trunk_depth)))
        self.trunk_norm = nn.GroupNorm(norm_groups(width), width)
        self.presence_in = nn.Conv2d(width, head, 1)
        self.presence_film = nn.Linear(config.class_dim, 2 * head)
        coarse = config.coarse_maps
        self.presence_head = nn.Sequential(nn.Linear(2 * head + config.class_dim + 2 * coarse, dim), nn.GELU(),
                                           nn.Linear(dim, 1))
        if coarse:
            self.coarse_out = nn.Conv2d(head, 1, 1)
            self.coarse_in = nn.Conv2d(1, head, 1)
        self.project = nn.Conv2d(width, head, 1)
        self.film = nn.Linear(config.class_dim, 2 * head)
        self.blocks = nn.Sequential(DilatedBlock(head, 1), DilatedBlock(head, 2))
        self.out_norm = nn.GroupNorm(norm_groups(head), head)
        self.token_attention = nn.Conv2d(head, 2, 1)
        self.token_from_class = nn.Linear(config.class_dim, 2 * config.prompt_dim)
        self.token_from_pool = nn.Linear(head, config.prompt_dim)
        self.dense_out = nn.Conv2d(head, config.prompt_dim, 1)
        self.dense_bias = nn.Parameter(torch.zeros(config.prompt_dim))
        nn.init.zeros_(self.dense_out.weight)
        nn.init.zeros_(self.dense_out.bias)

    def condition(self, embeddings: torch.Tensor, class_indices: torch.Tensor) -> AnatomyCondition:
        """(B, 256, 64, 64), (C,) -> trunk once per slice and presence of every (slice, class) pair."""
        self._check_inputs(embeddings, class_indices)
        b, c = embeddings.shape[0], class_indices.shape[0]
        trunk = F.gelu(self.trunk_norm(self.trunk(self.stem(embeddings))))
        presence, coarse = self.presence(trunk, class_indices)
        slices = torch.arange(b, device=embeddings.device).repeat_interleave(c)
        classes = class_indices.to(embeddings.device).repeat(b)
        return AnatomyCondition((b, c), trunk, slices, classes, presence, coarse)

    def presence(self, trunk: torch.Tensor,
                 class_indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Trunk features (B, h, G, G), classes (C,) -> presence logits (B, C) and coarse logits (B, C, G, G) or None.

        The trunk, projected and FiLM-modulated per class (elementwise: no convolution per class), is max- and
        mean-pooled over space: "is there a place that looks like class c" does not depend on where it is. (An
        attention-pooled mean was tried first: after GroupNorm its value hardly depends on the image, and the head
        learned each class's prior, the same on every slice.)
        """
        codes = self.class_embedding(class_indices)                               # (C, class_dim)
        gamma, beta = self.presence_film(codes)[None, :, :, None, None].chunk(2, dim=2)
        features = F.gelu(self.presence_in(trunk)[:, None] * (1 + gamma) + beta)   # (B, C, head, G, G)
        parts = [features.amax(dim=(-2, -1)), features.mean(dim=(-2, -1)),
                 codes[None].expand(trunk.shape[0], -1, -1).to(features)]
        coarse = None
        if self.config.coarse_maps:
            coarse = self.coarse_out(features.flatten(0, 1)).view(*features.shape[:2], *features.shape[-2:])
            parts.append(torch.stack([coarse.amax(dim=(-2, -1)), coarse.sigmoid().mean(dim=(-2, -1))], dim=-1))
        return self.presence_head(torch.cat(parts, dim=-1)).squeeze(-1), coarse

    def presence_before_prompts(self, condition: AnatomyCondition) -> torch.Tensor:
        """Presence is known from the trunk, before any prompt is made."""
        return condition.presence_logits

    def select(self, condition: AnatomyCondition, pairs: torch.Tensor) -> AnatomyCondition:
        """Only the flat (b-major) pairs `pairs`, as (len(pairs), 1) pairs sharing the trunk."""
        pairs = pairs.to(condition.pair_slices.device)
        coarse = condition.coarse_logits
        if coarse is not None:
            coarse = coarse.flatten(0, 1)[pairs, None]
        return AnatomyCondition((len(pairs), 1), condition.trunk, condition.pair_slices[pairs],
                                condition.pair_classes[pairs], condition.presence_logits.flatten()[pairs, None],
                                coarse)

    def prompts(self, condition: AnatomyCondition, sample: int | None = None) -> PromptEmbeddings:
        """Class heads on every pair of the condition -> (B, C, ...) prompts; `sample` is ignored (no noise)."""
        b, c = condition.batch
        codes = self.class_embedding(condition.pair_classes)                      # (N, class_dim)
        gamma, beta = self.film(codes)[:, :, None, None].chunk(2, dim=1)
        projected = self.project(condition.trunk)[condition.pair_slices]          # (N, head, G, G)
        features = projected * (1 + gamma) + beta
        coarse = None
        if condition.coarse_logits is not None:
            coarse = condition.coarse_logits.flatten(0, 1)[:, None]               # (N, 1, G, G)
            features = features + self.coarse_in(coarse.sigmoid())
        features = F.gelu(self.out_norm(self.blocks(features)))
        attention = self.token_attention(features)
        if coarse is not None:
            attention = attention + coarse
        attention = attention.flatten(2).softmax(dim=-1)                          # (N, 2, G*G)
        pooled = torch.einsum("ntg,nhg->nth", attention, features.flatten(2))     # (N, 2, head)
        sparse = self.token_from_class(codes).unflatten(-1, (2, -1)) + self.token_from_pool(pooled)
        dense = self.dense_out(features) + self.dense_bias[None, :, None, None].to(features.dtype)
        return PromptEmbeddings(sparse.unflatten(0, (b, c)), dense.unflatten(0, (b, c)), condition.presence_logits)

    def condition_loss(self, condition: AnatomyCondition, target_sparse: torch.Tensor, target_dense: torch.Tensor,
                       generator: torch.Generator | None = None,
                       present: torch.Tensor | None = None) -> DenoisingLoss:
        """No denoiser: the sparse term is the distance of the prompts to the box prompt (for an optional
        distillation weight), the dense term likewise; presence BCE as in the other variants."""
        prompts = self.prompts(condition)
        sparse_error = (prompts.sparse - target_sparse.to(prompts.sparse)).pow(2).mean(dim=(2, 3)).float()
        return combine_losses(sparse_error, prompts, target_dense, present)
