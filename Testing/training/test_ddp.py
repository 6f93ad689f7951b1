"""DDP on the CPU: two processes with the gloo backend train the tiny model the way `torchrun` would run them."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from training_fakes import tiny_config, tiny_factory, tiny_trainer

from automedsam_training.training.logs import read_rows
from automedsam_training.training.trainer import Trainer


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _worker(rank: int, world: int, folder: str, spec: str, port: int) -> None:
    """One torchrun-like process: the environment torchrun sets, then an ordinary trainer run."""
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    config = tiny_config(Path(folder), Path(spec), **{"optim.steps": 3, "optim.batch_size": 1, "run.validate_every": 3,
                                          "run.checkpoint_every": 3})
    trainer = Trainer(config, model_factory=tiny_factory, say=lambda message: None)
    try:
        trainer.run()
        weights = {k: v.clone() for k, v in trainer.model.class_prompt_encoder.state_dict().items()}
        torch.save(weights, os.path.join(folder, f"weights_rank{rank}.pt"))
    finally:
        trainer.close()


def test_two_gloo_processes_train_in_step_and_only_rank_0_writes(tmp_path, spec_path):
    folder = tmp_path / "ddp"
    mp.spawn(_worker, args=(2, str(folder), str(spec_path), _free_port()), nprocs=2, join=True)
    rank0 = torch.load(folder / "weights_rank0.pt", weights_only=True)
    rank1 = torch.load(folder / "weights_rank1.pt", weights_only=True)
    assert all(torch.equal(rank0[key], rank1[key]) for key in rank0)      # DDP kept the replicas identical
    rows = read_rows(folder / "run" / "train_log.csv")
    assert [r["step"] for r in rows] == ["1", "2", "3"]                     # one writer
    assert (folder / "run" / "model.automedsam.pt").exists() and (folder / "run" / "state.pt").exists()
    tiny_trainer(tmp_path / "single", spec_path, **{"optim.steps": 1, "optim.batch_size": 2}).run()
    single = read_rows(tmp_path / "single" / "run" / "train_log.csv")[0]
    # rank r takes samples r, r + 2, ... of the shuffled epoch: together one step sees what batch 2 sees
    assert float(rows[0]["loss/total"]) == pytest.approx(float(single["loss/total"]), rel=1e-5)
