"""The dspy-bridge wire contract, sans-I/O: bytes in, messages out.

Layers, each one module: `framing` (length prefixes), `codec` (msgpack with limits),
`envelope` (request/response/event shapes), `errors` (typed errors), and
`connection`, which stacks them into the one object a worker or a host drives.
"""

PROTOCOL_VERSION = 1
