"""Model files that are not ours: refused with what they are, never loaded unsafely, never advised to be."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from cli_harness import assert_refused

from automedsam.loading import load_model as real_load_model

pytestmark = pytest.mark.realmodel


@pytest.fixture
def real_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("automedsam.loading.load_model", real_load_model)


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


def test_a_raw_pickle_is_called_not_a_checkpoint(workspace, real_models):
    model = workspace.folder / "raw.automedsam.pt"
    marker = workspace.folder / "code_ran"
    model.write_bytes(pickle.dumps({"format_version": 1, "payload": _RunsCode(marker)}))
    outcome = workspace.segment("-c", "liver", "--model", model)
    assert_refused(outcome, "is a Python pickle, not an AutoMedSAM/PyTorch weights file")
    assert "weights_only" not in outcome.err and not marker.exists()


def test_a_checkpoint_with_code_is_refused_without_unsafe_advice(workspace, real_models):
    model = workspace.folder / "evil.automedsam.pt"
    marker = workspace.folder / "code_ran"
    torch.save({"format_version": 1, "payload": _RunsCode(marker)}, model)
    outcome = workspace.segment("-c", "liver", "--model", model)
    assert_refused(outcome, "contains executable code")
    assert "weights_only" not in outcome.err and "False" not in outcome.err and not marker.exists()


@pytest.mark.parametrize("kept", [600, 20000])   # torch reports the second cut as an OSError (EINVAL)
def test_a_truncated_checkpoint(workspace, real_models, kept):
    model = workspace.folder / "half.automedsam.pt"
    torch.save({"format_version": 1, "weights": torch.zeros(20000)}, model)
    model.write_bytes(model.read_bytes()[:kept])
    outcome = workspace.segment("-c", "liver", "--model", model)
    assert_refused(outcome, "is truncated or corrupt")
    assert outcome.error_lines[0].endswith(("again", "again."))
