"""Fixtures of the training tests: a small nnU-Net-style phantom dataset and its spec (made once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest
from training_fakes import write_nnunet_folder

from automedsam_training.data.dataset_spec import save_spec
from automedsam_training.data.folder_import import import_nnunet_folder


@pytest.fixture(scope="session")
def spec_path(tmp_path_factory) -> Path:
    """Spec of two phantom 'patients' (liver = 1, spleen = 2) in an nnU-Net v2 folder."""
    folder = tmp_path_factory.mktemp("phantoms")
    return save_spec(import_nnunet_folder(write_nnunet_folder(folder / "Dataset001_Phantoms")), folder / "spec.json")
