"""Circuit breakers, one per LM configuration: consecutive retryable provider failures
open one, and calls then fail fast until its cool-down lets a probe through."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from dspy_bridge.protocol.errors import BridgeError, ErrorType

DEFAULT_FAILURE_THRESHOLD = 5
DEFAULT_COOLDOWN_S = 30.0
MAX_BREAKERS = 10_000



@dataclass(slots=True)
class BreakerSettings:
    failure_threshold: int = DEFAULT_FAILURE_THRESHOLD
    cooldown_s: float = DEFAULT_COOLDOWN_S


class CircuitBreaker:
    """Consecutive retryable provider failures open it; after the cool-down one probe
    call is let through, and its outcome closes or re-opens it."""

    def __init__(self, label: str, settings: BreakerSettings) -> None:
        self.label = label
        self.settings = settings
        self.state = "closed"
        self.consecutive_failures = 0
        self.opened_at: float | None = None
        self.times_opened = 0
        self.rejected = 0
        self._probe_in_flight = False

    def before_call(self, model: str) -> bool:
        """Raise circuit_open if the call may not go ahead; True if it is the probe."""
        if self.state == "closed":
            return False
        now = time.monotonic()
        assert self.opened_at is not None
        remaining = self.opened_at + self.settings.cooldown_s - now
        if self.state == "open" and remaining <= 0:
            self.state = "half_open"
        if self.state == "half_open" and not self._probe_in_flight:
            self._probe_in_flight = True
            return True
        self.rejected += 1
        raise BridgeError(
            ErrorType.LM_ERROR,
            f"the circuit breaker for {model} is open after {self.consecutive_failures} "
            "consecutive provider failures; calls fail fast until the cool-down ends",
            retryable=True,
            details={
                "reason": "circuit_open",
                "model": model,
                "consecutive_failures": self.consecutive_failures,
                "retry_after_ms": max(0, round(remaining * 1000)),
            },
        )

    def on_success(self) -> None:
        self.state = "closed"
        self.consecutive_failures = 0
        self.opened_at = None
        self._probe_in_flight = False

    def on_failure(self, *, retryable_provider_failure: bool) -> None:
        self._probe_in_flight = False
        if not retryable_provider_failure:
            # The provider answered (or the failure is ours): it is not down.
            if self.state != "open":
                self.on_success()
            return
        self.consecutive_failures += 1
        if self.state == "half_open" or (
            self.state == "closed" and self.consecutive_failures >= self.settings.failure_threshold
        ):
            self.state = "open"
            self.opened_at = time.monotonic()
            self.times_opened += 1

    def on_abandoned(self) -> None:
        """The call was cancelled or timed out before an outcome: no verdict."""
        self._probe_in_flight = False

    def to_wire(self) -> dict[str, Any]:
        remaining = None
        if self.state == "open" and self.opened_at is not None:
            remaining = max(0, round((self.opened_at + self.settings.cooldown_s
                                      - time.monotonic()) * 1000))
        return {
            "model": self.label,
            "state": self.state,
            "consecutive_failures": self.consecutive_failures,
            "failure_threshold": self.settings.failure_threshold,
            "cooldown_ms": round(self.settings.cooldown_s * 1000),
            "times_opened": self.times_opened,
            "rejected_calls": self.rejected,
            "cooldown_remaining_ms": remaining,
        }


class BreakerRegistry:
    """One breaker per LM configuration (keyed by its fingerprint), least recent dropped."""

    def __init__(self, limit: int = MAX_BREAKERS) -> None:
        self._breakers: OrderedDict[str, CircuitBreaker] = OrderedDict()
        self._limit = limit

    def get(self, fingerprint: str, label: str, settings: BreakerSettings) -> CircuitBreaker:
        breaker = self._breakers.get(fingerprint)
        if breaker is None:
            breaker = CircuitBreaker(label, settings)
            self._breakers[fingerprint] = breaker
            while len(self._breakers) > self._limit:
                self._breakers.popitem(last=False)
        else:
            self._breakers.move_to_end(fingerprint)
        return breaker

    def to_wire(self) -> dict[str, Any]:
        return {fingerprint: breaker.to_wire() for fingerprint, breaker in self._breakers.items()}
