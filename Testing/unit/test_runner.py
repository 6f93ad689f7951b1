"""The model runner: the model's own steps decoded by the plan's decoder, the same outputs, and its stage timings."""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch
from engine_fakes import LIGHT_CLASSES, FakeModel, light_automedsam, light_prompt_config, phantom, random_embeddings

from automedsam import runner as runner_module
from automedsam.acceleration import ExecutionPlan
from automedsam.engine import BoxPrompt, EngineOptions, segment, segment_boxes
from automedsam.model import AutoMedSAM, ClassPromptConfig, build_lite_medsam
from automedsam.runner import ModelRunner

CPU = torch.device("cpu")
EAGER = ExecutionPlan("torch", "fp32")
CLASSES = LIGHT_CLASSES
LIGHT = light_prompt_config()


@pytest.fixture(scope="module")
def model() -> AutoMedSAM:
    return light_automedsam(CLASSES)


@pytest.fixture(scope="module")
def embeddings() -> torch.Tensor:
    return random_embeddings()


class CountingDecoder:
    """A backend pair decoder that records how many pairs it decoded and decodes with the model's PyTorch decoder
    (one image embedding per prompt, as OpenVINO's)."""

    def __init__(self, model: AutoMedSAM) -> None:
        self.model = model
        self.pairs: list[int] = []

    def __call__(self, images: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        assert images.shape[0] == sparse.shape[0] == dense.shape[0]
        self.pairs.append(images.shape[0])
        return self.model.decode(images, sparse, dense)[0]


def _with_decoder(model: AutoMedSAM, monkeypatch: pytest.MonkeyPatch) -> tuple[ModelRunner, CountingDecoder]:
    """A runner whose plan decodes with a `CountingDecoder` (where OpenVINO's would be)."""
    decoder = CountingDecoder(model)
    monkeypatch.setattr(runner_module, "make_backend_decoder", lambda model, device, plan: decoder)
    return ModelRunner(model, CPU, EAGER), decoder


def test_the_eager_runner_gives_the_models_own_outputs(model: AutoMedSAM, embeddings: torch.Tensor) -> None:
    runner = ModelRunner(model, CPU, EAGER)
    indices = torch.tensor([2, 0])
    boxes = torch.tensor([[30.0, 40.0, 90.0, 120.0], [5.0, 5.0, 60.0, 60.0]])
    with torch.inference_mode():
        for gate in (None, 0.5):
            ours = runner.segment_classes(embeddings, indices, noise_samples=2, presence_threshold=gate)
            theirs = model.segment_classes(embeddings, indices, noise_samples=2, presence_threshold=gate)
            assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
        assert all(torch.equal(a, b) for a, b in zip(runner.segment_boxes(embeddings, boxes),
                                                      model.segment_boxes(embeddings, boxes), strict=True))
        assert torch.equal(runner.encode(torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))),
                           model.encode(torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))))


@pytest.mark.parametrize("variant", ["automedsam", "official"])
def test_presence_gating_decodes_only_present_pairs_with_the_same_logits(embeddings: torch.Tensor, variant: str,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    config = LIGHT if variant == "automedsam" else ClassPromptConfig(variant="official", official_timesteps=5)
    model = AutoMedSAM.from_lite_medsam(build_lite_medsam(), base_sha256="ab" * 32)
    model.attach_new_class_prompt_encoder(CLASSES, config)
    model.eval()
    indices = torch.tensor([0, 1, 2])
    runner, decoder = _with_decoder(model, monkeypatch)
    with torch.inference_mode():
        full = model.segment_classes(embeddings, indices, noise_samples=2)
        probabilities = torch.sigmoid(full.presence_logits)
        threshold = float(probabilities.flatten().sort().values[2])  # 4 of the 6 pairs pass, 2 do not
        gated = runner.segment_classes(embeddings, indices, noise_samples=2, presence_threshold=threshold)
    present = probabilities >= threshold
    assert int(present.sum()) == 4
    assert decoder.pairs == [4, 4, 4]  # the deterministic pass and two noise samples, present pairs only
    assert torch.equal(gated.presence_logits, full.presence_logits)
    assert torch.allclose(gated.logits[present], full.logits[present], atol=1e-3)
    assert (torch.sigmoid(gated.logits[~present]) == 0).all()
    # std = sqrt(E[p^2] - E[p]^2) amplifies rounding where it is ~0, hence the looser tolerance
    assert torch.allclose(gated.probability_std[present], full.probability_std[present], atol=2e-3)
    assert (gated.probability_std[~present] == 0).all()


def test_a_threshold_nothing_passes_decodes_nothing(model: AutoMedSAM, embeddings: torch.Tensor,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    runner, decoder = _with_decoder(model, monkeypatch)
    with torch.inference_mode():
        out = runner.segment_classes(embeddings, torch.tensor([0, 1]), presence_threshold=1.1)
    assert decoder.pairs == []
    assert out.logits.shape == (2, 2, 256, 256) and (torch.sigmoid(out.logits) == 0).all()


def test_box_prompts_go_through_the_plans_decoder(model: AutoMedSAM, embeddings: torch.Tensor,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    boxes = torch.tensor([[30.0, 40.0, 90.0, 120.0], [5.0, 5.0, 60.0, 60.0]])
    runner, decoder = _with_decoder(model, monkeypatch)
    with torch.inference_mode():
        own = model.segment_boxes(embeddings, boxes)
        injected = runner.segment_boxes(embeddings, boxes)
    assert decoder.pairs == [2]
    assert torch.allclose(injected.logits, own.logits, atol=1e-4)
    assert torch.isnan(injected.iou).all() and injected.iou.shape == (2, 1)


def test_the_runner_reports_each_stage(model: AutoMedSAM, embeddings: torch.Tensor) -> None:
    seconds: dict[str, list[float]] = defaultdict(list)
    runner = ModelRunner(model, CPU, EAGER, timer=lambda stage, s: seconds[stage].append(s))
    with torch.inference_mode():
        runner.encode(torch.rand(1, 3, 256, 256))
        runner.segment_classes(embeddings, torch.tensor([0, 1]), noise_samples=2)
    assert {stage: len(values) for stage, values in seconds.items()} == {"encoder": 1, "prompt": 1, "decoder": 3}
    assert all(s >= 0 for values in seconds.values() for s in values)


def test_the_engine_reports_its_stages_to_the_options_timer() -> None:
    seconds: dict[str, float] = defaultdict(float)

    def timer(stage: str, s: float) -> None:
        seconds[stage] += s

    segment(phantom(shape_kji=(4, 40, 48)), ["liver"], FakeModel(), EngineOptions(stage_timer=timer))
    assert set(seconds) == {"pre", "encoder", "decoder", "post"}   # a stand-in model: its prompts count as decoder
    seconds.clear()
    prompt = BoxPrompt("box", {1: (5, 5, 30, 30)})
    segment_boxes(phantom(shape_kji=(4, 40, 48)), [prompt], FakeModel(), EngineOptions(stage_timer=timer))
    assert set(seconds) == {"pre", "encoder", "decoder", "post"}


def test_the_batch_size_is_the_options_or_one_on_the_cpu() -> None:
    assert ModelRunner(FakeModel(), CPU, EAGER).batch_size == 1
    assert ModelRunner(FakeModel(), CPU, EAGER, batch_size=4).batch_size == 4
