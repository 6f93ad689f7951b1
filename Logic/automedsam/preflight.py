"""What `automedsam segment` checks before anything slow: paths, formats, options, classes, overwrites.

Torch-free on purpose (torch and OpenVINO take seconds to import): a user's mistake comes back in well under a
second, and a run that would fail at the end (an unwritable output, a class the model lacks, an output that is
the input) never starts. Nothing here reads voxels or loads a model.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .catalog import default_catalog, resolve_classes
from .errors import InputError
from .file_checks import check_path_text
from .io import PROBABILITY_SUFFIXES, result_files, result_format
from .registry import ModelRegistry, is_model_path

Corner = tuple[float, float, float]


@dataclass(frozen=True)
class SegmentPlan:
    """The checked request: output format, and the box corners (RAS mm) in box mode."""

    output_format: str
    box: tuple[Corner, Corner] | None
    warnings: tuple[str, ...] = ()


def check_segment_request(args: argparse.Namespace, registry: ModelRegistry | None = None) -> SegmentPlan:
    """Every check of a segment command that needs neither the voxels nor the model; `InputError` on the first."""
    for role, path in (("input", args.input), ("output", args.output), ("uncertainty", args.uncertainty),
                       ("report", args.report), ("model", args.model)):
        if path is not None:
            check_path_text(path, role)
    if not Path(args.input).exists():
        raise InputError(f"input {args.input} does not exist; check the path")
    kind = result_format(args.output, [Path(args.input)] if Path(args.input).is_dir() else None)
    _check_options(args)
    check_output_folder(args.output)
    outputs = [("output", file) for file in result_files(args.output, kind)]
    for role, path in (("uncertainty map", args.uncertainty), ("review report", args.report)):
        if path is not None:
            check_output_folder(path)
            outputs.append((role, Path(path)))
    check_outputs_apart(_input_files(args), outputs)
    box, warnings = (None, ()) if args.box is None else parse_box(args.box)
    if box is None:
        _check_classes(args.classes, args.model, registry)
    return SegmentPlan(kind, box, tuple(warnings))


def _check_options(args: argparse.Namespace) -> None:
    if args.batch_size is not None and args.batch_size < 1:
        raise InputError(f"--batch-size {args.batch_size}: give a whole number of slices, at least 1 (or leave it out "
                         "for an automatic choice)")
    for option, what, path in (("--uncertainty", "the uncertainty map", args.uncertainty),
                               ("--report", "the review report", args.report)):
        if path is None:
            continue
        if args.box is not None:
            raise InputError(f"{option} needs class prompts; it is not available with --box")
        if args.samples < 1:
            raise InputError(f"--samples {args.samples}: {what} needs at least 1 noise sample (default 4)")
    if args.uncertainty is not None and not str(args.uncertainty).lower().endswith(PROBABILITY_SUFFIXES):
        raise InputError(f"--uncertainty {args.uncertainty}: unsupported file type for an uncertainty map; use "
                         f"one of {', '.join(PROBABILITY_SUFFIXES)}")
    if args.report is not None and not str(args.report).lower().endswith(".csv"):
        raise InputError(f"--report {args.report}: the review report is a .csv file; name it like report.csv")
    if args.box is not None and len(args.classes) > 1:
        raise InputError("--box makes one segment; give at most one -c NAME to name it")


def _check_classes(names: Sequence[str], model: str | None, registry: ModelRegistry | None) -> None:
    """Class names against the catalog, and against the model's classes when the model is a registry id."""
    catalog = default_catalog()
    if not names:
        raise InputError("no class selected; pick at least one class with -c NAME (see `automedsam classes "
                         "--model automedsam_default`)")
    if model is not None and is_model_path(model):
        for name in names:
            catalog.get(name)
        return
    registry = registry or ModelRegistry.load()
    entry = registry.get(model) if model is not None else registry.default()
    if entry.kind == "base":
        for name in names:
            catalog.get(name)
        return
    resolve_classes(names, entry.classes, catalog)


def _input_files(args: argparse.Namespace) -> list[Path]:
    """The files a run reads: the image (or every file of a DICOM folder, and the folder) and a model file."""
    source = Path(args.input)
    files = [source]
    if source.is_dir():
        files += [Path(entry.path) for entry in os.scandir(source) if entry.is_file()]
    if args.model is not None and Path(args.model).is_file():
        files.append(Path(args.model))
    return files


def check_outputs_apart(inputs: Sequence[Path], outputs: Sequence[tuple[str, Path]]) -> None:
    """Refuse an output that is an input, lies inside an input DICOM folder, or is another output (links too)."""
    for index, (role, output) in enumerate(outputs):
        for source in inputs:
            if _same_file(output, source):
                raise InputError(f"the {role} {output} is the input {source}; writing it would destroy the input: "
                                 "choose another output path")
            if source.is_dir() and _inside(output, source):
                raise InputError(f"the {role} {output} would be written into the input DICOM folder {source}; "
                                 "choose an output outside it, so the series stays as it was")
        for other_role, other in outputs[:index]:
            if _same_file(output, other):
                raise InputError(f"the {role} and the {other_role} are the same file ({output}); one would "
                                 "overwrite the other: give them different paths")


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return Path(os.path.realpath(a)) == Path(os.path.realpath(b))


def _inside(path: Path, folder: Path) -> bool:
    return Path(os.path.realpath(folder)) in Path(os.path.realpath(path)).parents


def check_output_folder(path: Path | str) -> None:
    """Fail before the (slow) run when the output's folder cannot be created or written."""
    parent = _output_folder(path)
    existing = parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"cannot write to {parent}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK):
        raise InputError(f"cannot write to {parent}: permission denied; choose another output path")


def create_output_folders(*paths: Path | str | None) -> None:
    """Make the folders the outputs go into (checked writable by `check_output_folder` before the run), as a user
    who names `results/ct1/liver.seg.nrrd` expects."""
    for path in paths:
        if path is not None:
            _output_folder(path).mkdir(parents=True, exist_ok=True)


def _output_folder(path: Path | str) -> Path:
    """The folder an output goes into: the path itself for a folder output (no suffix, e.g. DICOM SEG)."""
    path = Path(path)
    return path if not path.suffix else path.parent


def parse_box(text: str) -> tuple[tuple[Corner, Corner], list[str]]:
    """`R0,A0,S0,R1,A1,S1` (two opposite corners, RAS mm) -> the corners, and a warning for a flat box."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 6 or not all(abs(v) < float("inf") for v in values):
        raise InputError(f"--box expects six comma-separated numbers R0,A0,S0,R1,A1,S1 in mm, got {text!r}")
    corner0, corner1 = (values[0], values[1], values[2]), (values[3], values[4], values[5])
    flat = [axis for axis, a, b in zip("RAS", corner0, corner1, strict=True) if a == b]
    warnings = [f"the box has zero size along {', '.join(flat)} (both corners at the same position); it covers "
                "one voxel layer there: give two opposite corners of the region"] if flat else []
    return (corner0, corner1), warnings
