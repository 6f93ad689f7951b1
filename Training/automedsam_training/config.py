"""Training configuration: a TOML file (optionally `extends` another) plus `section.key=value` overrides.

Sections: `[data]` (spec, classes, split, sampling), `[model]` (base, init checkpoint, what is trained, class prompt
encoder settings), `[optim]` (steps, batch, AdamW, schedule, clipping, AMP), `[loss]` (term weights), `[augment]`
(see `AugmentConfig`), `[run]` (output folder, seed, device, cache, checkpoint/validation/log intervals, early
stopping). Relative paths
are taken from the folder of the file that sets them. `Training/configs/default.toml` is the shipped recipe.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from automedsam.errors import InputError

from ._toml import tomllib
from .data.augment import AugmentConfig
from .data.dataset_spec import expand_path
from .data.prepared_case import VAL_POSITIONS

# Settings that may change when a run is resumed: they do not change what is computed.
RESUME_FREE_KEYS = frozenset({"run.device", "run.cache_dir", "run.tensorboard", "run.threads", "run.log_every",
                              "run.encode_batch_size", "run.output"})


@dataclass(frozen=True)
class DataConfig:
    """`[data]`: the dataset, the classes, the validation split and how samples are drawn."""

    spec: str = ""
    classes: tuple[str, ...] = ()             # catalog names; empty: every class the spec labels
    holdout_cases: tuple[str, ...] = ()       # case ids left out of training entirely (unseen patients)
    val_fraction: float = 0.2                 # per case, a contiguous slice range held out for validation
    val_position: str = "middle"              # "middle", "start", "end" or "none"
    min_area_mm2: float = 20.0                # smaller cross-sections are neither positive nor negative examples
    samples_per_class: int = 16               # samples per class per epoch (class-balanced sampling)
    empty_share: float = 0.25                 # share of samples whose class is absent from the slice
    classes_per_slice: int = 4                # classes per sample (the sampled one + others on the same slice)
    mask_pairs: int = 1                       # pairs per sample that also get the mask loss (decoder cost)


@dataclass(frozen=True)
class ModelConfig:
    """`[model]`: the frozen base, an optional checkpoint to continue, what is trained."""

    base: str = "litemedsam"                  # registry id of the frozen base model
    init: str = ""                            # an *.automedsam.pt to continue from (new classes are added)
    train_mask_decoder: bool = False
    class_prompt: dict[str, Any] = field(default_factory=dict)   # ClassPromptConfig fields


@dataclass(frozen=True)
class LossConfig:
    """`[loss]`: weights of the loss terms. The mask teaches the prompt; box distillation and token denoising
    (imitating SAM's box prompt, which encodes absolute corner positions) are off unless asked for."""

    mask: float = 1.0                         # Dice + BCE of the frozen decoder's masks
    presence: float = 1.0                     # BCE of the presence logits
    distillation: float = 0.0                 # MSE of the prompts to SAM's prompt for the ground-truth box
    denoising: float = 0.0                    # the class prompt encoder's own denoising term (variants with one)
    coarse: float = 0.0                       # Dice + BCE of the coarse class maps (anatomy, coarse_maps = 1) on
                                              # every labelled class of each sampled slice
    coarse_exclusive: bool = False            # also: a class not labelled on a slice is absent from the pixels
                                              # labelled as another class (labels never overlap)
    uncertainty_weighting: bool = False       # learned log-variance per term (Kendall et al.) instead of fixed
    presence_all_classes: bool = True         # presence BCE on every trained class of each sampled slice
    presence_balance: bool = True             # present and absent pairs weigh half each (most pairs are absent)
    presence_prior: bool = False              # logit adjustment: each class's training log-odds of presence is
                                              # added to its logit in the loss, so the head learns what the image
                                              # shows, not how often the class is on a slice


@dataclass(frozen=True)
class OptimConfig:
    """`[optim]`: steps, batch, AdamW, schedule, clipping, mixed precision."""

    steps: int = 400                          # optimiser steps
    batch_size: int = 4                       # samples per process per micro-batch
    accumulation: int = 1                     # micro-batches per optimiser step
    lr: float = 1e-3
    decoder_lr: float = 1e-5                  # when the mask decoder is trained
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    min_lr_ratio: float = 0.05                # cosine schedule ends at lr * min_lr_ratio
    grad_clip: float = 1.0                    # max gradient norm; 0 disables clipping
    amp: bool = True                          # mixed precision on CUDA (bf16, or fp16 with a gradient scaler)
    head_steps: int = 0                       # the first steps train presence and coarse maps only (no decoder)


@dataclass(frozen=True)
class RunConfig:
    """`[run]`: output folder, seed, device, cache, intervals, early stopping."""

    output: str = "runs/default"
    seed: int = 0
    device: str = "auto"
    cache_dir: str = "~/.cache/automedsam/embeddings"
    checkpoint_every: int = 50
    validate_every: int = 50                  # 0: no validation (the last step is exported)
    log_every: int = 10
    early_stopping_patience: int = 0          # validations without improvement before stopping; 0: never
    tensorboard: bool = True
    encode_batch_size: int = 4
    threads: int = 0                          # torch CPU threads; 0: torch's default


@dataclass(frozen=True)
class TrainConfig:
    """A whole training configuration (see the module docstring)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        positive = {"optim.steps": self.optim.steps, "optim.batch_size": self.optim.batch_size,
                    "optim.accumulation": self.optim.accumulation, "data.samples_per_class":
                    self.data.samples_per_class, "data.classes_per_slice": self.data.classes_per_slice,
                    "data.mask_pairs": self.data.mask_pairs, "run.checkpoint_every": self.run.checkpoint_every,
                    "run.log_every": self.run.log_every}
        bad = [name for name, value in positive.items() if value < 1]
        if bad:
            raise InputError(f"configuration values must be at least 1: {', '.join(bad)}")
        if not 0 <= self.optim.head_steps < self.optim.steps:
            raise InputError("optim.head_steps must be in [0, optim.steps): the steps that train presence and coarse "
                             "maps alone come before the steps with the mask loss")
        if self.data.mask_pairs > self.data.classes_per_slice:
            raise InputError("data.mask_pairs cannot exceed data.classes_per_slice")
        if not 0.0 <= self.data.empty_share < 1.0 or self.data.val_position not in VAL_POSITIONS:
            raise InputError(f"data.empty_share must be in [0, 1) and data.val_position one of {VAL_POSITIONS}")
        if self.optim.lr <= 0 or self.optim.warmup_steps < 0 or not 0 <= self.optim.min_lr_ratio <= 1:
            raise InputError("optim.lr must be positive, optim.warmup_steps >= 0, optim.min_lr_ratio in [0, 1]")
        weights = (self.loss.mask, self.loss.presence, self.loss.distillation, self.loss.denoising, self.loss.coarse)
        if min(weights) < 0 or not self.loss.mask + self.loss.presence + self.loss.distillation > 0:
            raise InputError("loss weights must not be negative, and one of loss.mask, loss.presence or "
                             "loss.distillation must be positive")
        coarse_ready = self.model.init or self.model.class_prompt.get("coarse_maps")   # an init model has its own
        if self.loss.coarse and not (coarse_ready and self.loss.presence_all_classes):
            raise InputError("loss.coarse trains the coarse class maps: it needs model.class_prompt.coarse_maps = 1 "
                             "and loss.presence_all_classes = true")

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (TOML/JSON types), as stored in training states and checkpoints."""
        return {name: _plain(asdict(getattr(self, name)) if name != "augment" else self.augment.to_dict())
                for name in ("data", "model", "optim", "loss", "augment", "run")}

    @property
    def output_dir(self) -> Path:
        """The run folder."""
        return Path(self.run.output).expanduser()


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "loss": LossConfig,
             "augment": AugmentConfig, "run": RunConfig}
_PATH_KEYS = {("data", "spec"), ("model", "init"), ("run", "output"), ("run", "cache_dir")}


def load_config(path: Path | str | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """The configuration of a TOML file (None: all defaults) with `section.key=value` overrides applied."""
    raw: dict[str, dict[str, Any]] = {} if path is None else _read_toml(Path(path), set())
    for item in overrides:
        section, key, value = _parse_override(item)
        raw.setdefault(section, {})[key] = value
    return config_from_dict(raw)


def config_from_dict(raw: Mapping[str, Any]) -> TrainConfig:
    """Build a `TrainConfig` from nested plain data; unknown sections or keys raise `InputError`."""
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise InputError(f"unknown configuration section(s) {unknown}; known: {sorted(_SECTIONS)}")
    parts = {}
    for section, kind in _SECTIONS.items():
        values = dict(raw.get(section, {}))
        known = {f.name: f for f in fields(kind)}
        extra = sorted(set(values) - set(known))
        if extra:
            raise InputError(f"unknown setting(s) {[f'{section}.{k}' for k in extra]}; known in [{section}]: "
                             f"{sorted(known)}")
        for name, value in values.items():
            if isinstance(value, list) and name not in ("scale", "gamma"):
                values[name] = tuple(value)
        try:
            parts[section] = kind(**values)
        except TypeError as error:
            raise InputError(f"invalid [{section}] settings: {error}") from error
    return TrainConfig(**parts)


def known_settings(raw: Mapping[str, Any]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """`raw` (e.g. a recipe another version recorded in a checkpoint) without the sections and settings this version
    does not know, and the `section.key` names of those left out."""
    kept: dict[str, dict[str, Any]] = {}
    dropped = sorted(set(raw) - set(_SECTIONS))
    for section, kind in _SECTIONS.items():
        known = {f.name for f in fields(kind)}
        values = dict(raw.get(section) or {})
        dropped += [f"{section}.{key}" for key in values if key not in known]
        kept[section] = {key: value for key, value in values.items() if key in known}
    return kept, dropped


def _read_toml(path: Path, seen: set[Path]) -> dict[str, dict[str, Any]]:
    """The file's sections with relative paths resolved, merged over the file it `extends`."""
    path = path.expanduser().resolve()
    if path in seen:
        raise InputError(f"configuration {path} extends itself (through {sorted(map(str, seen))})")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise InputError(f"cannot read the configuration {path}: {error.strerror or error}") from error
    except tomllib.TOMLDecodeError as error:
        raise InputError(f"configuration {path} is not valid TOML: {error}") from error
    base: dict[str, dict[str, Any]] = {}
    if "extends" in data:
        base = _read_toml(expand_path(str(data.pop("extends")), path.parent), seen | {path})
    for section, values in data.items():
        if not isinstance(values, dict):
            raise InputError(f"configuration {path}: '{section}' must be a [section]")
        for key, value in values.items():
            if (section, key) in _PATH_KEYS and value:
                value = str(expand_path(str(value), path.parent))
            base.setdefault(section, {})[key] = value
    return base


def _parse_override(item: str) -> tuple[str, str, Any]:
    """`optim.lr=3e-4` -> ("optim", "lr", 0.0003); values are TOML (`[1, 2]`, `true`, `"x"`) or plain text."""
    name, sep, text = item.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not key:
        raise InputError(f"override {item!r} must look like section.key=value (e.g. optim.lr=3e-4)")
    try:
        value = tomllib.loads(f"value = {text.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    if (section, key) in _PATH_KEYS and value:
        value = str(expand_path(str(value), Path.cwd()))
    return section, key, value


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any],
                       free: frozenset[str] = RESUME_FREE_KEYS) -> list[str]:
    """`section.key: saved -> current` for every setting that differs and matters for an exact resume."""
    differences = []
    for section in sorted(set(saved) | set(current)):
        old, new = dict(saved.get(section, {})), dict(current.get(section, {}))
        for key in sorted(set(old) | set(new)):
            name = f"{section}.{key}"
            if name not in free and old.get(key) != new.get(key):
                differences.append(f"{name}: {old.get(key)!r} -> {new.get(key)!r}")
    return differences
