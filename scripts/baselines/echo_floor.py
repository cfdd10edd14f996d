"""The echo floor: the least a process can do to answer framed msgpack requests.

Reads {packet, 4} frames (4-byte big-endian length, one msgpack map) on stdin and answers
each `{id, ...}` with `{id, success: true, result: {}}`, or with `args.value` when the
request carries one (so the payload figure round-trips the same bytes as the worker's
`echo`). Every complete frame in a read is answered by one write: a floor, not a straw man.
"""

import os
import struct

import msgpack

buffer = bytearray()
while chunk := os.read(0, 1 << 20):
    buffer += chunk
    replies, start = [], 0
    while len(buffer) - start >= 4:
        size = struct.unpack_from(">I", buffer, start)[0]
        if len(buffer) - start < 4 + size:
            break
        request = msgpack.unpackb(memoryview(buffer)[start + 4 : start + 4 + size])
        start += 4 + size
        result = request.get("args", {}).get("value", {})
        reply = msgpack.packb({"id": request["id"], "success": True, "result": result})
        replies.append(struct.pack(">I", len(reply)) + reply)
    del buffer[:start]
    out = memoryview(b"".join(replies))
    while out:
        out = out[os.write(1, out) :]
