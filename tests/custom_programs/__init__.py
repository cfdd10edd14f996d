"""An operator's own DSPy code, as a worker started with `--modules` loads it (tests)."""
