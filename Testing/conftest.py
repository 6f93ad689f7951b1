"""Shared fixtures: the real reference volumes (fetched once) and the bundled sample."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTING_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTING_DIR.parent
sys.path.insert(0, str(TESTING_DIR))

import reference_data  # noqa: E402


@pytest.fixture(scope="session")
def reference_files() -> Path:
    """TotalSegmentator's `tests/reference_files/` (real CT/MR + label maps)."""
    return reference_data.reference_files()


@pytest.fixture(scope="session")
def slicerio_data() -> Path:
    """The installed slicerio package's data: CTChest4.nrrd with its Slicer-made (and an overlapping) .seg.nrrd."""
    return reference_data.slicerio_data()


@pytest.fixture(scope="session")
def ts_class_map() -> dict[str, dict[int, str]]:
    """TotalSegmentator label value -> name maps (`total`, `total_mr`)."""
    return reference_data.total_class_map()


@pytest.fixture(scope="session")
def sample_ct_path() -> Path:
    """The bundled sample CT (`Resources/SampleData/example_ct_sm.nii.gz`)."""
    return REPO_ROOT / "Resources" / "SampleData" / "example_ct_sm.nii.gz"


@pytest.fixture(scope="session")
def sample_seg_path() -> Path:
    """The bundled sample CT's TotalSegmentator label map."""
    return REPO_ROOT / "Resources" / "SampleData" / "example_ct_sm_seg.nii.gz"


REFERENCE_DATA_FIXTURES = {"reference_files", "ts_class_map"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that asks for the reference volumes is `realdata` whether or not it says so, so that the fast tier
    (`-m "not realdata and not realmodel"`) never downloads them."""
    for item in items:
        if REFERENCE_DATA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.realdata)
