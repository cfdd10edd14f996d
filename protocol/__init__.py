"""The dspy-bridge wire contract, sans-I/O: bytes in, messages out.

Layers, each one module: `framing` (length prefixes), `codec` (msgpack with limits),
`envelope` (request/response/event shapes), `errors` (typed errors), and
`connection`, which stacks them into the one object a worker (`Connection`) or a host
(`HostConnection`) drives, and keeps the rules of the conversation: an id is not reused
while in flight, and every request is answered exactly once.
"""

PROTOCOL_VERSION = 1
