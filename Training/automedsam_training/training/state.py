"""Training states for exact resume, written atomically and read back with `weights_only=True`.

A state (`<run>/state.pt`) holds the trained weights (class prompt encoder, mask decoder when trained, loss weights),
optimiser, scheduler and gradient-scaler states, every random number generator (torch CPU and CUDA, NumPy, Python),
the position in the data (epoch and batch within it; the sampling plan itself is a function of seed and epoch), the
step, the early-stopping bookkeeping and the configuration it was made with. The file is written to a temporary
name in the same folder, synced and renamed; on a full disk the previous state stays and no partial file remains.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from automedsam.errors import InputError
from automedsam.model.checkpoint import atomic_torch_save

STATE_FILE = "state.pt"
STATE_KIND = "automedsam-training-state"
STATE_VERSION = 1


def rng_states() -> dict[str, Any]:
    """Every generator's state as tensors and plain data (loadable with weights_only)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    version, python_state, python_gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(position), int(has_gauss),
                      float(gauss)],
            "python": [version, list(python_state), python_gauss]}


def restore_rng_states(states: dict[str, Any]) -> None:
    """Put the generators back where `rng_states` found them."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    kind, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    version, python_state, python_gauss = states["python"]
    random.setstate((version, tuple(python_state), python_gauss))


def save_state(path: Path, state: dict[str, Any]) -> Path:
    """Write a training state atomically; `OutputError` (and the previous file untouched) on failure."""
    path = Path(path)
    payload = {"kind": STATE_KIND, "version": STATE_VERSION, **state}
    return atomic_torch_save(payload, Path(path), "training state",
                             "the previous state was kept (free some disk space and resume)")


def load_state(path: Path) -> dict[str, Any]:
    """Read a training state (weights only); `InputError` when it is missing or not a training state."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no training state at {path}; nothing to resume (start without --resume)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise InputError(f"the training state {path} cannot be read ({str(error).splitlines()[0]}); it is damaged: "
                         "resume from an earlier copy or start again") from error
    if not isinstance(state, dict) or state.get("kind") != STATE_KIND or state.get("version") != STATE_VERSION:
        raise InputError(f"{path} is not a training state of this version")
    return state
