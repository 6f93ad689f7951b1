"""`automedsam segment --model FILE.automedsam.pt`: a user's own checkpoint, class prompts, uncertainty map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
from engine_fakes import phantom

from automedsam import cli
from automedsam.loading import load_model
from automedsam.model import save_checkpoint

pytestmark = pytest.mark.realmodel


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("checkpoint")
    volume_path = folder / "phantom.nii.gz"
    sitk.WriteImage(phantom(shape_kji=(4, 40, 48)).to_sitk(), str(volume_path))
    model = load_model(None)
    model.attach_new_class_prompt_encoder(["liver", "spleen"])
    checkpoint = save_checkpoint(folder / "mine.automedsam.pt", model, training={"note": "untrained, for tests"})
    return {"volume": volume_path, "checkpoint": Path(checkpoint), "folder": folder}


def test_own_checkpoint_segments_by_class_and_writes_uncertainty(files, capsys):
    out, uncertainty = files["folder"] / "out.seg.nrrd", files["folder"] / "u.nii.gz"
    code = cli.main(["segment", str(files["volume"]), "-c", "liver", "-c", "spleen",
                     "--model", str(files["checkpoint"]), "--uncertainty", str(uncertainty), "--samples", "2",
                     "-o", str(out), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    names = [segment["name"] for segment in slicerio.read_segmentation(str(out))["segments"]]
    assert names == ["Liver", "Spleen"]
    spread = sitk.GetArrayFromImage(sitk.ReadImage(str(uncertainty)))
    assert spread.shape == (4, 40, 48) and spread.dtype == np.float32 and np.isfinite(spread).all()


def test_corrupt_or_foreign_model_files_exit_2(files, tmp_path, capsys):
    corrupt = tmp_path / "broken.automedsam.pt"
    corrupt.write_bytes(files["checkpoint"].read_bytes()[:1000])
    out = str(tmp_path / "o.seg.nrrd")
    assert cli.main(["segment", str(files["volume"]), "-c", "liver", "--model", str(corrupt), "-o", out]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: ")
    foreign = tmp_path / "weights.pth"
    foreign.write_bytes(b"not a checkpoint")
    assert cli.main(["segment", str(files["volume"]), "-c", "liver", "--model", str(foreign), "-o", out]) == 2
    assert "not an AutoMedSAM checkpoint" in capsys.readouterr().err
    assert not Path(out).exists()
