"""The DSPy integration: the only place that imports dspy."""

import dspy  # noqa: F401
