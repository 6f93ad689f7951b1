"""What each `automedsam` sub-command does; `cli.py` only parses arguments and maps errors to exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

from .catalog import default_catalog
from .errors import InputError
from .file_checks import check_path_text
from .io import check_dicom_seg_sources, read_input, write_probability_volume, write_result
from .metrics import dice
from .preflight import SegmentPlan, check_segment_request, create_output_folders
from .registry import ModelRegistry
from .resources import resource_path
from .result import LabelVolume
from .volume import Volume, plausibility_warnings

DEMO_CLASSES = ("liver", "spleen", "kidney_left", "kidney_right", "aorta")


def _say(message: str) -> None:
    """One line on stderr, above a progress bar if one is showing (never glued to it)."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


@contextmanager
def _progress_bar(description: str) -> Iterator[Callable[[int, int, str], None]]:
    """A tqdm bar on stderr driven by the engine's (done, total, message) callback."""
    from tqdm import tqdm

    bar = tqdm(desc=description, unit="slice", file=sys.stderr, dynamic_ncols=True)

    def update(done: int, total: int, message: str) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()


def _download_progress() -> Callable[[int, int], None]:
    """A download progress callback whose tqdm bar appears only once bytes actually flow."""
    from tqdm import tqdm

    bars: list[tqdm] = []

    def update(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(unit="B", unit_scale=True, file=sys.stderr, desc="download"))
        bars[0].total = total
        bars[0].n = done
        bars[0].refresh()

    return update


def _warn(message: str) -> None:
    _say(f"warning: {message}")


def run_segment(args: argparse.Namespace) -> None:
    """`automedsam segment`: check everything, read, segment by class or box, write the result (and uncertainty).

    Order matters to the user: the torch-free checks first (a mistake is reported in well under a second), then
    the volume and the DICOM SEG sources, then the device, and only then the slow model load and the run.
    """
    plan = check_segment_request(args)
    for message in plan.warnings:
        _warn(message)
    volume, source_files = read_input(args.input, args.modality, args.series, warn=_warn)
    volume.validate()
    for message in plausibility_warnings(volume):
        _warn(message)
    if plan.output_format == "dicom-seg":
        check_dicom_seg_sources(volume, source_files)
    from .engine import EngineOptions, resolve_device
    from .loading import load_model

    resolve_device(args.device)
    segment_run = _box_run(volume, args, plan) if plan.box is not None else None
    model = load_model(args.model, download=args.download, progress=_download_progress())
    with _progress_bar("segmenting") as progress:
        options = EngineOptions(device=args.device, batch_size=args.batch_size, postprocess=not args.no_postprocess,
                                uncertainty_samples=args.samples if _wants_uncertainty(args) else 0,
                                precision=args.precision, encoder_backend=args.encoder_backend,
                                progress=progress, warn=_warn)
        result = segment_run(model, options) if segment_run is not None else _class_run(volume, args, model, options)
    create_output_folders(args.output, args.uncertainty, args.report)
    written = write_result(result, args.output, source_files)
    if args.uncertainty is not None and result.uncertainty is not None:
        write_probability_volume(volume.with_array(result.uncertainty), args.uncertainty)
    _say(f"wrote {written}")
    if args.report is not None:
        _write_review_report(result, args.report)
    for segment_ in result.segments:
        voxels = int(np.count_nonzero(result.labels == segment_.label_value))
        _say(f"  {segment_.name}: {voxels * float(np.prod(volume.spacing)) / 1000.0:.1f} mL")


def _wants_uncertainty(args: argparse.Namespace) -> bool:
    """The uncertainty map is computed for `--uncertainty` and for `--report`, which ranks slices by it."""
    return args.uncertainty is not None or args.report is not None


def _write_review_report(result: LabelVolume, path: object) -> None:
    """`--report`: the slices of every segment, most suspect first; says which slice to look at first."""
    from .review import slice_scores, write_report

    scores = slice_scores(result)
    write_report(scores, path)  # type: ignore[arg-type]
    if scores:
        top = scores[0]
        _say(f"wrote {path} ({len(scores)} segment slices); most suspect: {top.name}, slice {top.axis}={top.index}")
    else:
        _say(f"wrote {path} (no segment slices: every segment is empty)")


def _class_run(volume: Volume, args: argparse.Namespace, model: object, options: object) -> LabelVolume:
    from .engine import segment

    return segment(volume, args.classes, model, options)  # type: ignore[arg-type]


def _box_run(volume: Volume, args: argparse.Namespace, plan: SegmentPlan) -> Callable[[object, object], LabelVolume]:
    """The box-mode run, with its prompt built (and checked against the volume) before the model is loaded."""
    from .engine import BoxPrompt, RasBox, segment_boxes

    name = args.classes[0] if args.classes else "Segment_1"
    prompt = BoxPrompt.from_ras(volume, name, RasBox(*plan.box))  # type: ignore[misc]
    return lambda model, options: segment_boxes(volume, [prompt], model, options)  # type: ignore[arg-type]


def run_classes(args: argparse.Namespace) -> None:
    """`automedsam classes`: the catalog (or one model's classes) grouped by body region."""
    catalog = default_catalog()
    only = None
    if args.model is not None:
        entry = ModelRegistry.load().get(args.model)
        only = set(entry.classes)
    for region, organs in catalog.regions().items():
        if args.region is not None and region != args.region:
            continue
        shown = [o for o in organs if only is None or o.key in only]
        if shown:
            print(f"{region}:")
            for organ in shown:
                print(f"  {organ.key:<32} {organ.name:<36} {'/'.join(organ.modalities)}")


def run_models(args: argparse.Namespace) -> None:
    """`automedsam models list|verify|download`."""
    registry = ModelRegistry.load()
    if args.action == "list":
        default_id = registry.default().id
        for entry in registry.entries():
            mark = "*" if entry.id == default_id else " "
            classes = f"{len(entry.classes)} classes" if entry.classes else "box prompts"
            print(f"{mark} {entry.id:<22} {entry.title} [{entry.encoder}, {classes}; {entry.license}]")
        return
    if args.action == "download":
        for entry in [registry.get(args.model_id)] if args.model_id else [registry.default()]:
            paths = registry.resolve(entry, download=True, progress=_download_progress())
            _say(f"{entry.id}: ok ({paths})")
        return
    entries = [registry.get(args.model_id)] if args.model_id else registry.entries()
    failed = False
    for entry in entries:
        for file, path, status in registry.verify(entry):
            print(f"{entry.id:<22} {file.name:<40} {status}{'' if path is None else f'  {path}'}")
            failed |= status != "ok" and status != "missing"
    if failed:
        raise InputError("some model files failed verification; delete them and download again")


def run_export_training(args: argparse.Namespace) -> None:
    """`automedsam export-training`: an image and its corrected segmentation become a case of a training dataset."""
    check_path_text(args.image, "image")
    check_path_text(args.segmentation, "segmentation")
    check_path_text(args.output, "dataset")
    from automedsam_training.data.case_export import export_training_case
    from automedsam_training.data.dataset_spec import parse_pairs
    from automedsam_training.data.slicer_import import SegmentChoices

    choices = SegmentChoices(parse_pairs(args.rename), tuple(args.ignore), args.ignore_unmapped)
    case = export_training_case(args.image, args.segmentation, args.output, args.case_id, args.patient,
                                args.modality, args.series, choices, args.resample_labels)
    for mapping in case.segments:
        _say(mapping.describe())
    _say(f"wrote {case.image} and {case.label} (case {case.case_id}, patient {case.patient}; classes: "
         f"{', '.join(case.classes)})")
    _say(f"train on it: automedsam-train import-nnunet {args.output} -o {args.output.name}.json")


def _reference_masks(volume: Volume, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The sample's TotalSegmentator reference masks per class key, on the sample's grid."""
    reference, _ = read_input(resource_path("SampleData", "example_ct_sm_seg.nii.gz"), "CT")
    if reference.array.shape != volume.array.shape or not np.allclose(reference.ijk_to_ras, volume.ijk_to_ras):
        raise InputError("the sample's reference labels do not share the sample CT's grid")
    catalog = default_catalog()
    return {key: reference.array == catalog.get(key).ts_total for key in keys}


def run_demo(args: argparse.Namespace) -> None:
    """`automedsam demo`: segment the bundled sample CT; write `.seg.nrrd` + overlay PNG; print Dice."""
    from .engine import BoxPrompt, EmbeddingCache, EngineOptions, segment, segment_boxes
    from .loading import load_model
    from .overlay import write_overlay_png

    volume, _ = read_input(resource_path("SampleData", "example_ct_sm.nii.gz"), "CT")
    model = load_model(None)
    references = _reference_masks(volume, DEMO_CLASSES)
    with _progress_bar("segmenting the sample") as progress:
        options = EngineOptions(device=args.device, progress=progress, warn=_say, cache=EmbeddingCache())
        if set(DEMO_CLASSES) <= set(model.classes):
            mode = "class prompts"
            result = segment(volume, DEMO_CLASSES, model, options)
        else:
            mode = "box prompts from the sample's reference labels"
            _say("the default model has no class prompt encoder for these classes yet: running box mode with "
                 "boxes taken from the sample's reference labels (an upper bound for class prompts)")
            prompts = [BoxPrompt.from_mask(volume, key, mask) for key, mask in references.items()]
            result = segment_boxes(volume, prompts, model, options)
    args.output.mkdir(parents=True, exist_ok=True)
    seg_path = write_result(result, args.output / "demo.seg.nrrd")
    png_path = write_overlay_png(result, args.output / "demo_overlay.png", title=f"AutoMedSAM demo ({mode})")
    print(f"wrote {seg_path}\nwrote {png_path}")
    print("Dice vs the sample's TotalSegmentator labels (model outputs, not manual ground truth):")
    for segment_ in result.segments:
        print(f"  {segment_.name:<16} {dice(result.labels == segment_.label_value, references[segment_.key]):.3f}")
