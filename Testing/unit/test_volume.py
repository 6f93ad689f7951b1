"""Volume: SimpleITK round trips keep geometry; `validate` refuses what cannot be segmented."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813

from automedsam.errors import InputError
from automedsam.volume import Volume


def _image(direction_lps: np.ndarray) -> sitk.Image:
    array = np.random.default_rng(0).integers(-1000, 1000, size=(5, 6, 7)).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 1.3, 2.9))
    image.SetOrigin((12.5, -40.25, 101.0))
    image.SetDirection(tuple(direction_lps.ravel()))
    return image


def _oblique_direction() -> np.ndarray:
    a, b = np.radians([20.0, 25.0])
    rot_x = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rot_z = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return rot_z @ rot_x


@pytest.mark.parametrize("direction", [np.diag([-1.0, 1.0, -1.0]), _oblique_direction()], ids=["flipped", "oblique"])
def test_sitk_round_trip_keeps_geometry_and_voxels(direction: np.ndarray) -> None:
    image = _image(direction)
    volume = Volume.from_sitk(image)
    back = volume.to_sitk()
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-9)
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    # RAS is LPS with x and y negated, voxel by voxel.
    for index in [(0, 0, 0), (6, 5, 4), (3, 1, 2)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(index))
        np.testing.assert_allclose(volume.ijk_to_ras @ [*index, 1], [-lps[0], -lps[1], lps[2], 1], atol=1e-9)
        np.testing.assert_allclose(volume.ras_to_ijk([-lps[0], -lps[1], lps[2]])[0], index, atol=1e-9)


def test_from_array_geometry_matches_its_arguments() -> None:
    volume = Volume.from_array(np.zeros((4, 5, 6)), spacing=(0.5, 0.75, 3.0), origin_ras=(1.0, 2.0, 3.0),
                               directions_ras=np.diag([-1.0, 1.0, -1.0]))
    np.testing.assert_allclose(volume.spacing, (0.5, 0.75, 3.0))
    np.testing.assert_allclose(volume.directions_ras, np.diag([-1.0, 1.0, -1.0]))
    assert volume.shape_ijk == (6, 5, 4)
    np.testing.assert_allclose(volume.ijk_to_ras @ [2, 0, 1, 1], [0.0, 2.0, 0.0, 1.0])


def _valid_array() -> np.ndarray:
    return np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32, np.float64])
def test_validate_accepts_ordinary_scalar_volumes(dtype: type) -> None:
    Volume(_valid_array().astype(dtype)).validate()
    Volume(_valid_array(), modality="MR").validate()


def _with_value(value: float) -> np.ndarray:
    array = _valid_array().astype(np.float64)
    array[1, 2, 3] = value
    return array


@pytest.mark.parametrize(("array", "message"), [
    (np.arange(30.0).reshape(5, 6), "2 dimensions"),
    (np.arange(120.0).reshape(2, 3, 4, 5), "4 dimensions"),
    (np.zeros((0, 5, 6)), "empty"),
    (np.full((4, 5, 6), 7.0), "constant"),
    (_with_value(np.nan), "NaN or infinite"),
    (_with_value(np.inf), "NaN or infinite"),
    (_with_value(-np.inf), "NaN or infinite"),
    (_valid_array() > 50, "boolean"),
    (_valid_array().astype(np.complex64), "not supported"),
], ids=["2d", "4d", "empty", "constant", "nan", "inf", "-inf", "bool", "complex"])
def test_validate_refuses_unusable_arrays(array: np.ndarray, message: str) -> None:
    with pytest.raises(InputError, match=message):
        Volume(array).validate()


@pytest.mark.parametrize("spacing", [(1.0, 0.0, 1.0), (1.0, 1.0, -2.0), (np.nan, 1.0, 1.0)])
def test_from_array_refuses_zero_negative_or_missing_spacing(spacing: tuple[float, float, float]) -> None:
    with pytest.raises(InputError, match="spacing"):
        Volume.from_array(_valid_array(), spacing=spacing)


def test_validate_refuses_a_zero_spacing_matrix() -> None:
    matrix = np.diag([1.0, 0.0, 1.0, 1.0])
    with pytest.raises(InputError, match="zero or degenerate"):
        Volume(_valid_array(), matrix).validate()


def test_validate_refuses_an_unknown_modality() -> None:
    with pytest.raises(InputError, match="unknown modality"):
        Volume(_valid_array(), modality="PET").validate()
