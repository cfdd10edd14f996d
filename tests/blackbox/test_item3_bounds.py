"""Issue item 3: every byte is bounded -- frame items/bytes/depth/UTF-8, validation
replies, per-session and worker-wide stored bytes, backpressure on unread replies.

Reading of the items rule ("every map entry counts two (key and value), every array
element one, every map or array one more"): it can be read as counting msgpack objects
(9 + n for the ping frame below) or as counting a nested container once as a value and
once more as a container (11 + n). The boundary checks keep clear of both readings.
"""

from __future__ import annotations

import struct
import threading

import pytest

from .client import LazyWorker, Worker, frame, mock_session, pack

SMALL_REPLY = 64 * 1024  # what a "small answer" must stay under (my bound)


@pytest.fixture(scope="module")
def w():
    wk = Worker()
    yield wk
    wk.stop()


def _nil_reply_after(wk: Worker, payload: bytes) -> dict:
    before = len(wk.nil_replies)
    wk.send_payload(payload)
    got = wk.wait_nil_replies(before + 1, timeout=60)[-1]
    wk.ping()
    assert len(wk.nil_replies) == before + 1
    return got


def _raw_request(rid: str, args_payload: bytes) -> bytes:
    """A ping request whose args value is spliced in as raw msgpack."""
    return (b"\x83" + pack("id") + pack(rid) + pack("command") + pack("ping")
            + pack("args") + args_payload)


def test_millions_of_empty_maps_refused_by_item_count(w) -> None:
    n = 2_000_000
    payload = b"\xdd" + struct.pack(">I", n) + b"\x80" * n  # array32 of empty maps
    r = _nil_reply_after(w, payload)
    assert r["id"] is None and r["error"]["type"] == "invalid_frame", r
    d = r["error"].get("details") or {}
    assert d.get("limit") == "max_frame_items" and d.get("max_frame_items") == 1_000_000, r
    # the same inside a request with a valid id: still an invalid_frame (id nil, per the
    # limits table)
    args = b"\x81" + pack("x") + b"\xdd" + struct.pack(">I", 1_200_000) + b"\x80" * 1_200_000
    r = _nil_reply_after(w, _raw_request("many-maps", args))
    assert r["error"]["type"] == "invalid_frame", r
    assert (r["error"].get("details") or {}).get("limit") == "max_frame_items", r
    assert w.reply_count("many-maps") == 0
    # nested: 500,000 arrays each holding one empty map (1M+ items, 1 MB)
    r = _nil_reply_after(w, b"\xdd" + struct.pack(">I", 500_000) + b"\x91\x80" * 500_000)
    assert (r["error"].get("details") or {}).get("limit") == "max_frame_items", r
    w.assert_alive()
    w.assert_clean()


@pytest.mark.parametrize("command,base", [
    ("ping", {}),
    ("configure_lm", {"session_id": "big", "model": "mock"}),
])
def test_400k_unknown_argument_keys_get_a_small_reply(w, command, base) -> None:
    args = dict(base)
    n = 400_000
    for i in range(n):
        args[f"u{i}"] = None
    rid = f"many-keys-{command}"
    w.send({"id": rid, "command": command, "args": args})
    r = w.wait_reply(rid, timeout=60)
    size = len(pack(r))
    assert r["success"] is False and r["error"]["type"] == "invalid_args", str(r)[:300]
    d = r["error"]["details"]
    assert len(d["errors"]) == 20, len(d["errors"])
    assert d.get("omitted") == n - 20, d.get("omitted")
    assert size < SMALL_REPLY, f"reply of {size} bytes"
    assert len(r["error"]["message"]) < 4096, len(r["error"]["message"])


def test_400k_unknown_envelope_keys_get_a_small_reply(w) -> None:
    msg: dict = {"id": "many-envelope", "command": "ping"}
    for i in range(400_000):
        msg[f"e{i}"] = 0
    w.send(msg)
    r = w.wait_reply("many-envelope", timeout=60)
    assert r["error"]["type"] == "invalid_request", str(r)[:300]
    assert len(pack(r)) < SMALL_REPLY, len(pack(r))
    d = r["error"].get("details") or {}
    if "errors" in d:
        assert len(d["errors"]) <= 20 and d.get("omitted", 0) + len(d["errors"]) >= 400_000


def test_many_bad_inputs_and_demos_get_a_small_reply(w) -> None:
    mock_session(w, "bulk")
    w.ok("create_program", {"session_id": "bulk", "program_id": "p",
                            "signature": "question -> answer"})
    inputs = {f"k{i}": None for i in range(100_000)}
    r = w.request("execute_program", {"session_id": "bulk", "program_id": "p",
                                      "inputs": inputs}, timeout=60)
    assert r["error"]["type"] in ("invalid_args", "limit_exceeded"), str(r)[:300]
    assert len(pack(r)) < SMALL_REPLY, len(pack(r))
    if r["error"]["type"] == "invalid_args":
        assert len(r["error"]["details"]["errors"]) <= 20
    demos = [{"question": 1, "answer": 2, "junk": 3} for _ in range(50_000)]
    r = w.request("create_program", {"session_id": "bulk", "signature": "question -> answer",
                                     "demos": demos}, timeout=60)
    assert r["error"]["type"] in ("invalid_args", "limit_exceeded"), str(r)[:300]
    assert len(pack(r)) < SMALL_REPLY, len(pack(r))
    if r["error"]["type"] == "invalid_args":
        assert len(r["error"]["details"]["errors"]) <= 20


def _nested_arrays(depth: int) -> bytes:
    return b"\x91" * depth + b"\xc0"


@pytest.mark.parametrize("depth,refused", [(120, None), (140, "own id"), (100_000, "nil")])
def test_nesting_depth_limit(w, depth, refused) -> None:
    # frame depth = 2 (request map, args map) + depth arrays
    args = b"\x81" + pack("x") + _nested_arrays(depth)
    rid = f"deep-{depth}"
    payload = _raw_request(rid, args)
    if refused == "nil":  # too deep to decode at all: its id cannot be known
        r = _nil_reply_after(w, payload)
        assert r["error"]["type"] == "invalid_frame", r
        assert w.reply_count(rid) == 0
    else:
        # PROTOCOL.md: a frame that decoded but is too deep is answered under its own id.
        w.send_payload(payload, rid, known=True)
        r = w.wait_reply(rid)
        expected = "invalid_frame" if refused else "invalid_args"  # else: unknown key x
        assert r["error"]["type"] == expected, r
    w.assert_alive()
    w.assert_clean()


@pytest.mark.parametrize("name,payload", [
    ("bad utf-8 value", _raw_request("u1", b"\x81\xa1x\xa3\xff\xfe\xfd")),
    ("cesu surrogate value", _raw_request("u2", b"\x81\xa1x\xa3\xed\xa0\x80")),
    ("bad utf-8 key", _raw_request("u3", b"\x81\xa2\xc3\x28\x01")),
    ("bad utf-8 command", b"\x82\xa2id\xa2u4\xa7command\xa2\xff\xff"),
    ("trailing bytes", pack({"id": "u5", "command": "ping"}) + b"\xc0"),
    ("truncated", pack({"id": "u6", "command": "ping"})[:-2]),
    ("array", pack([1, 2])),
    ("int", pack(42)),
    ("str", pack("x")),
    ("empty", b""),
    ("reserved byte", b"\xc1"),
])
def test_undecodable_frames_are_invalid_frame_with_nil_id(w, name, payload) -> None:
    r = _nil_reply_after(w, payload)
    assert r["error"]["type"] == "invalid_frame", (name, r)
    assert r["error"]["retryable"] is False
    w.assert_clean()


# --------------------------------------------------------------------------------------
# Byte and item limits from flags; hostile answers that would break them; stored bytes.
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small():
    lazy = LazyWorker("--max-frame-bytes", "10000", "--max-frame-items", "1000")
    yield lazy
    lazy.stop()


@pytest.fixture(scope="module")
def stored():
    lazy = LazyWorker("--max-session-bytes", "5000", "--max-stored-bytes", "12000")
    yield lazy
    lazy.stop()


def test_ready_states_flag_limits(small) -> None:
    wk = small()
    assert wk.ready["limits"]["max_frame_bytes"] == 10000
    assert wk.ready["limits"]["max_frame_items"] == 1000


def test_frame_bytes_limit_skips_the_frame_and_keeps_serving(small) -> None:
    wk = small()
    big = pack({"id": "fat", "command": "ping", "args": {"x": "y" * 19_970}})
    assert 10_001 <= len(big) <= 20_100
    r = _nil_reply_after(wk, big)
    d = r["error"].get("details") or {}
    assert r["error"]["type"] == "invalid_frame" and d.get("limit") == "max_frame_bytes", r
    assert d.get("length") == len(big) and d.get("max_frame_bytes") == 10000, r
    assert wk.reply_count("fat") == 0
    just = pack({"id": "lean", "command": "ping", "args": {"x": "y" * 8_900}})
    assert len(just) < 9_100
    wk.send_payload(just, "lean", known=True)
    assert wk.wait_reply("lean")["error"]["type"] == "invalid_args"
    wk.assert_alive()


def test_frame_items_limit_from_flag(small) -> None:
    wk = small()
    ok = pack({"id": "items-ok", "command": "ping", "args": {"x": [None] * 900}})
    wk.send_payload(ok, "items-ok", known=True)
    assert wk.wait_reply("items-ok")["error"]["type"] == "invalid_args"
    over = pack({"id": "items-over", "command": "ping", "args": {"x": [None] * 1000}})
    r = _nil_reply_after(wk, over)
    d = r["error"].get("details") or {}
    assert d.get("limit") == "max_frame_items" and d.get("max_frame_items") == 1000, r
    empties = pack([{}] * 1200)
    r = _nil_reply_after(wk, empties)
    assert (r["error"].get("details") or {}).get("limit") == "max_frame_items", r
    wk.assert_alive()


def test_answer_that_would_break_max_frame_items_is_limit_exceeded(small) -> None:
    wk = small()
    mock_session(wk, "items", '{"a": [' + ",".join(["0"] * 1500) + "]}", num_retries=0)
    wk.ok("create_program", {"session_id": "items", "program_id": "d",
                             "signature": "question -> answer: dict"})
    r = wk.request("execute_program", {"session_id": "items", "program_id": "d",
                                       "inputs": {"question": "q"}}, timeout=60)
    wk.assert_clean()
    # PROTOCOL.md: an answer that makes the whole reply too many items is the reply's
    # limit_exceeded naming max_frame_items (not retryable), as for any reply.
    assert r["success"] is False and r["error"]["type"] == "limit_exceeded", str(r)[:300]
    assert _limit(r["error"]) == "max_frame_items" and r["error"]["retryable"] is False
    wk.ok("end_session", {"session_id": "items"})


def _limit(e: dict) -> object:
    return (e.get("details") or {}).get("limit")


def test_session_bytes_limit(stored) -> None:
    wk = stored()
    sid = "sb"
    wk.ok("configure_lm", {"session_id": sid, "model": "mock"}, timeout=60)
    e = wk.err("create_program", {"session_id": sid, "signature": "question -> answer",
                                  "instructions": "i" * 6000})
    assert e["type"] == "limit_exceeded" and _limit(e) == "max_session_bytes", e
    e = wk.err("create_program", {"session_id": sid, "signature": "question -> answer",
                                  "demos": [{"question": "q" * 300, "answer": "a" * 300}
                                            for _ in range(10)]})
    assert e["type"] == "limit_exceeded" and _limit(e) == "max_session_bytes", e
    e = wk.err("configure_lm", {"session_id": sid, "model": "mock",
                                "extra": {"responses": {f"k{i}": "v" * 50 for i in range(100)}}})
    assert e["type"] == "limit_exceeded" and _limit(e) == "max_session_bytes", e
    created = []
    refused = None
    for i in range(10):
        r = wk.request("create_program", {"session_id": sid, "program_id": f"p{i}",
                                          "signature": "question -> answer",
                                          "instructions": "i" * 1000})
        if r["success"]:
            created.append(f"p{i}")
        else:
            refused = r["error"]
            break
    assert refused is not None, "5000 session bytes never ran out"
    assert refused["type"] == "limit_exceeded" and _limit(refused) == "max_session_bytes", \
        refused
    assert 2 <= len(created) <= 5, created
    sess = wk.ok("list_sessions", {"session_id": sid})["sessions"][0]
    assert 0 < sess["stored_bytes"] <= 5000, sess
    # deleting gives bytes back
    wk.ok("delete_program", {"session_id": sid, "program_id": created[0]})
    wk.ok("create_program", {"session_id": sid, "program_id": "again",
                             "signature": "question -> answer", "instructions": "i" * 1000})
    # import counts too
    doc = wk.ok("export_program", {"session_id": sid, "program_id": "again"})["document"]
    e = None
    for i in range(6):
        r = wk.request("import_program", {"session_id": sid, "program_id": f"imp{i}",
                                          "document": doc})
        if not r["success"]:
            e = r["error"]
            break
    assert e is not None and e["type"] == "limit_exceeded" and _limit(e) == \
        "max_session_bytes", e
    # another session is not affected by this one's budget
    wk.ok("create_program", {"session_id": "sb-other", "signature": "question -> answer",
                             "instructions": "o" * 1000})
    wk.ok("end_session", {"session_id": sid})
    wk.ok("end_session", {"session_id": "sb-other"})


def test_worker_stored_bytes_limit(stored) -> None:
    wk = stored()
    refused = None
    made = []
    for i in range(8):
        r = wk.request("create_program", {"session_id": f"ws{i}", "program_id": "p",
                                          "signature": "question -> answer",
                                          "instructions": "w" * 3000}, timeout=60)
        if r["success"]:
            made.append(i)
        else:
            refused = r["error"]
            break
    assert refused is not None, "12000 stored bytes never ran out"
    assert refused["type"] == "limit_exceeded" and _limit(refused) == "max_stored_bytes", \
        refused
    assert 2 <= len(made) <= 4, made
    stats = wk.ok("get_stats")
    assert 0 < stats["stored_bytes"] <= 12000, stats.get("stored_bytes")
    for i in made:
        wk.ok("end_session", {"session_id": f"ws{i}"})
    wk.assert_clean()


# --------------------------------------------------------------------------------------
# Backpressure: a host that does not read replies makes the worker stop reading.
# --------------------------------------------------------------------------------------

def test_unread_replies_make_the_worker_stop_reading() -> None:
    limit = 1_000_000
    wk = Worker("--enable-test-commands", "--max-outbox-bytes", str(limit),
                read_stdout=False, wait_ready=False)
    try:
        n, size = 400, 50_000
        value = "v" * size
        payloads = [frame(pack({"id": f"bp-{i}", "command": "echo", "args": {"value": value}}))
                    for i in range(n)]
        for i in range(n):
            wk.register_id(f"bp-{i}")
        done = threading.Event()

        def writer() -> None:
            for p in payloads:
                wk.send_bytes(p)
            done.set()

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        # With backpressure the writer can never finish while nobody reads stdout (20 MB
        # of requests, 20 MB of replies, a 1 MB outbox). This wait is expected to run out.
        finished_unread = done.wait(5)
        wk.start_reading()
        wk.wait_event("ready")
        for i in range(n):
            r = wk.wait_reply(f"bp-{i}", timeout=60)
            assert r["success"] is True and r["result"] == value
        assert done.wait(60)
        stats = wk.ok("get_stats")
        ob = stats["outbox"]
        assert not finished_unread, (
            f"the worker read all {n * size // 1_000_000} MB of requests while no reply "
            f"was read (outbox limit {limit}); outbox stats {ob}")
        assert ob["limit_bytes"] == limit, ob
        assert ob["read_pauses"] >= 1, ob
        assert ob["peak_bytes"] < 10 * limit, ob
        assert ob["pending_bytes"] < limit, ob
        wk.assert_clean()
    finally:
        wk.kill()

