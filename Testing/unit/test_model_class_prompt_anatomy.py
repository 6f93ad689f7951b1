"""The anatomy class prompt encoder: box-prompt shapes, determinism, batch and class independence, localisation that
follows the image (translation equivariance, no absolute positions), checkpoint round trip through `AutoMedSAM`, and
uncertainty from mask probabilities."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from automedsam.errors import ModelError
from automedsam.model import (
    AnatomyClassPromptEncoder,
    AutoMedSAM,
    ClassPromptConfig,
    build_class_prompt_encoder,
    build_lite_medsam,
    load_checkpoint,
    save_checkpoint,
)
from automedsam.model.automedsam import apply_checkpoint
from automedsam.model.class_prompt_base import PromptEmbeddings

SMALL = dict(variant="anatomy", num_classes=5, prompt_dim=32, grid_size=16, class_dim=16, trunk_channels=16,
             head_channels=16, token_dim=32, trunk_depth=2)


def _encoder(seed: int = 0, **overrides: object) -> AnatomyClassPromptEncoder:
    torch.manual_seed(seed)
    encoder = build_class_prompt_encoder(ClassPromptConfig(**{**SMALL, **overrides}))
    with torch.no_grad():   # the dense output starts at zero: give it weights so that it shows the features
        encoder.dense_out.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(seed))
    return encoder.eval()


def _embeddings(b: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 32, 16, 16, generator=torch.Generator().manual_seed(seed))


def _run(encoder: torch.nn.Module, embeddings: torch.Tensor, classes: list[int]) -> PromptEmbeddings:
    with torch.inference_mode():
        return encoder(embeddings, torch.tensor(classes))


def _assert_close(a: PromptEmbeddings, b: PromptEmbeddings, atol: float = 1e-5) -> None:
    for name, x, y in zip(a._fields, a, b, strict=True):
        assert x.shape == y.shape, name
        assert torch.allclose(x, y, atol=atol, rtol=1e-5), f"{name}: max diff {(x - y).abs().max().item():.2e}"


def test_builder_gives_the_variant_with_box_prompt_shapes() -> None:
    encoder = build_class_prompt_encoder(ClassPromptConfig(variant="anatomy", num_classes=3)).eval()
    assert isinstance(encoder, AnatomyClassPromptEncoder) and not encoder.stochastic
    out = _run(encoder, torch.randn(2, 256, 64, 64), [0, 2])
    assert out.sparse.shape == (2, 2, 2, 256) and out.dense.shape == (2, 2, 256, 64, 64)
    assert out.presence_logits.shape == (2, 2)
    single = _run(encoder, torch.randn(1, 256, 64, 64), [1])
    assert single.sparse.shape == (1, 1, 2, 256) and single.presence_logits.shape == (1, 1)


def test_deterministic_and_noise_samples_change_nothing() -> None:
    encoder = _encoder()
    embeddings = _embeddings(2)
    first = _run(encoder, embeddings, [1, 3])
    with torch.inference_mode():
        condition = encoder.condition(embeddings, torch.tensor([1, 3]))
        sampled = encoder.prompts(condition, sample=4)
    _assert_close(first, _run(encoder, embeddings, [1, 3]), atol=0)
    _assert_close(first, sampled, atol=0)


def test_batches_classes_and_selected_pairs_agree() -> None:
    encoder = _encoder()
    embeddings = _embeddings(3)
    batched = _run(encoder, embeddings, [4, 0, 2])
    for i in range(3):
        _assert_close(PromptEmbeddings(*(t[i:i + 1] for t in batched)), _run(encoder, embeddings[i:i + 1], [4, 0, 2]))
    for j, index in enumerate([4, 0, 2]):
        _assert_close(PromptEmbeddings(*(t[:, j:j + 1] for t in batched)), _run(encoder, embeddings, [index]))
    with torch.inference_mode():
        condition = encoder.condition(embeddings, torch.tensor([4, 0, 2]))
        picked = encoder.prompts(encoder.select(condition, torch.tensor([7, 1])))   # (slice 2, class 0), (0, 1)
    assert picked.sparse.shape == (2, 1, 2, 32)
    assert torch.allclose(picked.dense[0, 0], batched.dense[2, 1], atol=1e-5)
    assert torch.allclose(picked.sparse[1, 0], batched.sparse[0, 1], atol=1e-5)
    assert not torch.allclose(batched.sparse[:, 0], batched.sparse[:, 1])      # the class matters


def test_localisation_moves_with_the_image() -> None:
    """Shift a pattern: the dense prompt shifts with it, presence and tokens stay (no absolute position is used)."""
    encoder = _encoder(trunk_depth=1, grid_size=40)
    blob = torch.randn(1, 32, 4, 4, generator=torch.Generator().manual_seed(9))
    left, right = torch.zeros(1, 32, 40, 40), torch.zeros(1, 32, 40, 40)
    left[..., 18:22, 10:14] = blob
    right[..., 18:22, 20:24] = blob
    a, b = _run(encoder, left, [1]), _run(encoder, right, [1])
    inner = (slice(None),) * 3 + (slice(9, 31),)                                # away from the zero padding
    assert torch.allclose(a.dense[inner + (slice(9, 21),)], b.dense[inner + (slice(19, 31),)], atol=1e-4)
    assert torch.allclose(a.presence_logits, b.presence_logits, atol=1e-4)
    assert torch.allclose(a.sparse, b.sparse, atol=1e-4)
    assert not torch.allclose(a.dense[inner + (slice(9, 21),)], b.dense[inner + (slice(9, 21),)], atol=1e-3)


def test_extend_classes_keeps_old_outputs() -> None:
    encoder = _encoder()
    embeddings = _embeddings(2)
    before = _run(encoder, embeddings, [0, 4])
    assert list(encoder.extend_classes(2)) == [5, 6] and encoder.config.num_classes == 7
    _assert_close(_run(encoder, embeddings, [0, 4]), before, atol=0)
    assert _run(encoder, embeddings, [6]).sparse.shape == (2, 1, 2, 32)
    with pytest.raises(ModelError, match="knows 7 classes"):
        _run(encoder, embeddings, [7])


@pytest.fixture(scope="module")
def model() -> AutoMedSAM:
    torch.manual_seed(0)
    model = AutoMedSAM.from_lite_medsam(build_lite_medsam().eval(), base_sha256="cd" * 32)
    config = ClassPromptConfig(variant="anatomy", trunk_channels=16, head_channels=16, class_dim=16, token_dim=32,
                               trunk_depth=1)
    model.attach_new_class_prompt_encoder(["liver", "spleen"], config)
    with torch.no_grad():
        for parameter in model.class_prompt_encoder.parameters():
            parameter.add_(0.01 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(2)))
    return model.eval()


def test_checkpoint_round_trip_and_uncertainty_from_probabilities(model: AutoMedSAM, tmp_path: Path) -> None:
    embeddings = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        out = model.segment_classes(embeddings, torch.tensor([1, 0]), noise_samples=2)
    path = save_checkpoint(tmp_path / "anatomy.automedsam.pt", model)
    checkpoint = load_checkpoint(path, base_sha256="cd" * 32)
    assert checkpoint.class_prompt_encoder.config.variant == "anatomy"
    restored = copy.deepcopy(model)
    restored.class_prompt_encoder = None
    apply_checkpoint(restored, checkpoint)
    with torch.inference_mode():
        again = restored.eval().segment_classes(embeddings, torch.tensor([1, 0]), noise_samples=2)
    assert torch.equal(out.logits, again.logits) and torch.equal(out.presence_logits, again.presence_logits)
    probabilities = torch.sigmoid(out.logits.float())
    assert torch.allclose(out.probability_std, (probabilities * (1 - probabilities)).sqrt())


def test_presence_learns_from_the_image_wherever_the_organ_is() -> None:
    """Presence must depend on the slice, not only on the class: a pattern anywhere means present."""
    encoder = _encoder(trunk_depth=1).train()
    generator = torch.Generator().manual_seed(4)
    pattern = torch.randn(32, 3, 3, generator=generator)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings = 0.3 * torch.randn(n, 32, 16, 16, generator=generator)
        present = torch.arange(n) % 2 == 0
        for i in torch.nonzero(present).flatten().tolist():
            row, col = torch.randint(0, 13, (2,), generator=generator).tolist()
            embeddings[i, :, row:row + 3, col:col + 3] += pattern
        return embeddings, present

    optimiser = torch.optim.Adam(encoder.parameters(), lr=1e-2)
    for _ in range(40):
        embeddings, present = batch(8)
        logits = encoder.condition(embeddings, torch.tensor([2])).presence_logits[:, 0]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, present.float())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    embeddings, present = batch(16)
    with torch.no_grad():
        logits = encoder.eval().condition(embeddings, torch.tensor([2])).presence_logits[:, 0]
    assert ((logits > 0) == present).all(), logits


def test_coarse_maps_follow_the_image_and_reach_the_prompts() -> None:
    """Coarse maps (B, C, G, G) shift with the image, are kept for selected pairs, and change the prompts."""
    encoder = _encoder(trunk_depth=1, grid_size=40, coarse_maps=1)
    blob = torch.randn(1, 32, 4, 4, generator=torch.Generator().manual_seed(9))
    left, right = torch.zeros(1, 32, 40, 40), torch.zeros(1, 32, 40, 40)
    left[..., 18:22, 10:14] = blob
    right[..., 18:22, 20:24] = blob
    with torch.inference_mode():
        a, b = (encoder.condition(x, torch.tensor([1, 3])) for x in (left, right))
        assert a.coarse_logits.shape == (1, 2, 40, 40)
        assert torch.allclose(a.coarse_logits[..., 9:31, 9:21], b.coarse_logits[..., 9:31, 19:31], atol=1e-4)
        assert torch.allclose(a.presence_logits, b.presence_logits, atol=1e-4)
        both = encoder.condition(torch.cat([left, right]), torch.tensor([1, 3]))
        picked = encoder.select(both, torch.tensor([3]))                      # slice 1, class 3
        assert torch.equal(picked.coarse_logits[0, 0], both.coarse_logits[1, 1])
        assert torch.allclose(encoder.prompts(picked).dense[0, 0], encoder.prompts(both).dense[1, 1], atol=1e-5)
        plain = encoder.prompts(both._replace(coarse_logits=None))
        assert not torch.allclose(plain.sparse, encoder.prompts(both).sparse)   # the map reaches the head


def test_coarse_maps_learn_where_a_class_is() -> None:
    encoder = _encoder(trunk_depth=1, coarse_maps=1).train()
    generator = torch.Generator().manual_seed(5)
    pattern = torch.randn(32, 3, 3, generator=generator)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings = 0.3 * torch.randn(n, 32, 16, 16, generator=generator)
        where = torch.zeros(n, 16, 16)
        for i in range(n):
            row, col = torch.randint(0, 13, (2,), generator=generator).tolist()
            embeddings[i, :, row:row + 3, col:col + 3] += pattern
            where[i, row:row + 3, col:col + 3] = 1
        return embeddings, where

    optimiser = torch.optim.Adam(encoder.parameters(), lr=1e-2)
    for _ in range(60):
        embeddings, where = batch(8)
        logits = encoder.condition(embeddings, torch.tensor([2])).coarse_logits[:, 0]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, where)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    embeddings, where = batch(8)
    with torch.no_grad():
        found = encoder.eval().condition(embeddings, torch.tensor([2])).coarse_logits[:, 0] > 0
    overlap = (found & (where > 0)).sum() / (found | (where > 0)).sum()
    assert overlap > 0.7, overlap


def test_coarse_maps_setting_is_checked_and_optional_in_old_checkpoints(model: AutoMedSAM, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="coarse_maps must be 0 or 1"):
        ClassPromptConfig(variant="anatomy", coarse_maps=2)
    old = {k: v for k, v in ClassPromptConfig(variant="anatomy").to_dict().items() if k != "coarse_maps"}
    assert ClassPromptConfig.from_dict(old).coarse_maps == 0
    torch.manual_seed(0)
    coarse = copy.deepcopy(model)
    coarse.class_prompt_encoder = None
    coarse.attach_new_class_prompt_encoder(["liver", "spleen"], ClassPromptConfig(
        variant="anatomy", trunk_channels=16, head_channels=16, class_dim=16, token_dim=32, trunk_depth=1,
        coarse_maps=1))
    embeddings = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        out = coarse.eval().segment_classes(embeddings, torch.tensor([1, 0]))
    checkpoint = load_checkpoint(save_checkpoint(tmp_path / "coarse.automedsam.pt", coarse), base_sha256="cd" * 32)
    assert checkpoint.class_prompt_encoder.config.coarse_maps == 1
    restored = copy.deepcopy(coarse)
    restored.class_prompt_encoder = None
    apply_checkpoint(restored, checkpoint)
    with torch.inference_mode():
        again = restored.eval().segment_classes(embeddings, torch.tensor([1, 0]))
    assert torch.equal(out.logits, again.logits) and torch.equal(out.presence_logits, again.presence_logits)


def test_a_kept_slice_class_prompt_refines_exactly_as_a_new_one(model: AutoMedSAM) -> None:
    embeddings = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(6))
    points, labels = torch.tensor([[100.0, 120.0]]), torch.tensor([1.0])
    with torch.inference_mode():
        kept = model.slice_class_prompt(embeddings, 1)
        fresh = model.segment_prompts(embeddings, 1, points, labels, None)
        reused = model.segment_prompts(embeddings, 1, points, labels, None, class_prompt=kept)
    assert torch.equal(fresh.logits, reused.logits) and torch.equal(fresh.presence_logits, reused.presence_logits)
