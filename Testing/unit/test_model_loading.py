"""Loading a model reads each file once: one unpickling per file, one class prompt encoder, one SHA-256 per file.

Random LiteMedSAM weights in a registry of their own stand in for the shipped ones, so the counts are those of the
real loading code (`automedsam.loading`, `model.checkpoint`, `registry`) without the real model.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn

from automedsam import registry
from automedsam.errors import ModelError
from automedsam.loading import load_model
from automedsam.model import AutoMedSAM, ClassPromptConfig, ClassPromptModule, build_lite_medsam, save_checkpoint
from automedsam.registry import ModelRegistry

LIGHT = ClassPromptConfig(trunk_channels=32, trunk_mid_channels=32, head_channels=16, token_dim=32, class_dim=16)
CLASSES = ("liver", "spleen")


def _file_entry(path: Path) -> dict:
    return {"name": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "size": path.stat().st_size,
            "bundled": path.name}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    """A registry with random base weights ("litemedsam") and a class checkpoint trained on them ("mine")."""
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    base = build_lite_medsam().eval()
    torch.save(base.state_dict(), folder / "base.pth")
    base_file = _file_entry(folder / "base.pth")
    model = AutoMedSAM.from_lite_medsam(base, base_sha256=base_file["sha256"])
    model.attach_new_class_prompt_encoder(CLASSES, LIGHT)
    save_checkpoint(folder / "mine.automedsam.pt", model)
    common = {"encoder": "tinyvit", "input_size": 256, "license": "test", "source": "test"}
    entries = [{"id": "litemedsam", "title": "base", "kind": "base", "classes": [], "base": None, "default": True,
                "files": [base_file], **common},
               {"id": "mine", "title": "mine", "kind": "automedsam", "classes": list(CLASSES), "base": "litemedsam",
                "files": [_file_entry(folder / "mine.automedsam.pt")], **common}]
    (folder / "models.json").write_text(json.dumps(entries))
    return ModelRegistry.load(folder / "models.json")


@pytest.fixture()
def counts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Counter:
    """Counts of `torch.load` and SHA-256 computations per file name, of SHA-256 digests made anywhere (a second
    hashing helper would show there), and of class prompt encoders built."""
    monkeypatch.setenv("AUTOMEDSAM_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(registry, "_verified", {})   # no digest remembered from earlier tests
    counter: Counter = Counter()
    real_load, real_hash, real_sha256 = torch.load, registry._hash_file, hashlib.sha256

    def counting_load(file: object, *args: object, **kwargs: object) -> object:
        assert kwargs.get("weights_only") is True
        counter[f"load {Path(str(file)).name}"] += 1
        return real_load(file, *args, **kwargs)

    def counting_hash(path: Path) -> str:
        counter[f"hash {Path(path).name}"] += 1
        return real_hash(path)

    def counting_sha256(*args: object, **kwargs: object) -> object:
        counter["sha256 digests"] += 1
        return real_sha256(*args, **kwargs)

    def counting_init(module: nn.Module, *args: object, **kwargs: object) -> None:
        counter["class prompt encoders"] += 1
        nn.Module.__init__(module)

    monkeypatch.setattr(torch, "load", counting_load)
    monkeypatch.setattr(registry, "_hash_file", counting_hash)
    monkeypatch.setattr(hashlib, "sha256", counting_sha256)
    monkeypatch.setattr(ClassPromptModule, "__init__", counting_init)
    return counter


def test_a_users_checkpoint_is_read_once_and_its_encoder_built_once(models: ModelRegistry, counts: Counter) -> None:
    path = models.root / "mine.automedsam.pt"
    model = load_model(path, registry=models)
    assert model.classes == CLASSES
    assert counts == {"load mine.automedsam.pt": 1, "load base.pth": 1, "class prompt encoders": 1,
                      "hash base.pth": 1, "sha256 digests": 1}   # a user's own file has no registry checksum


def test_a_registry_checkpoint_is_read_once_and_each_file_hashed_once(models: ModelRegistry, counts: Counter) -> None:
    model = load_model("mine", registry=models)
    assert model.classes == CLASSES
    assert counts == {"load mine.automedsam.pt": 1, "load base.pth": 1, "class prompt encoders": 1,
                      "hash base.pth": 1, "hash mine.automedsam.pt": 1, "sha256 digests": 2}


def test_a_checkpoint_for_other_base_weights_is_refused_before_they_are_read(models: ModelRegistry,
                                                                             counts: Counter, tmp_path: Path) -> None:
    model = load_model("mine", registry=models)
    model.base_sha256 = "ef" * 32
    other = save_checkpoint(tmp_path / "other.automedsam.pt", model)
    counts.clear()
    with pytest.raises(ModelError, match=f"trained on LiteMedSAM weights with SHA-256 {'ef' * 32}"):
        load_model(other, registry=models)
    assert counts["load base.pth"] == 0
