"""The composed AutoMedSAM model: the methods the inference engine calls, on a randomly initialised LiteMedSAM."""

from __future__ import annotations

import pytest
import torch
from engine_fakes import LIGHT_CLASSES, light_automedsam, light_prompt_config, random_embeddings

from automedsam.errors import ModelError
from automedsam.model import DEFAULT_PREPROCESSING, AutoMedSAM, build_lite_medsam
from automedsam.model.class_prompt import ClassPromptEncoder

CLASSES = LIGHT_CLASSES
LIGHT = light_prompt_config()


@pytest.fixture(scope="module")
def model() -> AutoMedSAM:
    return light_automedsam(CLASSES)


@pytest.fixture(scope="module")
def embeddings() -> torch.Tensor:
    return random_embeddings()


def test_attributes_the_engine_reads(model: AutoMedSAM) -> None:
    assert model.image_size == 256
    assert model.classes == CLASSES
    assert model.preprocessing == DEFAULT_PREPROCESSING
    assert model.preprocessing is not DEFAULT_PREPROCESSING
    assert model.encoder_id == "litemedsam-tinyvit:" + "ab" * 8
    assert [model.class_index(k) for k in CLASSES] == [0, 1, 2]


def test_encode_shape(model: AutoMedSAM) -> None:
    with torch.inference_mode():
        assert model.encode(torch.rand(1, 3, 256, 256)).shape == (1, 256, 64, 64)


def test_segment_classes_shapes_and_pairing(model: AutoMedSAM, embeddings: torch.Tensor) -> None:
    with torch.inference_mode():
        out = model.segment_classes(embeddings, torch.tensor([2, 0]))
        alone = model.segment_classes(embeddings[1:], torch.tensor([0]))
    assert out.logits.shape == (2, 2, 256, 256)
    assert out.presence_logits.shape == (2, 2)
    assert out.probability_std is None
    assert torch.allclose(out.logits[1, 1], alone.logits[0, 0], atol=1e-4)
    assert torch.allclose(out.presence_logits[1, 1], alone.presence_logits[0, 0], atol=1e-5)


def test_noise_samples_give_a_probability_std(model: AutoMedSAM, embeddings: torch.Tensor) -> None:
    with torch.inference_mode():
        plain = model.segment_classes(embeddings, torch.tensor([1]))
        out = model.segment_classes(embeddings, torch.tensor([1]), noise_samples=3)
    std = out.probability_std
    assert std is not None and std.shape == (2, 1, 256, 256)
    assert torch.isfinite(std).all() and std.min() >= 0 and std.max() <= 0.5
    assert std.max() > 1e-4
    assert torch.equal(out.logits, plain.logits)   # the deterministic output does not depend on the samples


def test_segment_boxes_shapes(model: AutoMedSAM, embeddings: torch.Tensor) -> None:
    with torch.inference_mode():
        out = model.segment_boxes(embeddings, torch.tensor([[30.0, 40.0, 90.0, 120.0], [5.0, 5.0, 60.0, 60.0]]))
    assert out.logits.shape == (2, 1, 256, 256) and out.iou.shape == (2, 1)


def test_unknown_class_names_the_known_ones(model: AutoMedSAM) -> None:
    with pytest.raises(ModelError, match="liver, spleen, aorta"):
        model.class_index("kidney_left")


def test_box_only_model_refuses_classes(embeddings: torch.Tensor) -> None:
    torch.manual_seed(2)
    box_only = AutoMedSAM.from_lite_medsam(build_lite_medsam()).eval()
    assert box_only.classes == ()
    assert box_only.encoder_id == "litemedsam-tinyvit:unverified"
    with pytest.raises(ModelError, match="box prompts only"):
        box_only.class_index("liver")
    with pytest.raises(ModelError, match="no class prompt encoder"), torch.inference_mode():
        box_only.segment_classes(embeddings, torch.tensor([0]))


def test_class_list_must_fit_the_encoder(model: AutoMedSAM) -> None:
    encoder = ClassPromptEncoder(LIGHT)   # one class
    with pytest.raises(ModelError, match="1 classes but 2"):
        model.attach_class_prompt_encoder(encoder, ["liver", "spleen"])
    with pytest.raises(ModelError, match="without a class prompt encoder"):
        AutoMedSAM(model.image_encoder, model.prompt_encoder, model.mask_decoder, classes=["liver"])


def test_add_classes_extends_the_class_set(embeddings: torch.Tensor) -> None:
    torch.manual_seed(3)
    model = AutoMedSAM.from_lite_medsam(build_lite_medsam()).eval()
    model.attach_new_class_prompt_encoder(["liver"], LIGHT)
    with torch.inference_mode():
        before = model.segment_classes(embeddings, torch.tensor([0]))
    assert model.add_classes(["kidney_left", "kidney_right"]) == [1, 2]
    assert model.classes == ("liver", "kidney_left", "kidney_right")
    with torch.inference_mode():
        after = model.segment_classes(embeddings, torch.tensor([0, 2]))
    assert torch.allclose(after.logits[:, :1], before.logits, atol=1e-4)
    with pytest.raises(ModelError, match="already in the model"):
        model.add_classes(["liver"])


def test_dense_prompt_starts_at_sams_no_mask_embedding(model: AutoMedSAM, embeddings: torch.Tensor) -> None:
    with torch.inference_mode():
        prompts = model.class_prompt_encoder(embeddings, torch.tensor([0]))
    expected = model.prompt_encoder.no_mask_embed.weight.reshape(1, 1, -1, 1, 1).expand_as(prompts.dense)
    assert torch.allclose(prompts.dense, expected)


def test_train_mode_keeps_the_frozen_encoder_in_eval(model: AutoMedSAM) -> None:
    model.train()
    try:
        assert model.class_prompt_encoder.training and model.mask_decoder.training
        assert not model.image_encoder.training
        assert not any(m.training for m in model.image_encoder.modules())
    finally:
        model.eval()
