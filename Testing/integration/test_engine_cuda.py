"""The CUDA path of the engine: runs where a GPU is present, skipped elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_fakes import FakeModel, phantom

from automedsam.engine import EngineOptions, resolve_device, segment
from automedsam.errors import InputError

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_asking_for_an_absent_gpu_is_an_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    for device in ("cuda", "cuda:0"):
        with pytest.raises(InputError, match="no CUDA GPU is available"):
            resolve_device(device)
    assert resolve_device("auto").type == "cpu"


@cuda
def test_cuda_run_matches_the_cpu_run():
    cpu = segment(phantom(), ["liver", "spleen"], FakeModel(), EngineOptions(device="cpu")).labels
    gpu_model = FakeModel()
    gpu = segment(phantom(), ["liver", "spleen"], gpu_model, EngineOptions(device="cuda", precision="fp32")).labels
    assert gpu_model.device.type == "cuda"
    assert np.array_equal(cpu, gpu)


def _sample_slices(path, count: int = 3):
    """`count` central slices of the bundled sample CT (real anatomy, so the shipped model draws organs)."""
    from automedsam.io import read_volume
    from automedsam.volume import Volume

    volume = read_volume(path, "CT")
    start = volume.array.shape[0] // 2 - count // 2
    shift = np.eye(4)
    shift[2, 3] = start
    return Volume(np.ascontiguousarray(volume.array[start:start + count]), volume.ijk_to_ras @ shift, "CT")


@cuda
@pytest.mark.parametrize("precision", ["auto", "fp16", "bf16"])
def test_reduced_precision_on_cuda_keeps_the_masks_of_the_shipped_model(precision, sample_ct_path):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    from automedsam.loading import load_model
    from automedsam.metrics import dice

    model = load_model(None)
    volume = _sample_slices(sample_ct_path)
    classes = ["liver", "spleen", "aorta"]
    options = {"device": "cuda", "postprocess": False, "encoder_backend": "torch"}
    with torch.no_grad():
        fp32 = segment(volume, classes, model, EngineOptions(precision="fp32", **options))
        reduced = segment(volume, classes, model, EngineOptions(precision=precision, **options))
    assert fp32.mask("liver").any()
    scores = {key: dice(reduced.mask(key), fp32.mask(key)) for key in classes if fp32.mask(key).any()}
    assert min(scores.values()) >= 0.99, scores


@cuda
def test_auto_precision_on_cuda_is_reduced_and_batches_follow_free_memory():
    from automedsam.acceleration import plan_execution
    from automedsam.runner import default_batch_size

    plan = plan_execution(torch.device("cuda"))
    assert plan.backend == "torch" and plan.precision in ("bf16", "fp16")
    free, _ = torch.cuda.mem_get_info()
    assert default_batch_size(torch.device("cuda")) == max(1, min(64, free // (256 * 1024**2)))


@cuda
def test_gpu_memory_is_bounded_by_the_batch():
    model = FakeModel()
    torch.cuda.reset_peak_memory_stats()
    segment(phantom(shape_kji=(4, 40, 48)), ["liver"], model, EngineOptions(device="cuda", batch_size=2))
    small = torch.cuda.max_memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    segment(phantom(shape_kji=(16, 40, 48)), ["liver"], model, EngineOptions(device="cuda", batch_size=2))
    assert torch.cuda.max_memory_allocated() <= small * 1.5 + 1024**2
