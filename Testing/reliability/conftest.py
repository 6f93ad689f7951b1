"""Fixtures of the reliability suite (defined in `cli_harness`, shared with other command-line tests)."""

from cli_harness import model_calls, no_model, workspace  # noqa: F401 (pytest finds fixtures here)
