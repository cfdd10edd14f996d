"""The one-at-a-time worker, as earlier DSPy bridges served: read a request, run it to the
end in this process (DSPy called synchronously), write its reply, read the next.

Frames and replies are the worker's ({packet, 4} msgpack, `{id, success, result}`); it
serves `ping`, `configure_lm` (the mock: `extra.default`, `extra.latency_ms`),
`configure_cache`, `create_program` and `execute_program`, each per `session_id`, enough
for the bench.
"""

from __future__ import annotations

import itertools
import struct
import sys
from typing import Any, BinaryIO

import dspy
import msgpack
from dspy_program import disable_cache, make_lm, make_program


class Server:
    def __init__(self) -> None:
        self.lms: dict[str, Any] = {}
        self.programs: dict[tuple[str, str], dspy.Module] = {}
        self.ids = itertools.count(1)

    def handle(self, command: str, args: dict[str, Any]) -> Any:
        session = args.get("session_id", "default")
        if command == "ping":
            return {"status": "ok", "engine": "ready", "dspy_loaded": True}
        if command == "configure_lm":
            extra = args.get("extra", {})
            latency_ms = int(extra.get("latency_ms", 0))
            self.lms[session] = make_lm(str(extra.get("default", "42")), latency_ms)
            return {"scope": "worker"}
        if command == "configure_cache":
            disable_cache()
            return {"enable_memory": False, "enable_disk": False}
        if command == "create_program":
            program_id = args.get("program_id") or f"prog_{next(self.ids)}"
            self.programs[session, program_id] = make_program(args["signature"])
            return {"program_id": program_id}
        if command == "execute_program":
            with dspy.context(lm=self.lms[session]):
                prediction = self.programs[session, args["program_id"]](**args["inputs"])
            return {"outputs": dict(prediction.items())}
        raise ValueError(f"unknown command {command!r}")


def read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    data = stream.read(size)
    return data if len(data) == size else None


def write_frame(stream: BinaryIO, message: dict[str, Any]) -> None:
    payload = msgpack.packb(message)
    stream.write(struct.pack(">I", len(payload)) + payload)
    stream.flush()


def main() -> None:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    server = Server()
    write_frame(stdout, {"event": "ready"})
    while (header := read_exactly(stdin, 4)) is not None:
        body = read_exactly(stdin, struct.unpack(">I", header)[0])
        if body is None:
            break
        request = msgpack.unpackb(body)
        try:
            result = server.handle(request["command"], request.get("args") or {})
            reply = {"id": request["id"], "success": True, "result": result}
        except Exception as exc:  # noqa: BLE001 - every failure is the request's error reply
            error = {"type": "internal", "message": repr(exc), "retryable": False}
            reply = {"id": request["id"], "success": False, "error": error}
        write_frame(stdout, reply)


if __name__ == "__main__":
    main()
