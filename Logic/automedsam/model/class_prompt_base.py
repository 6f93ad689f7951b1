"""What every class prompt encoder variant shares: its configuration, its outputs, its interface and its losses.

A class prompt encoder turns a slice's image embedding and a class into the prompt SAM's mask decoder needs: for
every slice b and class c, what SAM's prompt encoder gives for a box, 2 sparse tokens (2, 256) and a dense embedding
(256, 64, 64), plus a presence logit (is class c on slice b at all). See docs/architecture.md (Model). The variants
(`class_prompt.py`, `class_prompt_anatomy.py`, `class_prompt_official.py`) build on this module and never on each
other; `class_prompt.build_class_prompt_encoder` picks one by `ClassPromptConfig.variant`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812 (the conventional alias)
from torch import nn

from ..errors import InputError, ModelError

VARIANTS = ("automedsam", "official", "anatomy")


@dataclass(frozen=True)
class ClassPromptConfig:
    """Hyper-parameters of a class prompt encoder; stored in checkpoints as a plain dict (`to_dict`)."""

    variant: str = "automedsam"       # "automedsam" (box-prompt imitation), "official" (AutoPromptMedSAM's
                                      # architecture) or "anatomy" (translation-equivariant, mask-trained)
    num_classes: int = 1              # size of the class set (the checkpoint's class list gives their keys)
    prompt_dim: int = 256             # SAM prompt / image embedding channels
    grid_size: int = 64               # image embedding is (prompt_dim, grid_size, grid_size)
    class_dim: int = 128              # learned class embedding width
    trunk_channels: int = 128         # shared trunk width at 64 x 64
    trunk_mid_channels: int = 192     # shared trunk width at 32 x 32
    head_channels: int = 64           # per-class feature width
    token_dim: int = 128              # denoiser width
    denoiser_depth: int = 2           # denoiser layers (self-attention, cross-attention, MLP)
    denoiser_heads: int = 4
    sampling_steps: int = 4           # deterministic DDIM steps at inference
    latent_scale: float = 0.7         # sparse tokens / latent_scale = latent; LiteMedSAM box tokens have std 0.72
    sample_seed: int = 0              # seed of noise sample n is sample_seed + n
    official_timesteps: int = 100     # "official" variant: forward noise steps T
    trunk_depth: int = 4              # "anatomy" variant: dilated residual blocks of the trunk
    coarse_maps: int = 0              # "anatomy" variant: 1 = a coarse mask per class on the grid (trained directly
                                      # on the labels), read by presence and by the prompt head; 0 = none

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ModelError(f"unknown class prompt encoder variant {self.variant!r}; expected one of "
                             f"{', '.join(VARIANTS)}")
        positive = [f.name for f in fields(self)
                    if f.type in ("int", "float") and f.name not in ("sample_seed", "coarse_maps")]
        bad = [name for name in positive if not getattr(self, name) > 0]
        if bad:
            raise ModelError(f"class prompt configuration values must be positive: {', '.join(bad)}")
        if self.token_dim % self.denoiser_heads:
            raise ModelError(f"token_dim {self.token_dim} must be a multiple of denoiser_heads {self.denoiser_heads}")
        if self.coarse_maps not in (0, 1):
            raise ModelError(f"coarse_maps must be 0 or 1, got {self.coarse_maps}")
        if self.grid_size % 2:
            raise ModelError(f"grid_size {self.grid_size} must be even (the trunk halves it once)")

    def to_dict(self) -> dict[str, int | float | str | bool]:
        """Plain dict of ints/floats/strs for a checkpoint (`from_dict` reads it back)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClassPromptConfig:
        """Config from a checkpoint's `model_config`; `ModelError` naming unknown or mistyped fields."""
        if not isinstance(data, Mapping):
            raise ModelError(f"the model configuration must be a dict, got {type(data).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ModelError(f"the model configuration has unknown fields {unknown}; the checkpoint was written by a "
                             "newer or different AutoMedSAM version")
        values: dict[str, Any] = {}
        for name, value in data.items():
            kind = {"int": int, "float": float, "str": str}[known[name].type]
            if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else kind):
                raise ModelError(f"model configuration field {name!r} should be {kind.__name__}, got {value!r}")
            values[name] = kind(value)
        return cls(**values)


class PromptEmbeddings(NamedTuple):
    """Prompt embeddings for B slices x C classes, in the shapes SAM's prompt encoder gives for one box each."""

    sparse: torch.Tensor            # (B, C, 2, 256)
    dense: torch.Tensor             # (B, C, 256, 64, 64)
    presence_logits: torch.Tensor   # (B, C): > 0 means "class c is on slice b"


class DenoisingLoss(NamedTuple):
    """`denoising_loss` result: scalar losses and the one-step prompt predictions (for a mask loss on top)."""

    total: torch.Tensor             # sparse + dense + presence
    sparse: torch.Tensor            # MSE of the predicted clean latent (units of latent_scale)
    dense: torch.Tensor             # MSE of the dense embedding
    presence: torch.Tensor          # BCE of the presence logits (0 when no presence labels were given)
    prompts: PromptEmbeddings       # predictions from the noisy latent, (B, C, ...) shapes


class ClassPromptModule(nn.Module):
    """What every class prompt encoder variant provides (the composed model and the trainer rely on this).

    `condition` does the work that does not depend on the noise sample (the shared trunk once per slice, per-class
    heads once per class); `prompts` runs the sampler on it, so several noise samples reuse one condition.
    """

    config: ClassPromptConfig
    stochastic = True   # noise samples differ (False: `AutoMedSAM` derives uncertainty from mask probabilities)

    def condition(self, embeddings: torch.Tensor, class_indices: torch.Tensor) -> Any:
        """Embeddings (B, 256, 64, 64) and class indices (C,) -> variant-specific conditioning."""
        raise NotImplementedError

    def prompts(self, condition: Any, sample: int | None = None) -> PromptEmbeddings:
        """Prompt embeddings from a condition: deterministic for `sample=None`, else noise sample number `sample`."""
        raise NotImplementedError

    def init_dense_bias(self, no_mask_embedding: torch.Tensor) -> None:
        """Start the dense output (`dense_bias`, every variant has one) at SAM's "no mask" embedding (256,), the
        dense part of every box prompt."""
        with torch.no_grad():
            self.dense_bias.copy_(no_mask_embedding.reshape(-1))

    def presence_before_prompts(self, condition: Any) -> torch.Tensor | None:
        """(B, C) presence logits when the variant knows them before sampling prompts (so absent pairs need no
        prompts), else None."""
        return None

    def select(self, condition: Any, pairs: torch.Tensor) -> Any:
        """The condition of only the flat (b-major) pair indices `pairs`, as a batch of (len(pairs), 1) pairs; its
        prompts equal those of the same pairs in the full condition."""
        raise NotImplementedError

    def denoising_loss(self, embeddings: torch.Tensor, class_indices: torch.Tensor, target_sparse: torch.Tensor,
                       target_dense: torch.Tensor, generator: torch.Generator | None = None,
                       present: torch.Tensor | None = None) -> DenoisingLoss:
        """Training loss towards the box prompt embeddings `target_*` (see the variant for details)."""
        return self.condition_loss(self.condition(embeddings, class_indices), target_sparse, target_dense,
                                   generator, present)

    def condition_loss(self, condition: Any, target_sparse: torch.Tensor, target_dense: torch.Tensor,
                       generator: torch.Generator | None = None,
                       present: torch.Tensor | None = None) -> DenoisingLoss:
        """`denoising_loss` on a condition already computed (a trainer that also samples prompts from the same
        condition runs the shared trunk once)."""
        raise NotImplementedError

    def extend_classes(self, count: int) -> range:
        """Add `count` classes after the existing ones, keeping what was learned for those; returns new indices.

        Variants with a learned `class_embedding` table append `count` rows (N(0, 1), like a fresh table); build
        the optimiser after extending, since the table is a new parameter.
        """
        if count < 1:
            raise InputError(f"the number of classes to add must be positive, got {count}")
        old = self.class_embedding.weight
        table = nn.Embedding(old.shape[0] + count, old.shape[1]).to(old.device, old.dtype)
        with torch.no_grad():
            table.weight[: old.shape[0]] = old
        table.weight.requires_grad_(old.requires_grad)
        self.class_embedding = table
        self.config = replace(self.config, num_classes=old.shape[0] + count)
        return range(old.shape[0], old.shape[0] + count)

    def forward(self, embeddings: torch.Tensor, class_indices: torch.Tensor,
                sample: int | None = None) -> PromptEmbeddings:
        """Embeddings (B, 256, 64, 64), class indices (C,) -> `PromptEmbeddings` with (B, C, ...) shapes."""
        return self.prompts(self.condition(embeddings, class_indices), sample)

    def _check_inputs(self, embeddings: torch.Tensor, class_indices: torch.Tensor) -> None:
        expected = (self.config.prompt_dim, self.config.grid_size, self.config.grid_size)
        if embeddings.ndim != 4 or tuple(embeddings.shape[1:]) != expected:
            raise InputError(f"image embeddings must be (B, {', '.join(map(str, expected))}), "
                             f"got {tuple(embeddings.shape)}")
        if class_indices.ndim != 1 or class_indices.dtype not in (torch.int64, torch.int32):
            raise InputError(f"class indices must be a 1D integer tensor, got {class_indices.dtype} "
                             f"{tuple(class_indices.shape)}")
        if len(class_indices) and (int(class_indices.min()) < 0 or int(class_indices.max()) >= self.config.num_classes):
            raise ModelError(f"class index out of range: the class prompt encoder knows {self.config.num_classes} "
                             f"classes (0..{self.config.num_classes - 1}), got {class_indices.tolist()}")


def norm_groups(channels: int) -> int:
    """GroupNorm groups for `channels`: 32 when it divides them (the usual choice), else the largest divisor of 32."""
    return math.gcd(32, channels)


def combine_losses(sparse_error: torch.Tensor, prompts: PromptEmbeddings, target_dense: torch.Tensor,
                   present: torch.Tensor | None) -> DenoisingLoss:
    """Sparse error (B, C) per pair + dense MSE + presence BCE -> `DenoisingLoss`; absent pairs only train presence."""
    dense_error = (prompts.dense - target_dense.to(prompts.dense)).pow(2).mean(dim=(2, 3, 4)).float()
    device = sparse_error.device
    weights = torch.ones_like(dense_error) if present is None else present.to(device, torch.float32)
    count = weights.sum().clamp_min(1.0)
    sparse_loss = (sparse_error.float() * weights).sum() / count
    dense_loss = (dense_error * weights).sum() / count
    presence_loss = sparse_loss.new_zeros(())
    if present is not None:
        presence_loss = F.binary_cross_entropy_with_logits(prompts.presence_logits.float(), weights)
    return DenoisingLoss(sparse_loss + dense_loss + presence_loss, sparse_loss, dense_loss, presence_loss, prompts)


def start_noise(shape: tuple[int, ...], sample: int | None, seed: int) -> torch.Tensor:
    """Start latent shared by every item: zeros for the deterministic pass, else N(0, 1) seeded `seed + sample`.

    Drawn on the CPU so that a sample is the same on every device.
    """
    if sample is None:
        return torch.zeros(shape)
    generator = torch.Generator().manual_seed(seed + int(sample))
    return torch.randn(shape, generator=generator)
