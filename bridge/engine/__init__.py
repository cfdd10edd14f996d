"""The DSPy integration: the only place that imports dspy (and, through it, litellm).

A DSPy upgrade touches this package alone. Importing it (which the worker does in a
background thread after `ready`) first makes sure nothing reaches the network on its
own — no model-metadata refresh, no telemetry — and that nothing writes to the home
directory, then builds the one `Engine` the command handlers use.
"""

import logging
import os

# Before DSPy or litellm are imported: use the bundled model metadata / cost map instead
# of fetching it from GitHub, and keep litellm from phoning home.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import dspy

from dspy_bridge.engine.lm import LITELLM_LOGGERS, install_log_redaction
from dspy_bridge.engine.runtime import Engine
from dspy_bridge.engine.scope import install_history_sink


def _quiet_libraries() -> None:
    # litellm is imported lazily by DSPy, which then turns its telemetry off; its own log
    # handler gets the same redaction when it loads (see lm.import_litellm).
    install_log_redaction("")
    for name in (*LITELLM_LOGGERS, "httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


_quiet_libraries()
install_history_sink()
ENGINE = Engine()

__all__ = ["ENGINE", "Engine", "dspy"]
