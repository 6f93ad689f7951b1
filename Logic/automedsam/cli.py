"""The `automedsam` command line: `segment`, `refine`, `classes`, `models list|verify|download`, `export-training`,
`demo`.

Exit codes: 0 success, 2 user error (one `error: ...` line, no traceback), 1 internal error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .errors import AutoMedSAMError

logger = logging.getLogger("automedsam")


def _add_segment_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("segment", help="segment organ classes (or a box) in a CT/MR volume")
    parser.add_argument("input", type=Path, help="NIfTI, NRRD, MHA file or DICOM series folder")
    parser.add_argument("--series", default=None, metavar="UID|NUMBER",
                        help="the DICOM series to segment when the folder holds several: its Series Instance UID, "
                             "or its number in the list the error shows (for a series without a UID)")
    parser.add_argument("-c", "--class", dest="classes", action="append", default=[], metavar="NAME",
                        help="class to segment (repeatable); with --box, the name of the resulting segment")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="output: .seg.nrrd, .nii.gz (+ labels .json), or a folder for DICOM SEG")
    parser.add_argument("--model", default=None, help="model id (see `automedsam models list`) or .automedsam.pt file")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--box", default=None, metavar="R0,A0,S0,R1,A1,S1",
                        help="box prompt: two opposite corners in RAS mm (negative numbers are fine)")
    parser.add_argument("--no-postprocess", action="store_true", help="keep every component, do not fill holes")
    parser.add_argument("--uncertainty", type=Path, default=None, metavar="OUT",
                        help="also write a per-voxel uncertainty map (.nii.gz or .nrrd)")
    parser.add_argument("--report", type=Path, default=None, metavar="CSV",
                        help="also write each segment's slices ranked for review, most suspect first (.csv): "
                             "uncertainty on the segment and change from the neighbouring slices")
    parser.add_argument("--samples", type=int, default=4,
                        help="noise samples for --uncertainty and --report (default 4)")
    parser.add_argument("--modality", choices=["CT", "MR"], default=None, help="override the detected modality")
    parser.add_argument("--batch-size", type=int, default=None, help="slices per batch (default: automatic)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="encoder precision; auto: bf16 on GPUs and on CPUs with AMX/avx512_bf16, else fp32")
    parser.add_argument("--encoder-backend", default="auto", choices=["auto", "torch", "openvino"],
                        help="auto: OpenVINO on the CPU when installed (pip install automedsam[cpu]), else PyTorch")
    parser.add_argument("--download", action="store_true", help="download missing model weights")


def _add_export_training_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("export-training", help="add an image and its corrected segmentation to an "
                                 "nnU-Net-style training dataset (automedsam-train import-nnunet reads it)")
    parser.add_argument("image", type=Path, help="the image: NIfTI, NRRD, MHA file or DICOM series folder")
    parser.add_argument("segmentation", type=Path, help="the corrected segmentation: Slicer .seg.nrrd, or an "
                        "AutoMedSAM NIfTI result (.nii.gz with its .json)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="dataset folder (created, or extended)")
    parser.add_argument("--case-id", default=None, help="case name (default: the image's file name)")
    parser.add_argument("--patient", default=None, help="patient id, to keep a patient's scans together when "
                        "evaluating leave-one-patient-out (default: the case id)")
    parser.add_argument("--series", default=None, metavar="UID|NUMBER", help="the DICOM series, if several")
    parser.add_argument("--modality", choices=["CT", "MR"], default=None, help="override the detected modality")
    parser.add_argument("--rename", action="append", default=[], metavar="NAME=CLASS",
                        help="map a segment to a catalog class (repeatable)")
    parser.add_argument("--ignore", action="append", default=[], metavar="NAME", help="leave a segment out")
    parser.add_argument("--ignore-unmapped", action="store_true", help="leave out segments that map to no class")
    parser.add_argument("--resample-labels", action="store_true",
                        help="resample a segmentation on another grid onto the image (nearest neighbour)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser, commands = program_parser("automedsam", "AutoMedSAM organ segmentation for CT and MR.", __version__)
    _add_segment_parser(commands)
    classes = commands.add_parser("classes", help="list the organ classes")
    classes.add_argument("--model", default=None, help="only the classes this model segments")
    classes.add_argument("--region", default=None, help="only classes of this body region")
    models = commands.add_parser("models", help="list, verify or download models")
    models.add_argument("action", choices=["list", "verify", "download"])
    models.add_argument("model_id", nargs="?", default=None, help="model id (download/verify; default: all/default)")
    _add_export_training_parser(commands)
    from .refine_command import add_refine_parser

    add_refine_parser(commands)
    demo = commands.add_parser("demo", help="segment the bundled sample CT; writes .seg.nrrd and an overlay PNG")
    demo.add_argument("-o", "--output", type=Path, default=Path("automedsam-demo"), help="output folder")
    demo.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    return parser


def program_parser(prog: str, description: str,
                   version: str) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """A console script's parser with --version and --debug, and its sub-command group (both scripts use it)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"{prog} {version}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    return parser, parser.add_subparsers(dest="command", required=True)


def run_command(args: argparse.Namespace, handler: Callable[[argparse.Namespace], None], interrupted: str) -> int:
    """Run a sub-command as both console scripts do: exit code 0, 2 with one `error:` line for a user error,
    130 with `interrupted` on Ctrl-C, 1 for an internal error (its traceback only with --debug)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[_LineHandler()])
    try:
        handler(args)
    except AutoMedSAMError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"error: {interrupted}", file=sys.stderr)
        return 130
    except BrokenPipeError:   # the reader stopped early (`automedsam classes | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as error:  # noqa: BLE001 - the one place that turns internal errors into exit code 1
        if args.debug:
            raise
        print(f"internal error: {type(error).__name__}: {error} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1
    return 0


VALUE_OPTIONS_WITH_NEGATIVE_NUMBERS = ("--box", "--point")


def attach_negative_values(argv: Sequence[str], options: Sequence[str] = VALUE_OPTIONS_WITH_NEGATIVE_NUMBERS
                           ) -> list[str]:
    """`--box -80,-60,...` -> `--box=-80,-60,...`: argparse takes a value starting with '-' for an option, and a
    comma-separated list of negative numbers is exactly what a RAS box looks like."""
    result: list[str] = []
    for item in argv:
        if result and result[-1] in options and re.match(r"-\.?\d", item):
            result[-1] = f"{result[-1]}={item}"
        else:
            result.append(item)
    return result


class _LineHandler(logging.StreamHandler):
    """Log records as lines on stderr, written above a progress bar instead of into it."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging must never break a run
            self.handleError(record)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `automedsam` console script."""
    args = build_parser().parse_args(attach_negative_values(sys.argv[1:] if argv is None else argv))
    from . import commands
    from .refine_command import run_refine

    handlers = {"segment": commands.run_segment, "classes": commands.run_classes, "models": commands.run_models,
                "export-training": commands.run_export_training, "demo": commands.run_demo, "refine": run_refine}
    return run_command(args, handlers[args.command], "interrupted; nothing was written")


if __name__ == "__main__":
    sys.exit(main())
