"""Preprocessing: intensity normalisation, LiteMedSAM resize/pad and its inverse, box prompts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from automedsam.errors import InputError, ModelError
from automedsam.preprocess import (
    PreprocessConfig,
    ResizeInfo,
    box_to_model,
    from_model_output,
    mask_box,
    normalize_volume,
    to_model_input,
)


# ------------------------------------------------------------------------------------------- config
def test_config_round_trips_through_a_plain_dict() -> None:
    config = PreprocessConfig(image_size=1024, ct_window=(50.0, 350.0), mr_percentiles=(1.0, 99.0))
    data = config.to_dict()
    assert data == {"image_size": 1024, "ct_window": [50.0, 350.0], "mr_percentiles": [1.0, 99.0]}
    assert PreprocessConfig.from_dict(data) == config
    assert PreprocessConfig.from_dict({}) == PreprocessConfig()
    assert PreprocessConfig().ct_range == (-160.0, 240.0)


@pytest.mark.parametrize("data", [{"image_size": 256, "hu_window": [0, 1]}, {"ct_window": [40.0, -5.0]},
                                  {"mr_percentiles": [99.0, 1.0]}, {"image_size": "big"}])
def test_config_from_a_bad_checkpoint_is_a_model_error(data: dict) -> None:
    with pytest.raises(ModelError):
        PreprocessConfig.from_dict(data)


# ------------------------------------------------------------------------------------------- normalisation
def test_ct_window_maps_level_and_edges() -> None:
    hu = np.array([[[-1000.0, -160.0, -60.0, 40.0, 140.0, 240.0, 3000.0]]])
    out = normalize_volume(hu.astype(np.int16), "CT", PreprocessConfig(ct_window=(40.0, 400.0)))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.ravel(), [0.0, 0.0, 63.75, 127.5, 191.25, 255.0, 255.0], atol=1e-4)
    assert normalize_volume(hu, "ct").max() == 255.0  # modality names are case-insensitive


def test_mr_percentiles_are_taken_over_the_whole_volume_and_ignore_background() -> None:
    rng = np.random.default_rng(0)
    volume = np.zeros((4, 30, 30), dtype=np.float32)
    volume[:, 5:25, 5:25] = rng.uniform(100.0, 1100.0, size=(4, 20, 20))
    volume[0] *= 0.5  # a darker slice keeps its relative darkness: bounds are per volume, not per slice
    volume[2, 10, 10] = 1e6  # a hot outlier is clipped by the 99.5th percentile instead of squashing the rest
    out = normalize_volume(volume, "MR", PreprocessConfig(mr_percentiles=(0.5, 99.5)))
    positive = volume[volume > 0]
    low, high = np.percentile(positive, [0.5, 99.5])
    expected = (np.clip(volume, low, high) - low) / (high - low) * 255.0
    np.testing.assert_allclose(out[volume > 0], expected[volume > 0], rtol=1e-5, atol=1e-3)
    assert np.all(out[volume == 0] == 0.0), "background stays 0"
    assert out[0].max() < 0.6 * out[1].max()
    assert out[2, 10, 10] == 255.0 and out[1].max() > 200.0


def test_normalisation_copies_and_guards_degenerate_ranges() -> None:
    volume = np.array([[[5.0, 5.0], [5.0, 5.0]]])
    out = normalize_volume(volume, "MR")
    assert np.all(out == 0.0) and np.all(volume == 5.0)
    with pytest.raises(InputError, match="unknown modality"):
        normalize_volume(volume, "PET")


# ------------------------------------------------------------------------------------------- resize and pad
@pytest.mark.parametrize(("shape", "resized"), [((120, 300), (102, 256)), ((300, 120), (256, 102)),
                                                ((256, 256), (256, 256)), ((512, 512), (256, 256))])
def test_model_input_shape_range_and_padding(shape: tuple[int, int], resized: tuple[int, int]) -> None:
    slices = np.random.default_rng(1).uniform(0, 255, size=(2, *shape)).astype(np.float32)
    images, info = to_model_input(slices, image_size=256)
    assert images.shape == (2, 3, 256, 256) and images.dtype == torch.float32
    assert info == ResizeInfo(shape, resized, 256)
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])
    content = images[:, 0, : resized[0], : resized[1]]
    assert content.amin(dim=(1, 2)).tolist() == [0.0, 0.0] and content.amax(dim=(1, 2)).tolist() == [1.0, 1.0]
    assert torch.all(images[:, :, resized[0]:, :] == 0) and torch.all(images[:, :, :, resized[1]:] == 0)


def test_constant_slice_gives_zeros_not_nan() -> None:
    slices = np.stack([np.full((40, 60), 128.0), np.linspace(0, 255, 2400).reshape(40, 60)])
    images, _info = to_model_input(slices)
    assert torch.isfinite(images).all()
    assert torch.all(images[0] == 0) and images[1].max() == 1.0


def _blob_slice(shape: tuple[int, int], centre: tuple[float, float], sigma: float) -> np.ndarray:
    """A Gaussian blob, 0..255, cut to exact zero beyond ~3 sigma so the background is truly 0."""
    rows, cols = np.indices(shape, dtype=np.float64)
    blob = 255.0 * np.exp(-((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) / (2 * sigma**2))
    blob[blob < 2.0] = 0.0
    return blob.astype(np.float32)


def _centroid(image: np.ndarray) -> np.ndarray:
    weights = image / image.sum()
    rows, cols = np.indices(image.shape)
    return np.array([(rows * weights).sum(), (cols * weights).sum()])


@pytest.mark.parametrize(("shape", "centre"), [((90, 300), (30.0, 210.0)), ((300, 90), (200.0, 35.0)),
                                                ((100, 100), (70.0, 30.0))], ids=["wide", "tall", "square"])
def test_there_and_back_keeps_objects_in_place(shape: tuple[int, int], centre: tuple[float, float]) -> None:
    """Model input -> (as if a one-class model output) -> slice: the object comes back where it was."""
    slice_ = _blob_slice(shape, centre, sigma=8.0)
    images, info = to_model_input(slice_[None])
    scale = np.array(info.resized_size) / np.array(shape)
    # Pixel centres map as (p + 0.5) * scale - 0.5 (align_corners=False), in the model input and back.
    np.testing.assert_allclose(_centroid(images[0, 0].numpy()), (np.array(centre) + 0.5) * scale - 0.5, atol=0.02)
    back = from_model_output(images[:, :1] * 255.0, info)
    assert back.shape == (1, 1, *shape)
    np.testing.assert_allclose(_centroid(back[0, 0].numpy()), centre, atol=0.02)
    np.testing.assert_allclose(back[0, 0].numpy(), slice_, atol=4.0)


def test_small_outputs_are_upsampled_to_the_model_input_first() -> None:
    """A 1024 px model's 256 px masks: SAM resizes them to 1024 before cropping."""
    slice_ = _blob_slice((200, 500), (80.0, 350.0), sigma=25.0)
    images, info = to_model_input(slice_[None], image_size=1024)
    low_res = torch.nn.functional.interpolate(images[:, :1], size=(256, 256), mode="bilinear", antialias=True)
    back = from_model_output(low_res, info)
    assert back.shape == (1, 1, 200, 500)
    np.testing.assert_allclose(_centroid(back[0, 0].numpy()), (80.0, 350.0), atol=1.0)


def test_logits_per_class_keep_their_channel() -> None:
    _images, info = to_model_input(np.random.default_rng(2).uniform(0, 255, (3, 64, 128)))
    logits = torch.zeros(3, 4, 256, 256)
    logits[:, 2, :50, :100] = 10.0
    back = from_model_output(logits, info)
    assert back.shape == (3, 4, 64, 128)
    assert torch.all(back[:, [0, 1, 3]] == 0) and back[:, 2, :20, :40].min() == 10.0
    with pytest.raises(InputError, match="square"):
        from_model_output(torch.zeros(3, 4, 256, 128), info)


def test_to_model_input_refuses_other_shapes() -> None:
    with pytest.raises(InputError, match="batch of slices"):
        to_model_input(np.zeros((64, 64)))


# ------------------------------------------------------------------------------------------- boxes
def test_mask_box_is_tight_and_inclusive() -> None:
    mask = np.zeros((20, 30), dtype=bool)
    mask[3:8, 10:25] = True
    mask[12, 4] = True
    assert mask_box(mask) == (3, 4, 12, 24)
    assert mask_box(np.zeros((5, 5))) is None


def test_box_to_model_is_x_first_and_follows_the_resize() -> None:
    info = ResizeInfo.for_slices(128, 512, 256)
    assert info.resized_size == (64, 256)
    np.testing.assert_allclose(box_to_model((10, 100, 60, 400), info), [50.0, 5.0, 200.0, 30.0])
    boxes = box_to_model(np.array([[0, 0, 127, 511], [10, 100, 60, 400]]), info)
    assert boxes.shape == (2, 4) and boxes.dtype == np.float32
    np.testing.assert_allclose(boxes[0], [0.0, 0.0, 255.5, 63.5])


def test_box_of_a_mask_lands_on_the_mask_in_the_model_input() -> None:
    slice_ = np.zeros((150, 300), dtype=np.float32)
    slice_[40:90, 200:260] = 255.0
    images, info = to_model_input(slice_[None])
    x0, y0, x1, y1 = box_to_model(mask_box(slice_ > 0), info)
    inside = images[0, 0].numpy() > 0.5
    rows, cols = np.nonzero(inside)
    assert abs(cols.min() - x0) <= 1 and abs(cols.max() - x1) <= 1
    assert abs(rows.min() - y0) <= 1 and abs(rows.max() - y1) <= 1


@pytest.mark.parametrize("box", [(10, 10, 5, 20), (0, 0, 150, 10), (-1, 0, 5, 5)])
def test_box_to_model_refuses_boxes_outside_or_unordered(box: tuple[int, int, int, int]) -> None:
    with pytest.raises(InputError, match="box"):
        box_to_model(box, ResizeInfo.for_slices(150, 300))
