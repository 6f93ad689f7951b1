"""Where the shipped resources (`classes.csv`, `models.json`, sample data, bundled model) live.

In the source tree and in the Slicer extension the `Resources/` folder sits two levels above this
package; `AUTOMEDSAM_RESOURCES` overrides that (e.g. for a relocated install).
"""

from __future__ import annotations

import os
from pathlib import Path

_CANDIDATES = (
    Path(__file__).resolve().parents[2] / "Resources",   # source tree: Logic/automedsam -> repo/Resources
    Path(__file__).resolve().parents[1] / "Resources",   # Slicer module layout: <module>/automedsam -> Resources
)


def resources_dir() -> Path:
    """The `Resources/` folder; raises FileNotFoundError naming the places searched."""
    override = os.environ.get("AUTOMEDSAM_RESOURCES")
    candidates = (Path(override),) if override else _CANDIDATES
    for candidate in candidates:
        if (candidate / "classes.csv").exists() or (candidate / "models.json").exists():
            return candidate
    searched = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"AutoMedSAM resources not found (searched {searched}); set AUTOMEDSAM_RESOURCES")


def resource_path(*parts: str) -> Path:
    """Path of one resource file, e.g. `resource_path("SampleData", "example_ct_sm.nii.gz")`."""
    return resources_dir().joinpath(*parts)
