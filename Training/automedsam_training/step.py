"""One training step's forward pass: prompts from the class prompt encoder, the mask decoder on them, the losses.

`TrainingModule` is what DDP wraps (the composed model and the learned loss weights), so gradients of every trained
parameter are synchronised by DDP's hooks. The prompts that get the mask and distillation losses come from the
deterministic sampler that inference uses (`prompts(condition)`); the denoising term trains the diffusion denoiser on
randomly noised box prompts of the same condition, so the shared trunk runs once per slice.
"""

from __future__ import annotations

import torch
from torch import nn

from automedsam.model import AutoMedSAM

from .losses import UncertaintyWeighting, distillation_loss, mask_loss, per_sample_mean, presence_loss

LOSS_TERMS = ("mask", "presence", "distillation", "denoising")


class TrainingModule(nn.Module):
    """The model and the uncertainty weights; `forward(batch)` returns the scalar losses and their total."""

    def __init__(self, model: AutoMedSAM, model_indices: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.weighting = UncertaintyWeighting(LOSS_TERMS)
        self.register_buffer("model_indices", model_indices.long(), persistent=False)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Batch of B samples x K classes (see `SamplePlan.__getitem__`) -> {"mask", ..., "total"} scalars."""
        embeddings, present, usable = batch["embedding"], batch["present"], batch["usable"]
        classes = self.model_indices[batch["classes"]]                       # (B, K) model class indices
        b, k = classes.shape
        with torch.no_grad():
            target_sparse, target_dense = self.model.box_prompts(batch["boxes"].flatten(0, 1))
        target_sparse = target_sparse.view(b, k, *target_sparse.shape[1:]).to(embeddings.dtype)
        target_dense = target_dense[:1].unsqueeze(0).to(embeddings.dtype)  # SAM's box dense embedding is constant
        prompts, denoising = self._prompts(embeddings, classes, target_sparse, target_dense, present,
                                           batch["noise_seed"])
        sparse, dense, presence_logits = prompts
        m = batch["masks"].shape[1]
        logits, _ = self.model.decode(embeddings, sparse[:, :m].flatten(0, 1), dense[:, :m].flatten(0, 1))
        logits = logits.view(b, m, *logits.shape[-2:])
        losses = {
            "mask": per_sample_mean(mask_loss(logits, batch["masks"]), usable[:, :m]),
            "presence": per_sample_mean(presence_loss(presence_logits, present), usable),
            "distillation": per_sample_mean(distillation_loss(sparse, dense, target_sparse, target_dense), present),
            "denoising": denoising,
        }
        losses["total"] = self.weighting(losses)
        return losses

    def _prompts(self, embeddings: torch.Tensor, classes: torch.Tensor, target_sparse: torch.Tensor,
                 target_dense: torch.Tensor, present: torch.Tensor,
                 noise_seeds: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        """Per sample: condition once, inference prompts and the denoising term; stacked to (B, K, ...)."""
        encoder = self.model.class_prompt_encoder
        sparse, dense, presence, denoising = [], [], [], []
        for i in range(classes.shape[0]):
            condition = encoder.condition(embeddings[i:i + 1], classes[i])
            prompt = encoder.prompts(condition)
            generator = torch.Generator().manual_seed(int(noise_seeds[i]))
            term = encoder.condition_loss(condition, target_sparse[i:i + 1], target_dense, generator, present[i:i + 1])
            sparse.append(prompt.sparse)
            dense.append(prompt.dense)
            presence.append(prompt.presence_logits)
            denoising.append(term.sparse)
        stacked = (torch.cat(sparse), torch.cat(dense), torch.cat(presence))
        return stacked, torch.stack(denoising).float().mean()
