"""The class prompt encoder of this project (`variant="automedsam"`) and the builder of every variant.

Shared configuration, outputs and interface: `class_prompt_base.py`; the other variants: `class_prompt_anatomy.py`,
`class_prompt_official.py`.

Architecture (`variant="automedsam"`, `ClassPromptEncoder`):
- a shared trunk, a two-level residual conv U-Net with GroupNorm, runs ONCE per slice on the (B, 256, 64, 64)
  embedding and gives features (B, h, 64, 64);
- per class, light heads run batched over all (slice, class) pairs, shape (B*C, ...): FiLM of the trunk features by a
  learned class embedding and one residual 3x3 conv (the class features), a presence MLP on their pooled values, and
  the keys/values the denoiser attends to;
- a diffusion-style denoiser on the sparse prompt latent (the 2 tokens, divided by `latent_scale`): a small token
  transformer that cross-attends to the class features and predicts the clean latent x0 from a noisy one at time
  t in (0, 1] (cosine schedule). Inference is deterministic: DDIM (eta = 0) over `sampling_steps` fixed times from a
  zero start latent. `sample=n` starts from Gaussian noise seeded with `sample_seed + n`, the same for every slice and
  class, so results never depend on batch size or on which other classes run;
- the dense embedding is computed once from the class features modulated by the final tokens, plus a learned
  per-channel bias (initialise it with SAM's "no mask" embedding via `init_dense_bias`: a box prompt's dense embedding
  is exactly that constant).

Training (`denoising_loss`): the target is SAM's prompt encoder output for the ground-truth box of class c on slice
b; its sparse tokens are noised at a random time, the denoiser predicts them back, the dense head is regressed to the
target dense embedding, and a BCE term trains the presence logit when presence labels are given.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812 (the conventional alias)
from torch import nn

from .class_prompt_anatomy import AnatomyClassPromptEncoder
from .class_prompt_base import (
    ClassPromptConfig,
    ClassPromptModule,
    DenoisingLoss,
    PromptEmbeddings,
    combine_losses,
    norm_groups,
    start_noise,
)
from .class_prompt_official import OfficialClassPromptEncoder

_SCHEDULE_OFFSET = 0.008   # cosine schedule offset s (Nichol & Dhariwal)
_MIN_TRAIN_TIME = 1e-3     # training times are drawn from [_MIN_TRAIN_TIME, 1]


def alpha_bar(t: torch.Tensor | float) -> torch.Tensor | float:
    """Cosine noise schedule: fraction of signal variance kept at time t in [0, 1] (1 at t=0, ~0 at t=1)."""
    s = _SCHEDULE_OFFSET
    norm = math.cos(s / (1 + s) * math.pi / 2) ** 2
    if isinstance(t, torch.Tensor):
        return (torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2 / norm).clamp(0.0, 1.0)
    return min(max(math.cos((t + s) / (1 + s) * math.pi / 2) ** 2 / norm, 0.0), 1.0)


def _random(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device,
            normal: bool) -> torch.Tensor:
    """Uniform [0, 1) or standard normal numbers from `generator` (on its device), moved to `device`."""
    source = generator.device if generator is not None else device
    draw = torch.randn if normal else torch.rand
    return draw(shape, generator=generator, device=source).to(device)


def sinusoidal_embedding(values: torch.Tensor, dim: int) -> torch.Tensor:
    """(N,) real values -> (N, dim) sin/cos features at geometric frequencies (transformer timestep encoding)."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, device=values.device) / half)
    angles = values.float()[:, None] * frequencies[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def position_grid(size: int, dim: int) -> torch.Tensor:
    """Fixed 2D sinusoidal position features of a size x size grid: (size * size, dim), row-major (y, x)."""
    centres = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 100.0
    per_axis = sinusoidal_embedding(centres, dim // 2)                     # (size, dim / 2)
    y = per_axis[:, None, :].expand(size, size, dim // 2)
    x = per_axis[None, :, :].expand(size, size, dim // 2)
    return torch.cat([y, x], dim=-1).reshape(size * size, dim)


class ResidualBlock(nn.Module):
    """GroupNorm-SiLU-Conv3x3 twice with a residual connection (1x1 projection when the width changes)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(norm_groups(in_channels), in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(norm_groups(out_channels), out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in, H, W) -> (N, out, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class SharedTrunk(nn.Module):
    """Class-independent features of a slice, computed once: (B, 256, 64, 64) -> (B, head_channels, 64, 64)."""

    def __init__(self, config: ClassPromptConfig) -> None:
        super().__init__()
        width, mid = config.trunk_channels, config.trunk_mid_channels
        self.stem = nn.Conv2d(config.prompt_dim, width, 1)
        self.encode = ResidualBlock(width, width)
        self.down = nn.Conv2d(width, mid, 3, stride=2, padding=1)
        self.middle = ResidualBlock(mid, mid)
        self.up = nn.Conv2d(mid, width, 1)
        self.out = nn.Sequential(nn.GroupNorm(norm_groups(width), width), nn.SiLU(),
                                 nn.Conv2d(width, config.head_channels, 1))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, 256, 64, 64) -> (B, head_channels, 64, 64): a two-level U-Net (64 and 32 px) with a skip."""
        skip = self.encode(self.stem(embeddings))
        middle = self.up(self.middle(self.down(skip)))
        return self.out(skip + F.interpolate(middle, size=skip.shape[-2:], mode="nearest"))


class DenoiserLayer(nn.Module):
    """Pre-norm token layer: self-attention between the 2 tokens, cross-attention to class features, MLP."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.self_out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.cross_out = nn.Linear(dim, dim)
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, dim) -> (N, heads, L, dim / heads)."""
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def keys_values(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class features (N, L, dim) -> keys, values (N, heads, L, dim / heads); computed once per class."""
        return self._heads(self.key(memory)), self._heads(self.value(memory))

    def forward(self, tokens: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """(N, T, dim) tokens -> (N, T, dim)."""
        q, k, v = self._heads(self.qkv(self.norm1(tokens))).chunk(3, dim=-1)
        tokens = tokens + self.self_out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))
        q = self._heads(self.query(self.norm2(tokens)))
        attended = F.scaled_dot_product_attention(q, keys, values).transpose(1, 2).flatten(2)
        tokens = tokens + self.cross_out(attended)
        return tokens + self.mlp(self.norm3(tokens))


class TokenDenoiser(nn.Module):
    """Predicts the clean sparse latent x0 (N, 2, 256) from a noisy one at time t, given class features."""

    def __init__(self, config: ClassPromptConfig) -> None:
        super().__init__()
        dim = config.token_dim
        self.latent_in = nn.Linear(config.prompt_dim, dim)
        self.token_role = nn.Parameter(0.02 * torch.randn(2, dim))
        self.time_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.layers = nn.ModuleList(DenoiserLayer(dim, config.denoiser_heads) for _ in range(config.denoiser_depth))
        self.out_norm = nn.LayerNorm(dim)
        self.latent_out = nn.Linear(dim, config.prompt_dim)

    def forward(self, latent: torch.Tensor, t: torch.Tensor, class_code: torch.Tensor,
                memory: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """latent (N, 2, 256), t (N,) in (0, 1], class_code (N, dim), per-layer keys/values -> x0 (N, 2, 256)."""
        step = self.time_mlp(sinusoidal_embedding(t * 1000.0, class_code.shape[-1]).to(class_code.dtype))
        tokens = self.latent_in(latent) + self.token_role + (step + class_code)[:, None, :]
        for layer, (keys, values) in zip(self.layers, memory, strict=True):
            tokens = layer(tokens, keys, values)
        return self.latent_out(self.out_norm(tokens))


class ClassCondition(NamedTuple):
    """Sample-independent part of `ClassPromptEncoder`: everything per (slice, class) pair, flattened b-major."""

    batch: tuple[int, int]                              # (B, C)
    features: torch.Tensor                              # (B*C, head_channels, 64, 64) class features
    class_code: torch.Tensor                            # (B*C, token_dim)
    memory: list[tuple[torch.Tensor, torch.Tensor]]     # per denoiser layer: keys, values (B*C, heads, L, d)
    presence_logits: torch.Tensor                       # (B, C)


class ClassPromptEncoder(ClassPromptModule):
    """The class prompt encoder of this project (see the module docstring); `variant="automedsam"`."""

    def __init__(self, config: ClassPromptConfig) -> None:
        super().__init__()
        self.config = config
        width, dim = config.head_channels, config.token_dim
        self.class_embedding = nn.Embedding(config.num_classes, config.class_dim)
        self.trunk = SharedTrunk(config)
        self.film = nn.Linear(config.class_dim, 2 * width)
        self.head_norm = nn.GroupNorm(norm_groups(width), width)
        self.head_conv = nn.Conv2d(width, width, 3, padding=1)
        self.class_code = nn.Linear(config.class_dim, dim)
        self.presence = nn.Sequential(nn.Linear(2 * width + dim, dim), nn.SiLU(), nn.Linear(dim, 1))
        self.memory_in = nn.Linear(width, dim)
        self.memory_norm = nn.LayerNorm(dim)
        self.register_buffer("memory_position", position_grid(config.grid_size // 2, dim), persistent=False)
        self.denoiser = TokenDenoiser(config)
        self.dense_film = nn.Linear(2 * config.prompt_dim, 2 * width)
        self.dense_norm = nn.GroupNorm(norm_groups(width), width)
        self.dense_out = nn.Conv2d(width, config.prompt_dim, 1)
        self.dense_bias = nn.Parameter(torch.zeros(config.prompt_dim))
        nn.init.zeros_(self.dense_out.weight)
        nn.init.zeros_(self.dense_out.bias)

    def condition(self, embeddings: torch.Tensor, class_indices: torch.Tensor) -> ClassCondition:
        """Trunk once per slice, class heads once per (slice, class): (B, 256, 64, 64), (C,) -> `ClassCondition`."""
        self._check_inputs(embeddings, class_indices)
        b, c = embeddings.shape[0], class_indices.shape[0]
        trunk = self.trunk(embeddings)                                          # (B, h, 64, 64)
        codes = self.class_embedding(class_indices)                             # (C, class_dim)
        gamma, beta = self.film(codes).chunk(2, dim=-1)                         # (C, h) each
        features = trunk[:, None] * (1 + gamma[None, :, :, None, None]) + beta[None, :, :, None, None]
        features = features.flatten(0, 1)                                       # (B*C, h, 64, 64)
        features = features + self.head_conv(F.silu(self.head_norm(features)))
        class_code = self.class_code(codes).repeat(b, 1)                        # (B*C, d), b-major
        pooled = torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3)), class_code], dim=1)
        presence = self.presence(pooled).view(b, c)
        memory = self.memory_in(F.avg_pool2d(features, 2).flatten(2).transpose(1, 2))   # (B*C, 32*32, d)
        memory = self.memory_norm(memory + self.memory_position.to(memory.dtype))
        keys_values = [layer.keys_values(memory) for layer in self.denoiser.layers]
        return ClassCondition((b, c), features, class_code, keys_values, presence)

    def presence_before_prompts(self, condition: ClassCondition) -> torch.Tensor:
        """Presence comes from the class heads, before any sampling."""
        return condition.presence_logits

    def select(self, condition: ClassCondition, pairs: torch.Tensor) -> ClassCondition:
        """Only the pairs `pairs` (flat b-major indices): every tensor of a condition is per pair already."""
        memory = [(keys[pairs], values[pairs]) for keys, values in condition.memory]
        return ClassCondition((len(pairs), 1), condition.features[pairs], condition.class_code[pairs], memory,
                              condition.presence_logits.flatten()[pairs, None])

    def prompts(self, condition: ClassCondition, sample: int | None = None) -> PromptEmbeddings:
        """Deterministic DDIM sampling of the sparse latent, then the dense head; (B, C, ...) outputs."""
        n = condition.features.shape[0]
        start = start_noise((2, self.config.prompt_dim), sample, self.config.sample_seed)
        latent = start.to(condition.features).expand(n, -1, -1)
        steps = self.config.sampling_steps
        times = [1.0 - i / steps for i in range(steps + 1)]  # plain floats: constants in an exported graph
        for step, (t, t_next) in enumerate(zip(times[:-1], times[1:], strict=True)):
            x0 = self.denoiser(latent, condition.features.new_full((n,), t), condition.class_code, condition.memory)
            if step + 1 < self.config.sampling_steps:
                keep, keep_next = alpha_bar(t), alpha_bar(t_next)
                noise = (latent - math.sqrt(keep) * x0) / math.sqrt(1.0 - keep)
                latent = math.sqrt(keep_next) * x0 + math.sqrt(1.0 - keep_next) * noise
        return self._prompt_embeddings(condition, x0)

    def _prompt_embeddings(self, condition: ClassCondition, x0: torch.Tensor) -> PromptEmbeddings:
        """Clean latent (B*C, 2, 256) -> sparse tokens and the dense embedding, reshaped to (B, C, ...)."""
        b, c = condition.batch
        gamma, beta = self.dense_film(x0.flatten(1))[:, :, None, None].chunk(2, dim=1)
        hidden = F.silu(self.dense_norm(condition.features) * (1 + gamma) + beta)
        dense = self.dense_out(hidden) + self.dense_bias[None, :, None, None].to(hidden.dtype)
        sparse = x0 * self.config.latent_scale
        return PromptEmbeddings(sparse.unflatten(0, (b, c)), dense.unflatten(0, (b, c)), condition.presence_logits)

    def denoising_loss(self, embeddings: torch.Tensor, class_indices: torch.Tensor, target_sparse: torch.Tensor,
                       target_dense: torch.Tensor, generator: torch.Generator | None = None,
                       present: torch.Tensor | None = None) -> DenoisingLoss:
        """One diffusion training step's loss for B slices x C classes.

        embeddings (B, 256, 64, 64); class_indices (C,); target_sparse (B, C, 2, 256): SAM's prompt encoder output
        for the ground-truth box of class c on slice b; target_dense broadcastable to (B, C, 256, 64, 64) (e.g. the
        box's dense embedding (B, 256, 64, 64)[:, None], or SAM's no-mask embedding (256, 1, 1)); `generator` makes
        the random times and noise reproducible; `present` (B, C) bool: pairs without the class (no box) are left
        out of the sparse/dense terms and train the presence logit through a BCE term. The times t ~ U[1e-3, 1] and
        the noise are drawn per pair; the denoiser predicts x0 from sqrt(abar) x0 + sqrt(1 - abar) noise.
        """
        return self.condition_loss(self.condition(embeddings, class_indices), target_sparse, target_dense,
                                   generator, present)

    def condition_loss(self, condition: ClassCondition, target_sparse: torch.Tensor, target_dense: torch.Tensor,
                       generator: torch.Generator | None = None,
                       present: torch.Tensor | None = None) -> DenoisingLoss:
        """`denoising_loss` on a condition from `condition(embeddings, class_indices)` (shapes as there)."""
        b, c = condition.batch
        x0 = (target_sparse.to(condition.features) / self.config.latent_scale).reshape(b * c, 2, -1)
        device = condition.features.device
        t = _MIN_TRAIN_TIME + (1 - _MIN_TRAIN_TIME) * _random((b * c,), generator, device, normal=False)
        noise = _random(tuple(x0.shape), generator, device, normal=True).to(x0.dtype)
        keep = alpha_bar(t)[:, None, None].to(x0.dtype)
        noisy = keep.sqrt() * x0 + (1 - keep).sqrt() * noise
        predicted = self.denoiser(noisy, t.to(x0.dtype), condition.class_code, condition.memory)
        prompts = self._prompt_embeddings(condition, predicted)
        sparse_error = (predicted - x0).pow(2).mean(dim=(1, 2)).view(b, c)
        return combine_losses(sparse_error, prompts, target_dense, present)


VARIANT_ENCODERS: dict[str, type[ClassPromptModule]] = {
    "automedsam": ClassPromptEncoder, "official": OfficialClassPromptEncoder, "anatomy": AnatomyClassPromptEncoder,
}


def build_class_prompt_encoder(config: ClassPromptConfig) -> ClassPromptModule:
    """The class prompt encoder of `config.variant` (untrained)."""
    return VARIANT_ENCODERS[config.variant](config)
