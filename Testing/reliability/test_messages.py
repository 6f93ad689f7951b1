"""Messages are plain sentences: numbers as numbers, never cut, never a numpy repr."""

from __future__ import annotations

import numpy as np
import pytest

from automedsam.errors import InputError
from automedsam.model.checkpoint import _first_line
from automedsam.volume import Volume, format_mm


def test_zero_spacing_is_printed_as_plain_numbers():
    with pytest.raises(InputError) as info:
        Volume.from_array(np.zeros((4, 8, 8)), spacing=(np.float64(0.0), 1.0, 2.5))
    assert "0 x 1 x 2.5 mm" in str(info.value) and "np.float64" not in str(info.value)


def test_degenerate_geometry_is_printed_as_plain_numbers():
    matrix = np.eye(4)
    matrix[:3, 0] = 0.0
    with pytest.raises(InputError) as info:
        Volume(np.arange(4 * 8 * 8, dtype=np.int16).reshape(4, 8, 8), matrix).validate()
    assert "0 x 1 x 1 mm" in str(info.value) and "np." not in str(info.value)


def test_format_mm():
    assert format_mm(np.array([0.976562, 0.976562, 2.0])) == "0.9766 x 0.9766 x 2"


def test_a_long_error_keeps_its_whole_first_sentence():
    sentence = "the file ends in the middle of record " + "x" * 300
    assert _first_line(RuntimeError(f"{sentence}. Second sentence.")) == sentence


def test_torch_advice_to_load_unsafely_is_dropped():
    error = RuntimeError("Weights only load failed. Re-running `torch.load` with `weights_only` set to `False` ...")
    assert "weights_only" not in _first_line(RuntimeError("Re-run with weights_only=False. More."))
    assert _first_line(error) == "Weights only load failed"
