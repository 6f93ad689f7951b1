"""Review the worst first: per-slice, per-segment uncertainty scores, their slice axis and positions, the report."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from automedsam.catalog import default_catalog
from automedsam.errors import InputError
from automedsam.result import LabelVolume, Segment
from automedsam.review import REPORT_COLUMNS, report_text, slice_scores, write_report
from automedsam.volume import Volume


def _result(ijk_to_ras: np.ndarray, shape_kji=(4, 10, 12)) -> LabelVolume:
    """Liver (1) on slices 1-2 of the K axis; slice 2's edge is soft (0.4), slice 1's sharp (0.05)."""
    labels = np.zeros(shape_kji, np.uint8)
    uncertainty = np.full(shape_kji, 0.05, np.float32)
    if shape_kji[0] > 2:
        labels[1:3, 3:7, 4:9] = 1
        uncertainty[2] = 0.4
    volume = Volume(np.zeros(shape_kji, np.int16), np.asarray(ijk_to_ras, dtype=float), "CT")
    segment = Segment("liver", 1, default_catalog().get("liver"))
    return LabelVolume(labels, volume, (segment,), uncertainty=uncertainty)


def test_soft_slice_first_with_area_and_position():
    matrix = np.diag([0.5, 0.8, 3.0, 1.0])
    matrix[:3, 3] = (10.0, 20.0, -30.0)
    scores = slice_scores(_result(matrix))
    assert [(s.axis, s.index) for s in scores] == [("K", 2), ("K", 1)]
    assert (scores[0].doubt, scores[1].doubt) == (pytest.approx(0.8), pytest.approx(0.1))      # 2 x mean std
    assert scores[0].inconsistency == scores[1].inconsistency == pytest.approx(0.5)     # one equal, one empty side
    assert (scores[0].score, scores[1].score) == (pytest.approx(0.65), pytest.approx(0.3))
    assert scores[0].area_mm2 == pytest.approx(20 * 0.5 * 0.8)
    r, a, s = scores[0].center_ras
    assert s == pytest.approx(-30.0 + 2 * 3.0)                    # slice K=2
    assert 10.0 + 4 * 0.5 <= r <= 10.0 + 8 * 0.5 and 20.0 + 3 * 0.8 <= a <= 20.0 + 6 * 0.8


def test_slices_follow_the_axial_axis_of_a_sagittal_volume():
    """A volume stored sagittally (K along R-L, I along S): slices are taken along I, the axis nearest S."""
    matrix = np.array([[0, 0, 1.0, 0], [0, 1.0, 0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1]])
    result = _result(matrix, shape_kji=(3, 10, 12))
    scores = slice_scores(result)
    assert {s.axis for s in scores} == {"I"}
    assert sorted(s.index for s in scores) == [4, 5, 6, 7, 8]
    for s in scores:
        assert s.center_ras[2] == pytest.approx(s.index)          # I index = S mm here


def test_a_mask_that_jumps_between_slices_ranks_first():
    """Same doubt everywhere: the slice whose mask is nothing like its neighbours' comes first, its neighbours next."""
    result = _result(np.eye(4), shape_kji=(5, 30, 30))
    result.labels[:] = 0
    result.labels[:, 5:15, 5:15] = 1
    result.labels[2] = 0
    result.labels[2, 15:25, 15:25] = 1                        # slice 2 jumped to another place
    result.uncertainty[:] = 0.1
    scores = slice_scores(result)
    assert scores[0].index == 2 and scores[0].inconsistency == pytest.approx(1.0)
    assert {s.index for s in scores[1:3]} == {1, 3} and scores[-1].index in (0, 4)
    assert all(s.doubt == pytest.approx(0.2) for s in scores)


def test_doubt_is_capped_at_one():
    result = _result(np.eye(4))
    result.uncertainty[:] = 0.7                               # a sampled std can exceed 0.5 only in theory
    assert all(s.doubt == 1.0 for s in slice_scores(result))


def test_no_uncertainty_is_a_clear_error():
    result = _result(np.eye(4))
    result.uncertainty = None
    with pytest.raises(InputError, match="no uncertainty map"):
        slice_scores(result)


def test_report_csv(tmp_path):
    scores = slice_scores(_result(np.eye(4)))
    path = write_report(scores, tmp_path / "review.csv")
    rows = list(csv.DictReader(path.open()))
    assert tuple(rows[0]) == REPORT_COLUMNS
    assert [(r["rank"], r["class"], r["segment"], r["slice"]) for r in rows] == [("1", "liver", "Liver", "2"),
                                                                                 ("2", "liver", "Liver", "1")]
    assert report_text([]) == ",".join(REPORT_COLUMNS) + "\n"
    assert not list(tmp_path.glob(".*"))                          # no temporary file left behind
