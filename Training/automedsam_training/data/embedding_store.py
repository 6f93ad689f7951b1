"""On-disk embedding cache: the frozen image encoder runs once per slice (and augmented copy), ever.

One folder per case and key, `<root>/<case id>-<key[:20]>/`, holding `embeddings.npy` (fp16, (V * S, 256, 64, 64):
row v * S + s is slice s of variant v, read memory-mapped) and `meta.json` (the full key and what went into it).
The key hashes the volume's voxels and geometry (`EmbeddingCache.volume_key`, the engine's cache key), the
preprocessing settings, the encoder id and its weights' SHA-256, the augmentation settings and the number of
variants; when any of them changes the key changes, the embeddings are computed again and the case's stale folders
are removed. Files are written to temporary names and renamed when complete, so an interrupted run or a full disk
never leaves a file that looks complete.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from automedsam.engine import EmbeddingCache
from automedsam.errors import OutputError

from .prepared_case import PreparedCase

STORE_VERSION = 1
EMBEDDINGS_FILE = "embeddings.npy"
META_FILE = "meta.json"
Progress = Callable[[int, int, str], None]


def encoder_identity(model: Any) -> tuple[str, str]:
    """(encoder id, SHA-256 of the encoder weights) of a model; "unverified" when the weights have no checksum."""
    return str(getattr(model, "encoder_id", type(model).__name__)), str(getattr(model, "base_sha256", None)
                                                                         or "unverified")


def store_key(case: PreparedCase, model: Any) -> tuple[str, dict[str, Any]]:
    """The cache key of a case's embeddings and the parts it hashes."""
    encoder_id, encoder_sha = encoder_identity(model)
    parts = {"store_version": STORE_VERSION, "case": case.case_id,
             "volume": EmbeddingCache.volume_key(case.volume, case.config.to_dict(), encoder_id),
             "preprocessing": case.config.to_dict(), "encoder_id": encoder_id, "encoder_sha256": encoder_sha,
             "augmentation": case.augment.encoding_dict(), "variants": 1 + case.augment.variants}
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return digest, parts


class EmbeddingStore:
    """Memory-mapped fp16 embeddings per case under `root` (see the module docstring)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser()
        self.computed_rows = 0   # encoder rows computed by this object (tests and logs read it)

    def folder(self, case: PreparedCase, key: str) -> Path:
        """Folder of a case's embeddings under `key`."""
        return self.root / f"{case.case_id}-{key[:20]}"

    def lookup(self, case: PreparedCase, model: Any) -> np.ndarray | None:
        """The cached embeddings (memory-mapped, read-only) if complete and with the current key, else None."""
        key, _ = store_key(case, model)
        folder = self.folder(case, key)
        try:
            meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        if meta.get("key") != key:
            return None
        try:
            embeddings = np.load(folder / EMBEDDINGS_FILE, mmap_mode="r")
        except (OSError, ValueError):
            return None
        rows = (1 + case.augment.variants) * case.slices
        return embeddings if embeddings.shape[0] == rows and embeddings.dtype == np.float16 else None

    def embeddings(self, case: PreparedCase, model: Any, device: torch.device, batch_size: int = 4,
                   progress: Progress | None = None) -> np.ndarray:
        """The case's embeddings, computed (and stored) when the cache lacks them; (V * S, D, G, G) fp16."""
        found = self.lookup(case, model)
        if found is not None:
            return found
        key, parts = store_key(case, model)
        folder = self.folder(case, key)
        try:
            self._compute(case, model, device, batch_size, folder, key, parts, progress)
        except OSError as error:
            shutil.rmtree(folder, ignore_errors=True)
            reason = "the disk is full" if error.errno == errno.ENOSPC else (error.strerror or str(error))
            raise OutputError(f"cannot write the embedding cache {folder}: {reason}; nothing was kept (free some "
                              "space or set run.cache_dir to another folder)") from error
        self._remove_stale(case, folder)
        found = self.lookup(case, model)
        if found is None:
            raise OutputError(f"the embedding cache {folder} could not be read back after writing it")
        return found

    def _compute(self, case: PreparedCase, model: Any, device: torch.device, batch_size: int, folder: Path,
                 key: str, parts: dict[str, Any], progress: Progress | None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / META_FILE).unlink(missing_ok=True)
        variants, slices = 1 + case.augment.variants, case.slices
        jobs = [(v, list(range(start, min(start + batch_size, slices))))
                for v in range(variants) for start in range(0, slices, batch_size)]
        partial = folder / f".{EMBEDDINGS_FILE}.part"
        try:
            target = None
            for done, (variant, batch) in enumerate(jobs):
                images, _ = case.model_input(batch, variant)
                with torch.inference_mode():
                    output = model.encode(images.to(device)).float().cpu().numpy().astype(np.float16)
                if target is None:
                    target = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16,
                                                       shape=(variants * slices, *output.shape[1:]))
                target[variant * slices + batch[0]: variant * slices + batch[-1] + 1] = output
                self.computed_rows += len(batch)
                if progress is not None:
                    progress(done + 1, len(jobs), f"encoding {case.case_id}")
            _flush(target)
            os.replace(partial, folder / EMBEDDINGS_FILE)
        finally:
            with contextlib.suppress(OSError):
                partial.unlink()
        _write_json(folder / META_FILE, {"key": key, **parts})

    def _remove_stale(self, case: PreparedCase, keep: Path) -> None:
        """Delete this case's folders made under other keys (they can never be used again)."""
        for other in self.root.glob(f"{case.case_id}-*"):
            if other != keep and other.is_dir() and len(other.name) == len(keep.name):
                shutil.rmtree(other, ignore_errors=True)


def _flush(target: np.memmap | None) -> None:
    if target is None:
        return
    target.flush()
    with open(target.filename, "rb+") as handle:
        os.fsync(handle.fileno())


def _write_json(path: Path, data: dict[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.part")
    try:
        temporary.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()
