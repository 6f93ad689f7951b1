"""What each `automedsam-train` sub-command does; `cli.py` only parses arguments and maps errors to exit codes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from automedsam.errors import InputError
from automedsam.loading import load_model
from automedsam.model import load_checkpoint
from automedsam.volume import canonical_view

from .config import config_from_dict, load_config
from .data.alignment import read_labelled_volume
from .data.dataset_spec import load_spec, parse_pairs, save_spec
from .data.folder_import import import_nnunet_folder, import_totalsegmentator_reference
from .data.slicer_import import SegmentChoices, add_cases, import_slicer_segmentation
from .evaluation.evaluate import evaluate, write_reports
from .evaluation.finetune import FineTuneOptions, summary_lines
from .evaluation.finetune import run_finetune as finetune
from .evaluation.lopo import run_lopo as run_lopo_folds
from .model.export import export_model
from .model.training_model import build_training_model, load_trained_state
from .training.state import STATE_FILE, load_state
from .training.trainer import Trainer, training_classes


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_import_nnunet(args: argparse.Namespace) -> None:
    """`import-nnunet`: dataset.json + imagesTr/labelsTr -> spec."""
    spec = import_nnunet_folder(args.folder, args.modality, parse_pairs(args.rename), args.ignore,
                                args.merge_vertebrae)
    _say(f"wrote {save_spec(spec, args.output)} ({len(spec.cases)} cases, classes: {', '.join(spec.classes())})")


def run_import_totalseg(args: argparse.Namespace) -> None:
    """`import-totalseg`: TotalSegmentator's reference files -> spec."""
    spec = import_totalsegmentator_reference(args.folder, merge_vertebrae=not args.separate_vertebrae,
                                             whole_parts=not args.separate_parts)
    _say(f"wrote {save_spec(spec, args.output)} ({len(spec.cases)} cases)")


def run_import_slicer(args: argparse.Namespace) -> None:
    """`import-slicer`: a Slicer .seg.nrrd + its image -> label maps (one per layer) and spec cases."""
    output = Path(args.output)
    existing = load_spec(output, check_files=False) if args.append and output.exists() else None
    choices = SegmentChoices(parse_pairs(args.rename), tuple(args.ignore), args.ignore_unmapped,
                             args.merge_vertebrae, args.whole_parts)
    labels_dir = args.labels_dir or output.with_name(f"{output.name.split('.')[0]}_labels")
    result = import_slicer_segmentation(args.image, args.segmentation, labels_dir, args.case_id, args.patient,
                                        args.modality, choices, args.resample_labels)
    for line in result.listing():
        _say(line)
    source = f"Slicer segmentation {Path(args.segmentation).name} of {Path(args.image).name}"
    spec = add_cases(existing, result.cases, output.name.split(".")[0], source, output.parent.resolve())
    _say(f"wrote {save_spec(spec, output)} ({len(spec.cases)} cases, {len(spec.patients())} patients, classes: "
         f"{', '.join(spec.classes())})")


def run_inspect(args: argparse.Namespace) -> None:
    """`inspect`: read every case (checking alignment and label values) and print per-class statistics."""
    spec = load_spec(args.spec)
    print(f"dataset {spec.name!r}: {len(spec.cases)} cases; {spec.source}")
    for case in spec.cases:
        labelled = read_labelled_volume(case, spec.resample_labels)
        view = canonical_view(labelled.volume)
        voxel_ml = float(np.prod(labelled.volume.spacing)) / 1000.0
        print(f"{case.id} ({labelled.volume.modality}, patient {case.patient_id}, {view.shape[0]} slices of "
              f"{view.shape[1]}x{view.shape[2]}, spacing {tuple(round(s, 2) for s in view.pixel_spacing)} mm)")
        for key in sorted(case.classes()):
            mask = view.apply(labelled.class_mask(key))
            slices = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
            if slices.size:
                print(f"  {key:<32} {mask.sum() * voxel_ml:8.1f} mL  slices {slices[0]}-{slices[-1]} "
                      f"({slices.size})")


def run_train(args: argparse.Namespace) -> None:
    """`train`: train or resume; prints where the model was written."""
    config = load_config(args.config, args.overrides)
    trainer = Trainer(config, say=_say)
    try:
        result = trainer.run(resume=args.resume)
    finally:
        trainer.close()
    best = "" if result.best_dice is None else f", best validation Dice {result.best_dice:.4f}"
    print(f"{result.model_path} ({result.steps} steps{best}{', stopped early' if result.stopped_early else ''})")


def run_evaluate(args: argparse.Namespace) -> None:
    """`evaluate`: engine runs with class prompts and with ground-truth boxes; CSV, Markdown, PNG."""
    model = load_model(args.model)
    spec = load_spec(args.spec)
    ranges = None
    if args.slices == "validation":
        ranges = _validation_ranges(args.model)
        if not any(ranges.values()):
            raise InputError(f"{args.model} records no validation slice ranges; use --slices all")
    cases = args.cases or (list(ranges) if ranges else None)
    cases = [case for case in cases if not ranges or ranges.get(case)] if cases else None
    rows = evaluate(model, spec, cases, None, ranges, args.device, None)
    for path in write_reports(rows, args.output, args.title):
        _say(f"wrote {path}")


def _validation_ranges(model_path: Path) -> dict[str, tuple[int, int] | None]:
    cases = load_checkpoint(model_path).training.get("data", {}).get("cases", [])
    return {c["id"]: tuple(c["validation_slices"]) if c.get("validation_slices") else None for c in cases}


def run_lopo(args: argparse.Namespace) -> None:
    """`lopo`: train and score one model per left-out CT patient; prints where the tables are."""
    config = load_config(args.config, args.overrides)
    for path in run_lopo_folds(config, args.patients, args.boxes, say=_say):
        print(path)


def run_export(args: argparse.Namespace) -> None:
    """`export`: the weights of a run's `state.pt` as an `*.automedsam.pt` (e.g. of an interrupted run)."""
    state = load_state(Path(args.run) / STATE_FILE)
    config = config_from_dict(state["config"])
    spec = load_spec(config.data.spec, check_files=False)
    model = build_training_model(config, training_classes(config, spec))
    if config.model.train_mask_decoder:
        model.mask_decoder_tuned = True
    load_trained_state(model, state["trained"])
    position = state["position"]
    metrics = {"validation": {"best_dice": position["best_dice"], "best_step": position["best_step"],
                              "note": "exported from a training state: the weights of its last step"}}
    path = export_model(args.output, model, config, spec, None, position["step"], metrics)
    _say(f"wrote {path} (step {position['step']})")


def run_finetune(args: argparse.Namespace) -> None:
    """`finetune`: a short run from the init model on the cases, old vs new on their held-out slices; prints the
    per-class table and where the new model is."""
    options = FineTuneOptions(steps=args.steps, device=args.device, classes=tuple(args.classes),
                              ignore_unknown_labels=args.ignore_unknown_labels)
    result = finetune(args.init, args.data, args.output, options, say=_say)
    print("\n".join(summary_lines(result)))
