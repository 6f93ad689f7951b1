"""Training and validation items over cached embeddings, and the per-epoch sampling plan.

An item is one (case, slice, variant). `TrainingSet` gathers the items of every case with their targets and the
cached embeddings; validation items are the case's held-out slice range (originals only, never augmented copies).
`SamplePlan` is the `Dataset` a `DataLoader` (with a `DistributedSampler`) iterates: per epoch, class-balanced samples
(a class, then one of its positive slices, or with probability `empty_share` a slice where it is absent), each
with `classes_per_slice` classes of that slice. The plan of an epoch depends only on the seed and the epoch, so a
resumed run sees exactly the same data order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from automedsam.errors import InputError

from ..config import DataConfig
from .embedding_store import EmbeddingStore
from .prepared_case import ItemTargets, PreparedCase, SplitConfig, item_targets, validation_range


@dataclass
class TrainingSet:
    """Items (N) of all cases: where each comes from, its targets, whether it is a validation item."""

    classes: tuple[str, ...]
    cases: list[PreparedCase]
    embeddings: list[np.ndarray]        # per case (V * S, D, G, G) fp16, memory-mapped
    item_case: np.ndarray               # (N,) case index
    item_slice: np.ndarray              # (N,) canonical slice
    item_variant: np.ndarray            # (N,) 0 = original, 1.. = augmented copy
    targets: ItemTargets
    is_val: np.ndarray                  # (N,) bool
    val_ranges: dict[str, tuple[int, int] | None]

    def embedding(self, item: int) -> np.ndarray:
        """(D, G, G) fp16 embedding of an item."""
        case = int(self.item_case[item])
        row = int(self.item_variant[item]) * self.cases[case].slices + int(self.item_slice[item])
        return self.embeddings[case][row]

    def describe(self, item: int) -> str:
        """`case ct_sm slice 12 (augmented copy 1)` for messages."""
        case = self.cases[int(self.item_case[item])].case_id
        variant = int(self.item_variant[item])
        copy = f" (augmented copy {variant})" if variant else ""
        return f"case {case} slice {int(self.item_slice[item])}{copy}"


def case_items(case: PreparedCase, split: SplitConfig) -> tuple[list[tuple[int, int]], list[tuple[int, int]],
                                                                  tuple[int, int] | None]:
    """(train items, validation items, validation range) of a case; blank slices are skipped (as in inference)."""
    val = validation_range(case.slices, split)
    usable = [s for s in range(case.slices) if np.ptp(case.normalized[s]) > 0]
    in_val = [s for s in usable if val is not None and val[0] <= s <= val[1]]
    train = [(s, v) for v in range(1 + case.augment.variants) for s in usable if s not in in_val]
    return train, [(s, 0) for s in in_val], val


def build_training_set(cases: Sequence[PreparedCase], store: EmbeddingStore, model: object, device: torch.device,
                       split: SplitConfig, min_area_mm2: float, encode_batch_size: int = 4,
                       progress: Callable[[int, int, str], None] | None = None) -> TrainingSet:
    """Embeddings (computed once, cached) and targets of every item of `cases`."""
    if not cases:
        raise InputError("no case to train on: the dataset is empty or every case is held out")
    parts: dict[str, list] = {"case": [], "slice": [], "variant": [], "val": [], "targets": []}
    embeddings, ranges = [], {}
    for index, case in enumerate(cases):
        embeddings.append(store.embeddings(case, model, device, encode_batch_size, progress))
        train, val, ranges[case.case_id] = case_items(case, split)
        items = train + val
        parts["case"] += [index] * len(items)
        parts["slice"] += [s for s, _ in items]
        parts["variant"] += [v for _, v in items]
        parts["val"] += [False] * len(train) + [True] * len(val)
        parts["targets"].append(item_targets(case, items, min_area_mm2))
    targets = ItemTargets(*(np.concatenate([getattr(t, name) for t in parts["targets"]])
                            for name in ("masks", "boxes", "present", "usable")))
    return TrainingSet(tuple(cases[0].classes), list(cases), embeddings, np.array(parts["case"]),
                       np.array(parts["slice"]), np.array(parts["variant"]), targets, np.array(parts["val"]), ranges)


def presence_log_odds(data: TrainingSet, clip: float = 0.01) -> np.ndarray:
    """(C,) log-odds that each class is present on a training slice where it is labelled (`loss.presence_prior`);
    frequencies are clipped to [clip, 1 - clip]."""
    train = ~data.is_val[:, None] & data.targets.usable
    present = (data.targets.present & train).sum(axis=0)
    frequency = np.clip(present / np.maximum(train.sum(axis=0), 1), clip, 1 - clip)
    return np.log(frequency / (1 - frequency)).astype(np.float32)


class SamplePlan(Dataset):
    """Class-balanced training samples of one epoch (call `set_epoch` before iterating an epoch)."""

    def __init__(self, data: TrainingSet, config: DataConfig, seed: int) -> None:
        self.data = data
        self.config = config
        self.seed = seed
        self.k = min(config.classes_per_slice, len(data.classes))
        train = ~data.is_val
        present, usable = data.targets.present, data.targets.usable
        self.positives = [np.flatnonzero(train & present[:, c]) for c in range(len(data.classes))]
        self.negatives = [np.flatnonzero(train & usable[:, c] & ~present[:, c]) for c in range(len(data.classes))]
        missing = [key for key, items in zip(data.classes, self.positives, strict=True) if items.size == 0]
        if missing:
            raise InputError(f"classes {missing} have no positive training slice (at least data.min_area_mm2 = "
                             f"{config.min_area_mm2} mm^2 outside the validation slices); remove them from "
                             "data.classes or add data that contains them")
        self.samples: list[tuple[int, list[int], list[bool]]] = []
        self.epoch = -1
        self.set_epoch(0)

    def __len__(self) -> int:
        return self.config.samples_per_class * len(self.data.classes)

    def set_epoch(self, epoch: int) -> None:
        """Draw the samples of `epoch` (deterministic in seed and epoch)."""
        if epoch == self.epoch:
            return
        rng = np.random.default_rng([self.seed, epoch, 7])
        self.samples = [self._draw(c, rng) for c in range(len(self.data.classes))
                        for _ in range(self.config.samples_per_class)]
        self.epoch = epoch

    def _draw(self, c: int, rng: np.random.Generator) -> tuple[int, list[int], list[bool]]:
        """(item, classes, usable flags): class c first, then others present on the item, then absent ones."""
        negatives = self.negatives[c]
        pool = negatives if negatives.size and rng.random() < self.config.empty_share else self.positives[c]
        item = int(rng.choice(pool))
        present, usable = self.data.targets.present[item], self.data.targets.usable[item]
        others = [o for o in rng.permutation(len(self.data.classes)).tolist() if o != c and usable[o]]
        others.sort(key=lambda o: not present[o])      # stable: present classes first, each group in random order
        chosen = [c] + others[: self.k - 1]
        flags = [True] * len(chosen) + [False] * (self.k - len(chosen))
        return item, chosen + [c] * (self.k - len(chosen)), flags

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item, classes, flags = self.samples[index]
        targets = self.data.targets
        masks = targets.masks[item]
        m = self.config.mask_pairs
        return {
            "embedding": torch.from_numpy(np.asarray(self.data.embedding(item), dtype=np.float32)),
            "classes": torch.tensor(classes, dtype=torch.long),
            "present": torch.from_numpy(targets.present[item][classes]) & torch.tensor(flags),
            "usable": torch.tensor(flags),
            "all_present": torch.from_numpy(targets.present[item].copy()),    # (C,) every trained class
            "all_usable": torch.from_numpy(targets.usable[item].copy()),
            "boxes": torch.from_numpy(targets.boxes[item][classes]),
            "masks": torch.from_numpy(np.stack([masks == c + 1 for c in classes[:m]]).astype(np.float32)),
            "label_map": torch.from_numpy(masks.astype(np.int32)),             # (S, S) class index + 1
            "item": torch.tensor(item),
            "noise_seed": torch.tensor(((self.seed * 1_000_003 + self.epoch) * 1_000_003 + index) % (2**31)),
        }
