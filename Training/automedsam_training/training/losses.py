"""Training losses and their combination (fixed weights, or learned uncertainty weights).

Per (slice, class) pair: Dice + BCE on the mask logits, BCE on the presence logit and, optionally, distillation of
the generated sparse and dense prompt embeddings towards SAM's prompt encoder output for the ground-truth box and the
class prompt encoder's own denoising term (both off by default: imitating box prompts teaches absolute positions,
see docs/model-card.md). Every loss is first averaged over the pairs of one sample (a slice with its
classes) and then over the samples, so that splitting a batch over several processes (DDP) averages the same
numbers. `FixedWeighting` sums the terms with configured weights; `UncertaintyWeighting` (the first recipe's
choice) combines them with one learned log-variance s_i each,
total = sum_i 0.5 * exp(-s_i) * L_i + 0.5 * s_i (Kendall et al. 2018, the "uncertainty-aware joint optimisation"
of the AutoMedSAM paper): a term the model cannot reduce gets a lower weight instead of dominating.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F  # noqa: N812 (the conventional alias)
from torch import nn

DICE_SMOOTH = 1.0


def per_sample_mean(values: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """(B, K) pair values -> scalar: weighted mean over each sample's pairs, then mean over samples.

    A sample whose weights are all zero contributes 0 (it still counts as a sample).
    """
    values = values.float()
    if weights is None:
        return values.mean(dim=1).mean()
    weights = weights.to(values)
    per_sample = (values * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
    return per_sample.mean()


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = DICE_SMOOTH) -> torch.Tensor:
    """Soft Dice loss per pair: 1 - (2 sum(p t) + s) / (sum(p) + sum(t) + s); logits/target (..., H, W) -> (...).

    With the smoothing term an empty target and an empty prediction give 0, an empty target and a full prediction
    nearly 1.
    """
    probabilities = torch.sigmoid(logits.float())
    target = target.float()
    overlap = (probabilities * target).sum(dim=(-2, -1))
    total = probabilities.sum(dim=(-2, -1)) + target.sum(dim=(-2, -1))
    return 1.0 - (2.0 * overlap + smooth) / (total + smooth)


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits, averaged over the pixels of each pair: (..., H, W) -> (...)."""
    return F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none").mean(dim=(-2, -1))


def mask_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice + BCE per pair, (B, M, H, W) -> (B, M)."""
    return dice_loss(logits, target) + bce_loss(logits, target)


def presence_loss(logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """BCE of presence logits per pair, (B, K) -> (B, K)."""
    return F.binary_cross_entropy_with_logits(logits.float(), present.float(), reduction="none")


def distillation_loss(sparse: torch.Tensor, dense: torch.Tensor, target_sparse: torch.Tensor,
                      target_dense: torch.Tensor) -> torch.Tensor:
    """MSE of sparse (B, K, 2, D) and dense (B, K, D, G, G) prompts to the box prompt's, summed, per pair (B, K).

    `target_dense` broadcasts (SAM's dense box embedding is one vector for every pixel).
    """
    sparse_error = (sparse.float() - target_sparse.float()).pow(2).mean(dim=(-2, -1))
    dense_error = (dense.float() - target_dense.float()).pow(2).mean(dim=(-3, -2, -1))
    return sparse_error + dense_error


class FixedWeighting(nn.Module):
    """total = sum_i w_i L_i with configured weights (no parameters; a zero weight leaves a term out)."""

    def __init__(self, weights: Mapping[str, float]) -> None:
        super().__init__()
        self.fixed = {name: float(weight) for name, weight in weights.items() if weight}
        self.names = tuple(self.fixed)

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scalar total of the named scalar losses (a term not computed this step, e.g. the mask during
        `optim.head_steps`, counts 0)."""
        terms = [weight * losses[name].float() for name, weight in self.fixed.items() if name in losses]
        return torch.stack(terms).sum()

    def weights(self) -> dict[str, float]:
        """The configured weight of each term."""
        return dict(self.fixed)


class UncertaintyWeighting(nn.Module):
    """Learned log-variances s_i, one per loss term: total = sum_i 0.5 exp(-s_i) L_i + 0.5 s_i."""

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__()
        self.names = tuple(names)
        self.log_variance = nn.Parameter(torch.zeros(len(self.names)))

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scalar total of the named scalar losses (a term not computed this step counts 0)."""
        given = torch.tensor([name in losses for name in self.names], device=self.log_variance.device)
        stacked = torch.stack([losses[name].float() if name in losses else self.log_variance.new_zeros(())
                               for name in self.names])
        return ((0.5 * torch.exp(-self.log_variance) * stacked + 0.5 * self.log_variance) * given).sum()

    def weights(self) -> dict[str, float]:
        """The current effective weight 0.5 exp(-s_i) of each term."""
        values = (0.5 * torch.exp(-self.log_variance.detach())).tolist()
        return dict(zip(self.names, values, strict=True))
