"""Refinement benchmark: one refinement (the mask decoder with the class prompt plus point and box tokens, on a
cached slice embedding) against one encoder pass of the same slice, on this machine's CPU, printed as a ratio.

Issue 14 asks a refinement to take under 10 % of an encoder pass on the CPU. Runs are interleaved (encode, refine,
encode, ...) so that load from other processes hits both alike; read the ratio, not the absolute times.

    python benchmarks/bench_refine.py [--repeats 5] [--backend torch|openvino|auto]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from automedsam.engine import EmbeddingCache, EngineOptions
from automedsam.io import read_volume
from automedsam.loading import load_model
from automedsam.preprocess import to_model_input
from automedsam.refine import SliceDecoder, SlicePrompts
from automedsam.resources import resource_path


def main() -> None:
    """Time `repeats` encoder passes and refinements of the sample CT's middle slice; print medians and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backend", default="torch", choices=["torch", "openvino", "auto"])
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    volume = read_volume(resource_path("SampleData", "example_ct_sm.nii.gz"), "CT")
    model = load_model(None)
    options = EngineOptions(device="cpu", encoder_backend=args.backend, precision="fp32", cache=EmbeddingCache())
    decoder = SliceDecoder(volume, model, options)
    index = decoder.normalized.shape[0] // 2
    images, _ = to_model_input(decoder.normalized[index:index + 1], decoder.config.image_size)
    rows, cols = decoder.normalized.shape[1:]
    prompts = SlicePrompts(index, ((rows // 2, cols // 2, True), (rows // 3, cols // 3, False)),
                           (rows // 4, cols // 4, 3 * rows // 4, 3 * cols // 4))
    decoder.decode(index, model.class_index("liver"), prompts)   # warm-up; caches the embedding
    encode, refine = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        decoder.runner.encode(images)
        encode.append(time.perf_counter() - start)
        start = time.perf_counter()
        decoder.decode(index, model.class_index("liver"), prompts)
        refine.append(time.perf_counter() - start)
    e, r = statistics.median(encode), statistics.median(refine)
    print(f"encoder pass ({decoder.runner.plan.label}): {e * 1000:.0f} ms; refinement (class prompt + 2 points + "
          f"box, cached embedding): {r * 1000:.0f} ms; ratio {r / e:.3f} (target < 0.10) "
          f"[{torch.get_num_threads()} threads, {args.repeats} repeats, medians]")
    print(f"encoder runs during refinements: {'none' if decoder.cache.misses == 1 else decoder.cache.misses - 1}")


if __name__ == "__main__":
    main()
