"""Engine benchmark: encoder and decoder times, class scaling, cache speed-up, memory, achieved vs peak GFLOP/s.

Everything is measured in one run on this machine and printed as ratios next to the targets of DESIGN.md section
10 (never asserted in tests). The class prompt encoder is untrained here: its cost does not depend on its weights.

    python benchmarks/bench_engine.py [--slices 10] [--device cpu] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from automedsam.engine import EmbeddingCache, EngineOptions, segment
from automedsam.io import read_volume
from automedsam.loading import load_model
from automedsam.preprocess import PreprocessConfig, normalize_volume, to_model_input
from automedsam.resources import resource_path
from automedsam.volume import Volume, canonical_view

CLASSES_8 = ("liver", "spleen", "kidney_left", "kidney_right", "aorta", "stomach", "pancreas", "gallbladder")


def cpu_peak_gflops() -> tuple[float, str]:
    """fp32 peak of the cores this process may use: cores x clock x FLOP/cycle (from the CPU's flags)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    vendor = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("vendor_id")), "")
    mhz = [float(line.split(":", 1)[1]) for line in info.splitlines() if line.startswith("cpu MHz")]
    clock_ghz = (max(mhz) / 1000.0) if mhz else 2.5
    if "avx512f" in flags and vendor == "GenuineIntel":
        per_cycle, isa = 64, "AVX-512, 2 FMA units"
    elif "avx512f" in flags or ("avx2" in flags and "fma" in flags):
        per_cycle, isa = 32, "2 x 256-bit FMA (AVX2 / AVX-512 on 256-bit pipes)"
    else:
        per_cycle, isa = 16, "SSE/other"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cores = min(cores, torch.get_num_threads())
    peak = cores * clock_ghz * per_cycle
    bf16 = " (avx512_bf16 present)" if "avx512_bf16" in flags else ""
    return peak, f"{cores} cores x {clock_ghz:.2f} GHz x {per_cycle} FLOP/cycle [{isa}]{bf16}"


def timed(function: Callable[[], object], repeats: int) -> float:
    """Median wall time of `function` in seconds after one warm-up call."""
    function()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def central_slices(volume: Volume, count: int) -> Volume:
    """`count` central k-slices (geometry kept) of an axially stored volume, to bound the run time."""
    start = max(0, volume.array.shape[0] // 2 - count // 2)
    shift = np.eye(4)
    shift[2, 3] = start
    return Volume(np.ascontiguousarray(volume.array[start:start + count]), volume.ijk_to_ras @ shift, volume.modality)


def flops_of(function: Callable[[], object]) -> int:
    """Floating point operations of one call, counted by torch's FlopCounterMode."""
    with FlopCounterMode(display=False) as counter:
        function()
    return counter.get_total_flops()


def model_parts(model: torch.nn.Module, volume: Volume, device: torch.device, repeats: int) -> dict[str, float]:
    """Per-slice encoder, box decoder, and class prompt (1 and 8 classes) times and FLOPs."""
    config = PreprocessConfig.from_dict(model.preprocessing)
    view = canonical_view(volume)
    normalized = normalize_volume(view.apply(volume.array), volume.modality, config)
    images, _ = to_model_input(normalized[len(normalized) // 2:len(normalized) // 2 + 1], config.image_size)
    images = images.to(device)
    box = torch.tensor([[60.0, 60.0, 180.0, 180.0]], device=device)
    with torch.inference_mode():
        embedding = model.encode(images)
        one, eight = (torch.arange(n, device=device) for n in (1, 8))
        parts = {
            "encoder_s": timed(lambda: model.encode(images), repeats),
            "encoder_flop": flops_of(lambda: model.encode(images)),
            "box_decoder_s": timed(lambda: model.segment_boxes(embedding, box), repeats),
            "box_decoder_flop": flops_of(lambda: model.segment_boxes(embedding, box)),
            "class_1_s": timed(lambda: model.segment_classes(embedding, one), repeats),
            "class_8_s": timed(lambda: model.segment_classes(embedding, eight), repeats),
            "class_1_flop": flops_of(lambda: model.segment_classes(embedding, one)),
        }
    return parts


def engine_runs(model: torch.nn.Module, volume: Volume, device: str) -> dict[str, float]:
    """Whole-engine times: 1 class, 8 classes, and a cached re-run with other classes."""
    def run(classes: tuple[str, ...], cache: EmbeddingCache | None = None) -> float:
        start = time.perf_counter()
        segment(volume, classes, model, EngineOptions(device=device, cache=cache))
        return time.perf_counter() - start

    cache = EmbeddingCache()
    return {"one_class_s": run(CLASSES_8[:1]), "eight_classes_s": run(CLASSES_8),
            "first_cached_s": run(CLASSES_8[:1], cache), "rerun_cached_s": run(CLASSES_8[1:3], cache)}


def report(parts: dict[str, float], runs: dict[str, float], slices: int, device: str) -> None:
    """Print the measurements and the targets as ratios with PASS/FAIL."""
    peak, how = cpu_peak_gflops()
    achieved = parts["encoder_flop"] / parts["encoder_s"] / 1e9
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    rows = [
        ("encoder per slice", f"{parts['encoder_s'] * 1000:.0f} ms ({parts['encoder_flop'] / 1e9:.1f} GFLOP)", ""),
        ("box prompt + decoder per slice", f"{parts['box_decoder_s'] * 1000:.0f} ms "
         f"({parts['box_decoder_flop'] / 1e9:.2f} GFLOP)", ""),
        ("class prompt + decoder, 1 class", f"{parts['class_1_s'] * 1000:.0f} ms "
         f"({parts['class_1_flop'] / 1e9:.2f} GFLOP)", ""),
        ("class prompt + decoder per class, 8 classes", f"{parts['class_8_s'] * 1000 / 8:.0f} ms", ""),
        (f"engine, {slices} slices, 1 class", f"{runs['one_class_s']:.1f} s", ""),
        (f"engine, {slices} slices, 8 classes", f"{runs['eight_classes_s']:.1f} s", ""),
    ]
    ratio8 = runs["eight_classes_s"] / runs["one_class_s"]
    speedup = runs["first_cached_s"] / runs["rerun_cached_s"]
    targets = [
        ("time(8 classes) / time(1 class)", f"{ratio8:.2f}", "<= 1.5", ratio8 <= 1.5),
        ("cached re-run speed-up (other classes)", f"{speedup:.1f}x", ">= 8x", speedup >= 8),
        ("encoder achieved / peak (fp32)", f"{achieved:.0f} / {peak:.0f} GFLOP/s = {achieved / peak:.0%}",
         ">= 50%", achieved / peak >= 0.5),
        ("peak RSS", f"{rss_gb:.2f} GB", "(<= 3 GB for a 512x512x300 CT: see docs)", None),
    ]
    print(f"\nAutoMedSAM engine benchmark - torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"device {device}, {torch.get_num_threads()} threads\npeak: {how}\n")
    for name, value, _ in rows:
        print(f"  {name:<46} {value}")
    print()
    for name, value, target, ok in targets:
        verdict = "" if ok is None else ("PASS" if ok else "FAIL")
        print(f"  {name:<46} {value:<34} target {target:<10} {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=10, help="central slices of the sample CT to run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    model = load_model(None)
    model.attach_new_class_prompt_encoder(CLASSES_8)
    model.to(device).eval()
    volume = central_slices(read_volume(resource_path("SampleData", "example_ct_sm.nii.gz"), "CT"), args.slices)
    parts = model_parts(model, volume, device, args.repeats)
    runs = engine_runs(model, volume, args.device)
    report(parts, runs, args.slices, args.device)

if __name__ == "__main__":
    main()
