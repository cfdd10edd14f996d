"""Helpers for the DSPy engine tests: a worker that keeps every frame it sent (for the
secret scan), and short request helpers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.conftest import WorkerProcess

# Given to workers by value in the engine tests; it must never come back out.
TEST_API_KEY = "sk-test-bridge-7f3c91d2e8a4-never-leak"
ENV_API_KEY = "sk-env-bridge-51ab77c0d9-never-leak"
ENV_KEY_NAME = "BRIDGE_TEST_PROVIDER_API_KEY"
SECRETS = (TEST_API_KEY, ENV_API_KEY)


class RecordingWorker(WorkerProcess):
    """A worker whose every outgoing frame is kept, so a test can scan them all."""

    def __init__(self, *flags: str, env: dict[str, str] | None = None) -> None:
        self.received: list[dict[str, Any]] = []
        super().__init__(*flags, env={ENV_KEY_NAME: ENV_API_KEY, **(env or {})})

    def read_message(self, timeout: float = 60.0) -> dict[str, Any]:
        message = super().read_message(timeout)
        self.received.append(message)
        return message

    def ok(self, command: str, args: dict[str, Any] | None = None, **envelope: Any) -> Any:
        response = self.request(command, args, timeout=60.0, **envelope)
        assert response["success"], response
        return response["result"]

    def error(self, command: str, args: dict[str, Any] | None, error_type: str,
              **envelope: Any) -> dict[str, Any]:
        response = self.request(command, args, timeout=60.0, **envelope)
        assert response["success"] is False, response
        error: dict[str, Any] = response["error"]
        assert error["type"] == error_type, response
        assert isinstance(error["message"], str) and error["message"]
        assert isinstance(error["retryable"], bool)
        return error

    def invalid_fields(self, command: str, args: dict[str, Any]) -> list[str]:
        """The field names an invalid_args answer points at."""
        error = self.error(command, args, "invalid_args")
        return [item["field"] for item in error["details"]["errors"]]

    def assert_no_secret_leaked(self) -> None:
        text = repr(self.received) + self.stderr_text()
        for secret in SECRETS:
            assert secret not in text
        try:
            with open(f"/proc/{self.pid}/environ", "rb") as environ:
                worker_env = environ.read().decode("utf-8", "replace")
        except OSError:
            return  # the worker has exited
        assert TEST_API_KEY not in worker_env


AUDIT_HOOK = '''
import sys

def _audit(event, args):
    if event == "socket.connect":
        address = args[1]
        host = address[0] if isinstance(address, tuple) else str(address)
        if isinstance(address, tuple) and host not in ("127.0.0.1", "::1", "localhost"):
            sys.stderr.write(f"NON_LOCAL_NETWORK connect {host}\\n")
    elif event == "socket.getaddrinfo":
        host = args[0]
        if host not in (None, "127.0.0.1", "::1", "localhost"):
            sys.stderr.write(f"NON_LOCAL_NETWORK lookup {host!r}\\n")

sys.addaudithook(_audit)
'''


@contextmanager
def offline_worker(tmp_path_factory: Any) -> Iterator[RecordingWorker]:
    """A worker that reports (on stderr) every connection or name lookup off the loopback
    interface, with an empty HOME and no provider environment; at the end, the test
    fails if it reported one or wrote anything under HOME."""
    site = tmp_path_factory.mktemp("site")
    (site / "sitecustomize.py").write_text(AUDIT_HOOK)
    home = tmp_path_factory.mktemp("home")
    process = RecordingWorker(env={"PYTHONPATH": str(site), "HOME": str(home),
                                   "OPENAI_API_KEY": "", "OPENAI_API_BASE": ""})
    try:
        yield process
    finally:
        process.close()
    assert "NON_LOCAL_NETWORK" not in process.stderr_text()
    assert list(Path(home).iterdir()) == []


def mock_lm(name: str, **options: Any) -> dict[str, Any]:
    """An LM config for the mock provider with its options (they go in `extra`)."""
    return {"model": f"mock/{name}", "extra": options}
