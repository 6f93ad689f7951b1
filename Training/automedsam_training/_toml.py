"""TOML reading: `tomllib` (Python 3.11+) or its backport `tomli` (Python 3.10, installed by the `train` extra)."""

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["tomllib"]
