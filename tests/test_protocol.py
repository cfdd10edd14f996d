"""The sans-I/O protocol layer: framing, codec, envelope and the connection stack."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from dspy_bridge.protocol import codec, jsonvalue
from dspy_bridge.protocol.connection import Connection, Rejected
from dspy_bridge.protocol.envelope import (
    REQUEST_KEYS,
    Request,
    _plainly_valid,
    parse_request,
    request_id_of,
)
from dspy_bridge.protocol.errors import BridgeError, ErrorType
from dspy_bridge.protocol.framing import Frame, FrameDecoder, OversizedFrame, encode_frame
from dspy_bridge.protocol.validation import RequestShape

VECTORS = json.loads(
    (Path(__file__).resolve().parent.parent / "protocol/vectors/vectors.json").read_text()
)

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_golden_vectors(vector: dict[str, Any]) -> None:
    value = jsonvalue.from_json(vector["value"])
    payload = bytes.fromhex(vector["hex"])
    assert codec.unpack(payload) == value
    assert type(codec.unpack(payload)) is type(value)
    if not vector["decode_only"]:
        assert codec.pack(value) == payload
        assert encode_frame(payload) == bytes.fromhex(vector["frame_hex"])
    [frame] = FrameDecoder(1024 * 1024).feed(bytes.fromhex(vector["frame_hex"]))
    assert frame == Frame(payload)


def test_vectors_cover_every_kind() -> None:
    assert {v["kind"] for v in VECTORS} == {"value", "request", "response", "event"}


@given(msgpack_values)
def test_codec_round_trip_keeps_str_and_bin_apart(value: Any) -> None:
    assert codec.unpack(codec.pack(value)) == value


@settings(max_examples=200)
@given(st.lists(st.binary(max_size=300), max_size=8), st.data())
def test_frames_survive_any_chunking(payloads: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(p) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = FrameDecoder(1024)
    frames: list[Any] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        frames += decoder.feed(stream[start:end])
    assert frames == [Frame(p) for p in payloads]
    assert decoder.buffered == 0


def test_oversized_frame_is_skipped_across_chunks() -> None:
    decoder = FrameDecoder(max_frame_bytes=10)
    big = encode_frame(b"x" * 100)
    after = encode_frame(b"ok")
    assert decoder.feed(big[:30]) == [OversizedFrame(100)]
    assert decoder.feed(big[30:]) == []
    assert decoder.feed(after) == [Frame(b"ok")]


def test_oversized_frame_followed_in_same_chunk() -> None:
    decoder = FrameDecoder(max_frame_bytes=10)
    assert decoder.feed(encode_frame(b"y" * 11) + encode_frame(b"z")) == [
        OversizedFrame(11),
        Frame(b"z"),
    ]


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"\xc1", "undecodable"),  # the one byte msgpack never uses
        (b"\x92\x01", "undecodable"),  # array of 2 with one element: truncated
        (b"\xa3ab", "undecodable"),  # str of 3 with 2 bytes
        (b"\x01\x02", "more than one"),
        (b"\xa2\xff\xfe", "UTF-8"),
        (b"\x91" * 2000 + b"\xc0", "nested deeper"),
        (b"\x91" * 200 + b"\xc0", "nested deeper"),
    ],
)
def test_codec_rejects_bad_payloads(payload: bytes, fragment: str) -> None:
    with pytest.raises(BridgeError) as caught:
        codec.unpack(payload)
    assert caught.value.type is ErrorType.INVALID_FRAME
    assert fragment in caught.value.message


def test_codec_refuses_ints_beyond_64_bits() -> None:
    with pytest.raises(codec.EncodeError):
        codec.pack(2**64)


def test_nan_decodes_as_a_float() -> None:
    assert math.isnan(codec.unpack(msgpack.packb(float("nan"))))


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ({"command": "ping"}, "id"),
        ({"id": -1, "command": "ping"}, "id"),
        ({"id": 1.5, "command": "ping"}, "id"),
        ({"id": True, "command": "ping"}, "id"),
        ({"id": 1}, "command"),
        ({"id": 1, "command": 7}, "command"),
        ({"id": 1, "command": ""}, "command"),
        ({"id": 1, "command": "ping", "args": [1]}, "args"),
        ({"id": 1, "command": "ping", "args": None}, "args"),
        ({"id": 1, "command": "ping", "timeout_ms": None}, "timeout_ms"),
        ({"id": 1, "command": "ping", "timeout_ms": 0}, "timeout_ms"),
        ({"id": 1, "command": "ping", "timeout_ms": float("nan")}, "timeout_ms"),
        ({"id": 1, "command": "ping", "timeout_ms": "5"}, "timeout_ms"),
        ({"id": 1, "command": "ping", "extra": 1}, "extra"),
    ],
)
def test_envelope_rejects_malformed_requests(value: dict[str, Any], field: str) -> None:
    with pytest.raises(BridgeError) as caught:
        parse_request(value)
    assert caught.value.type is ErrorType.INVALID_REQUEST
    assert field in [e["field"] for e in caught.value.details["errors"]]  # type: ignore[index]


def test_envelope_accepts_both_id_kinds() -> None:
    assert parse_request({"id": 0, "command": "ping"}) == Request(id=0, command="ping")
    assert parse_request({"id": "a", "command": "x", "args": {"k": 1}}).args == {"k": 1}
    assert parse_request({"id": 2**64 - 1, "command": "ping"}).id == 2**64 - 1
    assert parse_request({"id": 1, "command": "ping"}).timeout_ms is None


ENVELOPE_VALUES = st.none() | st.booleans() | st.integers(min_value=-5, max_value=2**64) \
    | st.floats(allow_nan=False) | st.text(max_size=3) | st.binary(max_size=2) \
    | st.lists(st.integers(), max_size=2) | st.dictionaries(st.text(max_size=2) | st.integers(),
                                                           st.integers(), max_size=2)


def mostly(typed: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A field's value: three times in four of its type, else any other value."""
    return st.integers(0, 3).flatmap(lambda pick: typed if pick else ENVELOPE_VALUES)


# Near-requests: each field mostly of its type, sometimes not, sometimes missing or extra.
NEAR_REQUESTS = st.fixed_dictionaries(
    {"id": mostly(st.integers(min_value=-2, max_value=2**64) | st.text(max_size=2)),
     "command": mostly(st.text(max_size=3))},
    optional={"args": mostly(st.dictionaries(st.text(max_size=2), st.integers(), max_size=2)),
              "timeout_ms": mostly(st.integers(min_value=-2, max_value=10**6)),
              "extra": ENVELOPE_VALUES},
)


@settings(max_examples=1000, deadline=None)
@given(NEAR_REQUESTS | st.dictionaries(
    st.sampled_from(["id", "command", "args", "timeout_ms", "extra"]), ENVELOPE_VALUES,
    max_size=5))
def test_the_short_way_reads_requests_exactly_as_the_model_does(value: dict[str, Any]) -> None:
    """parse_request reads plainly typed requests itself: whatever it reads so must be what
    RequestShape accepts, field for field; the rest is RequestShape's to accept or word."""
    try:
        shape: RequestShape | None = RequestShape.model_validate(value)
    except ValidationError:
        shape = None
    try:
        request: Request | None = parse_request(value, 7)
    except BridgeError:
        request = None
    if shape is None:
        assert request is None
    else:
        assert request == Request(shape.id, shape.command, shape.args, shape.timeout_ms, 7)
    if _plainly_valid(value):
        assert shape is not None


def test_the_short_way_knows_the_models_fields() -> None:
    assert frozenset(RequestShape.model_fields) == REQUEST_KEYS


def test_connection_answers_bad_frames_with_known_id() -> None:
    connection = Connection()
    frames = b"".join(
        encode_frame(codec.pack(v))
        for v in (
            [1, 2],
            {"id": 9, "command": 5},
            {"id": 3, "command": "ping"},
        )
    )
    first, second, third = connection.receive_data(frames + struct.pack(">I", 2) + b"\xc1\xc1")[:3]
    assert isinstance(first, Rejected) and first.request_id is None
    assert first.error.type is ErrorType.INVALID_FRAME
    assert isinstance(second, Rejected) and second.request_id == 9
    assert second.error.type is ErrorType.INVALID_REQUEST
    assert isinstance(third, Request) and third.id == 3


@given(msgpack_values)
def test_json_form_round_trips_every_value(value: Any) -> None:
    assert jsonvalue.from_json(json.loads(json.dumps(jsonvalue.to_json(value)))) == value


@pytest.mark.parametrize("tag", sorted(jsonvalue.TAGS))
@pytest.mark.parametrize("inner", [[], "QQ==", {"type": 1, "data": ""}, None])
def test_a_map_that_looks_like_a_tag_is_escaped(tag: str, inner: Any) -> None:
    value = {tag: inner}
    encoded = jsonvalue.to_json(value)
    assert encoded == {"$map": [[tag, inner]]}
    assert jsonvalue.from_json(encoded) == value


def test_json_form_of_ext_and_non_string_keys() -> None:
    value = {1: msgpack.ExtType(5, b"\x01"), "s": [b"\xff"]}
    encoded = jsonvalue.to_json(value)
    assert encoded == {
        "$map": [[1, {"$ext": {"type": 5, "data": "AQ=="}}], ["s", [{"$bin": "/w=="}]]]
    }
    assert jsonvalue.from_json(encoded) == value
    with pytest.raises(ValueError, match="base64"):
        jsonvalue.from_json({"$bin": "not base64!"})


def _reference_limits(value: Any) -> tuple[int, int, bool]:
    """Depth, items and whether some str (key or value) is not valid Unicode, recursively."""
    if isinstance(value, dict):
        inner = [_reference_limits(part) for pair in value.items() for part in pair]
        items = 1 + 2 * len(value)
    elif isinstance(value, list | tuple):
        inner = [_reference_limits(part) for part in value]
        items = 1 + len(value)
    elif isinstance(value, str):
        try:
            value.encode("utf-8")
            return 0, 0, False
        except UnicodeEncodeError:
            return 0, 0, True
    else:
        return 0, 0, False
    return (1 + max((d for d, _, _ in inner), default=0), items + sum(i for _, i, _ in inner),
            any(bad for _, _, bad in inner))


text_with_surrogates = st.text(st.characters(blacklist_categories=()), max_size=4)
deep_values = st.recursive(
    st.none() | st.integers() | text_with_surrogates,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(text_with_surrogates | st.integers(), children, max_size=3)
    | st.lists(children, max_size=2).map(tuple),
    max_leaves=40,
)


@given(deep_values, st.integers(1, 6), st.integers(1, 40), st.booleans())
def test_limit_problem_agrees_with_a_recursive_reference(
    value: Any, max_depth: int, max_items: int, check_text: bool
) -> None:
    depth, items, bad_text = _reference_limits(value)
    problem = codec.limit_problem(value, max_depth, max_items, check_text)
    if problem is None:
        assert depth <= max_depth and items <= max_items and not (check_text and bad_text)
    elif problem[0] == "max_depth":
        assert depth > max_depth
    elif problem[0] == "max_frame_items":
        assert items > max_items
    else:
        assert problem[0] == "utf8" and check_text and bad_text


def _nested_lists(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


msgpack_ints = st.integers(-(2**63), 2**64 - 1)
packable_values = st.recursive(
    st.none() | st.booleans() | msgpack_ints | st.text(max_size=4)
    | st.binary(max_size=4) | st.floats(allow_nan=False),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=2) | msgpack_ints, children, max_size=3),
    max_leaves=40,
) | st.integers(1, 300).map(_nested_lists)  # the tightest case: a level and two items a byte


@given(packable_values, st.integers(1, 400), st.integers(1, 800))
def test_a_value_short_enough_to_skip_the_limit_walk_is_within_the_limits(
    value: Any, max_depth: int, max_items: int
) -> None:
    """What lets the codec and the Connection skip the walk: a value nests at most a level
    a byte and holds at most two items a byte."""
    size = len(codec.pack(value))
    depth, items, _ = _reference_limits(value)
    assert depth <= size and items <= 2 * size
    if codec.within_limits_by_size(size, max_depth, max_items):
        assert codec.limit_problem(value, max_depth, max_items, check_text=False) is None


@pytest.mark.parametrize("depth", [codec.MAX_DEPTH, codec.MAX_DEPTH + 1])
def test_a_frame_nested_beyond_the_limit_is_refused_and_one_at_it_is_not(depth: int) -> None:
    """At the limit the frame is exactly MAX_DEPTH bytes (no walk); one more is walked."""
    payload = codec.pack(_nested_lists(depth))
    assert len(payload) == depth
    if depth > codec.MAX_DEPTH:
        with pytest.raises(codec.TooDeep):
            codec.unpack(payload)
    else:
        assert codec.unpack(payload) == _nested_lists(depth)


@given(packable_values, st.integers(1, 800))
def test_the_item_budget_refuses_exactly_the_frames_over_it(value: Any, max_items: int) -> None:
    """Counted while decoding, or not at all for a frame too short to be over it."""
    depth, items, _ = _reference_limits(value)
    assume(depth <= codec.MAX_DEPTH)
    payload = codec.pack(value)
    if items > max_items:
        with pytest.raises(BridgeError, match="msgpack items"):
            codec.unpack(payload, max_items)
    else:
        assert codec.unpack(payload, max_items) == value


@given(st.lists(packable_values | st.just(2**64) | st.just({"a": [object()]}), max_size=6))
def test_packing_with_the_reused_packer_writes_what_packb_writes(values: list[Any]) -> None:
    """Also after a value that could not be packed, and after one that grew its buffer."""
    for value in [*values, b"x" * (codec.REUSED_PACKER_BYTES + 1), *values]:
        try:
            expected = msgpack.packb(value, use_bin_type=True, datetime=False)
        except (OverflowError, TypeError, ValueError):
            with pytest.raises(codec.EncodeError):
                codec.pack(value)
        else:
            assert codec.pack(value) == expected


def test_a_packer_that_packed_a_large_value_is_not_kept() -> None:
    codec.pack(1)
    kept = codec._packers.packer
    codec.pack(b"x" * (codec.REUSED_PACKER_BYTES + 1))
    codec.pack(1)
    assert codec._packers.packer is not kept  # nor the large buffer it grew
    kept = codec._packers.packer
    with pytest.raises(codec.EncodeError):  # nor one that failed, maybe after growing
        codec.pack([b"x" * (codec.REUSED_PACKER_BYTES + 1), 2**64])
    codec.pack(1)
    assert codec._packers.packer is not kept


def test_a_record_is_frozen_for_the_type_checker(tmp_path: Path) -> None:
    """`@record` builds a plain slots dataclass (cheaper to construct than a frozen one):
    what keeps its fields unassigned is mypy, which must report an assignment."""
    from mypy import api

    snippet = tmp_path / "assigns.py"
    snippet.write_text(
        "from dspy_bridge.protocol.envelope import Request\n"
        "request = Request(1, 'ping')\n"
        "request.command = 'shutdown'\n"
    )
    report, _, status = api.run(["--strict", "--no-incremental", str(snippet)])
    assert status == 1 and 'Property "command" defined in "Request" is read-only' in report
    request = Request(1, "ping")
    assert not hasattr(request, "__dict__") and request == Request(1, "ping")


class _IntLike(int):
    """An int subclass other than bool: request_id_of takes it as an id."""


@given(st.none() | st.booleans() | msgpack_ints | st.text(max_size=3) | st.floats()
       | st.integers().map(_IntLike) | st.lists(st.integers(), max_size=2) | st.binary(max_size=2))
def test_a_wire_id_is_what_request_id_of_takes_as_one(value: Any) -> None:
    """is_wire_id's short way for exact ints and strs says what the map lookup says."""
    from dspy_bridge.protocol.peer import is_wire_id

    assert is_wire_id(value) is (value is None or request_id_of({"id": value}) is not None)
