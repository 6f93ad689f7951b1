"""`automedsam-train finetune`: a model adapted to a few corrected cases, and old against new on slices it never saw.

    init model (registry id, file checked against the registry's SHA-256; or an *.automedsam.pt) + its recorded recipe
    -> the cases (a folder written by `automedsam export-training` / "Save as training case", or a spec): label
       values known (or ignored when asked), enough slices to hold out the middle 20 % of each case
    -> a short run of the recipe from the init model (classes the cases label and the model lacks are appended) on
       the other slices; no validation during the run, so the held-out slices never pick a checkpoint
    -> the held-out slices segmented by the old and the new model (engine, class prompts, 3D Dice)
    -> OUT/<init name>-ftN.automedsam.pt (the first N whose files are free; nothing is overwritten) with the init
       model, the data and the comparison recorded inside; <name>.comparison.md / .csv beside it; <name>_run/ (the
       spec, logs and training state). A failed or interrupted run leaves none of them.
"""

from __future__ import annotations

import copy
import re
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from automedsam.catalog import default_catalog
from automedsam.engine import EmbeddingCache
from automedsam.errors import InputError, ModelError, OutputError
from automedsam.model import CHECKPOINT_SUFFIX, AutoMedSAM, Checkpoint, build_automedsam, load_checkpoint
from automedsam.registry import ModelRegistry, cache_dir, file_sha256, is_model_path
from automedsam.volume import canonical_view

from ..config import TrainConfig, config_from_dict, known_settings
from ..data.alignment import read_labelled_volume, unknown_label_values
from ..data.dataset_spec import CaseSpec, DatasetSpec, load_spec, save_spec
from ..data.folder_import import import_nnunet_folder
from ..data.prepared_case import SplitConfig, validation_range
from ..model.export import export_model
from ..model.training_model import with_classes
from ..training.trainer import Trainer
from .comparison import ComparisonRow, compare_rows, comparison_record, console_table, write_comparison
from .evaluate import evaluate

HELD_OUT = SplitConfig(0.2, "middle")     # per case, the slices that only the comparison sees
Say = Callable[[str], None]
ModelLoader = Callable[["InitModel"], AutoMedSAM]


@dataclass(frozen=True)
class InitModel:
    """The model to start from: its name (registry id or file name), verified file, SHA-256 and checkpoint."""

    name: str
    path: Path
    sha256: str
    checkpoint: Checkpoint

    def record(self) -> dict[str, Any]:
        """Provenance for the new model's training record."""
        return {"model": self.name, "file": self.path.name, "sha256": self.sha256,
                "classes": list(self.checkpoint.classes)}


@dataclass(frozen=True)
class FineTuneOptions:
    """What `finetune` may change: steps, device, classes (catalog names; empty: every class the cases label),
    unknown label values as background, the embedding cache folder (None: `<AUTOMEDSAM_HOME>/embeddings`)."""

    steps: int
    device: str = "auto"
    classes: tuple[str, ...] = ()
    ignore_unknown_labels: bool = False
    cache_dir: Path | None = None
    seed: int = 0


@dataclass(frozen=True)
class Outputs:
    """Where one fine-tuning writes: the model, its comparison (Markdown, CSV) and the run folder."""

    model: Path
    markdown: Path
    table: Path
    run: Path

    @classmethod
    def for_model(cls, model: Path) -> Outputs:
        """The files that belong to a model path `<name>.automedsam.pt`."""
        name = model.name[: -len(CHECKPOINT_SUFFIX)]
        return cls(model, model.with_name(f"{name}.comparison.md"), model.with_name(f"{name}.comparison.csv"),
                   model.with_name(f"{name}_run"))

    def taken(self) -> list[Path]:
        """Those that exist already."""
        return [path for path in (self.model, self.markdown, self.table, self.run) if path.exists()]


@dataclass(frozen=True)
class FineTuneResult:
    """What a fine-tuning produced."""

    outputs: Outputs
    rows: list[ComparisonRow]
    classes: tuple[str, ...]
    new_classes: tuple[str, ...]
    steps: int


# ------------------------------------------------------------------------------------------------ init model
def resolve_init(spec: str, registry: ModelRegistry) -> InitModel:
    """The init model by registry id (its file checked against the registry's size and SHA-256) or by path."""
    if is_model_path(spec):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise InputError(f"init model {path} does not exist")
        if not path.name.endswith(CHECKPOINT_SUFFIX):
            raise InputError(f"init model {path.name} is not an AutoMedSAM model (*{CHECKPOINT_SUFFIX})")
        return InitModel(path.name, path, file_sha256(path), load_checkpoint(path))
    entry = registry.get(spec)
    if entry.kind != "automedsam":
        raise InputError(f"model {entry.id!r} has no classes to fine-tune (it runs box prompts only); start from a "
                         "class model such as automedsam_default, or train one with `automedsam-train train`")
    file = entry.files[0]
    try:
        path = registry.resolve_file(entry, file)
    except ModelError as error:
        raise ModelError(" ".join(str(error).split())) from error   # one line: the registry lists each copy
    return InitModel(entry.id, path, file.sha256, load_checkpoint(path, file.sha256))


def build_init_model(init: InitModel, registry: ModelRegistry) -> AutoMedSAM:
    """The init model on its registry base weights, built from the checkpoint already read (not read again)."""
    base = registry.get(init.checkpoint.base_model_id)
    try:
        base_path = registry.resolve_file(base, base.files[0])
    except ModelError as error:
        raise ModelError(" ".join(str(error).split())) from error
    return build_automedsam(base_path, base.files[0].sha256, init.checkpoint)


def output_paths(init: InitModel, output: Path | None) -> Outputs:
    """`output` as the model file to write (`*.automedsam.pt`, must not exist) or as the folder (default: the
    current one) of `<init name>-ftN.automedsam.pt`, N the first number none of whose files exist."""
    output = Path.cwd() if output is None else Path(output).expanduser()
    if output.name.endswith(CHECKPOINT_SUFFIX):
        chosen = Outputs.for_model(output)
        if chosen.taken():
            raise InputError(f"{chosen.taken()[0]} exists; fine-tuning never replaces a file: choose another -o")
        return chosen
    if output.exists() and not output.is_dir():
        raise InputError(f"-o {output} is a file; give a folder or a new *{CHECKPOINT_SUFFIX} path")
    base = re.sub(r"-ft\d+$", "", init.name[: -len(CHECKPOINT_SUFFIX)] if init.name.endswith(CHECKPOINT_SUFFIX)
                  else init.name)
    number = 1
    while (chosen := Outputs.for_model(output / f"{base}-ft{number}{CHECKPOINT_SUFFIX}")).taken():
        number += 1
    return chosen


# ------------------------------------------------------------------------------------------------------ data
def read_dataset(data: Path) -> DatasetSpec:
    """The cases of an export-training (nnU-Net) folder or of a dataset spec file."""
    data = Path(data).expanduser()
    if not data.exists():
        raise InputError(f"dataset {data} does not exist; give the folder that `automedsam export-training` or "
                         "Save as training case wrote, or a dataset spec")
    if data.is_file():
        return load_spec(data)
    if not any(data.iterdir()):
        raise InputError(f"dataset folder {data} is empty; add corrected cases to it first (Save as training case "
                         "in the module, or `automedsam export-training`)")
    return import_nnunet_folder(data)


def checked_dataset(spec: DatasetSpec, ignore_unknown: bool, say: Say) -> tuple[DatasetSpec, set[str]]:
    """The spec with unknown label values made background (when asked; otherwise an `InputError` naming them) after
    checking that every case can hold out its middle slices; and the classes labelled outside them."""
    cases, trainable = [], set()
    for case in spec.cases:
        labelled = read_labelled_volume(case, spec.resample_labels, check_values=False)
        unknown = unknown_label_values(labelled.labels, case)
        if unknown and not ignore_unknown:
            raise InputError(f"case {case.id!r}: label values {unknown} in {case.label.name} are not classes of the "
                             f"dataset (it names {sorted(case.label_map)}); fine-tuning would learn them as "
                             "background: name them in dataset.json's labels, or pass --ignore-unknown-labels")
        if unknown:
            say(f"case {case.id}: label values {unknown} treated as background (--ignore-unknown-labels)")
            case = replace(case, label_map={**case.label_map, **dict.fromkeys(unknown)})
        trainable |= _classes_outside_held_out(case, labelled.volume, labelled.labels)
        cases.append(case)
    return replace(spec, cases=tuple(cases)), trainable


def _classes_outside_held_out(case: CaseSpec, volume: Any, labels: np.ndarray) -> set[str]:
    """Classes the case labels on slices that are trained on; `InputError` when it cannot hold slices out."""
    view = canonical_view(volume)
    slices = view.shape[0]
    held = validation_range(slices, HELD_OUT)
    if held is None or slices - (held[1] - held[0] + 1) < 2:
        raise InputError(f"case {case.id!r} has {slices} axial slice(s); fine-tuning holds out the middle "
                         f"{HELD_OUT.fraction:.0%} of each case to compare the models and trains on the rest, so a "
                         "case needs at least 3 slices")
    outside = np.ones(slices, dtype=bool)
    outside[held[0]:held[1] + 1] = False
    canonical = view.apply(labels)[outside]
    return {key for value, key in case.label_map.items() if key is not None and np.any(canonical == value)}


def chosen_classes(wanted: Sequence[str], spec: DatasetSpec, trainable: set[str], say: Say) -> tuple[str, ...]:
    """Catalog keys to train: `wanted` (each labelled outside the held-out slices) or every such class."""
    catalog = default_catalog()
    labelled = spec.classes()
    if not wanted:
        skipped = [key for key in labelled if key not in trainable]
        if skipped:
            say(f"left out {', '.join(skipped)}: labelled only on the held-out slices")
        keys = tuple(key for key in labelled if key in trainable)
    else:
        keys = tuple(dict.fromkeys(catalog.get(name).key for name in wanted))
        missing = [key for key in keys if key not in trainable]
        if missing:
            raise InputError(f"classes {missing} are not labelled outside the held-out middle slices of the cases "
                             f"(they label {', '.join(sorted(trainable)) or 'nothing there'}); leave them out of "
                             "--classes or label them on more slices")
    if not keys:
        raise InputError("the cases label no class outside their held-out middle slices, so there is nothing to "
                         "train on")
    return keys


# ------------------------------------------------------------------------------------------------ configuration
def recipe_settings(training: Mapping[str, Any], say: Say) -> dict[str, dict[str, Any]]:
    """The init model's recorded training configuration, keeping only settings this version knows."""
    recipe = training.get("config") if isinstance(training.get("config"), Mapping) else None
    if recipe is None:
        say("the init model records no training recipe; using the default settings")
        return {}
    settings, dropped = known_settings(recipe)
    if dropped:
        say(f"recipe settings this version does not know were left out: {', '.join(dropped)}")
    return settings


def finetune_config(recipe: Mapping[str, Mapping[str, Any]], init: InitModel, spec_path: Path,
                    classes: Sequence[str], run: Path, options: FineTuneOptions) -> TrainConfig:
    """The recipe (losses, learning rate, augmentation, sampling) with a short schedule, this data and no
    validation during the run (the held-out slices are kept for the comparison)."""
    raw = {section: dict(values) for section, values in recipe.items()}
    raw.setdefault("data", {}).update(spec=str(spec_path), classes=list(classes), holdout_cases=[],
                                      val_fraction=HELD_OUT.fraction, val_position=HELD_OUT.position)
    raw.setdefault("model", {})["init"] = str(init.path)
    warmup = min(int(raw.setdefault("optim", {}).get("warmup_steps", 20)), options.steps // 10)
    raw["optim"].update(steps=options.steps, warmup_steps=warmup)
    recorded = raw.get("run", {})
    raw["run"] = {"output": str(run), "seed": options.seed, "device": options.device,
                  "cache_dir": str(options.cache_dir or cache_dir() / "embeddings"), "checkpoint_every": options.steps,
                  "validate_every": 0, "log_every": max(1, options.steps // 10), "early_stopping_patience": 0,
                  "tensorboard": False, "encode_batch_size": recorded.get("encode_batch_size", 4),
                  "threads": recorded.get("threads", 0)}
    return config_from_dict(raw)


# -------------------------------------------------------------------------------------------------------- run
def run_finetune(init_spec: str, data: Path, output: Path | None, options: FineTuneOptions,
                 registry: ModelRegistry | None = None, model_loader: ModelLoader | None = None,
                 say: Say | None = None) -> FineTuneResult:
    """Fine-tune, compare and write (see the module docstring); `InputError`/`ModelError` before any training for
    bad input, and nothing is left behind when it fails or is interrupted."""
    say = say or (lambda message: print(message, file=sys.stderr, flush=True))
    if options.steps < 1:
        raise InputError(f"--steps must be at least 1 (got {options.steps})")
    registry = registry or ModelRegistry.load()
    init = resolve_init(init_spec, registry)
    outputs = output_paths(init, output)
    spec, trainable = checked_dataset(read_dataset(data), options.ignore_unknown_labels, say)
    classes = chosen_classes(options.classes, spec, trainable, say)
    old = (model_loader or (lambda chosen: build_init_model(chosen, registry)))(init)
    new_classes = tuple(key for key in classes if key not in old.classes)
    if new_classes:
        say(f"new classes (not in {init.name}): {', '.join(new_classes)}")
    try:
        outputs.run.mkdir(parents=True)
        return _train_and_compare(init, old, spec, classes, new_classes, outputs, options, say)
    except BaseException:
        _remove(outputs)
        raise


def _train_and_compare(init: InitModel, old: AutoMedSAM, spec: DatasetSpec, classes: tuple[str, ...],
                       new_classes: tuple[str, ...], outputs: Outputs, options: FineTuneOptions,
                       say: Say) -> FineTuneResult:
    spec_path = save_spec(spec, outputs.run / "spec.json")
    config = finetune_config(recipe_settings(init.checkpoint.training, say), init, spec_path, classes, outputs.run,
                             options)

    def factory(config: TrainConfig, keys: Sequence[str]) -> AutoMedSAM:
        torch.manual_seed(config.run.seed)
        return with_classes(copy.deepcopy(old), keys)

    trainer = Trainer(config, model_factory=factory, say=say)
    try:
        result = trainer.run()
    finally:
        trainer.close()
    new = trainer.model.eval()
    say(f"comparing {init.name} and the fine-tuned model on the held-out slices")
    cache = EmbeddingCache()
    ranges = {case: held for case, held in trainer.data.val_ranges.items() if held is not None}
    before = evaluate(old, trainer.spec, list(ranges), classes, ranges, options.device, cache=cache, modes=("class",))
    after = evaluate(new, trainer.spec, list(ranges), classes, ranges, options.device, cache=cache, modes=("class",))
    rows = compare_rows(before, after)
    _write(outputs, new, config, trainer, init, rows, result.steps)
    return FineTuneResult(outputs, rows, classes, new_classes, result.steps)


def _write(outputs: Outputs, model: AutoMedSAM, config: TrainConfig, trainer: Trainer, init: InitModel,
           rows: list[ComparisonRow], steps: int) -> None:
    """The model (re-checking that its name is still free) and, beside it, the comparison."""
    if outputs.model.exists():
        raise OutputError(f"{outputs.model} appeared during the run; fine-tuning never replaces a file (run again)")
    held = "the middle 20 % of each case's axial slices, never trained on and never used to choose a checkpoint"
    extra = {"init": init.record(), "finetune": {"held_out": held, "steps": steps}}
    metrics = {"held_out_comparison": {"note": f"Dice on {held}; 3D, after post-processing",
                                       **comparison_record(rows)}}
    export_model(outputs.model, model, config, trainer.spec, trainer.data, steps, metrics, extra)
    try:
        write_comparison(rows, outputs.markdown, outputs.table, f"{outputs.model.name} against {init.name}",
                         f"Held-out slices: {held}.")
    except BaseException:
        outputs.model.unlink(missing_ok=True)
        raise


def _remove(outputs: Outputs) -> None:
    """Undo a failed run: its run folder (the model and its reports are written last, all or none)."""
    shutil.rmtree(outputs.run, ignore_errors=True)


def summary_lines(result: FineTuneResult) -> list[str]:
    """What the command prints: the per-class table, then where everything is."""
    outputs = result.outputs
    return [console_table(result.rows), "", f"wrote {outputs.model}", f"wrote {outputs.markdown}",
            f"wrote {outputs.table}", f"run folder (spec, logs, training state): {outputs.run}"]
