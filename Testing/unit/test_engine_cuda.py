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
