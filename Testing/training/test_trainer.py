"""The trainer on a tiny model and phantom data: it learns, resumes exactly, refuses a changed configuration, stops
on NaN with a checkpoint, survives a full disk, logs and exports a checkpoint the package loads."""

from __future__ import annotations

import errno
import math

import pytest
import torch
from torch.utils.data import default_collate
from training_fakes import TINY_SHA256, tiny_config, tiny_factory, tiny_model, tiny_trainer

import automedsam_training.training.state as state_module
import automedsam_training.training.step as step_module
from automedsam.errors import InputError, OutputError
from automedsam.model import apply_checkpoint, load_checkpoint
from automedsam_training.data.dataset_spec import save_spec
from automedsam_training.data.folder_import import import_nnunet_folder
from automedsam_training.training.logs import read_rows
from automedsam_training.training.state import load_state
from automedsam_training.training.trainer import Trainer, TrainingDiverged


def _weights(run_folder) -> dict[str, torch.Tensor]:
    return load_state(run_folder / "state.pt")["trained"]["class_prompt_encoder"]


class Killed(Exception):
    """Stands for the process being killed after a step."""


def test_training_learns_logs_and_exports(tmp_path, spec_path):
    result = tiny_trainer(tmp_path, spec_path, **{"optim.steps": 40, "run.validate_every": 20,
                                              "run.checkpoint_every": 20,
                                              "model.class_prompt": {"variant": "anatomy"},
                                              "loss.presence_balance": False}).run()
    rows = read_rows(tmp_path / "run" / "train_log.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 41))
    first, last = (sum(float(r["loss/presence"]) for r in part) / len(part) for part in (rows[:10], rows[-10:]))
    assert last < 0.8 * first                                              # presence is learned
    assert all(math.isnan(float(r["loss/distillation"])) for r in rows)   # off by default
    dense_out = _weights(tmp_path / "run")["dense_out.weight"]
    assert dense_out.abs().sum() > 0                       # zero-initialised, moved only by the mask loss
    assert len(read_rows(tmp_path / "run" / "validation_log.csv")) == 2
    for name in ("losses.png", "validation_dice.png", "model.automedsam.pt", "last.automedsam.pt"):
        assert (tmp_path / "run" / name).stat().st_size > 0
    checkpoint = load_checkpoint(result.model_path, base_sha256=TINY_SHA256)
    assert checkpoint.classes == ("liver", "spleen") and checkpoint.mask_decoder_state is None
    assert checkpoint.training["config"]["optim"]["steps"] == 40
    assert [c["id"] for c in checkpoint.training["data"]["cases"]] == ["case_000", "case_001"]
    assert len(checkpoint.training["data"]["cases"][0]["image_sha256"]) == 64
    assert 0.0 <= checkpoint.metrics["validation"]["dice"] <= 1.0
    restored = tiny_model(seed=5)
    apply_checkpoint(restored, checkpoint)                                      # the package's own loader accepts it
    assert restored.classes == ("liver", "spleen")


def test_killed_run_resumes_to_the_same_weights(tmp_path, spec_path):
    tiny_trainer(tmp_path / "a", spec_path).run()

    def kill_at_step_3(step: int) -> None:
        if step == 3:
            raise Killed

    config = tiny_config(tmp_path / "b", spec_path)
    with pytest.raises(Killed):
        Trainer(config, model_factory=tiny_factory, on_step=kill_at_step_3, say=lambda m: None).run()
    assert load_state(tmp_path / "b" / "run" / "state.pt")["position"]["step"] == 2   # the last checkpoint
    result = Trainer(config, model_factory=tiny_factory, say=lambda m: None).run(resume=True)
    assert result.steps == 6
    expected, resumed = _weights(tmp_path / "a" / "run"), _weights(tmp_path / "b" / "run")
    assert expected.keys() == resumed.keys()
    assert all(torch.equal(expected[key], resumed[key]) for key in expected)
    assert [r["step"] for r in read_rows(tmp_path / "b" / "run" / "train_log.csv")] == [str(s) for s in range(1, 7)]


def _gradients(module, batches) -> dict[str, torch.Tensor]:
    module.zero_grad()
    for batch in batches:
        (module(batch)["total"] / len(batches)).backward()
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def test_split_batches_give_the_gradient_of_the_whole_batch(tmp_path, spec_path):
    """Losses are per-sample means, so accumulation (and DDP, which averages over processes) is exact."""
    trainer = tiny_trainer(tmp_path / "a", spec_path, **{"optim.steps": 1})
    trainer.run()
    samples = [trainer.plan[i] for i in range(4)]
    whole = _gradients(trainer.module, [default_collate(samples)])
    halves = _gradients(trainer.module, [default_collate(samples[:2]), default_collate(samples[2:])])
    singles = _gradients(trainer.module, [default_collate([s]) for s in samples])
    assert whole.keys() == halves.keys() and len(whole) > 10
    for name in whole:
        assert torch.allclose(whole[name], halves[name], rtol=1e-4, atol=1e-7), name
        assert torch.allclose(whole[name], singles[name], rtol=1e-4, atol=1e-7), name
    tiny_trainer(tmp_path / "b", spec_path, **{"optim.steps": 2, "optim.batch_size": 1, "optim.accumulation": 2}).run()
    a, b = (read_rows(tmp_path / x / "run" / "train_log.csv")[0] for x in "ab")
    assert float(a["loss/total"]) == pytest.approx(float(b["loss/total"]), rel=1e-5)   # same samples per step


def test_resume_with_another_configuration_is_refused(tmp_path, spec_path):
    tiny_trainer(tmp_path, spec_path, **{"optim.steps": 2}).run()
    with pytest.raises(InputError, match="already holds a training state"):
        tiny_trainer(tmp_path, spec_path, **{"optim.steps": 2}).run()
    with pytest.raises(InputError, match=r"data.samples_per_class: 4 -> 8; optim.lr: 0.003 -> 0.001"):
        tiny_trainer(tmp_path, spec_path, **{"optim.steps": 2, "optim.lr": 1e-3, "data.samples_per_class": 8}) \
            .run(resume=True)
    tiny_trainer(tmp_path, spec_path, **{"optim.steps": 2, "run.device": "auto"}).run(resume=True)  # harmless change


def test_nan_loss_stops_with_the_state_before_the_batch(tmp_path, spec_path, monkeypatch):
    calls = {"n": 0}
    real = step_module.mask_loss

    def poisoned(logits, target):
        calls["n"] += 1
        value = real(logits, target)
        return value * math.nan if calls["n"] == 4 else value

    monkeypatch.setattr(step_module, "mask_loss", poisoned)
    with pytest.raises(TrainingDiverged, match=r"not finite .*step 4, epoch 0, batch 3 \(case case_00\d slice \d+"):
        tiny_trainer(tmp_path, spec_path, **{"run.checkpoint_every": 100}).run()
    state = load_state(tmp_path / "run" / "state.pt")
    assert state["position"]["step"] == 3 and state["position"]["batch"] == 3
    monkeypatch.undo()
    assert tiny_trainer(tmp_path, spec_path, **{"run.checkpoint_every": 100}).run(resume=True).steps == 6


def test_disk_full_while_checkpointing_keeps_the_previous_state(tmp_path, spec_path, monkeypatch):
    trainer = tiny_trainer(tmp_path, spec_path, **{"optim.steps": 2})
    trainer.run()
    state_path = tmp_path / "run" / "state.pt"
    before = state_path.read_bytes()

    def full(payload, file):
        file.write(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(state_module.torch, "save", full)
    with pytest.raises(OutputError, match="disk is full; the previous state was kept"):
        trainer.save_state()
    assert state_path.read_bytes() == before
    assert not [p for p in state_path.parent.iterdir() if p.name.endswith(".part")]


def test_a_class_without_positive_slices_is_refused(tmp_path, spec_path):
    spec = import_nnunet_folder(spec_path.parent / "Dataset001_Phantoms")
    spec.cases[0].label_map[3] = "kidney_left"                     # labelled in the map, absent from the images
    path = save_spec(spec, tmp_path / "spec3.json")
    with pytest.raises(InputError, match=r"classes \['kidney_left'\] have no positive training slice"):
        tiny_trainer(tmp_path, path, **{"data.classes": ["liver", "kidney_left"]}).run()
    with pytest.raises(InputError, match=r"classes \['pancreas'\] are not labelled in any case"):
        tiny_trainer(tmp_path, path, **{"data.classes": ["liver", "pancreas"]}).run()


def test_early_stopping_and_tensorboard(tmp_path, spec_path, monkeypatch):
    import automedsam_training.training.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "validate", lambda *args, **kwargs: {"dice": 0.5, "per_class": {}})
    result = tiny_trainer(tmp_path, spec_path, **{"optim.steps": 20, "run.validate_every": 1,
                                              "run.early_stopping_patience": 2, "run.tensorboard": True}).run()
    assert result.stopped_early and result.steps == 3 and result.best_dice == 0.5
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_the_mask_decoder_can_be_trained_too(tmp_path, spec_path):
    result = tiny_trainer(tmp_path, spec_path, **{"optim.steps": 2, "model.train_mask_decoder": True,
                                                  "optim.decoder_lr": 1e-3, "run.validate_every": 0}).run()
    checkpoint = load_checkpoint(result.model_path, base_sha256=TINY_SHA256)
    untouched = tiny_model().mask_decoder.state_dict()
    tuned = checkpoint.mask_decoder_state
    assert tuned.keys() == untouched.keys()
    assert any(not torch.equal(tuned[key], untouched[key]) for key in tuned)
    restored = tiny_model(seed=3)
    apply_checkpoint(restored, checkpoint)
    assert restored.mask_decoder_tuned and torch.equal(restored.mask_decoder.state_dict()["iou_token.weight"],
                                                      tuned["iou_token.weight"])


def test_head_steps_train_presence_and_coarse_maps_before_the_mask(tmp_path, spec_path):
    """The first `optim.head_steps` steps skip the mask loss (no decoder); the coarse maps learn from the labels and
    presence by logit adjustment; then the mask loss joins."""
    overrides = {"optim.steps": 8, "optim.head_steps": 5, "loss.coarse": 1.0, "loss.coarse_exclusive": True,
                 "loss.presence_prior": True, "loss.presence_balance": False,
                 "model.class_prompt": {"variant": "anatomy", "coarse_maps": 1}}
    tiny_trainer(tmp_path, spec_path, **overrides).run()
    rows = read_rows(tmp_path / "run" / "train_log.csv")
    masks = [float(r["loss/mask"]) for r in rows]
    assert all(math.isnan(m) for m in masks[:5]) and all(math.isfinite(m) for m in masks[5:])
    assert all(math.isfinite(float(r["loss/coarse"])) and math.isfinite(float(r["loss/presence"])) for r in rows)
    with pytest.raises(InputError, match="head_steps"):
        tiny_config(tmp_path, spec_path, **{**overrides, "optim.head_steps": 8})
