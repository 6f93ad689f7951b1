"""The CUDA path of the engine: runs where a GPU is present, skipped elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_fakes import FakeModel, phantom

from automedsam.engine import EngineOptions, resolve_device, segment

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_asking_for_an_absent_gpu_falls_back_to_the_cpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert resolve_device("cuda").type == "cpu"


@cuda
def test_cuda_run_matches_the_cpu_run():
    cpu = segment(phantom(), ["liver", "spleen"], FakeModel(), EngineOptions(device="cpu")).labels
    gpu_model = FakeModel()
    gpu = segment(phantom(), ["liver", "spleen"], gpu_model, EngineOptions(device="cuda", amp=False)).labels
    assert gpu_model.device.type == "cuda"
    assert np.array_equal(cpu, gpu)


@cuda
def test_real_model_on_cuda_with_amp_agrees_with_fp32():
    from automedsam.loading import load_model

    model = load_model(None)
    model.attach_new_class_prompt_encoder(["liver"])
    volume = phantom(shape_kji=(3, 40, 48))
    with torch.no_grad():
        fp32 = segment(volume, ["liver"], model, EngineOptions(device="cuda", amp=False, postprocess=False)).labels
        amp = segment(volume, ["liver"], model, EngineOptions(device="cuda", amp=True, postprocess=False)).labels
    agree = (fp32 == amp).mean()
    assert agree > 0.99


@cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_on_cuda_keeps_the_masks(precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    from automedsam.loading import load_model

    model = load_model(None)
    model.attach_new_class_prompt_encoder(["liver"])
    volume = phantom(shape_kji=(3, 40, 48))
    options = {"device": "cuda", "postprocess": False, "encoder_backend": "torch"}
    with torch.no_grad():
        fp32 = segment(volume, ["liver"], model, EngineOptions(precision="fp32", **options)).labels
        reduced = segment(volume, ["liver"], model, EngineOptions(precision=precision, **options)).labels
    assert (fp32 == reduced).mean() > 0.99


@cuda
def test_auto_precision_on_cuda_is_reduced_and_batches_follow_free_memory():
    from automedsam.acceleration import plan_encoder
    from automedsam.engine import _default_batch_size

    plan = plan_encoder(torch.device("cuda"))
    assert plan.backend == "torch" and plan.precision in ("bf16", "fp16")
    free, _ = torch.cuda.mem_get_info()
    assert _default_batch_size(torch.device("cuda")) == max(1, min(64, free // (256 * 1024**2)))


@cuda
def test_gpu_memory_is_bounded_by_the_batch():
    model = FakeModel()
    torch.cuda.reset_peak_memory_stats()
    segment(phantom(shape_kji=(4, 40, 48)), ["liver"], model, EngineOptions(device="cuda", batch_size=2))
    small = torch.cuda.max_memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    segment(phantom(shape_kji=(16, 40, 48)), ["liver"], model, EngineOptions(device="cuda", batch_size=2))
    assert torch.cuda.max_memory_allocated() <= small * 1.5 + 1024**2
