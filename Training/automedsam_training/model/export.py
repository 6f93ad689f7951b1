"""A trained model exported as an `*.automedsam.pt`, with the record of how it was made.

The export records the training configuration, the data it saw (file names and SHA-256, slice ranges) and the
validation metrics inside the checkpoint, so a result can be traced to its recipe and data.
"""

from __future__ import annotations

import hashlib
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from automedsam import __version__ as automedsam_version
from automedsam.model import AutoMedSAM, save_checkpoint
from automedsam.model.checkpoint import sha256_of

from .. import __version__
from ..config import TrainConfig
from ..data.dataset_spec import DatasetSpec
from ..data.training_set import TrainingSet


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files (names and contents, in sorted order) for DICOM series."""
    path = Path(path)
    if path.is_file():
        return sha256_of(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(item.relative_to(path).as_posix().encode())
        digest.update(bytes.fromhex(sha256_of(item)))
    return digest.hexdigest()


def provenance(spec: DatasetSpec, data: TrainingSet | None, holdout: Sequence[str]) -> dict[str, Any]:
    """What the model was trained on: the spec's name and source, and per case files, checksums and slices."""
    trained = {case.case_id: case for case in data.cases} if data is not None else {}
    cases = []
    for case in spec.cases:
        entry = {"id": case.id, "patient": case.patient_id, "modality": case.modality, "image": case.image.name,
                 "image_sha256": file_sha256(case.image), "label": case.label.name,
                 "label_sha256": file_sha256(case.label), "role": "holdout" if case.id in holdout else "train"}
        if case.id in trained:
            entry["slices"] = trained[case.id].slices
            entry["validation_slices"] = data.val_ranges.get(case.id)
        cases.append(entry)
    return {"dataset": spec.name, "source": spec.source, "cases": cases}


def export_model(path: Path, model: AutoMedSAM, config: TrainConfig, spec: DatasetSpec, data: TrainingSet | None,
                 step: int, metrics: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> Path:
    """Write the trained model as an `*.automedsam.pt` with its recipe, data provenance and metrics inside;
    `extra` adds records to the training record (e.g. `finetune`'s initial model)."""
    training = {"config": config.to_dict(), "steps": step, "data": provenance(spec, data, config.data.holdout_cases),
                "trained_classes": list(data.classes) if data is not None else list(model.classes),
                "software": {"automedsam": automedsam_version, "automedsam_training": __version__,
                             "torch": str(torch.__version__), "python": platform.python_version()},
                **dict(extra or {})}
    return save_checkpoint(path, model, training=training, metrics=metrics)
