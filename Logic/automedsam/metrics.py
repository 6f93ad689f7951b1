"""Overlap metrics used by the demo, the evaluation, the tests and the benchmarks: one Dice, one convention."""

from __future__ import annotations

import math

import numpy as np


def dice(prediction: np.ndarray, reference: np.ndarray, empty: float = math.nan) -> float:
    """Dice coefficient 2 |P & R| / (|P| + |R|) of two boolean masks.

    Both empty: `empty`, NaN by default, because Dice says nothing about a class that is in neither (evaluation
    counts the false-positive volume of absent classes instead). Agreement checks between two runs pass
    `empty=1.0`: two empty masks agree.
    """
    prediction, reference = np.asarray(prediction, dtype=bool), np.asarray(reference, dtype=bool)
    total = int(prediction.sum()) + int(reference.sum())
    if total == 0:
        return empty
    return 2.0 * int(np.logical_and(prediction, reference).sum()) / total
