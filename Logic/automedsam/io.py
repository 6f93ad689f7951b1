"""Reading image volumes and writing results, with the field's libraries (SimpleITK, slicerio, highdicom).

Readers: NIfTI (`.nii`, `.nii.gz`), NRRD (`.nrrd`, `.nhdr`), MetaImage (`.mha`, `.mhd`) and DICOM series
folders. Every reader returns a `Volume` (KJI array, IJK->RAS in mm); the files themselves speak LPS and
SimpleITK's geometry is converted by `Volume.from_sitk`.

Writers: `.seg.nrrd` (3D Slicer segmentation, LPS space in the file), NIfTI labelmap + JSON sidecar,
DICOM SEG (needs the source DICOM files), float32 probability / uncertainty maps. Segment names, colours
and terminology come from each segment's catalog class (`OrganClass.slicer_terminology()` for Slicer's
`TerminologyEntry` tag). Every writer is atomic:
it writes a hidden temporary file in the destination folder and renames it over the target with
`os.replace`; on any failure the temporary file is removed, a previous output stays as it was, and an
`OutputError` says what went wrong.

Modality of a read volume: the DICOM Modality tag (0008,0060) when present (CT or MR; anything else is
refused), else the `modality` argument, else a guess from the intensities (`guess_modality`).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk  # noqa: N813 (the conventional alias)
import slicerio

from . import __version__
from .catalog import Code
from .errors import InputError, OutputError
from .file_checks import check_nifti, check_path_text, native_stderr
from .result import LabelVolume, Segment, label_dtype
from .segment_tags import CLASS_KEY_TAG, SEGMENT_STATUS, SLICE_DIGESTS_TAG
from .slice_record import slice_digests
from .volume import LPS_TO_RAS, MODALITIES, CanonicalView, Volume, canonical_view

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
RESULT_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii")
PROBABILITY_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
CT_MINIMUM_BELOW = -500.0            # a volume whose minimum is below this (HU) is taken as CT
DICOM_SEG_FILENAME = "AutoMedSAM-SEG.dcm"
DICOM_SEG_SERIES_NUMBER = 1001
_MODALITY_TAG = "0008|0060"
_DESCRIPTION_TAG = "0008|103e"
_POSITION_TAG = "0020|0032"
_ORIENTATION_TAG = "0020|0037"
_SPACING_TOLERANCE = 0.01  # relative deviation of one slice gap from the median gap that counts as uneven
logger = logging.getLogger(__name__)
Warn = Callable[[str], None]


# ----------------------------------------------------------------------------------------------- reading
def guess_modality(array: np.ndarray) -> str:
    """Guess the modality: CT if the darkest voxel is below -500 (air is -1000 HU), else MR (intensities >= 0)."""
    return "CT" if np.asarray(array).size and float(np.min(array)) < CT_MINIMUM_BELOW else "MR"


def read_volume(path: Path | str, modality: str | None = None, series_uid: str | None = None,
                warn: Warn | None = None) -> Volume:
    """Read a NIfTI, NRRD or MHA/MHD file, or the DICOM series in a folder, as a `Volume`.

    `modality` ("CT"/"MR") is used when the file does not say (only DICOM does); without it the modality
    is guessed from the intensities. `series_uid` picks one series of a DICOM folder holding several (its UID
    or its number in the listing). Truncated files, NIfTI files without voxel size or with NaN/Inf voxels and
    DICOM series with uneven slice spacing are refused; `warn` (default: the log) gets doubtful findings.
    """
    path = Path(path)
    check_path_text(path, "input")
    _check_modality_argument(modality)
    if not path.exists():
        raise InputError(f"input {path} does not exist; check the path")
    if path.is_dir():
        return read_dicom_series(path, modality, series_uid, warn)[0]
    if _image_suffix(path) is None:
        raise InputError(f"{path.name}: unsupported file type; expected one of {', '.join(IMAGE_SUFFIXES)} "
                         "or a folder holding a DICOM series")
    if _image_suffix(path) in (".nii", ".nii.gz"):
        for message in check_nifti(path):
            (warn or logger.warning)(message)
    native: list[str] = []
    try:
        with native_stderr(native):
            image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputError(f"could not read {path}: {_read_error_summary(error, native)}") from error
    return _volume_from_image(image, path, modality)


def read_input(path: Path | str, modality: str | None = None, series_uid: str | None = None,
               warn: Warn | None = None) -> tuple[Volume, list[Path]]:
    """`read_volume` plus the source DICOM files (slice order) when the input is a DICOM folder, else `[]`.

    The file list is what `write_result` needs to write a DICOM SEG that references the input series.
    """
    path = Path(path)
    check_path_text(path, "input")
    if path.is_dir():
        return read_dicom_series(path, modality, series_uid, warn)
    return read_volume(path, modality, warn=warn), []


def list_dicom_series(folder: Path | str) -> dict[str, list[Path]]:
    """Series Instance UID -> its files in slice order, for every DICOM series directly in `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder; expected a folder holding a DICOM series")
    for entry in os.scandir(folder):
        check_path_text(entry.path, "DICOM file")
    with native_stderr([]):
        series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
        return {uid: [Path(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)]
                for uid in series_ids}


def read_dicom_series(folder: Path | str, modality: str | None = None, series_uid: str | None = None,
                      warn: Warn | None = None) -> tuple[Volume, list[Path]]:
    """Read one DICOM series of `folder`: the `Volume` and its files in slice (k) order, for the DICOM SEG writer.

    Several series in the folder need `series_uid` (UID or number); the error lists them. The Modality tag
    (0008,0060) decides CT vs MR when present; other modalities (PT, US, ...) are refused. A series whose slices
    are not evenly spaced (a missing or unreadable file) is refused with the gap named.
    """
    folder = Path(folder)
    check_path_text(folder, "input")
    _check_modality_argument(modality)
    if not folder.exists():
        raise InputError(f"input {folder} does not exist; check the path")
    files = _select_series(folder, list_dicom_series(folder), series_uid)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    reader.MetaDataDictionaryArrayUpdateOn()
    native: list[str] = []
    try:
        with native_stderr(native):
            image = reader.Execute()
    except RuntimeError as error:
        raise InputError(f"could not read the DICOM series in {folder}: {_read_error_summary(error, native)}"
                         ) from error
    _check_slice_positions(reader, files, folder)
    dicom_modality = reader.GetMetaData(0, _MODALITY_TAG).strip() if reader.HasMetaDataKey(0, _MODALITY_TAG) else ""
    if dicom_modality and dicom_modality not in MODALITIES:
        raise InputError(f"the DICOM series in {folder} is {dicom_modality} (Modality tag 0008,0060); "
                         f"AutoMedSAM segments {' or '.join(MODALITIES)} only")
    return _volume_from_image(image, folder, dicom_modality or modality), files


def _select_series(folder: Path, series: dict[str, list[Path]], series_uid: str | None) -> list[Path]:
    if not series:
        raise InputError(f"no DICOM series found in {folder}; expected DICOM files or a "
                         f"{'/'.join(IMAGE_SUFFIXES)} file")
    if series_uid is not None:
        uids = list(series)
        if series_uid.isdigit() and 1 <= int(series_uid) <= len(uids) and series_uid not in series:
            return series[uids[int(series_uid) - 1]]
        if series_uid not in series:
            raise InputError(f"{folder} has no DICOM series {series_uid!r}; it holds {_describe_series(series)}")
        return series[series_uid]
    if len(series) > 1:
        raise InputError(f"{folder} holds {len(series)} DICOM series; pick one by its number or its Series "
                         f"Instance UID (command line: --series 1): {_describe_series(series)}")
    return next(iter(series.values()))


def _check_slice_positions(reader: sitk.ImageSeriesReader, files: Sequence[Path], folder: Path) -> None:
    """Refuse a series whose slices are not evenly spaced along the slice normal (stacking would misplace them)."""
    if len(files) < 3 or not all(reader.HasMetaDataKey(k, _POSITION_TAG) for k in range(len(files))):
        return
    try:
        row_col = np.array(reader.GetMetaData(0, _ORIENTATION_TAG).split("\\"), dtype=float).reshape(2, 3)
        positions = np.array([reader.GetMetaData(k, _POSITION_TAG).split("\\") for k in range(len(files))],
                             dtype=float)
    except ValueError:
        return
    heights = positions @ np.cross(row_col[0], row_col[1])
    gaps = np.diff(heights)
    typical = float(np.median(np.abs(gaps)))
    uneven = np.flatnonzero(np.abs(np.abs(gaps) - typical) > _SPACING_TOLERANCE * max(typical, 1e-3))
    if typical == 0.0 or uneven.size:
        k = int(uneven[0]) if uneven.size else 0
        raise InputError(
            f"the DICOM series in {folder} is not evenly spaced: {typical:.3g} mm between most slices, but "
            f"{abs(gaps[k]):.3g} mm between {files[k].name} and {files[k + 1].name} (slices {k + 1} and {k + 2} of "
            f"{len(files)}); a slice is probably missing or unreadable. Add the missing file, or load the series in "
            "3D Slicer, whose DICOM reader can resample it, and save it as NRRD")


def _describe_series(series: dict[str, list[Path]]) -> str:
    """`N: uid ("description", N files)` for each series, for error messages."""
    items = []
    for number, (uid, files) in enumerate(series.items(), start=1):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(files[0]))
        try:
            reader.ReadImageInformation()
            has_description = reader.HasMetaDataKey(_DESCRIPTION_TAG)
            description = reader.GetMetaData(_DESCRIPTION_TAG).strip() if has_description else ""
        except RuntimeError:
            description = ""
        items.append(f"{number}: {uid or '(no UID)'} ({description!r}, {len(files)} files)")
    return "; ".join(items)


def _volume_from_image(image: sitk.Image, source: Path, modality: str | None) -> Volume:
    try:
        volume = Volume.from_sitk(image)
    except InputError as error:
        raise InputError(f"{source}: {error}") from error
    return dataclasses.replace(volume, modality=modality or guess_modality(volume.array))


def _check_modality_argument(modality: str | None) -> None:
    if modality is not None and modality not in MODALITIES:
        raise InputError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")


def _image_suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((suffix for suffix in IMAGE_SUFFIXES if name.endswith(suffix)), None)


def _error_summary(error: BaseException) -> str:
    """The last non-empty line of an error (SimpleITK puts the reason after its file/line preamble)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _read_error_summary(error: BaseException, native: Sequence[str]) -> str:
    """The reader's reason, or what the C++ reader printed when its exception only says 'No such file'."""
    summary = _error_summary(error)
    printed = [line for line in native if "WARNING" not in line.upper()[:10]] or list(native)
    if printed and ("No such file" in summary or summary.startswith("Reason:")):
        detail = " ".join(" ".join(printed).split())
        if "not read completely" in detail or "ideal" in detail:
            return f"the file is truncated ({detail}); copy it again"
        return detail
    return summary


# --------------------------------------------------------------------------------------- atomic writing
def _write_atomically(targets: Sequence[tuple[Path, Callable[[Path], None]]]) -> None:
    """Write every target through a temporary file in its folder, then rename them all into place.

    `targets` pairs each final path with a function writing that content to a given path. Nothing is
    replaced until every temporary file is complete; temporary files never outlive this call.
    """
    temps: list[Path] = []
    current = targets[0][0]
    try:
        for current, write in targets:
            temps.append(_temporary_path(current))
            write(temps[-1])
        for (current, _), temp in zip(targets, temps, strict=True):
            os.replace(temp, current)
    except (OSError, RuntimeError) as error:
        raise OutputError(_describe_write_error(error, current)) from error
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)


def write_text_file(path: Path, text: str) -> Path:
    """Write a UTF-8 text file (a report) atomically, honouring the umask like every other result file."""
    _write_atomically([(path, lambda temp: temp.write_text(text, encoding="utf-8"))])
    return path


def _temporary_path(target: Path) -> Path:
    """A new hidden file next to `target`, ending like it (SimpleITK picks the format by extension)."""
    if not target.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, "folder does not exist", str(target.parent))
    suffix = "".join(target.suffixes[-2:]) if target.name.lower().endswith((".nii.gz", ".seg.nrrd")) else target.suffix
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.close(handle)
    os.chmod(name, _new_file_mode())
    return Path(name)


def _new_file_mode() -> int:
    """The permissions a plain new file gets (0666 less the umask), not mkstemp's private 0600."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _describe_write_error(error: BaseException, target: Path) -> str:
    code = getattr(error, "errno", None)
    if code == errno.ENOSPC:
        return f"the disk is full: could not write {target}; free some space or write elsewhere (nothing was changed)"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied: cannot write into {target.parent}; choose a folder you can write to"
    if code == errno.ENOENT and not target.parent.is_dir():
        return f"the folder {target.parent} does not exist; create it or choose another output path"
    return f"could not write {target}: {_error_summary(error)} (nothing was changed)"


# ------------------------------------------------------------------------------------ result metadata
def _code_json(code: Code | None) -> dict[str, str] | None:
    return None if code is None else {"scheme": code.scheme, "value": code.value, "meaning": code.meaning}


def _check_result(result: LabelVolume) -> None:
    """Refuse a result whose labels do not fit its grid or whose label values clash."""
    if result.labels.shape != result.volume.array.shape:
        raise InputError(f"the label map's shape {result.labels.shape} differs from its volume's "
                         f"{result.volume.array.shape}")
    values = [segment.label_value for segment in result.segments]
    if len(set(values)) != len(values) or any(v <= 0 or v > 65535 for v in values):
        raise InputError(f"segment label values {values} must be distinct and within 1..65535")
    keys = [segment.key for segment in result.segments]
    if len(set(keys)) != len(keys):
        raise InputError(f"segment keys {keys} must be distinct")


def _clean_labels(result: LabelVolume) -> np.ndarray:
    """The label map (KJI) with values of no segment set to 0, as uint8 when it fits, else uint16."""
    values = [segment.label_value for segment in result.segments]
    dtype = label_dtype(max(values, default=0))
    labels = np.asarray(result.labels)
    return np.where(np.isin(labels, values), labels, 0).astype(dtype)


# ---------------------------------------------------------------------------------------------- writers
def write_seg_nrrd(result: LabelVolume, path: Path | str) -> Path:
    """Write a 3D Slicer `.seg.nrrd`: one layer of label values, segment names, colours, terminology, class keys.

    Geometry is the input volume's, stored in LPS as Slicer does.
    """
    path = Path(path)
    _check_result(result)
    labels = _clean_labels(result)
    view = canonical_view(result.volume)
    segmentation = {
        "voxels": np.ascontiguousarray(labels.transpose(2, 1, 0)),   # KJI -> IJK, the order slicerio writes
        "ijkToLPS": LPS_TO_RAS @ np.asarray(result.ijk_to_ras, dtype=float),
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "referenceImageExtentOffset": [0, 0, 0],
        "segments": [seg_nrrd_segment(segment, labels, view) for segment in result.segments],
    }
    _write_atomically([(path, lambda temp: slicerio.write_segmentation(str(temp), segmentation))])
    return path


def seg_nrrd_segment(segment: Segment, labels_kji: np.ndarray, view: CanonicalView) -> dict:
    """slicerio segment fields; `extent` is (i0, i1, j0, j1, k0, k1) of the voxels, empty: (0, -1, ...); the tags
    hold the class key, the terminology and the record of what was written (`slice_record`)."""
    kji = np.nonzero(labels_kji == segment.label_value)
    extent = [0, -1, 0, -1, 0, -1]
    if kji[0].size:
        extent = [int(v) for axis in reversed(kji) for v in (axis.min(), axis.max())]
    return {
        "id": segment.key,
        "name": segment.name,
        "color": list(segment.organ.color_float()),
        "labelValue": int(segment.label_value),
        "layer": 0,
        "extent": extent,
        "nameAutoGenerated": False,
        "colorAutoGenerated": False,
        "status": SEGMENT_STATUS,
        "tags": {"TerminologyEntry": segment.organ.slicer_terminology(), CLASS_KEY_TAG: segment.key,
                 SLICE_DIGESTS_TAG: slice_digests(labels_kji == segment.label_value, view)},
    }


def write_nifti_labels(result: LabelVolume, path: Path | str) -> tuple[Path, Path]:
    """Write a NIfTI labelmap (uint8, or uint16 above 255) and `<name>.json` describing each label value.

    The JSON maps label value -> {key, name, color (RGB 0..255), category, type, type_modifier,
    anatomic_region, anatomic_region_modifier (SNOMED CT codes: scheme, value, meaning; null when absent)}.
    """
    path = Path(path)
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        raise InputError(f"{path.name}: a NIfTI labelmap must end in .nii.gz or .nii")
    _check_result(result)
    image = result.volume.to_sitk(_clean_labels(result))
    sidecar = nifti_sidecar(path)
    text = json.dumps(labels_json(result.segments), indent=2)
    _write_atomically([
        (path, lambda temp: sitk.WriteImage(image, str(temp), useCompression=True)),
        (sidecar, lambda temp: temp.write_text(text, encoding="utf-8")),
    ])
    return path, sidecar


def nifti_sidecar(path: Path) -> Path:
    """The `.json` that describes the labels of the NIfTI label map `path` (`result.nii.gz` -> `result.json`)."""
    stem = path.name[: -len(".nii.gz")] if path.name.lower().endswith(".nii.gz") else path.name[: -len(".nii")]
    return path.with_name(f"{stem}.json")


def result_files(path: Path | str, kind: str) -> list[Path]:
    """Every file `write_result` writes for an output path of format `kind` (see `result_format`)."""
    path = Path(path)
    if kind == "dicom-seg":
        return [path / DICOM_SEG_FILENAME]
    if kind == "nifti":
        return [path, nifti_sidecar(path)]
    return [path]


def labels_json(segments: Sequence[Segment]) -> dict[str, dict]:
    return {str(s.label_value): {
        "key": s.key, "name": s.name, "color": list(s.color),
        "category": _code_json(s.organ.category), "type": _code_json(s.organ.type),
        "type_modifier": _code_json(s.organ.type_modifier), "anatomic_region": _code_json(s.organ.anatomic_region),
        "anatomic_region_modifier": _code_json(s.organ.anatomic_region_modifier),
    } for s in segments}


def write_probability_volume(volume_like: Volume | LabelVolume, path: Path | str) -> Path:
    """Write a float32 map (NIfTI, NRRD or MHA) on the input grid: a `Volume`, or a result's `uncertainty`."""
    path = Path(path)
    if isinstance(volume_like, LabelVolume):
        if volume_like.uncertainty is None:
            raise InputError("the result has no uncertainty map; run with uncertainty enabled to write one")
        volume_like = volume_like.volume.with_array(np.asarray(volume_like.uncertainty))
    if not path.name.lower().endswith(PROBABILITY_SUFFIXES):
        raise InputError(f"{path.name}: unsupported file type for a probability map; use one of "
                         f"{', '.join(PROBABILITY_SUFFIXES)}")
    image = volume_like.to_sitk(np.asarray(volume_like.array, dtype=np.float32))
    _write_atomically([(path, lambda temp: sitk.WriteImage(image, str(temp), useCompression=True))])
    return path


def result_format(path: Path | str, source_files: Sequence[Path] | None = None) -> str:
    """"seg.nrrd", "nifti" or "dicom-seg" for an output path; `InputError` before any work if it cannot be written.

    A folder (a path ending in a slash, an existing folder, or a name without a suffix) means DICOM SEG, which
    needs the source DICOM files.
    """
    text = os.fspath(path)
    path = Path(text)
    name = path.name.lower()
    if text.endswith(("/", os.sep)) or path.is_dir() or not path.suffix:
        if not source_files:
            raise InputError(f"{path} is a folder, i.e. a DICOM SEG output, which needs a DICOM series as input; "
                             f"for this input use one of {', '.join(RESULT_SUFFIXES)}")
        return "dicom-seg"
    if name.endswith(".seg.nrrd"):
        return "seg.nrrd"
    if name.endswith((".nii.gz", ".nii")):
        return "nifti"
    raise InputError(f"{path.name}: unsupported result format; use one of {', '.join(RESULT_SUFFIXES)} "
                     "or a folder path (DICOM SEG)")


def write_result(result: LabelVolume, path: Path | str, source_files: Sequence[Path] | None = None) -> Path:
    """Write a result in the format its path asks for (see `result_format`); returns the written result file."""
    kind = result_format(path, source_files)
    if kind == "dicom-seg":
        return write_dicom_seg(result, list(source_files or []), path)
    if kind == "seg.nrrd":
        return write_seg_nrrd(result, Path(path))
    return write_nifti_labels(result, Path(path))[0]


# ------------------------------------------------------------------------------------------ DICOM SEG
def write_dicom_seg(result: LabelVolume, source_files: Sequence[Path], out_dir: Path | str) -> Path:
    """Write a DICOM SEG (BINARY, one segment per class) referencing the source series, into `out_dir`.

    Frames are matched to the source images by position in space (Image Position/Orientation), not by
    file order. Returns the path of the written `.dcm` file.
    """
    import highdicom as hd

    out_dir = Path(out_dir)
    if not source_files:
        raise InputError("a DICOM SEG needs the DICOM series the result was computed from, and the input was "
                         "not DICOM; write .seg.nrrd or .nii.gz instead")
    _check_result(result)
    sources = check_dicom_seg_sources(result.volume, source_files)
    numbers = np.zeros(65536, dtype=np.uint16)
    for number, segment in enumerate(result.segments, start=1):
        numbers[segment.label_value] = number
    pixels = numbers[_clean_labels(result)]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels.astype(np.uint8 if len(result.segments) < 256 else np.uint16),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_segment_description(n, s) for n, s in enumerate(result.segments, start=1)],
        series_instance_uid=hd.UID(), series_number=DICOM_SEG_SERIES_NUMBER, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="AutoMedSAM", manufacturer_model_name="AutoMedSAM",
        software_versions=__version__, device_serial_number="0", content_label="AUTOMEDSAM",
        content_description="AutoMedSAM automatic segmentation", series_description="AutoMedSAM segmentation")
    target = out_dir / DICOM_SEG_FILENAME
    try:
        out_dir.mkdir(exist_ok=True)
    except OSError as error:
        raise OutputError(_describe_write_error(error, out_dir)) from error
    _write_atomically([(target, lambda temp: seg.save_as(str(temp)))])
    return target


def check_dicom_seg_sources(volume: Volume, source_files: Sequence[Path]) -> list:
    """The source headers in slice order, or `InputError` if a DICOM SEG cannot reference them (no UIDs, other
    grid); the command line calls it before segmenting, so that this is known in a second, not after the run."""
    return _frames_in_volume_order(volume, _read_source_headers(source_files))


def _read_source_headers(files: Sequence[Path]) -> list:
    """Headers (no pixels) of the source images; refuses files without the UIDs a DICOM SEG must reference."""
    import pydicom

    headers = []
    for file in files:
        try:
            header = pydicom.dcmread(str(file), stop_before_pixels=True)
        except (OSError, pydicom.errors.InvalidDicomError) as error:
            raise InputError(f"could not read DICOM file {file}: {_error_summary(error)}") from error
        missing = [name for name in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
                                     "FrameOfReferenceUID") if not str(header.get(name, "") or "").strip()]
        if missing:
            raise InputError(f"DICOM file {file} has no {', '.join(missing)} (anonymised without UIDs?); a DICOM "
                             "SEG must reference them; write .seg.nrrd or .nii.gz instead")
        headers.append(header)
    return headers


def _frames_in_volume_order(volume: Volume, headers: list) -> list:
    """The source headers sorted so that entry k is the slice k of `volume`, checked in physical space."""
    rows, columns = volume.array.shape[1:]
    ras_directions = volume.directions_ras
    by_k: dict[int, object] = {}
    for header in headers:
        orientation = np.array(header.ImageOrientationPatient, dtype=float).reshape(2, 3)  # LPS row, column dirs
        position_ras = LPS_TO_RAS[:3, :3] @ np.array(header.ImagePositionPatient, dtype=float)
        ijk = volume.ras_to_ijk(position_ras)[0]
        k = int(round(ijk[2]))
        aligned = (np.allclose(LPS_TO_RAS[:3, :3] @ orientation[0], ras_directions[:, 0], atol=1e-3)
                   and np.allclose(LPS_TO_RAS[:3, :3] @ orientation[1], ras_directions[:, 1], atol=1e-3)
                   and np.allclose(ijk, [0, 0, k], atol=1e-2)
                   and (int(header.Rows), int(header.Columns)) == (rows, columns))
        if not aligned or not 0 <= k < volume.array.shape[0] or k in by_k:
            raise InputError(f"DICOM image {header.SOPInstanceUID} (position {list(header.ImagePositionPatient)} mm) "
                             "does not match a slice of the result's grid; pass the files of the series that was "
                             "segmented")
        by_k[k] = header
    if len(by_k) != volume.array.shape[0]:
        raise InputError(f"the DICOM files cover {len(by_k)} of the result's {volume.array.shape[0]} slices; "
                         "pass every file of the segmented series")
    return [by_k[k] for k in range(volume.array.shape[0])]


def _segment_description(number: int, segment: Segment):
    """highdicom segment description: label, SNOMED category/type (+ modifier, region), colour, algorithm."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    organ = segment.organ
    description = hd.seg.SegmentDescription(
        segment_number=number, segment_label=segment.name[:64],
        segmented_property_category=_coded(organ.category), segmented_property_type=_coded(organ.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="AutoMedSAM", family=codes.cid7162.ArtificialIntelligence, version=__version__),
        tracking_uid=hd.UID(), tracking_id=segment.key,
        anatomic_regions=[_coded(organ.anatomic_region)] if organ.anatomic_region is not None else None,
        display_color=hd.color.CIELabColor.from_rgb(*segment.color))
    if organ.type_modifier is not None:
        type_item = description.SegmentedPropertyTypeCodeSequence[0]
        type_item.SegmentedPropertyTypeModifierCodeSequence = [_coded(organ.type_modifier)]
    return description


def _coded(code: Code):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)
