"""Keep secrets out of what the worker emits, without letting a tenant rewrite anything.

Two mechanisms, one walker (`redact`):
- by key: a value under a secret-looking key (`api_key`, `authorization`, `*token*`, ...)
  becomes `<redacted>` (log lines, LM settings shown in replies) or is left out (exports);
- by value: the secrets the worker holds are scrubbed from *text that can carry them* —
  provider error messages and raw output, tracebacks, log lines, recordings — never from
  protocol fields (ids, error types, event names, keys), so a tenant that picks a common
  word as its "key" cannot alter another tenant's frames.

A secret is held while an LM object that uses it is alive (`SecretBook.hold` ties the
values to the object's lifetime), so a replaced LM, a deleted program, an ended session
or a rejected `configure_lm` leaves nothing behind.
"""

from __future__ import annotations

import functools
import os
import re
import threading
import weakref
from collections import Counter
from collections.abc import Iterable
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
        "secrets_held",
    }
)
# Shorter values are not scrubbed: they would garble text without protecting anything.
MIN_SECRET_CHARS = 4
# `Bearer <token>`, `Basic <credentials>`: the credential alone is a secret too.
AUTH_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*\s+(\S+)\s*$")


# Keys up to this long have their verdict remembered (every log line asks of the same
# few keys); the bound keeps the memory a tenant's keys can take small.
REMEMBERED_KEY_CHARS = 64


def is_secret_key(key: object) -> bool:
    if not isinstance(key, str):
        return False
    if len(key) <= REMEMBERED_KEY_CHARS:
        return _names_a_secret_remembered(key)
    return _names_a_secret(key)


def _names_a_secret(key: str) -> bool:
    return key not in NOT_SECRET_KEYS and bool(SECRET_KEY.search(key))


_names_a_secret_remembered = functools.lru_cache(maxsize=4096)(_names_a_secret)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret replaced by `<redacted>` (longest first, so a secret that
    contains another is replaced whole)."""
    return _scrub_in_order(text, _longest_first(secrets))


def _longest_first(secrets: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(secrets, key=len, reverse=True))


def _scrub_in_order(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def redact(
    value: Any,
    *,
    by_key: bool = True,
    secrets: Iterable[str] = (),
    omitted: list[str] | None = None,
    path: str = "",
) -> Any:
    """The one secret walker. Strings are scrubbed of `secrets`; with `by_key`, values
    under secret-looking keys become `<redacted>` — or, when `omitted` is given, are left
    out and their dotted paths appended to it."""
    return _walk(value, by_key, _longest_first(secrets), omitted, path)


# Values the walk returns as they are (exact classes: a subclass takes the walk).
_LEAVES = frozenset({int, float, bool, type(None), bytes})


def _walk(
    value: Any, by_key: bool, secrets: tuple[str, ...], omitted: list[str] | None, path: str
) -> Any:
    if isinstance(value, str):
        return _scrub_in_order(value, secrets) if secrets else value
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            if by_key and item is not None and is_secret_key(key):
                if omitted is None:
                    out[key] = REDACTED
                else:
                    omitted.append(f"{path}.{key}" if path else str(key))
            elif item.__class__ in _LEAVES:
                out[key] = item
            else:
                out[key] = _walk(item, by_key, secrets, omitted,
                                 f"{path}.{key}" if path else str(key))
        return out
    if isinstance(value, list | tuple):
        return [
            _walk(item, by_key, secrets, omitted, f"{path}.{index}")
            for index, item in enumerate(value)
        ]
    return value


def secret_values(value: Any, *, under_secret_key: bool = False) -> set[str]:
    """The strings of `value` held under secret-looking keys, and the credential part of
    those that are `<scheme> <credential>` (an Authorization header's bearer token)."""
    found: set[str] = set()
    stack: list[tuple[Any, bool]] = [(value, under_secret_key)]
    while stack:
        item, secret = stack.pop()
        if isinstance(item, str) and secret:
            found.add(item)
            scheme = AUTH_SCHEME.match(item)
            if scheme:
                found.add(scheme.group(1))
        elif isinstance(item, dict):
            stack.extend((child, secret or is_secret_key(key)) for key, child in item.items())
        elif isinstance(item, list | tuple):
            stack.extend((child, secret) for child in item)
    return {text for text in found if len(text) >= MIN_SECRET_CHARS}


class SecretBook:
    """The secrets the worker holds now: those of live LM objects, and the operator's own
    (values of the worker's secret-looking environment variables)."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._snapshot: frozenset[str] = frozenset()
        self.operator = frozenset(
            text
            for name, text in (os.environ if environ is None else environ).items()
            if is_secret_key(name) and len(text) >= MIN_SECRET_CHARS
        )

    def hold(self, owner: object, values: Iterable[str]) -> None:
        """Hold `values` for as long as `owner` lives."""
        held = tuple(text for text in values if len(text) >= MIN_SECRET_CHARS)
        if not held:
            return
        with self._lock:
            self._counts.update(held)
            self._snapshot = frozenset(self._counts)
        weakref.finalize(owner, self._release, held)

    def _release(self, values: tuple[str, ...]) -> None:
        with self._lock:
            self._counts.subtract(values)
            self._counts = +self._counts  # drop the ones no owner holds any more
            self._snapshot = frozenset(self._counts)

    def held(self) -> frozenset[str]:
        """Every secret to scrub from logs, tracebacks and recordings."""
        return self._snapshot | self.operator

    def __len__(self) -> int:
        return len(self._snapshot)


book = SecretBook()
