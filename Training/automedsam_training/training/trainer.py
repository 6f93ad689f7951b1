"""The trainer: data and embedding cache, AdamW with warm-up + cosine schedule, AMP on GPU, gradient accumulation
and clipping, atomic checkpoints with exact resume, logs and plots, validation with early stopping, DDP.

A run lives in one folder (`run.output`): `state.pt` (the latest training state), `best.automedsam.pt` (best
validation Dice so far), `last.automedsam.pt`, `model.automedsam.pt` (the result: the best one when validation ran,
else the last), CSV logs, PNG plots and `tensorboard/`. Steps count optimiser steps.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from automedsam.catalog import default_catalog
from automedsam.engine import resolve_device
from automedsam.errors import AutoMedSAMError, InputError
from automedsam.model import AutoMedSAM
from automedsam.preprocess import PreprocessConfig

from ..config import TrainConfig, config_differences
from ..data.alignment import read_labelled_volume
from ..data.dataset_spec import DatasetSpec, load_spec
from ..data.embedding_store import EmbeddingStore
from ..data.prepared_case import PreparedCase, SplitConfig
from ..data.training_set import SamplePlan, TrainingSet, build_training_set, presence_log_odds
from ..model.export import export_model
from ..model.training_model import build_training_model, freeze_for_training, load_trained_state, trained_state
from .distributed import DistributedContext
from .logs import RunLog, plot_logs
from .state import STATE_FILE, load_state, restore_rng_states, rng_states, save_state
from .step import LOSS_TERMS, TrainingModule
from .validation import validate

logger = logging.getLogger(__name__)
ModelFactory = Callable[[TrainConfig, Sequence[str]], AutoMedSAM]
StepHook = Callable[[int], None]
MIN_IMPROVEMENT = 1e-4


class TrainingDiverged(AutoMedSAMError):
    """The loss became NaN or infinite; the state before the offending batch was saved."""


@dataclass
class Position:
    """Where the run is: optimiser steps done, epoch, batches of that epoch consumed, early-stopping record."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    best_dice: float = -1.0
    best_step: int = -1
    bad_validations: int = 0
    stopped_early: bool = False


@dataclass(frozen=True)
class TrainingResult:
    """What a finished run produced."""

    model_path: Path
    state_path: Path
    steps: int
    best_dice: float | None
    stopped_early: bool


def training_classes(config: TrainConfig, spec: DatasetSpec) -> tuple[str, ...]:
    """Catalog keys to train: `data.classes` (checked to be labelled by some case) or every class of the spec."""
    labelled = spec.classes()
    if not config.data.classes:
        return tuple(labelled)
    catalog = default_catalog()
    keys = tuple(dict.fromkeys(catalog.get(name).key for name in config.data.classes))
    missing = [key for key in keys if key not in labelled]
    if missing:
        raise InputError(f"classes {missing} are not labelled in any case of the dataset {spec.name!r} (it labels "
                         f"{', '.join(labelled)}); remove them from data.classes")
    return keys


class Trainer:
    """One training run; `run()` trains (or resumes) to the end and exports the model (see the module docstring)."""

    def __init__(self, config: TrainConfig, model_factory: ModelFactory = build_training_model,
                 on_step: StepHook | None = None, say: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.model_factory = model_factory
        self.on_step = on_step
        self.output = config.output_dir
        self.position = Position()
        self.log: RunLog | None = None
        self._say = say or (lambda message: print(message, file=sys.stderr, flush=True))

    def close(self) -> None:
        """Leave the process group (DDP); call once the run and anything using it are done."""
        context = getattr(self, "context", None)
        if context is not None:
            context.close()

    def say(self, message: str) -> None:
        """Print a progress message (rank 0 only)."""
        if self.context.main:
            self._say(message)

    # ------------------------------------------------------------------------------------------- set-up
    def run(self, resume: bool = False) -> TrainingResult:
        """Train to `optim.steps` (or early stop), checkpointing on the way; returns the exported model."""
        if self.config.run.threads:
            torch.set_num_threads(self.config.run.threads)
        device = resolve_device(self.config.run.device)
        self.context = DistributedContext.from_environment(device.type)
        self.device = self.context.device(device)
        try:
            saved = self._prepare_output(resume)
            self._seed()
            self._setup()
            if saved is not None:
                self._restore(saved)
            if self.context.main:
                resumed = self.position.step if saved is not None else None
                self.log = RunLog(self.output, self.config.run.tensorboard, resume_step=resumed)
            return self._train()
        finally:
            if self.log is not None:
                self.log.close()

    def _prepare_output(self, resume: bool) -> dict[str, Any] | None:
        state_path = self.output / STATE_FILE
        if not resume:
            if state_path.exists():
                raise InputError(f"the run folder {self.output} already holds a training state; resume it with "
                                 "--resume or choose another run.output")
            return None
        state = load_state(state_path)
        differences = config_differences(state["config"], self.config.to_dict())
        if state.get("world_size", 1) != self.context.world:
            differences.append(f"processes (world size): {state.get('world_size', 1)} -> {self.context.world}")
        if differences:
            raise InputError(f"cannot resume {state_path}: the configuration differs from the one it was trained "
                             f"with ({'; '.join(differences)}); use the same settings or start a new run.output")
        return state

    def _seed(self) -> None:
        seed = self.config.run.seed
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _setup(self) -> None:
        config = self.config
        self.spec = load_spec(config.data.spec)
        self.classes = training_classes(config, self.spec)
        self.model = self.model_factory(config, self.classes).to(self.device)
        trained = freeze_for_training(self.model, config.model.train_mask_decoder)
        self.data = self._load_data()
        self.plan = SamplePlan(self.data, config.data, config.run.seed)
        self.sampler = DistributedSampler(self.plan, num_replicas=self.context.world, rank=self.context.rank,
                                          shuffle=True, seed=config.run.seed, drop_last=True)
        self.loader = DataLoader(self.plan, batch_size=config.optim.batch_size, sampler=self.sampler, num_workers=0)
        indices = torch.tensor([self.model.class_index(key) for key in self.classes])
        prior = torch.from_numpy(presence_log_odds(self.data)) if config.loss.presence_prior else None
        self.module = TrainingModule(self.model, indices, config.loss, prior,
                                     config.augment.embedding_noise).to(self.device)
        self.wrapped = self.module
        if self.context.active:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.wrapped = DistributedDataParallel(self.module, device_ids=ids, broadcast_buffers=False,
                                                   find_unused_parameters=bool(config.optim.head_steps))
        self._build_optimizer(trained)

    def _load_data(self) -> TrainingSet:
        """Rank 0 fills the embedding cache first; the other processes then read it."""
        config = self.config
        self.output.mkdir(parents=True, exist_ok=True)
        preprocess = PreprocessConfig.from_dict(self.model.preprocessing)
        store = EmbeddingStore(config.run.cache_dir)
        cases = []
        for case in self.spec.cases:
            if case.id in config.data.holdout_cases:
                continue
            labelled = read_labelled_volume(case, self.spec.resample_labels)
            cases.append(PreparedCase(labelled, self.classes, preprocess, config.augment))
        split = SplitConfig(config.data.val_fraction, config.data.val_position)
        data = None
        for turn in (True, False):
            if self.context.main == turn:
                self.say(f"preparing {len(cases)} cases (embedding cache: {store.root})")
                data = build_training_set(cases, store, self.model, self.device, split, config.data.min_area_mm2,
                                          config.run.encode_batch_size)
            self.context.barrier()
        self.say(f"{int((~data.is_val).sum())} training and {int(data.is_val.sum())} validation items, "
                 f"{len(self.classes)} classes; {store.computed_rows} slices encoded now")
        return data

    def _build_optimizer(self, trained: list[torch.nn.Parameter]) -> None:
        optim = self.config.optim
        decoder = {id(p) for p in self.model.mask_decoder.parameters()}
        groups: dict[str, list[torch.nn.Parameter]] = {"decay": [], "plain": [], "decoder": []}
        for name, parameter in self.module.named_parameters():
            if not parameter.requires_grad:
                continue
            kind = "decoder" if id(parameter) in decoder else (
                "decay" if parameter.ndim >= 2 and "class_embedding" not in name else "plain")
            groups[kind].append(parameter)
        parameter_groups = [{"params": groups["decay"], "lr": optim.lr, "weight_decay": optim.weight_decay},
                            {"params": groups["plain"], "lr": optim.lr, "weight_decay": 0.0}]
        if groups["decoder"]:
            parameter_groups.append({"params": groups["decoder"], "lr": optim.decoder_lr,
                                     "weight_decay": optim.weight_decay})
        self.optimizer = torch.optim.AdamW([g for g in parameter_groups if g["params"]])
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.trained_parameters = [p for p in self.module.parameters() if p.requires_grad]

    def _lr_factor(self, step: int) -> float:
        """Linear warm-up to 1, then cosine decay to `min_lr_ratio` at the last step."""
        optim = self.config.optim
        if step < optim.warmup_steps:
            return (step + 1) / optim.warmup_steps
        progress = (step - optim.warmup_steps) / max(1, optim.steps - optim.warmup_steps)
        return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def _amp_dtype(self) -> torch.dtype | None:
        """bf16 (or fp16 with a gradient scaler) on CUDA when `optim.amp`; None (fp32) on the CPU."""
        if self.device.type != "cuda" or not self.config.optim.amp:
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    # --------------------------------------------------------------------------------------- state
    def _state(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "world_size": self.context.world,
                "position": dict(vars(self.position)), "trained": trained_state(self.model),
                "weighting": self.module.weighting.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "rng": rng_states()}

    def _restore(self, state: dict[str, Any]) -> None:
        load_trained_state(self.model, state["trained"])
        self.module.weighting.load_state_dict(state["weighting"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        restore_rng_states(state["rng"])
        self.position = Position(**state["position"])
        self.say(f"resumed at step {self.position.step} (epoch {self.position.epoch}, batch {self.position.batch})")

    def save_state(self) -> Path:
        """Write `state.pt` (rank 0) and wait for every process."""
        path = self.output / STATE_FILE
        if self.context.main:
            save_state(path, self._state())
        self.context.barrier()
        return path

    # ---------------------------------------------------------------------------------------- loop
    def _train(self) -> TrainingResult:
        optim, position = self.config.optim, self.position
        self.model.train()
        self._sums: dict[str, float] = {}
        self._clock, self._logged_step = time.monotonic(), position.step
        self.say(f"training {len(self.classes)} classes for {optim.steps} steps on {self.device} "
                 f"({self.context.world} process(es), batch {optim.batch_size} x {optim.accumulation})")
        while position.step < optim.steps and not position.stopped_early:
            self.plan.set_epoch(position.epoch)
            self.sampler.set_epoch(position.epoch)
            groups = len(self.loader) // optim.accumulation
            if groups == 0:
                raise InputError(f"an epoch has {len(self.loader)} batches, fewer than optim.accumulation = "
                                 f"{optim.accumulation}; raise data.samples_per_class or lower the batch size")
            if self._epoch(groups * optim.accumulation):
                break
            position.epoch += 1
            position.batch = 0
        return self._finish()

    def _epoch(self, usable_batches: int) -> bool:
        """Run the rest of the current epoch; True when training must stop inside it."""
        accumulation, position = self.config.optim.accumulation, self.position
        for index, batch in enumerate(self.loader):
            if index < position.batch:
                continue
            if index >= usable_batches:
                break
            self._micro_step(batch, index, last=(index + 1) % accumulation == 0)
            if (index + 1) % accumulation:
                continue
            self._optimizer_step()
            position.batch = index + 1
            if self._after_step():
                return True
        return False

    def _micro_step(self, batch: dict[str, torch.Tensor], index: int, last: bool) -> None:
        batch = {key: value.to(self.device) for key, value in batch.items()}
        self.module.heads_only = self.position.step < self.config.optim.head_steps
        sync = contextlib.nullcontext() if last or not self.context.active else self.wrapped.no_sync()
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                    else contextlib.nullcontext())
        with sync:
            with autocast:
                losses = self.wrapped(batch)
            self._check_finite(losses, batch, index)
            self.scaler.scale(losses["total"] / self.config.optim.accumulation).backward()
        for key, value in losses.items():
            self._sums[key] = self._sums.get(key, 0.0) + float(value.detach()) / self.config.optim.accumulation

    def _check_finite(self, losses: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], index: int) -> None:
        bad = {k: float(v.detach()) for k, v in losses.items() if not math.isfinite(float(v.detach()))}
        if not self.context.any_true(bool(bad), self.device):
            return
        accumulation = self.config.optim.accumulation
        self.position.batch = index - index % accumulation      # the state before this accumulation group
        path = self.save_state()
        items = "; ".join(f"{self.data.describe(int(i))} classes "
                          f"{[self.classes[c] for c in batch['classes'][n].tolist()]}"
                          for n, i in enumerate(batch["item"]))
        raise TrainingDiverged(f"the loss is not finite ({bad or 'on another process'}) at step "
                               f"{self.position.step + 1}, epoch {self.position.epoch}, batch {index} ({items}); the "
                               f"state before this batch is saved in {path}: lower optim.lr or check these slices, "
                               "then resume")

    def _optimizer_step(self) -> None:
        clip = self.config.optim.grad_clip
        self.scaler.unscale_(self.optimizer)
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(self.trained_parameters, clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.position.step += 1

    def _after_step(self) -> bool:
        """Logging, validation, checkpoint, hooks after optimiser step `position.step`; True to stop."""
        run, step = self.config.run, self.position.step
        final = step >= self.config.optim.steps
        if step % run.log_every == 0 or final:
            self._log_training()
        if run.validate_every and (step % run.validate_every == 0 or final):
            self._validate()
        if step % run.checkpoint_every == 0 or final or self.position.stopped_early:
            self.save_state()
        if self.on_step is not None:
            self.on_step(step)
        return final or self.position.stopped_early

    def _log_training(self) -> None:
        count = max(1, self.position.step - self._logged_step)
        keys = sorted(self._sums)
        averaged = self.context.average([self._sums[key] / count for key in keys], self.device)
        means = dict(zip(keys, averaged, strict=True))
        seconds = (time.monotonic() - self._clock) / count
        self._sums, self._clock, self._logged_step = {}, time.monotonic(), self.position.step
        if self.log is None:
            return
        row = {"step": self.position.step, "epoch": self.position.epoch,
               "lr": self.optimizer.param_groups[0]["lr"], "seconds_per_step": round(seconds, 3)}
        row.update({f"loss/{key}": means.get(key, float("nan")) for key in (*LOSS_TERMS, "total")})
        row.update({f"weight/{key}": value for key, value in self.module.weighting.weights().items()})
        self.log.train(row)
        terms = ", ".join(f"{key} {row[f'loss/{key}']:.3f}" for key in LOSS_TERMS)
        self.say(f"step {self.position.step}/{self.config.optim.steps}: loss {row['loss/total']:.4f} ({terms}), "
                 f"{seconds:.2f} s/step")

    def _validate(self) -> None:
        result = validate(self.model, self.data, self.device) if self.context.main else {"dice": float("nan")}
        self.model.train()
        dice = self.context.broadcast([float(result["dice"])], self.device)[0]
        position = self.position
        if math.isnan(dice):
            return
        improved = dice > position.best_dice + MIN_IMPROVEMENT
        if improved:
            position.best_dice, position.best_step, position.bad_validations = dice, position.step, 0
            self._export("best.automedsam.pt", result)
        else:
            position.bad_validations += 1
        patience = self.config.run.early_stopping_patience
        if patience and position.bad_validations >= patience:
            position.stopped_early = True
            self.say(f"early stop at step {position.step}: no better validation Dice for {patience} validations")
        if self.log is not None:
            self.log.validation({"step": position.step, "dice": dice,
                                 **{f"dice/{k}": v for k, v in result.get("per_class", {}).items()}})
            plot_logs(self.output)
        self.say(f"validation Dice {dice:.4f} at step {position.step} (best {position.best_dice:.4f} at step "
                 f"{position.best_step})")

    def _export(self, name: str, result: dict[str, Any]) -> Path:
        path = self.output / name
        if self.context.main:
            metrics = {"validation": {"dice": result.get("dice"), "step": self.position.step,
                                      "per_class": result.get("per_class", {}), "per_case": result.get("per_case", {}),
                                      "note": "Dice on held-out slice ranges at model-input resolution, before "
                                              "3D post-processing; labels are the dataset's reference labels"}}
            export_model(path, self.model, self.config, self.spec, self.data, self.position.step, metrics)
        self.context.barrier()
        return path

    def _finish(self) -> TrainingResult:
        last = self._export("last.automedsam.pt", {})
        best = self.output / "best.automedsam.pt"
        chosen = best if self.config.run.validate_every and best.exists() else last
        result = self.output / "model.automedsam.pt"
        if self.context.main:
            temporary = result.with_name(f".{result.name}.part")
            shutil.copyfile(chosen, temporary)
            os.replace(temporary, result)
            plot_logs(self.output)
            self.say(f"wrote {result} (from {chosen.name}, step {self.position.step})")
        self.context.barrier()
        best_dice = self.position.best_dice if self.position.best_step >= 0 else None
        return TrainingResult(result, self.output / STATE_FILE, self.position.step, best_dice,
                              self.position.stopped_early)
