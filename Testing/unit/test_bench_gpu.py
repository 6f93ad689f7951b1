"""The GPU benchmark's CPU side: it parses its arguments, names what a machine lacks, and refuses without a GPU in
one line (exit 2) instead of a traceback. Its GPU part runs only on a GPU machine (docs/benchmarks.md)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench_gpu():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCHMARKS / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_arguments_default_to_the_issue_run_and_reject_more_than_eight_classes(bench_gpu):
    args = bench_gpu.parse_args([])
    assert (args.slices, args.classes, args.skip_oom, args.check) == (300, 8, False, False)
    assert bench_gpu.parse_args(["--slices", "40", "--classes", "1", "--skip-oom"]).slices == 40
    with pytest.raises(SystemExit):
        bench_gpu.parse_args(["--classes", "9"])


def test_a_machine_without_a_gpu_or_a_package_is_told_what_is_missing(bench_gpu, monkeypatch):
    assert all("GPU" not in words for words in bench_gpu.missing_requirements(lambda: True))
    monkeypatch.setitem(bench_gpu.PACKAGES, "no_such_package_xyz", "no-such-package (for the test)")
    missing = bench_gpu.missing_requirements(lambda: False)
    assert missing[0].startswith("a CUDA GPU") and "no-such-package (for the test)" in missing


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the script would run")
def test_without_a_gpu_the_script_refuses_in_one_line():
    environment = {**os.environ, "PYTHON": sys.executable}   # the interpreter running the tests, venv or not
    run = subprocess.run(["bash", str(BENCHMARKS / "gpu.sh"), "--check"], capture_output=True, text=True, timeout=120,
                         env=environment)
    assert run.returncode == 2
    assert run.stderr.strip().startswith("bench_gpu: cannot run here; missing: a CUDA GPU")
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_the_benchmark_is_run_by_the_interpreter_of_the_repository():
    script = (BENCHMARKS / "gpu.sh").read_text()
    assert ".venv/bin/python" in script and "timeout 600" in script
    assert sys.executable  # the test itself runs in the project's venv, as gpu.sh does
