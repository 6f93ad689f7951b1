"""`automedsam refine IMAGE SEG -c CLASS [--point R,A,S[,+|-]]... [--box ...] [--propagate] -o OUT`.

Everything that can be checked without the model is checked first (paths, prompts, the segmentation's grid and
segments, prompts inside the volume and on one slice); only then is the model loaded. The output keeps every other
segment, and the class's voxels on every slice not refined, exactly as they were.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import InputError
from .file_checks import check_path_text
from .io import read_input, result_files, result_format
from .preflight import check_output_folder, check_outputs_apart, create_output_folders, parse_box
from .registry import ModelRegistry, is_model_path


def add_refine_parser(commands: argparse._SubParsersAction) -> None:
    """The `refine` sub-command's arguments."""
    parser = commands.add_parser("refine", help="correct one class on one slice with points and/or a box "
                                 "(and carry the correction to the neighbouring slices)")
    parser.add_argument("input", type=Path, help="the image: NIfTI, NRRD, MHA file or DICOM series folder")
    parser.add_argument("segmentation", type=Path, help="a result of ours on that image: .seg.nrrd, or .nii.gz "
                        "with its .json")
    parser.add_argument("-c", "--class", dest="classes", action="append", default=[], metavar="NAME",
                        help="the class (segment) to refine")
    parser.add_argument("--point", action="append", default=[], metavar="R,A,S[,+|-]",
                        help="a click in RAS mm, + inside the organ (default), - outside it (repeatable)")
    parser.add_argument("--box", default=None, metavar="R0,A0,S0,R1,A1,S1",
                        help="a box on the slice: two opposite corners in RAS mm (same S)")
    parser.add_argument("--propagate", action="store_true", help="carry the correction to the neighbouring slices "
                        "until the organ ends or the segmentation already agrees")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the refined segmentation (same format)")
    parser.add_argument("--model", default=None, help="model id or .automedsam.pt file")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--series", default=None, metavar="UID|NUMBER", help="the DICOM series, if several")
    parser.add_argument("--modality", choices=["CT", "MR"], default=None, help="override the detected modality")
    parser.add_argument("--download", action="store_true", help="download missing model weights")


def parse_point(text: str) -> tuple[tuple[float, float, float], bool]:
    """`R,A,S` or `R,A,S,+` / `R,A,S,-` -> (position in RAS mm, positive)."""
    parts = [part.strip() for part in text.split(",")]
    sign = parts.pop() if len(parts) == 4 and parts[-1] in ("+", "-") else "+"
    try:
        values = [float(part) for part in parts]
    except ValueError:
        values = []
    if len(values) != 3 or not all(abs(v) < float("inf") for v in values):
        raise InputError(f"--point expects R,A,S in mm with an optional ,+ or ,- (inside / outside the organ), got "
                         f"{text!r}")
    return (values[0], values[1], values[2]), sign == "+"


def _check_paths(args: argparse.Namespace) -> str:
    """Paths, formats and overwrites; the output format (the segmentation's)."""
    for role, path in (("input", args.input), ("segmentation", args.segmentation), ("output", args.output),
                       ("model", args.model)):
        if path is not None:
            check_path_text(path, role)
    if not Path(args.input).exists():
        raise InputError(f"input {args.input} does not exist; check the path")
    kind = result_format(args.output)
    if kind != result_format(args.segmentation):
        raise InputError(f"the output {args.output.name} must have the segmentation's format "
                         f"({args.segmentation.name}), so that everything else in it stays as it was")
    check_output_folder(args.output)
    inputs = [Path(args.input), Path(args.segmentation), *result_files(args.segmentation, kind)[1:]]
    if Path(args.input).is_dir():
        inputs += [p for p in Path(args.input).iterdir() if p.is_file()]
    if args.model is not None and Path(args.model).is_file():
        inputs.append(Path(args.model))
    check_outputs_apart(inputs, [("output", file) for file in result_files(args.output, kind)])
    return kind


def _refinement(args: argparse.Namespace, key: str) -> object:
    from .engine import RasBox
    from .refine import RasPoint, Refinement

    points = tuple(RasPoint(*parse_point(text)) for text in args.point)
    box = None if args.box is None else RasBox(*parse_box(args.box)[0])
    if not points and box is None:
        raise InputError("no refinement prompt given: add --point R,A,S[,+|-] and/or --box R0,A0,S0,R1,A1,S1")
    return Refinement(key, points, box)


def _model_classes(model: str | None) -> tuple[str, ...] | None:
    """The classes of a registry model without loading it; None for a model file (known only once loaded)."""
    if model is not None and is_model_path(model):
        return None
    registry = ModelRegistry.load()
    return tuple((registry.get(model) if model is not None else registry.default()).classes)


def _segment_of(segmentation: object, name: str,
                model_classes: tuple[str, ...] | None) -> tuple[object, str, int, bool]:
    """(segmentation, key, label value, new) of the class: its segment, or a new empty segment when the class is not in
    the file but is the model's (checked after loading for a model file); `InputError` naming what is there."""
    found = segmentation.label_of(name)  # type: ignore[attr-defined]
    if found is not None:
        return (segmentation, *found, False)
    key = _catalog_key(name)
    if key is not None and (model_classes is None or key in model_classes):
        from .catalog import default_catalog

        added, value = segmentation.with_segment(default_catalog().get(key))  # type: ignore[attr-defined]
        return added, key, value, True
    listed = ", ".join(segmentation.names.values()) or "none"  # type: ignore[attr-defined]
    raise _neither(name, f"{segmentation.path.name} (its segments: {listed})")  # type: ignore[attr-defined]


def _neither(name: str, where: str) -> InputError:
    """The refusal of a class that is neither a segment of the file nor a class of the model."""
    return InputError(f"class {name!r} is not in {where} and the model has no such class either; refine one of its "
                      "segments or a class of the model")


def _catalog_key(name: str) -> str | None:
    from .catalog import default_catalog

    try:
        return default_catalog().get(name).key
    except InputError:
        return None


def run_refine(args: argparse.Namespace) -> None:
    """Check, read, locate the prompts, then load the model, refine and write."""
    from .segmentation_file import SegmentationFile

    _check_paths(args)
    if len(args.classes) != 1:
        raise InputError("give the class to refine with exactly one -c NAME (one refinement corrects one class)")
    model_classes = _model_classes(args.model)
    segmentation, key, label_value, new = _segment_of(SegmentationFile.read(args.segmentation), args.classes[0],
                                                      model_classes)
    refinement = _refinement(args, key)
    volume, _ = read_input(args.input, args.modality, args.series, warn=_warn)
    volume.validate()
    segmentation.check_grid(volume)
    from .refine import _check_prompts_find_class, locate
    from .volume import canonical_view

    view = canonical_view(volume)
    _check_prompts_find_class(view, segmentation.labels, label_value, locate(view, refinement))  # type: ignore[arg-type]
    _refine_and_write(args, volume, segmentation, key, label_value, refinement, new)


def _refine_and_write(args: argparse.Namespace, volume: object, segmentation: object, key: str, label_value: int,
                      refinement: object, new: bool) -> None:
    from .engine import EngineOptions, resolve_device
    from .loading import load_model
    from .refine import RefineOptions, refine
    from .slice_record import changed_slices, slice_digests
    from .volume import canonical_view

    resolve_device(args.device)
    model = load_model(args.model, download=args.download)
    class_index = model.class_index(key) if key in model.classes else None
    if class_index is None and new:
        raise _neither(args.classes[0], Path(args.segmentation).name)
    if class_index is None:
        _warn(f"the model has no class prompt for {key!r}; refining with the points and box alone")
    view = canonical_view(volume)  # type: ignore[arg-type]
    protected = changed_slices(segmentation.record_of(key), segmentation.labels == label_value,  # type: ignore[attr-defined]
                               view, without_record="none")
    result = refine(volume, segmentation.labels, label_value, refinement, model, class_index,  # type: ignore[arg-type]
                    EngineOptions(device=args.device, warn=_warn), RefineOptions(args.propagate, protected=protected))
    create_output_folders(args.output)
    records = {key: slice_digests(result.labels == label_value, view)}
    written = segmentation.write(result.labels, args.output, records)  # type: ignore[attr-defined]
    _say(f"wrote {written}: {key} {'added and ' if new else ''}refined on {len(result.slices)} slice(s)")
    for direction, reason in result.stops.items():
        _say(f"  propagation {direction}: stopped, {reason}")


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def _warn(message: str) -> None:
    _say(f"warning: {message}")
