"""msgpack values <-> bytes, with the limits a worker needs against hostile input.

msgpack `str` and `bin` stay distinct both ways: `str` decodes to `str`, `bin` to `bytes`.
"""

from __future__ import annotations

from typing import Any

import msgpack

from protocol.errors import BridgeError, ErrorType

MAX_DEPTH = 128


class EncodeError(Exception):
    """A value that msgpack cannot carry (an int beyond 64 bits, an unknown object)."""


def pack(value: Any) -> bytes:
    try:
        packed: bytes = msgpack.packb(value, use_bin_type=True, datetime=False)
        return packed
    except (OverflowError, TypeError, ValueError) as exc:
        raise EncodeError(str(exc)) from exc


def unpack(data: bytes) -> Any:
    """Decode exactly one msgpack value, or raise a BridgeError of type invalid_frame."""
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
    except msgpack.ExtraData:
        raise _invalid("frame holds more than one msgpack value") from None
    except UnicodeDecodeError:
        raise _invalid("a msgpack str is not valid UTF-8") from None
    except msgpack.StackError:
        raise _invalid(f"msgpack value nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, TypeError, msgpack.FormatError) as exc:
        raise _invalid(f"undecodable msgpack: {exc}") from None
    if _depth_exceeds(value, MAX_DEPTH):
        raise _invalid(f"msgpack value nested deeper than {MAX_DEPTH} levels")
    return value


def _invalid(message: str) -> BridgeError:
    return BridgeError(ErrorType.INVALID_FRAME, message)


def _depth_exceeds(value: Any, limit: int) -> bool:
    # Iterative, so a hostile value cannot exhaust the Python stack here or later.
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = [*item.keys(), *item.values()]
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False
