"""The baseline of `scripts/bench.exs`: the least a port peer can do per request.

Reads 4-byte length-prefixed msgpack frames (`{:packet, 4}`) from stdin and answers
each request map `{id, command, args}` on stdout with `{id, success: true, result}`,
where `result` is `args["value"]` when the request carries one (the payload round
trip) and `{}` otherwise. One thread, blocking reads: no event loop, no validation,
no dispatch — only decoding and encoding, as any msgpack peer must.
"""

import struct
import sys

import msgpack


def main() -> None:
    stdin = sys.stdin.buffer
    stdout = sys.stdout.buffer
    while True:
        header = stdin.read(4)
        if len(header) < 4:
            return
        (length,) = struct.unpack(">I", header)
        request = msgpack.unpackb(stdin.read(length), raw=False)
        args = request.get("args") or {}
        body = msgpack.packb(
            {"id": request.get("id"), "success": True, "result": args.get("value", {})}
        )
        stdout.write(struct.pack(">I", len(body)) + body)
        stdout.flush()


if __name__ == "__main__":
    main()
