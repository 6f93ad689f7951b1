"""Refinement benchmark: one refinement (the mask decoder with the class prompt plus point and box tokens, on a
cached slice embedding) against one encoder pass of the same slice, on this machine's CPU, printed as a ratio.

Issue 14 asks a refinement to take under 10 % of an encoder pass on the CPU. Three refinements are timed: the first
click on a slice (the class prompt is made), a later click on it (the kept class prompt: the mask decoder only), and
the first click after `SliceDecoder.prepare` (what the module runs when the user jumps to a slice from the review
table; the preparation itself is timed apart). On the OpenVINO path the mask decoder runs in OpenVINO too.
Runs are interleaved (encode, first click, later click, encode, ...) so that load from other processes hits them
alike; read the ratios, not the absolute times.

    python benchmarks/bench_refine.py [--repeats 5] [--backend torch|openvino|auto]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

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
    liver = model.class_index("liver")
    encode, first, later, prepare, prepared = [], [], [], [], []
    for _ in range(args.repeats):
        encode.append(_timed(lambda: decoder.runner.encode(images)))
        decoder.class_prompts.clear()
        first.append(_timed(lambda: decoder.decode(index, liver, prompts)))
        later.append(_timed(lambda: decoder.decode(index, liver, prompts)))
        decoder.class_prompts.clear()
        prepare.append(_timed(lambda: decoder.prepare(index, liver)))
        prepared.append(_timed(lambda: decoder.decode(index, liver, prompts)))
    e, f, n, p, q = (statistics.median(times) for times in (encode, first, later, prepare, prepared))
    print(f"encoder pass ({decoder.runner.plan.label}): {e * 1000:.0f} ms; refinement (class prompt + 2 points + "
          f"box, cached embedding): first click on the slice {f * 1000:.0f} ms, ratio {f / e:.3f}; later click "
          f"{n * 1000:.0f} ms, ratio {n / e:.3f}; first click after a review jump prepared the slice "
          f"({p * 1000:.0f} ms, at the jump) {q * 1000:.0f} ms, ratio {q / e:.3f} (target < 0.10) "
          f"[{torch.get_num_threads()} threads, {args.repeats} repeats, medians]")
    print(f"encoder runs during refinements: {'none' if decoder.cache.misses == 1 else decoder.cache.misses - 1}")


def _timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
