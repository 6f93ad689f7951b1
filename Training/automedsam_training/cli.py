"""`automedsam-train`: import datasets, inspect them, train (or resume), evaluate, export.

    automedsam-train import-nnunet Dataset001_Liver -o liver.json
    automedsam-train import-totalseg totalsegmentator-2.18.0/tests/reference_files -o ts.json
    automedsam-train import-slicer ct.nrrd ct.seg.nrrd -o chest.json [--append] [--ignore tissue]
    automedsam-train inspect liver.json
    automedsam-train train config.toml --set optim.steps=2000 --set run.output=runs/liver [--resume]
    torchrun --nproc_per_node=4 -m automedsam_training.cli train config.toml
    automedsam-train evaluate runs/liver/model.automedsam.pt liver.json -o runs/liver/eval [--slices validation]
    automedsam-train lopo config.toml [--patients ct ct_dicom] [--boxes]
    automedsam-train export runs/liver -o liver.automedsam.pt
    automedsam-train finetune --init automedsam_default --data Dataset900_Corrections [-o models/] [--steps 100]

Exit codes as `automedsam`: 0 success, 2 user error (one `error: ...` line), 1 internal error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from automedsam.cli import program_parser, run_command

from . import __version__


def _add_import_parsers(commands: argparse._SubParsersAction) -> None:
    nnunet = commands.add_parser("import-nnunet", help="write a dataset spec for an nnU-Net / MSD dataset folder")
    nnunet.add_argument("folder", type=Path)
    nnunet.add_argument("-o", "--output", type=Path, required=True, help="spec file to write (.json)")
    nnunet.add_argument("--modality", choices=["CT", "MR"], default=None, help="override dataset.json's channel 0")
    nnunet.add_argument("--rename", action="append", default=[], metavar="NAME=CLASS",
                        help="map a dataset label name to a catalog class (repeatable)")
    nnunet.add_argument("--ignore", action="append", default=[], metavar="NAME", help="treat a label as background")
    nnunet.add_argument("--merge-vertebrae", action="store_true", help="all vertebra labels -> class 'vertebrae'")
    totalseg = commands.add_parser("import-totalseg",
                                   help="write a dataset spec for TotalSegmentator's reference files")
    totalseg.add_argument("folder", type=Path, help="tests/reference_files of the totalsegmentator sdist")
    totalseg.add_argument("-o", "--output", type=Path, required=True)
    totalseg.add_argument("--separate-vertebrae", action="store_true",
                          help="keep one class per vertebra instead of the single class 'vertebrae'")
    totalseg.add_argument("--separate-parts", action="store_true",
                          help="keep lung lobes and single ribs instead of whole lungs and 'ribs'")
    _add_slicer_parser(commands)


def _add_slicer_parser(commands: argparse._SubParsersAction) -> None:
    slicer = commands.add_parser("import-slicer", help="turn a Slicer segmentation (.seg.nrrd) and its image into "
                                 "training cases (one per layer of overlapping segments)")
    slicer.add_argument("image", type=Path, help="the segmented image (file or DICOM folder)")
    slicer.add_argument("segmentation", type=Path, help="the .seg.nrrd Slicer saved")
    slicer.add_argument("-o", "--output", type=Path, required=True, help="spec file to write (.json)")
    slicer.add_argument("--append", action="store_true", help="add the cases to the existing spec --output")
    slicer.add_argument("--labels-dir", type=Path, default=None,
                        help="folder for the label maps (default: <spec name>_labels/ beside the spec)")
    slicer.add_argument("--case-id", default=None, help="case id (default: the file name)")
    slicer.add_argument("--patient", default=None, help="patient id (default: the case id)")
    slicer.add_argument("--modality", choices=["CT", "MR"], default=None)
    slicer.add_argument("--rename", action="append", default=[], metavar="NAME=CLASS",
                        help="map a segment name to a catalog class, whatever its terminology (repeatable)")
    slicer.add_argument("--ignore", action="append", default=[], metavar="NAME", help="treat a segment as background")
    slicer.add_argument("--ignore-unmapped", action="store_true",
                        help="make segments that map to no class background instead of refusing the file")
    slicer.add_argument("--merge-vertebrae", action="store_true", help="vertebrae and spine regions -> 'vertebrae'")
    slicer.add_argument("--whole-parts", action="store_true", help="lung lobes -> whole lungs, single ribs -> 'ribs'")
    slicer.add_argument("--resample-labels", action="store_true",
                        help="resample a segmentation on another grid onto the image (nearest neighbour)")


FINETUNE_STEPS = 100
FINETUNE_HELP = f"""Adapt a model to a few corrected cases (and to classes they label that the model lacks) and compare
old and new on slices the new model never saw: the middle 20 % of each case's axial slices are held out, the rest
trained on. The recipe recorded in the model (losses, learning rate, augmentation, sampling) is reused with a short
schedule ({FINETUNE_STEPS} steps by default: minutes on a CPU for a few cases). Writes <init name>-ftN.automedsam.pt
(never over an existing file), its comparison (.comparison.md, .comparison.csv) and a run folder (<name>_run/)."""


def _add_finetune_parser(commands: argparse._SubParsersAction) -> None:
    finetune = commands.add_parser("finetune", help="adapt a model to corrected cases; old vs new on held-out slices",
                                   description=FINETUNE_HELP)
    finetune.add_argument("--init", required=True, metavar="MODEL",
                          help="registry id (e.g. automedsam_default) or an *.automedsam.pt file")
    finetune.add_argument("--data", required=True, type=Path, metavar="DIR",
                          help="dataset folder written by `automedsam export-training` or Save as training case "
                          "(nnU-Net layout), or a dataset spec (.json)")
    finetune.add_argument("-o", "--output", type=Path, default=None, metavar="OUT",
                          help="folder for the new model and its reports (default: the current folder), or the "
                          "new *.automedsam.pt itself")
    finetune.add_argument("--steps", type=int, default=FINETUNE_STEPS,
                          help="optimiser steps (default: %(default)s, a short schedule for a few cases on a CPU)")
    finetune.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    finetune.add_argument("--classes", nargs="+", default=[], metavar="CLASS",
                          help="classes to train (default: every class the cases label); classes the model lacks "
                          "are added")
    finetune.add_argument("--ignore-unknown-labels", action="store_true",
                          help="treat label values the dataset does not name as background instead of refusing")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser, commands = program_parser("automedsam-train", "Train AutoMedSAM class prompt encoders.", __version__)
    _add_import_parsers(commands)
    inspect = commands.add_parser("inspect", help="per case and class: voxels, slices, volume (checks alignment)")
    inspect.add_argument("spec", type=Path)
    train = commands.add_parser("train", help="train (or --resume) from a TOML configuration")
    train.add_argument("config", type=Path)
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a setting, e.g. --set optim.lr=3e-4 (repeatable)")
    train.add_argument("--resume", action="store_true", help="continue the run in run.output from its state.pt")
    evaluate = commands.add_parser("evaluate", help="Dice/NSD per class and case, class prompts vs boxes")
    evaluate.add_argument("model", type=Path, help="an *.automedsam.pt")
    evaluate.add_argument("spec", type=Path)
    evaluate.add_argument("-o", "--output", type=Path, required=True, help="folder for the CSV, Markdown and PNG")
    evaluate.add_argument("--cases", nargs="*", default=None, help="case ids (default: all)")
    evaluate.add_argument("--slices", choices=["all", "validation"], default="all",
                          help="whole volumes, or the validation slice ranges recorded in the model")
    evaluate.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    evaluate.add_argument("--title", default="AutoMedSAM evaluation")
    lopo = commands.add_parser("lopo", help="leave one CT patient out: a model per patient, scored on that patient")
    lopo.add_argument("config", type=Path)
    lopo.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                      help="override a setting, e.g. --set optim.steps=200 (repeatable)")
    lopo.add_argument("--patients", nargs="*", default=None, help="only these left-out patients (default: every CT "
                      "patient)")
    lopo.add_argument("--boxes", action="store_true", help="also score ground-truth box prompts (the upper bound)")
    export = commands.add_parser("export", help="write a run's trained model (from its state.pt) as *.automedsam.pt")
    export.add_argument("run", type=Path, help="run folder holding state.pt")
    export.add_argument("-o", "--output", type=Path, required=True)
    _add_finetune_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `automedsam-train` console script."""
    args = build_parser().parse_args(argv)
    from . import commands

    handlers = {"import-nnunet": commands.run_import_nnunet, "import-totalseg": commands.run_import_totalseg,
                "import-slicer": commands.run_import_slicer,
                "inspect": commands.run_inspect, "train": commands.run_train, "evaluate": commands.run_evaluate,
                "lopo": commands.run_lopo, "export": commands.run_export, "finetune": commands.run_finetune}
    return run_command(args, handlers[args.command],
                       "interrupted; the last checkpoint (if any) is in the run folder: resume with --resume")


if __name__ == "__main__":
    sys.exit(main())
