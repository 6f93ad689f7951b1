"""The anatomy recipe's training pieces: field-of-view and intensity augmentation, the loss terms and their
weights (box distillation and denoising off by default), presence on every class of a sampled slice."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate
from training_fakes import GRID, tiny_config, tiny_model

from automedsam.errors import InputError
from automedsam_training.config import LossConfig, load_config
from automedsam_training.data.augment import AugmentConfig, augment_slice
from automedsam_training.training.losses import FixedWeighting, UncertaintyWeighting
from automedsam_training.training.step import TrainingModule, make_weighting


def _slice() -> tuple[np.ndarray, np.ndarray]:
    image = np.full((60, 80), 10.0, dtype=np.float32)
    labels = np.zeros((60, 80), dtype=np.uint8)
    image[15:45, 20:60], labels[15:45, 20:60] = 200.0, 1
    return image, labels


def test_zoom_out_shrinks_the_body_and_keeps_labels_on_it():
    image, labels = _slice()
    config = AugmentConfig(variants=1, rotation_deg=0, scale=(0.5, 0.5), translation=0, noise_std=0)
    warped, warped_labels = augment_slice(image, labels, config, np.random.default_rng(0))
    assert warped.shape == image.shape and warped_labels.dtype == labels.dtype
    assert 0.2 < warped_labels.sum() / labels.sum() < 0.3                      # half the size in each axis
    assert warped[warped_labels == 1].min() > 100                              # the labels follow the image


def test_crop_blanks_outside_a_box_and_intensity_stays_in_range():
    image, labels = _slice()
    config = AugmentConfig(variants=1, rotation_deg=0, scale=(1, 1), translation=0, noise_std=0, crop=1.0,
                           crop_max=0.45, intensity_curve=0.2, bias_field=0.3)
    cut = [augment_slice(image, labels, config, np.random.default_rng(seed)) for seed in range(8)]
    assert any(lab.sum() < labels.sum() for _, lab in cut)                        # some crop reached the organ
    assert all(w.min() >= 0 and w.max() <= 255 for w, _ in cut)
    again = augment_slice(image, labels, config, np.random.default_rng(3))
    assert np.array_equal(again[0], cut[3][0])                                  # seeded


@pytest.mark.parametrize("changes", [{"crop": 1.5}, {"aspect": -0.1}, {"bias_field": -1.0}, {"crop_max": 0.6},
                                     {"embedding_noise": -0.1}])
def test_bad_augmentation_settings_are_input_errors(changes):
    with pytest.raises(InputError):
        AugmentConfig(**changes)


def test_loss_defaults_and_weighting():
    loss = LossConfig()
    assert (loss.distillation, loss.denoising, loss.uncertainty_weighting) == (0.0, 0.0, False)
    fixed = make_weighting(LossConfig(presence=0.5))
    assert isinstance(fixed, FixedWeighting) and fixed.weights() == {"mask": 1.0, "presence": 0.5}
    total = fixed({"mask": torch.tensor(2.0), "presence": torch.tensor(4.0)})
    assert total.item() == pytest.approx(4.0)
    learned = make_weighting(LossConfig(distillation=1.0, uncertainty_weighting=True))
    assert isinstance(learned, UncertaintyWeighting) and learned.names == ("mask", "presence", "distillation")
    with pytest.raises(InputError, match="must not be negative"):
        load_config(None, ["loss.mask=-1"])


def _batch(classes: list[list[int]], present: list[list[bool]], masks: int) -> dict[str, torch.Tensor]:
    items = []
    for row, flags in zip(classes, present, strict=True):
        items.append({"embedding": torch.randn(32, 16, 16), "classes": torch.tensor(row),
                      "present": torch.tensor(flags), "usable": torch.ones(len(row), dtype=torch.bool),
                      "all_present": torch.tensor([flags[row.index(c)] if c in row else False for c in range(3)]),
                      "all_usable": torch.ones(3, dtype=torch.bool),
                      "boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]] * len(row)),
                      "masks": torch.zeros(masks, 64, 64), "noise_seed": torch.tensor(1)})
    return default_collate(items)


@pytest.mark.parametrize("variant", ["anatomy", "automedsam"])
def test_presence_covers_every_class_and_optional_terms_switch_on(variant):
    model = tiny_model(("liver", "spleen", "stomach"), variant=variant)
    batch = _batch([[0, 2], [1, 0]], [[True, False], [True, True]], masks=2)
    module = TrainingModule(model, torch.arange(3), LossConfig())
    losses = module(batch)
    assert set(losses) == {"mask", "presence", "total"}
    assert losses["total"].item() == pytest.approx(losses["mask"].item() + losses["presence"].item(), rel=1e-5)
    losses["total"].backward()
    presence_grads = [p.grad for n, p in model.class_prompt_encoder.named_parameters() if "presence" in n]
    assert any(g is not None and g.abs().sum() > 0 for g in presence_grads)
    balanced = TrainingModule(model, torch.arange(3), LossConfig(presence_balance=True))(batch)["presence"]
    plain = TrainingModule(model, torch.arange(3), LossConfig(presence_balance=False))(batch)["presence"]
    assert not torch.isclose(balanced, plain)              # 2 present of 6 pairs: the weights differ
    full = TrainingModule(model, torch.arange(3), LossConfig(distillation=1.0, denoising=1.0,
                                                            uncertainty_weighting=True))(batch)
    assert math.isfinite(full["distillation"].item()) and math.isfinite(full["denoising"].item())


def test_embedding_noise_perturbs_training_steps_only_and_leaves_the_store_key_alone():
    model = tiny_model(("liver", "spleen", "stomach"), variant="anatomy")
    batch = _batch([[0, 2], [1, 0]], [[True, False], [True, True]], masks=2)
    plain = TrainingModule(model, torch.arange(3), LossConfig())(batch)["total"]
    noisy = TrainingModule(model, torch.arange(3), LossConfig(), embedding_noise=0.5)
    torch.manual_seed(0)
    first = noisy(batch)["total"]
    torch.manual_seed(1)
    assert not torch.isclose(first, plain) and not torch.isclose(noisy(batch)["total"], first)   # drawn per step
    assert torch.isclose(noisy.eval()(batch)["total"], plain)                                    # never in eval
    assert AugmentConfig(embedding_noise=0.1).encoding_dict() == AugmentConfig().encoding_dict()  # same embeddings
    assert AugmentConfig(embedding_noise=0.1).to_dict()["embedding_noise"] == 0.1                # but recorded


def test_the_anatomy_recipe_config_loads(tmp_path):
    config = tiny_config(tmp_path, tmp_path / "spec.json", **{"model.class_prompt": {"variant": "anatomy"},
                                                               "loss.presence": 0.5})
    assert config.model.class_prompt == {"variant": "anatomy"} and config.loss.presence == 0.5
    assert config.to_dict()["loss"]["distillation"] == 0.0


def _labelled_batch(label_map: torch.Tensor) -> dict[str, torch.Tensor]:
    batch = _batch([[0, 2], [1, 0]], [[True, False], [True, True]], masks=2)
    batch["label_map"] = label_map
    return batch


def test_coarse_maps_are_trained_on_every_labelled_class_of_the_slice():
    model = tiny_model(("liver", "spleen", "stomach"), variant="anatomy", coarse_maps=1)
    label_map = torch.zeros(2, 64, 64, dtype=torch.int32)
    label_map[0, 8:24, 8:40] = 3                 # "stomach" on slice 0: not one of its decoded pairs' first class
    label_map[1, 32:64, 0:16] = 2
    module = TrainingModule(model, torch.arange(3), LossConfig(coarse=1.0))
    losses = module(_labelled_batch(label_map))
    assert set(losses) == {"mask", "presence", "coarse", "total"}
    losses["total"].backward()
    encoder = model.class_prompt_encoder
    assert encoder.coarse_out.weight.grad.abs().sum() > 0 and encoder.coarse_in.weight.grad.abs().sum() > 0

    grid = GRID
    target = torch.nn.functional.adaptive_avg_pool2d(
        (label_map[:, None] == torch.arange(1, 4)[None, :, None, None]).float(), grid)
    usable = torch.ones(2, 3, dtype=torch.bool)
    right = module._coarse(20 * (2 * target - 1), label_map, usable)       # confident where the labels are
    wrong = module._coarse(20 * (1 - 2 * target), label_map, usable)
    assert right.item() < 0.2 < 2.0 < wrong.item()
    usable[0, 2] = False                          # stomach not labelled on slice 0: its error does not count
    misplaced = 20 * (2 * target - 1)
    misplaced[0, 2] *= -1
    assert module._coarse(misplaced, label_map, usable).item() == pytest.approx(right.item(), abs=0.05)


def test_the_coarse_loss_needs_an_encoder_with_coarse_maps(tmp_path):
    with pytest.raises(InputError, match="coarse_maps = 1"):
        tiny_config(tmp_path, tmp_path / "spec.json", **{"model.class_prompt": {"variant": "anatomy"},
                                                           "loss.coarse": 1.0})
    config = tiny_config(tmp_path, tmp_path / "spec.json", **{
        "model.class_prompt": {"variant": "anatomy", "coarse_maps": 1}, "loss.coarse": 1.0})
    assert config.loss.coarse == 1.0
    model = tiny_model(("liver", "spleen", "stomach"), variant="anatomy")        # no coarse maps
    module = TrainingModule(model, torch.arange(3), LossConfig(coarse=1.0))
    with pytest.raises(InputError, match="coarse maps"):
        module(_labelled_batch(torch.zeros(2, 64, 64, dtype=torch.int32)))


def test_exclusive_coarse_maps_keep_an_unlabelled_class_off_the_labelled_ones():
    """A case without stomach labels still says where the stomach is not: on the liver and spleen it labels."""
    model = tiny_model(("liver", "spleen", "stomach"), variant="anatomy", coarse_maps=1)
    label_map = torch.zeros(2, 64, 64, dtype=torch.int32)
    label_map[:, 0:32] = 1                                           # liver on the top half of both slices
    target = torch.nn.functional.adaptive_avg_pool2d(
        (label_map[:, None] == torch.arange(1, 4)[None, :, None, None]).float(), GRID)
    usable = torch.tensor([[True, True, False], [True, True, False]])   # stomach not labelled in this case
    logits = 20 * (2 * target - 1)
    on_liver = logits.clone()
    on_liver[:, 2, :8] = 20.0                                        # "stomach" painted on the liver
    off_liver = logits.clone()
    off_liver[:, 2, 8:] = 20.0                                       # painted where nothing is labelled
    plain = TrainingModule(model, torch.arange(3), LossConfig(coarse=1.0))
    exclusive = TrainingModule(model, torch.arange(3), LossConfig(coarse=1.0, coarse_exclusive=True))
    assert plain._coarse(on_liver, label_map, usable).item() == pytest.approx(
        plain._coarse(off_liver, label_map, usable).item())
    assert exclusive._coarse(on_liver, label_map, usable).item() > 5.0
    assert exclusive._coarse(off_liver, label_map, usable).item() == pytest.approx(
        plain._coarse(off_liver, label_map, usable).item(), abs=1e-3)


def test_presence_prior_takes_the_class_frequency_out_of_the_presence_logit():
    """With logit adjustment a class's training log-odds is added to its logit in the loss: the constant logit that
    fits best is 0 (no evidence either way), so a head cannot lower the loss by learning how often a class occurs."""
    from types import SimpleNamespace

    from automedsam_training.data.training_set import presence_log_odds

    present = np.array([[1, 0, 0], [1, 0, 1], [1, 1, 0], [0, 0, 0]], dtype=bool)
    usable = np.array([[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 0]], dtype=bool)
    data = SimpleNamespace(targets=SimpleNamespace(present=present, usable=usable),
                           is_val=np.array([False, False, False, True]))
    odds = presence_log_odds(data)
    assert odds == pytest.approx(np.log([0.99 / 0.01, 0.5, 0.5]), rel=1e-5)   # 3/3 (clipped), 1/3, 1/3

    model = tiny_model(("liver", "spleen", "stomach"), variant="anatomy")
    batch = _batch([[0, 2], [1, 0]], [[True, False], [True, True]], masks=2)
    prior = torch.tensor([2.0, -1.0, 0.5])
    plain = TrainingModule(model, torch.arange(3), LossConfig(presence_balance=False))
    adjusted = TrainingModule(model, torch.arange(3), LossConfig(presence_balance=False, presence_prior=True), prior)
    with torch.no_grad():
        logits = model.class_prompt_encoder.condition(batch["embedding"], torch.arange(3)).presence_logits
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits + prior, batch["all_present"].float())
    assert adjusted(batch)["presence"].item() == pytest.approx(expected.item(), rel=1e-4)
    assert not torch.isclose(plain(batch)["presence"], adjusted(batch)["presence"])
    with pytest.raises(InputError, match="log-odds"):
        TrainingModule(model, torch.arange(3), LossConfig(presence_prior=True))


def test_without_a_mask_weight_the_decoder_is_not_run():
    """Presence and coarse maps can be trained alone, many slices a step, without the mask decoder's cost."""
    model = tiny_model(("liver", "spleen", "stomach"), variant="anatomy", coarse_maps=1)

    def no_decoder(*args: object, **kwargs: object) -> None:
        raise AssertionError("the mask decoder ran")

    model.decode = no_decoder
    label_map = torch.zeros(2, 64, 64, dtype=torch.int32)
    label_map[:, 10:30, 10:30] = 1
    losses = TrainingModule(model, torch.arange(3), LossConfig(mask=0.0, coarse=1.0))(_labelled_batch(label_map))
    assert set(losses) == {"presence", "coarse", "total"}
    assert losses["total"].item() == pytest.approx(losses["presence"].item() + losses["coarse"].item(), rel=1e-5)
