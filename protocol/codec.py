"""msgpack values <-> bytes, with the limits a worker needs against hostile input.

msgpack `str` and `bin` stay distinct both ways: `str` decodes to `str`, `bin` to `bytes`.
"""

from __future__ import annotations

import threading
from typing import Any

import msgpack

from dspy_bridge.protocol.errors import BridgeError, ErrorType

MAX_DEPTH = 128
# Every map key, map value and array element counts one item, and so does each container:
# this bounds the memory a frame can expand to (an empty map is 1 byte on the wire and
# ~100 bytes decoded), whatever its size in bytes.
DEFAULT_MAX_ITEMS = 1_000_000


class _OverBudget(Exception):
    pass


class _ItemBudget:
    """msgpack decode hooks that count items and stop the decode once over the budget.

    The hooks also run Python code between containers, which lets other threads (the
    event loop) take the GIL while a large frame decodes in the reader thread."""

    __slots__ = ("left",)

    def __init__(self, limit: int) -> None:
        self.left = limit

    def map(self, value: dict[Any, Any]) -> dict[Any, Any]:
        self.left -= 1 + 2 * len(value)
        if self.left < 0:
            raise _OverBudget
        return value

    def list(self, value: list[Any]) -> list[Any]:
        self.left -= 1 + len(value)
        if self.left < 0:
            raise _OverBudget
        return value


class TooDeep(BridgeError):
    """A decoded value nested beyond the limit; `value` lets the caller find its id."""

    def __init__(self, message: str, value: Any) -> None:
        super().__init__(ErrorType.INVALID_FRAME, message)
        self.value = value


class EncodeError(Exception):
    """A value that msgpack cannot carry (an int beyond 64 bits, an unknown object)."""


def pack(value: Any) -> bytes:
    packer = _packer()
    try:
        packed: bytes = packer.pack(value)
    except (OverflowError, TypeError, ValueError) as exc:
        _packers.packer = None  # its buffer may have grown: the next starts afresh
        raise EncodeError(str(exc)) from exc
    if len(packed) > REUSED_PACKER_BYTES:
        _packers.packer = None
    return packed


# A Packer a thread, reused: building one a call (as msgpack.packb does) costs more than
# packing a small reply. Its buffer grows to the largest value it packed and stays, so one
# that packed more than this is dropped.
REUSED_PACKER_BYTES = 256 * 1024
_packers = threading.local()


def _packer() -> msgpack.Packer:
    packer: msgpack.Packer | None = getattr(_packers, "packer", None)
    if packer is None:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True, datetime=False)
    return packer


def unpack(data: bytes, max_items: int = DEFAULT_MAX_ITEMS) -> Any:
    """Decode exactly one msgpack value, or raise a BridgeError of type invalid_frame."""
    try:
        if within_limits_by_size(len(data), max_depth=None, max_items=max_items):
            # within the item budget whatever it holds: decoded without counting
            value = msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
        else:
            budget = _ItemBudget(max_items)
            value = msgpack.unpackb(
                data,
                raw=False,
                strict_map_key=False,
                use_list=True,
                object_hook=budget.map,
                list_hook=budget.list,
            )
    except _OverBudget:
        raise BridgeError(
            ErrorType.INVALID_FRAME,
            f"frame holds more than {max_items} msgpack items (map entries, array elements "
            "and containers)",
            details={"limit": "max_frame_items", "max_frame_items": max_items},
        ) from None
    except msgpack.ExtraData:
        raise _invalid("frame holds more than one msgpack value") from None
    except UnicodeDecodeError:
        raise _invalid("a msgpack str is not valid UTF-8") from None
    except msgpack.StackError:
        raise _invalid(f"msgpack value nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, TypeError, msgpack.FormatError) as exc:
        raise _invalid(f"undecodable msgpack: {exc}") from None
    if not within_limits_by_size(len(data)):
        problem = limit_problem(value, check_text=False)
        if problem is not None:
            raise TooDeep(f"msgpack value {problem[1]}", value)
    return value


def within_limits_by_size(
    encoded_bytes: int, max_depth: int | None = MAX_DEPTH, max_items: int | None = None
) -> bool:
    """Whether every msgpack value this many bytes long is within the limits given, so
    needs no counting: each value takes at least a byte, so one nests at most a level a
    byte, and it holds at most two items a byte (each value is an item of its container,
    and each container one more)."""
    return (max_depth is None or encoded_bytes <= max_depth) and (
        max_items is None or 2 * encoded_bytes <= max_items
    )


def _invalid(message: str) -> BridgeError:
    return BridgeError(ErrorType.INVALID_FRAME, message)


def limit_problem(
    value: Any,
    max_depth: int = MAX_DEPTH,
    max_items: int | None = None,
    check_text: bool = True,
) -> tuple[str, str] | None:
    """Why `value` would break the limits a receiver enforces, as (limit name, sentence),
    or None: nesting deeper than `max_depth`, more than `max_items` items, or (with
    `check_text`) a str that is not valid Unicode (a lone surrogate cannot be written as
    UTF-8). A decoded frame needs no text check (the decoder validated its UTF-8), nor
    does one about to be packed (`pack` refuses a lone surrogate).

    Level by level, iterative, so a hostile value cannot exhaust the Python stack here
    or later; only containers (and, with `check_text`, strs) are visited."""
    level = [value]
    depth = 0
    items = 0
    containers = (dict, list, tuple)
    while level:
        depth += 1
        below: list[Any] = []
        push = below.append
        for item in level:
            if isinstance(item, dict):
                items += 1 + 2 * len(item)
                for key in item:
                    if key.__class__ is not str:
                        push(key)
                    elif check_text and not key.isascii() and _lone_surrogate(key):
                        return _NOT_UNICODE
                children: Any = item.values()
            elif isinstance(item, list | tuple):
                items += 1 + len(item)
                children = item
            elif isinstance(item, str):
                if check_text and not item.isascii() and _lone_surrogate(item):
                    return _NOT_UNICODE
                continue
            else:
                continue
            if depth > max_depth:
                return "max_depth", f"nested deeper than {max_depth} levels"
            if max_items is not None and items > max_items:
                return "max_frame_items", f"holds more than {max_items} items"
            for child in children:
                if isinstance(child, containers) or (check_text and isinstance(child, str)):
                    push(child)
        level = below
    return None


_NOT_UNICODE = ("utf8", "holds a str that is not valid Unicode (a lone surrogate)")


def _lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
