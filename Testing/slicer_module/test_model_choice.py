"""The module's model choice without the application: a model file replaces the registry model, its classes and
origin are read from the checkpoint once per file version, and a file that cannot be used says why."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from automedsam.model import ClassPromptConfig, build_class_prompt_encoder
from automedsam.registry import ModelRegistry
from automedsam.slicer.model_choice import ModelChoice, ModelSummary, file_chosen, model_version, read_model_file

SMALL = dict(prompt_dim=32, grid_size=16, class_dim=16, trunk_channels=16, trunk_mid_channels=16, head_channels=16,
             token_dim=32, denoiser_heads=2, denoiser_depth=1)


def write_model_file(path: Path, classes: tuple[str, ...], training: dict | None = None) -> Path:
    """A valid `*.automedsam.pt` with an untrained small class prompt encoder for `classes`."""
    config = ClassPromptConfig(num_classes=len(classes), **SMALL)
    encoder = build_class_prompt_encoder(config)
    torch.save({"format_version": 1, "kind": "automedsam", "base_model": {"id": "litemedsam", "sha256": "ab" * 32},
                "model_config": config.to_dict(), "classes": list(classes), "preprocessing": {},
                "training": training or {}, "metrics": {},
                "state_dicts": {"class_prompt_encoder": encoder.state_dict()}}, path)
    return path


@pytest.fixture
def choice() -> ModelChoice:
    return ModelChoice(ModelRegistry.load())


def test_without_a_file_the_registry_model_is_used(choice) -> None:
    registry = ModelRegistry.load()
    for unset in (None, "", ".", Path()):
        assert not file_chosen(unset)
        summary = choice.summary("automedsam_default", unset)
        assert summary.spec == "automedsam_default" and summary.classes == registry.get("automedsam_default").classes
    assert choice.summary(None).spec == registry.default().id
    assert choice.summary("litemedsam").classes == ()
    assert "Unknown model 'nope'" in choice.summary("nope").problem


def test_a_model_file_replaces_the_registry_model_with_its_classes_and_origin(choice, tmp_path) -> None:
    path = write_model_file(tmp_path / "mine-ft1.automedsam.pt", ("liver", "adrenal_gland_left"),
                            {"init": {"model": "automedsam_default"}, "steps": 100,
                             "data": {"dataset": "Dataset900_Corrections"}})
    summary = choice.summary("automedsam_default", path)
    assert summary.spec == str(path.resolve()) and summary.classes == ("liver", "adrenal_gland_left")
    assert summary.problem is None and summary.title == ("Model file mine-ft1.automedsam.pt\nFine-tuned from "
                                                         "automedsam_default on Dataset900_Corrections (100 steps)")
    assert summary.version == model_version(str(path))


def test_a_file_is_read_once_per_version(tmp_path) -> None:
    reads: list[Path] = []

    def reader(path: Path) -> ModelSummary:
        reads.append(path)
        return read_model_file(path)

    choice = ModelChoice(ModelRegistry.load(), read_file=reader)
    path = write_model_file(tmp_path / "mine.automedsam.pt", ("liver",))
    first = choice.summary("automedsam_default", path)
    assert choice.summary("automedsam_default", str(path)) is first and len(reads) == 1
    write_model_file(path, ("liver", "spleen"))                      # a new training run replaced the file
    os.utime(path, ns=(first.version[1] + 10**9, first.version[1] + 10**9))
    second = choice.summary("automedsam_default", path)
    assert len(reads) == 2 and second.classes == ("liver", "spleen") and second != first


def test_a_file_that_cannot_be_used_says_why(choice, tmp_path) -> None:
    assert "does not exist; choose another file or clear it" in choice.summary(None, tmp_path / "x.automedsam.pt"
                                                                               ).problem
    other = tmp_path / "weights.pth"
    other.write_bytes(b"weights")
    assert "is not an AutoMedSAM model (*.automedsam.pt)" in choice.summary(None, other).problem
    damaged = tmp_path / "damaged.automedsam.pt"
    damaged.write_bytes(write_model_file(tmp_path / "good.automedsam.pt", ("liver",)).read_bytes()[:3000])
    problem = choice.summary(None, damaged).problem
    assert problem.startswith("checkpoint ") and "damaged.automedsam.pt" in problem and "\n" not in problem


def test_before_the_packages_are_installed_a_files_classes_are_unknown(tmp_path, monkeypatch) -> None:
    import builtins

    path = write_model_file(tmp_path / "mine.automedsam.pt", ("liver",))
    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name.endswith("model.checkpoint"):                       # `from ..model.checkpoint import ...`
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    choice = ModelChoice(ModelRegistry.load())
    summary = choice.summary(None, path)
    assert summary.classes is None and summary.problem is None
    monkeypatch.undo()
    assert choice.summary(None, path).classes == ("liver",)           # read as soon as it can be
