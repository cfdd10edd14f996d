"""Keep secrets out of everything the worker emits: replies, events and log lines."""

from __future__ import annotations

import re
import threading
from typing import Any

REDACTED = "<redacted>"
SECRET_KEY = re.compile(r"api[_-]?key|authorization|token|secret|password|credential", re.I)
# Keys that name a secret but hold none (counts, variable names, lists of what was left out).
NOT_SECRET_KEYS = frozenset(
    {
        "api_key_env",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "max_tokens",
        "tokens",
        "secrets_omitted",
    }
)


class Redactor:
    """Redacts values under secret-looking keys and every known secret value in strings."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def register(self, secret: str) -> None:
        if len(secret) >= 4:
            with self._lock:
                self._secrets = self._secrets | {secret}

    def redact(self, value: Any, *, by_key: bool = True) -> Any:
        """Known secrets replaced in every string; with `by_key`, also every value held
        under a secret-looking key (for logs; replies keep their keys' values, since an
        output field may well be called `token`)."""
        if not by_key and not self._secrets:
            return value
        return self._walk(value, self._secrets, by_key)

    def _walk(self, value: Any, secrets: set[str], by_key: bool) -> Any:
        if isinstance(value, str):
            for secret in secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            return {
                key: REDACTED
                if by_key and is_secret_key(key) and value[key] is not None
                else self._walk(value[key], secrets, by_key)
                for key in value
            }
        if isinstance(value, list | tuple):
            return [self._walk(item, secrets, by_key) for item in value]
        return value


def is_secret_key(key: object) -> bool:
    return isinstance(key, str) and key not in NOT_SECRET_KEYS and bool(SECRET_KEY.search(key))


redactor = Redactor()
