"""Class prompt encoders (this project's and the official variant): shapes, determinism, batch independence,
noise samples, class extension, configuration, the denoising loss, and cost per class."""

from __future__ import annotations

import json
import time

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from automedsam.errors import ModelError
from automedsam.model.class_prompt import VARIANT_ENCODERS, ClassPromptEncoder, build_class_prompt_encoder
from automedsam.model.class_prompt_base import VARIANTS, ClassPromptConfig, PromptEmbeddings
from automedsam.model.class_prompt_official import OfficialClassPromptEncoder

SMALL = dict(num_classes=5, prompt_dim=32, grid_size=16, class_dim=16, trunk_channels=16, trunk_mid_channels=24,
             head_channels=16, token_dim=32, denoiser_heads=4)


def _encoder(seed: int = 0, **overrides: object) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_class_prompt_encoder(ClassPromptConfig(**overrides)).eval()


def _embeddings(b: int, dim: int = 256, grid: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, dim, grid, grid, generator=torch.Generator().manual_seed(seed))


def _run(encoder: torch.nn.Module, embeddings: torch.Tensor, classes: list[int],
         sample: int | None = None) -> PromptEmbeddings:
    with torch.inference_mode():
        return encoder(embeddings, torch.tensor(classes), sample=sample)


def _assert_close(a: PromptEmbeddings, b: PromptEmbeddings, atol: float = 1e-5) -> None:
    for name, x, y in zip(a._fields, a, b, strict=True):
        assert x.shape == y.shape, name
        assert torch.allclose(x, y, atol=atol, rtol=1e-5), f"{name}: max diff {(x - y).abs().max().item():.2e}"


@pytest.fixture(scope="module")
def full() -> ClassPromptEncoder:
    return _encoder(num_classes=8)


@pytest.fixture(scope="module")
def official() -> OfficialClassPromptEncoder:
    return _encoder(variant="official", num_classes=8)


@pytest.mark.parametrize("variant", ["automedsam", "official"])
def test_shapes_match_a_box_prompt(variant: str, full: ClassPromptEncoder,
                                   official: OfficialClassPromptEncoder) -> None:
    encoder = full if variant == "automedsam" else official
    out = _run(encoder, _embeddings(2), [0, 3, 7])
    assert out.sparse.shape == (2, 3, 2, 256)
    assert out.dense.shape == (2, 3, 256, 64, 64)
    assert out.presence_logits.shape == (2, 3)
    assert all(torch.isfinite(t).all() for t in out)
    single = _run(encoder, _embeddings(1), [4])   # batch size 1 and one class keep their axes
    assert single.sparse.shape == (1, 1, 2, 256) and single.presence_logits.shape == (1, 1)


@pytest.mark.parametrize("variant", ["automedsam", "official"])
def test_inference_is_deterministic(variant: str, full: ClassPromptEncoder,
                                    official: OfficialClassPromptEncoder) -> None:
    encoder = full if variant == "automedsam" else official
    first, second = _run(encoder, _embeddings(2), [1, 2]), _run(encoder, _embeddings(2), [1, 2])
    assert all(torch.equal(x, y) for x, y in zip(first, second, strict=True))


@pytest.mark.parametrize("variant", ["automedsam", "official"])
def test_batch_of_three_equals_three_single_slices(variant: str, full: ClassPromptEncoder,
                                                   official: OfficialClassPromptEncoder) -> None:
    encoder = full if variant == "automedsam" else official
    embeddings = _embeddings(3)
    for sample in (None, 0):
        batched = _run(encoder, embeddings, [0, 5], sample=sample)
        for i in range(3):
            single = _run(encoder, embeddings[i:i + 1], [0, 5], sample=sample)
            _assert_close(PromptEmbeddings(*(t[i:i + 1] for t in batched)), single)


def test_classes_batched_equal_each_class_alone(full: ClassPromptEncoder) -> None:
    embeddings = _embeddings(2)
    batched = _run(full, embeddings, [6, 1, 3])
    for j, index in enumerate([6, 1, 3]):
        alone = _run(full, embeddings, [index])
        _assert_close(PromptEmbeddings(*(t[:, j:j + 1] for t in batched)), alone)
    assert not torch.allclose(batched.sparse[:, 0], batched.sparse[:, 1])   # the class matters


def test_train_and_eval_mode_agree_for_one_slice() -> None:
    """No BatchNorm or dropout: batch size 1 in training behaves as in inference."""
    encoder = _encoder(**SMALL)
    embeddings = _embeddings(1, 32, 16)
    expected = _run(encoder, embeddings, [0, 1])
    encoder.train()
    with torch.no_grad():
        trained_mode = encoder(embeddings, torch.tensor([0, 1]))
    encoder.eval()
    _assert_close(trained_mode, expected, atol=0)


@pytest.mark.parametrize("variant", ["automedsam", "official"])
def test_noise_samples_are_seeded_and_differ(variant: str) -> None:
    encoder = _encoder(variant=variant, **SMALL)
    embeddings = _embeddings(2, 32, 16)
    plain = _run(encoder, embeddings, [1, 2])
    zero, zero_again, one = (_run(encoder, embeddings, [1, 2], sample=s) for s in (0, 0, 1))
    assert torch.equal(zero.sparse, zero_again.sparse) and torch.equal(zero.dense, zero_again.dense)
    assert (zero.sparse - one.sparse).abs().max() > 1e-4
    assert (zero.sparse - plain.sparse).abs().max() > 1e-4


def test_extend_classes_keeps_old_embeddings_and_outputs() -> None:
    encoder = _encoder(**SMALL)
    embeddings = _embeddings(2, 32, 16)
    before = _run(encoder, embeddings, [0, 4])
    old_table = encoder.class_embedding.weight.detach().clone()
    new = encoder.extend_classes(3)
    assert list(new) == [5, 6, 7] and encoder.config.num_classes == 8
    assert torch.equal(encoder.class_embedding.weight[:5], old_table)
    _assert_close(_run(encoder, embeddings, [0, 4]), before, atol=0)
    assert _run(encoder, embeddings, [7]).sparse.shape == (2, 1, 2, 32)
    official = _encoder(variant="official", **SMALL)
    assert list(official.extend_classes(2)) == [5, 6]
    assert _run(official, embeddings, [6]).sparse.shape == (2, 1, 2, 32)


def test_unknown_class_index_is_a_model_error() -> None:
    encoder = _encoder(**SMALL)
    with pytest.raises(ModelError, match="knows 5 classes"):
        _run(encoder, _embeddings(1, 32, 16), [5])


def test_config_round_trips_through_plain_json() -> None:
    config = ClassPromptConfig(variant="official", num_classes=12, latent_scale=0.5, sampling_steps=6)
    data = json.loads(json.dumps(config.to_dict()))
    assert ClassPromptConfig.from_dict(data) == config
    assert all(isinstance(v, (int, float, str, bool)) for v in data.values())


@pytest.mark.parametrize(("data", "message"), [
    ({"variant": "unet"}, "unknown class prompt encoder variant"),
    ({"num_classes": 0}, "must be positive"),
    ({"num_classes": 2.5}, "should be int"),
    ({"dropout": 0.1}, "unknown fields"),
    ({"token_dim": 30, "denoiser_heads": 4}, "multiple of denoiser_heads"),
])
def test_bad_config_is_a_model_error(data: dict, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        ClassPromptConfig.from_dict(data)


def test_every_variant_a_config_accepts_has_an_encoder() -> None:
    assert set(VARIANT_ENCODERS) == set(VARIANTS)
    assert all(isinstance(build_class_prompt_encoder(ClassPromptConfig(variant=v, **SMALL)), VARIANT_ENCODERS[v])
               for v in VARIANTS if v != "official")   # the official U-Net has fixed, wide layers


@pytest.mark.parametrize("variant", ["automedsam", "official"])
def test_denoising_loss_trains_towards_the_box_prompt(variant: str) -> None:
    grid = 16 if variant == "automedsam" else 8   # the official U-Net has fixed, wide layers: keep it small
    encoder = _encoder(variant=variant, **{**SMALL, "grid_size": grid}).train()
    embeddings = _embeddings(2, 32, grid)
    classes = torch.tensor([0, 3])
    target_sparse = 0.7 * torch.randn(2, 2, 2, 32, generator=torch.Generator().manual_seed(5)).abs()
    target_dense = torch.full((32, 1, 1), 0.3)
    optimiser = torch.optim.Adam(encoder.parameters(), lr=3e-3)
    losses = []
    for step in range(40):
        loss = encoder.denoising_loss(embeddings, classes, target_sparse, target_dense,
                                      generator=torch.Generator().manual_seed(step))
        optimiser.zero_grad()
        loss.total.backward()
        optimiser.step()
        losses.append(loss.total.item())
    print(f"{variant} denoising loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert loss.prompts.sparse.shape == (2, 2, 2, 32) and loss.presence.item() == 0.0
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])


def test_denoising_loss_is_reproducible_and_skips_absent_pairs() -> None:
    encoder = _encoder(**SMALL)
    embeddings, classes = _embeddings(2, 32, 16), torch.tensor([1, 2])
    target = torch.randn(2, 2, 2, 32, generator=torch.Generator().manual_seed(6))
    present = torch.tensor([[True, False], [True, True]])

    def loss(target_sparse: torch.Tensor, seed: int = 0) -> object:
        with torch.no_grad():
            return encoder.denoising_loss(embeddings, classes, target_sparse, torch.zeros(32, 1, 1),
                                          generator=torch.Generator().manual_seed(seed), present=present)

    first, again = loss(target), loss(target)
    assert torch.equal(first.total, again.total)
    assert not torch.equal(first.sparse, loss(target, seed=1).sparse)
    changed = target.clone()
    changed[0, 1] += 10.0                           # the absent pair has no box: its target must not count
    assert torch.equal(loss(changed).sparse, first.sparse)
    assert first.presence.item() > 0.0


def test_gradients_reach_trunk_heads_and_class_embedding() -> None:
    encoder = _encoder(**SMALL).train()
    loss = encoder.denoising_loss(_embeddings(1, 32, 16), torch.tensor([2]), torch.randn(1, 1, 2, 32),
                                  torch.zeros(32, 1, 1), present=torch.tensor([[True]]))
    loss.total.backward()
    for name in ("trunk.stem.weight", "film.weight", "denoiser.latent_out.weight", "presence.2.weight"):
        assert encoder.get_parameter(name).grad.abs().sum() > 0, name
    assert encoder.class_embedding.weight.grad[2].abs().sum() > 0
    assert encoder.class_embedding.weight.grad[0].abs().sum() == 0


def _gflops(encoder: torch.nn.Module, classes: int) -> float:
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        encoder(_embeddings(1), torch.arange(classes))
    return counter.get_total_flops() / 1e9


def test_cost_per_class_is_far_below_the_decoder(full: ClassPromptEncoder,
                                                 official: OfficialClassPromptEncoder) -> None:
    one, eight = _gflops(full, 1), _gflops(full, 8)
    per_class, shared = (eight - one) / 7, one - (eight - one) / 7
    official_per_class = _gflops(official, 1)
    with torch.inference_mode():
        timings = {}
        for classes in (1, 8):
            runs = []
            for _ in range(3):
                start = time.perf_counter()
                full(_embeddings(1), torch.arange(classes))
                runs.append(time.perf_counter() - start)
            timings[classes] = min(runs)
    print(f"class prompt encoder: shared trunk {shared:.2f} GFLOP per slice, {per_class:.2f} GFLOP per class "
          f"(SAM decoder 3.6, official variant {official_per_class:.1f}); 1 class {timings[1] * 1e3:.0f} ms, "
          f"8 classes {timings[8] * 1e3:.0f} ms")
    assert per_class < 0.25 * 3.6
    assert eight < 0.5 * 8 * one
    assert official_per_class > 10.0   # the faithful architecture: the whole U-Net per class
