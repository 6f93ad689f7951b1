"""One training step's forward pass: prompts from the class prompt encoder, the mask decoder on them, the losses.

`TrainingModule` is what DDP wraps (the composed model and the loss weighting), so gradients of every trained
parameter are synchronised by DDP's hooks. The prompts that get the mask loss come from the deterministic path that
inference uses (`prompts(condition)`), for the first `data.mask_pairs` pairs of each sample. With
`loss.presence_all_classes` the presence logits of every trained class are computed on each sampled slice (the
shared trunk runs once per slice) and all of them get the presence loss. With `loss.presence_prior` each class's
training log-odds of presence is added to its logit in the loss (logit adjustment, Menon et al. 2021): a class prior
alone no longer lowers the loss (the first anatomy runs learned only that: the same score on every slice), and the
model's own logit, used at inference, is the image's evidence. `augment.embedding_noise` perturbs the cached
embeddings at each step (training mode only). During `optim.head_steps` (`heads_only`) the mask
loss and the decoder are skipped: presence and coarse maps first learn what the slice shows, cheaply. The optional
box distillation and denoising terms (`[loss]` weights) train towards SAM's prompt for the ground-truth box. The
coarse term (`loss.coarse`, anatomy encoders with `coarse_maps`) trains the coarse map of every labelled class of
each sampled slice on its label map, pooled to the embedding grid.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812 (the conventional alias)
from torch import nn

from automedsam.errors import InputError
from automedsam.model import AutoMedSAM

from ..config import LossConfig
from .losses import (
    FixedWeighting,
    UncertaintyWeighting,
    distillation_loss,
    mask_loss,
    per_sample_mean,
    presence_loss,
)

LOSS_TERMS = ("mask", "presence", "distillation", "denoising", "coarse")


class SamplePrompts(NamedTuple):
    """Prompts of a batch: (B, P, ...) for the P pairs that need them, presence (B, C or K), denoising term."""

    sparse: torch.Tensor
    dense: torch.Tensor
    presence_logits: torch.Tensor
    denoising: torch.Tensor
    coarse: torch.Tensor | None = None   # (B, C, G, G) coarse logits of every trained class, when there are any


def make_weighting(loss: LossConfig) -> nn.Module:
    """The module that sums the loss terms: learned uncertainty weights or the configured fixed weights."""
    weights = {name: getattr(loss, name) for name in LOSS_TERMS}
    if loss.uncertainty_weighting:
        return UncertaintyWeighting([name for name, weight in weights.items() if weight])
    return FixedWeighting(weights)


class TrainingModule(nn.Module):
    """The model and the loss weighting; `forward(batch)` returns the scalar losses and their total."""

    def __init__(self, model: AutoMedSAM, model_indices: torch.Tensor, loss: LossConfig | None = None,
                 presence_log_odds: torch.Tensor | None = None, embedding_noise: float = 0.0) -> None:
        super().__init__()
        self.embedding_noise = embedding_noise   # `augment.embedding_noise`, applied in training mode only
        self.model = model
        self.loss = loss or LossConfig()
        self.weighting = make_weighting(self.loss)
        self.register_buffer("model_indices", model_indices.long(), persistent=False)
        if self.loss.presence_prior and presence_log_odds is None:
            raise InputError("loss.presence_prior needs the classes' presence log-odds of the training set")
        prior = presence_log_odds if self.loss.presence_prior else torch.zeros(len(model_indices))
        self.register_buffer("presence_log_odds", prior.float(), persistent=False)
        self.heads_only = False   # set by the trainer during `optim.head_steps`: presence and coarse maps alone

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Batch of B samples x K classes (see `SamplePlan.__getitem__`) -> {"mask", ..., "total"} scalars."""
        embeddings, present, usable = self._noised(batch["embedding"]), batch["present"], batch["usable"]
        b, k = batch["classes"].shape
        m = batch["masks"].shape[1]
        targets = self._box_targets(batch, embeddings.dtype) if self._needs_boxes else None
        decode = bool(self.loss.mask) and not self.heads_only   # else presence and coarse maps alone: no decoder,
        prompts = self._prompts(embeddings, batch, targets,      # and no pair prompts unless distillation needs them
                                k if self.loss.distillation else m if decode else 0)
        losses = {}
        if decode:
            logits, _ = self.model.decode(embeddings, prompts.sparse[:, :m].flatten(0, 1),
                                          prompts.dense[:, :m].flatten(0, 1))
            logits = logits.view(b, m, *logits.shape[-2:])
            losses["mask"] = per_sample_mean(mask_loss(logits, batch["masks"]), usable[:, :m])
        if self.loss.presence_all_classes:
            presence = prompts.presence_logits + self.presence_log_odds
            losses["presence"] = self._presence(presence, batch["all_present"], batch["all_usable"])
        else:
            presence = prompts.presence_logits + self.presence_log_odds[batch["classes"]]
            losses["presence"] = self._presence(presence, present, usable)
        if self.loss.distillation:
            losses["distillation"] = per_sample_mean(distillation_loss(prompts.sparse, prompts.dense, *targets),
                                                     present)
        if self.loss.denoising:
            losses["denoising"] = prompts.denoising
        if self.loss.coarse:
            losses["coarse"] = self._coarse(prompts.coarse, batch["label_map"], batch["all_usable"])
        losses["total"] = self.weighting(losses)
        return losses

    def _noised(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The embeddings plus Gaussian noise scaled by each channel's spatial standard deviation (training only), so
        that the prompt does not hinge on differences as small as those between fp32 and bf16 encoders."""
        if not self.training or not self.embedding_noise:
            return embeddings
        scale = embeddings.std(dim=(-2, -1), keepdim=True) * self.embedding_noise
        return embeddings + torch.randn_like(embeddings) * scale

    def _presence(self, logits: torch.Tensor, present: torch.Tensor, usable: torch.Tensor) -> torch.Tensor:
        """Presence BCE over the usable pairs; balanced: present and absent pairs weigh half each, so that the many
        absent pairs do not teach the head to say "absent" everywhere."""
        values = presence_loss(logits, present)
        if not self.loss.presence_balance:
            return per_sample_mean(values, usable)
        return 0.5 * (per_sample_mean(values, usable & present) + per_sample_mean(values, usable & ~present))

    def _coarse(self, logits: torch.Tensor | None, label_map: torch.Tensor, usable: torch.Tensor) -> torch.Tensor:
        """Dice + BCE of each class's coarse logits (B, C, G, G) against the fraction of each grid cell it covers in
        the label map (B, S, S) of class index + 1, over the classes labelled on each slice. With
        `loss.coarse_exclusive`, a class not labelled on a slice (a case without its labels, a sliver) still learns
        that it is not where another class is: BCE towards 0, weighted by the other classes' share of each cell."""
        if logits is None:
            raise InputError("loss.coarse needs a class prompt encoder with coarse maps (model.class_prompt: "
                             "variant = \"anatomy\", coarse_maps = 1) and loss.presence_all_classes = true")
        values = torch.arange(1, logits.shape[1] + 1, device=label_map.device)
        one_hot = (label_map[:, None] == values[None, :, None, None]).to(logits.dtype)
        target = F.adaptive_avg_pool2d(one_hot, logits.shape[-2:])
        loss = per_sample_mean(mask_loss(logits, target), usable)
        if not self.loss.coarse_exclusive:
            return loss
        others = F.adaptive_avg_pool2d((label_map[:, None] > 0).to(logits.dtype), logits.shape[-2:]) - target
        cover = others.sum(dim=(-2, -1))
        negative = (F.softplus(logits.float()) * others).sum(dim=(-2, -1)) / cover.clamp_min(1.0)
        return loss + per_sample_mean(negative, ~usable & (cover > 0))

    @property
    def _needs_boxes(self) -> bool:
        return bool(self.loss.distillation or self.loss.denoising)

    def _box_targets(self, batch: dict[str, torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM's prompt for each pair's ground-truth box: sparse (B, K, 2, D), dense (1, 1, D, G, G) (constant)."""
        b, k = batch["classes"].shape
        with torch.no_grad():
            sparse, dense = self.model.box_prompts(batch["boxes"].flatten(0, 1))
        return sparse.view(b, k, *sparse.shape[1:]).to(dtype), dense[:1].unsqueeze(0).to(dtype)

    def _prompts(self, embeddings: torch.Tensor, batch: dict[str, torch.Tensor],
                 targets: tuple[torch.Tensor, torch.Tensor] | None, count: int) -> SamplePrompts:
        """Per sample: the trunk once, prompts of its first `count` pairs, presence, the denoising term."""
        parts = [self._sample(embeddings[i:i + 1], batch, i, targets, count) for i in range(embeddings.shape[0])]
        sparse, dense, presence, denoising, coarse = zip(*parts, strict=True)
        return SamplePrompts(torch.cat(sparse), torch.cat(dense), torch.cat(presence),
                             torch.stack(denoising).float().mean(), None if coarse[0] is None else torch.cat(coarse))

    def _sample(self, embedding: torch.Tensor, batch: dict[str, torch.Tensor], i: int,
                targets: tuple[torch.Tensor, torch.Tensor] | None, count: int) -> SamplePrompts:
        encoder = self.model.class_prompt_encoder
        data_classes = batch["classes"][i]
        every = self.loss.presence_all_classes
        condition = encoder.condition(embedding, self.model_indices if every else self.model_indices[data_classes])
        positions = data_classes if every else torch.arange(len(data_classes), device=embedding.device)
        prompt = encoder.prompts(encoder.select(condition, positions[:count]))
        presence = encoder.presence_before_prompts(condition)
        if presence is None:
            presence = encoder.prompts(condition).presence_logits
        denoising = embedding.new_zeros(())
        if self.loss.denoising:
            generator = torch.Generator().manual_seed(int(batch["noise_seed"][i]))
            selected = encoder.select(condition, positions)
            denoising = encoder.condition_loss(selected, targets[0][i][:, None], targets[1], generator,
                                               batch["present"][i][:, None]).sparse
        coarse = getattr(condition, "coarse_logits", None) if every else None
        return SamplePrompts(prompt.sparse.transpose(0, 1), prompt.dense.transpose(0, 1), presence, denoising, coarse)
