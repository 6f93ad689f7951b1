"""Run `automedsam` as a user would and check what a failure leaves behind (the reliability suite's harness).

Every refusal must: exit 2 (130 for an interrupt), print exactly one `error:` line and no traceback, leave an
existing output byte-identical, and leave no partial or temporary file. The engine runs a stand-in model where the
model's output does not matter; where the model must not even be loaded, loading it fails the test.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from engine_fakes import FakeModel, phantom

from automedsam import cli

PREVIOUS = b"an earlier result the user wants to keep"


@dataclass
class Outcome:
    """Exit code and standard error of one command."""

    code: int
    err: str
    created: list[str]
    changed: list[str]

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("error:")]

    @property
    def warnings(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("warning:")]


@dataclass
class Workspace:
    """A folder with a small CT phantom, an existing output the user keeps, and the command runner."""

    folder: Path
    image: Path
    output: Path
    run: Callable[[Sequence[str]], Outcome]

    def files(self) -> dict[str, bytes]:
        """Every file under the folder with its bytes (to prove a failure changed nothing)."""
        return {str(p.relative_to(self.folder)): p.read_bytes() for p in sorted(self.folder.rglob("*")) if p.is_file()}

    def segment(self, *argv: str | Path, image: Path | None = None, output: Path | None = None) -> Outcome:
        """`automedsam segment IMAGE -o OUTPUT ARGV...` (the workspace's image and output by default)."""
        return self.run(["segment", str(image or self.image), "-o", str(output or self.output), *map(str, argv)])


def assert_refused(outcome: Outcome, expected: str, code: int = 2) -> None:
    """Exit code, exactly one `error:` line containing `expected`, no traceback, and the workspace as it was: no
    file changed (the existing output included) and none created (no partial or temporary file)."""
    assert outcome.code == code, outcome.err
    assert len(outcome.error_lines) == 1, outcome.err
    assert expected in outcome.error_lines[0], outcome.err
    assert "Traceback" not in outcome.err and "internal error" not in outcome.err
    assert not outcome.created, f"left behind: {outcome.created}"
    assert not outcome.changed, f"changed: {outcome.changed}"


def write_image(array: np.ndarray, path: Path, spacing: Sequence[float] = (1.5, 1.2, 3.0)) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing))
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture
def model_calls(monkeypatch: pytest.MonkeyPatch) -> list[FakeModel]:
    """Loading a model gives a stand-in (recorded here), so runs that succeed take a second."""
    loaded: list[FakeModel] = []

    def fake_load(*args: object, **kwargs: object) -> FakeModel:
        loaded.append(FakeModel(classes=("liver", "spleen")))
        return loaded[-1]

    monkeypatch.setattr("automedsam.loading.load_model", fake_load)
    return loaded


@pytest.fixture
def workspace(tmp_path: Path, capsys: pytest.CaptureFixture[str], model_calls: list[FakeModel]) -> Workspace:
    folder = tmp_path / "work"
    folder.mkdir()
    image = folder / "ct.nii.gz"
    sitk.WriteImage(phantom(shape_kji=(6, 40, 48)).to_sitk(), str(image))
    output = folder / "out.seg.nrrd"
    output.write_bytes(PREVIOUS)

    def run(argv: Sequence[str]) -> Outcome:
        capsys.readouterr()
        before = workspace.files()
        code = cli.main(list(argv))
        after = workspace.files()
        return Outcome(code, capsys.readouterr().err, [name for name in after if name not in before],
                       [name for name, data in before.items() if after.get(name) != data])

    workspace = Workspace(folder, image, output, run)
    return workspace


@pytest.fixture
def no_model(model_calls: list[FakeModel]):
    """After the test: the refusal came before the model was loaded (the slow part never started)."""
    yield
    assert not model_calls, "the model was loaded before the input was refused"


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
