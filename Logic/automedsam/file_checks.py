"""Checks of image files that their readers skip, and a muzzle for what C++ readers print.

SimpleITK reads a truncated NIfTI without error (the missing voxels become zeros), replaces a NIfTI's NaN voxels
with 0, and takes a NIfTI without voxel size as 1 mm at the origin; a volume read that way would be segmented as
if it were real. `check_nifti` reads the header and streams the voxel data once, so these files are refused with a
message that says what is wrong. ITK, GDCM and MetaIO also print raw warnings on the process's stderr (file
descriptor 2); `native_stderr` collects them so that the user sees one clear message instead.
"""

from __future__ import annotations

import gzip
import os
import struct
import sys
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

_CHUNK = 1 << 22  # bytes streamed at a time while counting the voxel data
_FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI datatype code -> numpy kind (float32, float64)


@dataclass(frozen=True)
class NiftiHeader:
    """The fields of a NIfTI-1 or NIfTI-2 header that say how much data follows and where it sits in space."""

    size: tuple[int, ...]       # voxels along each dimension (dim[1..dim[0]])
    datatype: int
    bitpix: int
    pixdim: tuple[float, ...]   # voxel size along each dimension, as stored
    vox_offset: int
    qform_code: int
    sform_code: int
    byte_order: str             # "<" or ">"

    @property
    def data_bytes(self) -> int:
        """Bytes of voxel data the header promises."""
        return int(np.prod(self.size, dtype=np.int64)) * self.bitpix // 8


def _parse_nifti_header(raw: bytes) -> NiftiHeader | None:
    """The header at the start of `raw` (>= 540 bytes when available), or None if it is not NIfTI."""
    for order in "<>":
        if len(raw) >= 4 and struct.unpack(f"{order}i", raw[:4])[0] == 348 and len(raw) >= 348:
            dim = struct.unpack(f"{order}8h", raw[40:56])
            pixdim = struct.unpack(f"{order}8f", raw[76:108])
            datatype, bitpix = struct.unpack(f"{order}2h", raw[70:74])
            offset = int(struct.unpack(f"{order}f", raw[108:112])[0])
            qform, sform = struct.unpack(f"{order}2h", raw[252:256])
        elif len(raw) >= 4 and struct.unpack(f"{order}i", raw[:4])[0] == 540 and len(raw) >= 540:
            datatype, bitpix = struct.unpack(f"{order}2h", raw[12:16])
            dim = struct.unpack(f"{order}8q", raw[16:80])
            pixdim = struct.unpack(f"{order}8d", raw[104:168])
            offset = struct.unpack(f"{order}q", raw[168:176])[0]
            qform, sform = struct.unpack(f"{order}2i", raw[344:352])
        else:
            continue
        rank = int(dim[0])
        if not 1 <= rank <= 7:
            return None
        return NiftiHeader(tuple(int(d) for d in dim[1:rank + 1]), int(datatype), int(bitpix),
                           tuple(float(p) for p in pixdim[1:rank + 1]), offset, int(qform), int(sform), order)
    return None


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")  # noqa: SIM115


def check_nifti(path: Path) -> list[str]:
    """Refuse a NIfTI that is truncated, lacks a voxel size or holds NaN/Inf voxels; return warnings to show.

    Raises `InputError` naming what is missing. The only warning today: no orientation in the header
    (qform_code = sform_code = 0), which readers fill with a default that may put patient left on the right.
    """
    try:
        with _open(path) as stream:
            header = _parse_nifti_header(stream.read(540))
            if header is None:
                raise InputError(f"could not read {path.name}: it is not a NIfTI file (no NIfTI-1 or NIfTI-2 "
                                 "header); check that the file is complete and really NIfTI")
            _check_nifti_geometry(path, header)
            stream.seek(header.vox_offset)
            found, non_finite = _count_data(stream, header)
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise InputError(f"could not read {path.name}: the file is truncated or damaged ({error}); the download or "
                         "copy was probably interrupted: copy the file again") from error
    except OSError as error:
        raise InputError(f"cannot read {path}: {error.strerror or error}") from error
    if found < header.data_bytes:
        shape = "x".join(str(n) for n in header.size)
        raise InputError(f"{path.name} is truncated: its header describes {shape} voxels ({header.data_bytes:,} bytes "
                         f"of voxel data) but the file holds only {found:,}; the download or copy was probably "
                         "interrupted: copy the file again")
    if non_finite:
        raise InputError(non_finite_message(non_finite))
    if header.qform_code == 0 and header.sform_code == 0:
        return [f"{path.name} stores no orientation (qform_code and sform_code are 0): the axes are read as "
                "patient left, posterior, superior; check that the result is not mirrored"]
    return []


def non_finite_message(count: int) -> str:
    """The one message for NaN/Inf voxels, whatever reader or path found them."""
    return f"the volume has {count:,} NaN or infinite voxels; fix or mask them before segmenting"


def _check_nifti_geometry(path: Path, header: NiftiHeader) -> None:
    if len(header.size) < 3:
        return
    spacing = header.pixdim[:3]
    missing = [axis for axis, value in zip("ijk", spacing, strict=True) if not np.isfinite(value) or value == 0.0]
    if missing:
        orientation = " and no orientation (qform_code and sform_code are 0)" if (
            header.qform_code == 0 and header.sform_code == 0) else ""
        raise InputError(f"{path.name} stores no voxel size along {', '.join(missing)} (pixdim = "
                         f"{', '.join(f'{v:g}' for v in spacing)}){orientation}, so its geometry is unknown and mm, "
                         "mL and the model's input would be wrong; fix the header (e.g. re-export from the scanner's "
                         "DICOM) and try again")


def _count_data(stream, header: NiftiHeader) -> tuple[int, int]:
    """(bytes of voxel data present, count of non-finite float voxels among them), streamed in chunks."""
    kind = _FLOAT_TYPES.get(header.datatype)
    dtype = np.dtype(f"{header.byte_order}{kind}") if kind is not None else None
    found = non_finite = 0
    leftover = b""
    while found < header.data_bytes:
        chunk = stream.read(min(_CHUNK, header.data_bytes - found))
        if not chunk:
            break
        found += len(chunk)
        if dtype is not None:
            data = leftover + chunk
            usable = len(data) - len(data) % dtype.itemsize
            non_finite += int(np.count_nonzero(~np.isfinite(np.frombuffer(data[:usable], dtype=dtype))))
            leftover = data[usable:]
    return found, non_finite


@contextmanager
def native_stderr(sink: list[str]) -> Iterator[None]:
    """Collect into `sink` the lines C++ libraries print on file descriptor 2 during the block (not shown)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            sink.extend(line.strip() for line in capture.read().decode(errors="replace").splitlines() if line.strip())


def check_path_text(path: Path | str, role: str) -> None:
    """Refuse a path that is not valid UTF-8 text: SimpleITK and GDCM abort the whole process on one."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        raise InputError(f"the {role} path {shown!r} is not valid UTF-8 text (a name in another system's encoding), "
                         "which the image libraries cannot open; use a name of plain letters and digits") from None
