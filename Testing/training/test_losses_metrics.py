"""Losses and metrics on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from automedsam_training.evaluation.metrics import dice_score, normalized_surface_dice, surface
from automedsam_training.training.losses import (
    UncertaintyWeighting,
    bce_loss,
    dice_loss,
    distillation_loss,
    mask_loss,
    per_sample_mean,
    presence_loss,
)

BIG = 30.0  # a logit whose sigmoid is 1 (or 0) to float precision


def test_dice_loss_hand_computed():
    target = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    # p = 0.5 everywhere: overlap 0.5, sum p 2, sum t 1 -> 1 - (2 * 0.5 + 1) / (2 + 1 + 1) = 0.5
    assert dice_loss(torch.zeros(2, 2), target).item() == pytest.approx(0.5)
    perfect = torch.where(target > 0, BIG, -BIG)
    assert dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    empty = torch.zeros(2, 2)
    assert dice_loss(torch.full((2, 2), -BIG), empty).item() == pytest.approx(0.0, abs=1e-6)   # (0 + 1) / (0 + 1)
    assert dice_loss(torch.full((2, 2), BIG), empty).item() == pytest.approx(0.8, abs=1e-6)    # 1 - 1 / (4 + 1)


def test_bce_and_mask_loss_hand_computed():
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    assert bce_loss(torch.zeros(1, 1, 2, 2), target).item() == pytest.approx(math.log(2))
    assert mask_loss(torch.zeros(1, 1, 2, 2), target).item() == pytest.approx(0.5 + math.log(2))
    assert presence_loss(torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool)).item() == pytest.approx(math.log(2))
    assert presence_loss(torch.tensor([[-BIG]]), torch.zeros(1, 1)).item() == pytest.approx(0.0, abs=1e-6)


def test_per_sample_mean_weights_pairs_then_samples():
    values = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    assert per_sample_mean(values).item() == pytest.approx((1.5 + 4.0) / 2)
    assert per_sample_mean(values, torch.tensor([[1, 0], [1, 1]])).item() == pytest.approx((1.0 + 4.0) / 2)
    assert per_sample_mean(values, torch.tensor([[0, 0], [1, 1]])).item() == pytest.approx((0.0 + 4.0) / 2)


def test_distillation_loss_hand_computed():
    sparse, target_sparse = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)          # MSE 1
    dense = torch.zeros(1, 1, 2, 2, 2)
    target_dense = torch.tensor([1.0, 3.0]).view(1, 1, 2, 1, 1)                      # errors 1 (x4), 9 (x4): 5
    assert distillation_loss(sparse, dense, target_sparse, target_dense).item() == pytest.approx(6.0)


def test_uncertainty_weighting_value_and_learned_optimum():
    weighting = UncertaintyWeighting(["a", "b"])
    losses = {"a": torch.tensor(2.0), "b": torch.tensor(4.0)}
    assert weighting(losses).item() == pytest.approx(0.5 * (2 + 4))                   # s = 0: 0.5 L each
    with torch.no_grad():
        weighting.log_variance.copy_(torch.tensor([math.log(2.0), 0.0]))
    assert weighting(losses).item() == pytest.approx(0.5 * 1.0 + 0.5 * math.log(2.0) + 2.0)
    assert weighting.weights() == pytest.approx({"a": 0.25, "b": 0.5})
    optimizer = torch.optim.SGD(weighting.parameters(), lr=0.5)
    for _ in range(300):                                                                # d/ds = 0 at s = log L
        optimizer.zero_grad()
        weighting(losses).backward()
        optimizer.step()
    assert weighting.log_variance.detach().tolist() == pytest.approx([math.log(2.0), math.log(4.0)], abs=1e-3)


def _line(start: int, stop: int, length: int = 10) -> np.ndarray:
    mask = np.zeros((1, 1, length), dtype=bool)
    mask[0, 0, start:stop] = True
    return mask


def test_dice_and_nsd_hand_computed_on_an_anisotropic_grid():
    prediction, reference = _line(0, 5), _line(1, 6)        # shifted by one 3 mm voxel
    assert dice_score(prediction, reference) == pytest.approx(2 * 4 / 10)
    # every voxel of a one-voxel-thick line is surface; 4 of 5 on each side lie on the other surface (0 mm), the
    # ends are 3 mm away: NSD(2 mm) = (4 + 4) / (5 + 5), NSD(3 mm) = 1
    assert normalized_surface_dice(prediction, reference, (1.0, 1.0, 3.0), 2.0) == pytest.approx(0.8)
    assert normalized_surface_dice(prediction, reference, (1.0, 1.0, 3.0), 3.0) == pytest.approx(1.0)
    assert normalized_surface_dice(prediction, reference, (1.0, 1.0, 1.5), 2.0) == pytest.approx(1.0)


def test_surface_of_a_cube_and_empty_conventions():
    cube = np.zeros((5, 5, 5), dtype=bool)
    cube[1:4, 1:4, 1:4] = True
    assert surface(cube).sum() == 26                          # all but the centre voxel
    assert dice_score(cube, cube) == 1.0
    assert normalized_surface_dice(cube, cube, (2.0, 1.0, 1.0)) == 1.0
    empty = np.zeros_like(cube)
    assert math.isnan(dice_score(empty, empty)) and math.isnan(normalized_surface_dice(empty, empty, (1, 1, 1)))
    assert dice_score(cube, empty) == 0.0 and normalized_surface_dice(empty, cube, (1, 1, 1)) == 0.0


@pytest.mark.parametrize("variant", ["automedsam", "official"])
def test_condition_loss_is_the_denoising_loss_on_a_shared_condition(variant):
    """The trainer computes the condition once and reuses it; that must not change the denoising loss."""
    from automedsam.model.class_prompt import build_class_prompt_encoder
    from automedsam.model.class_prompt_base import ClassPromptConfig

    config = ClassPromptConfig(variant=variant, num_classes=3, prompt_dim=32, grid_size=16, class_dim=16,
                               trunk_channels=16, trunk_mid_channels=16, head_channels=16, token_dim=32,
                               denoiser_heads=2)
    torch.manual_seed(0)
    encoder = build_class_prompt_encoder(config)
    embeddings, classes = torch.randn(2, 32, 16, 16), torch.tensor([0, 2])
    target_sparse, target_dense = torch.randn(2, 2, 2, 32), torch.randn(32, 1, 1)
    present = torch.tensor([[True, False], [True, True]])
    direct = encoder.denoising_loss(embeddings, classes, target_sparse, target_dense,
                                    torch.Generator().manual_seed(3), present)
    shared = encoder.condition_loss(encoder.condition(embeddings, classes), target_sparse, target_dense,
                                    torch.Generator().manual_seed(3), present)
    for a, b in zip(direct[:4], shared[:4], strict=True):
        assert torch.equal(a, b)
