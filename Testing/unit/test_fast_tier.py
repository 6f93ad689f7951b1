"""The unit tier stays fast: nothing under unit/ needs the reference volumes or runs the shipped weights."""

from __future__ import annotations

import re
from pathlib import Path

UNIT = Path(__file__).resolve().parent
SLOW_SIGNS = re.compile(r"pytest\.mark\.real(data|model)|\breference_files\b|\bts_class_map\b|load_model\(None\)")


def test_no_unit_test_needs_real_data_or_the_shipped_model() -> None:
    offenders = [f"{path.name}:{number}" for path in sorted(UNIT.glob("test_*.py")) if path.name != Path(__file__).name
                 for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
                 if SLOW_SIGNS.search(line)]
    assert not offenders, f"move these to Testing/integration/: {offenders}"
