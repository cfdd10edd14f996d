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

from bridge.engine.runtime import Engine, install_history_sink
from bridge.redaction import redactor


class _RedactingFilter(logging.Filter):
    """Scrub known secrets from stdlib log records (DSPy, litellm, httpx) before they
    reach stderr; the worker's own structlog lines are redacted by its processor."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        scrubbed = redactor.redact(message, by_key=False)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        return True


def _quiet_libraries() -> None:
    redacting = _RedactingFilter()
    for handler in logging.getLogger().handlers:
        handler.addFilter(redacting)
    # litellm is imported lazily by DSPy, which then turns its telemetry off.
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


_quiet_libraries()
install_history_sink()
ENGINE = Engine()

__all__ = ["ENGINE", "Engine", "dspy"]
