"""Regenerate protocol/vectors/vectors.json, the golden frames every host implementation checks.

Each vector: `hex` is the msgpack encoding of `value` (the canonical, smallest form unless
`decode_only`), `frame_hex` the same with its 4-byte length prefix. Run after changing the list
below, and commit the result: the file, not this script, is the contract.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dspy_bridge.protocol import codec, jsonvalue
from dspy_bridge.protocol.framing import encode_frame

OUT = Path(__file__).resolve().parent.parent / "protocol" / "vectors" / "vectors.json"

VALUES: list[tuple[str, str, Any]] = [
    ("nil", "value", None),
    ("true", "value", True),
    ("false", "value", False),
    ("positive_fixint", "value", 127),
    ("negative_fixint", "value", -32),
    ("uint8", "value", 255),
    ("uint16", "value", 65535),
    ("uint32", "value", 4294967295),
    ("uint64", "value", 18446744073709551615),
    ("int8", "value", -128),
    ("int16", "value", -32768),
    ("int32", "value", -2147483648),
    ("int64", "value", -9223372036854775808),
    ("float64", "value", 1.5),
    ("float64_negative", "value", -0.1),
    ("fixstr", "value", "hello"),
    ("str_utf8", "value", "héllo ✓ 日本"),
    ("str8", "value", "x" * 40),
    ("str16", "value", "y" * 300),
    ("empty_str", "value", ""),
    ("bin8", "value", b"\x00\x01\xfe\xff"),
    ("empty_bin", "value", b""),
    ("bin16", "value", bytes(range(256)) * 2),
    ("fixarray", "value", [1, "two", None, True]),
    ("array16", "value", list(range(20))),
    ("fixmap", "value", {"a": 1, "b": [1, 2]}),
    ("map16", "value", {f"k{i}": i for i in range(17)}),
    ("nested", "value", {"outer": {"inner": [{"deep": b"\x01"}]}}),
    ("ext", "value", msgpack.ExtType(5, b"\x01\x02\x03")),
    ("request_ping", "request", {"id": 1, "command": "ping"}),
    (
        "request_with_args",
        "request",
        {"id": "req-7", "command": "sleep", "args": {"ms": 50}, "timeout_ms": 1000},
    ),
    ("response_ok", "response", {"id": 1, "success": True, "result": {"status": "ok"}}),
    (
        "response_error",
        "response",
        {
            "id": 2,
            "success": False,
            "error": {
                "type": "invalid_args",
                "message": "invalid arguments for sleep: ms: Field required",
                "retryable": False,
                "details": {"errors": [{"field": "ms", "message": "Field required"}]},
            },
        },
    ),
    (
        "response_error_nil_id",
        "response",
        {
            "id": None,
            "success": False,
            "error": {
                "type": "invalid_frame",
                "message": "a frame must hold a msgpack map, got list",
                "retryable": False,
            },
        },
    ),
    (
        "event_ready",
        "event",
        {
            "event": "ready",
            "protocol_version": 1,
            "worker_id": "w1",
            "pid": 42,
            "commands": ["ping"],
            "versions": {"bridge": "0.1.0"},
        },
    ),
    (
        "event_callback",
        "event",
        {
            "event": "callback",
            "callback_id": "cb-1",
            "request_id": 7,
            "session_id": "acme",
            "function": "lookup_order",
            "purpose": "tool",
            "args": {"order_id": "A-17"},
            "timeout_ms": 29500,
        },
    ),
    (
        "request_callback_reply_result",
        "request",
        {"id": 8, "command": "callback_reply",
         "args": {"callback_id": "cb-1", "result": {"status": "shipped"}}},
    ),
    (
        "request_callback_reply_error",
        "request",
        {"id": 9, "command": "callback_reply",
         "args": {"callback_id": "cb-2", "error": {"message": "no order A-99",
                                                   "retryable": False}}},
    ),
    (
        "response_callback_not_waiting",
        "response",
        {"id": 10, "success": True, "result": {"accepted": False, "reason": "not_waiting"}},
    ),
    (
        "event_callback_abandoned",
        "event",
        {"event": "callback_abandoned", "callback_id": "cb-3", "request_id": 7,
         "reason": "timeout"},
    ),
]

# Forms a decoder must accept although an encoder would choose a smaller one.
DECODE_ONLY: list[tuple[str, str, str]] = [
    ("float32", "ca3fc00000", "1.5"),
    ("uint8_small_value", "cc05", "5"),
    ("str8_short", "d90161", '"a"'),
    ("map_non_canonical_uint32_key_value", "81a161ce00000001", '{"a": 1}'),
]


def main() -> None:
    vectors = []
    for name, kind, value in VALUES:
        payload = codec.pack(value)
        vectors.append(
            {
                "name": name,
                "kind": kind,
                "decode_only": False,
                "hex": payload.hex(),
                "frame_hex": encode_frame(payload).hex(),
                "value": jsonvalue.to_json(value),
            }
        )
    for name, hex_text, json_text in DECODE_ONLY:
        payload = bytes.fromhex(hex_text)
        vectors.append(
            {
                "name": name,
                "kind": "value",
                "decode_only": True,
                "hex": hex_text,
                "frame_hex": encode_frame(payload).hex(),
                "value": json.loads(json_text),
            }
        )
    OUT.write_text(json.dumps(vectors, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {len(vectors)} vectors to {OUT}")


if __name__ == "__main__":
    main()
