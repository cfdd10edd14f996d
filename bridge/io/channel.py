"""Claim the protocol channel at the file-descriptor level, before anything else runs.

The real stdout becomes a private descriptor that only frames are written to, and fd 1
is pointed at stderr, so a stray `print`, a C extension writing to fd 1 or a child
process inheriting it can never corrupt a frame (as pynvim does). Stdin likewise moves
to a private descriptor and fd 0 reads /dev/null, so only the protocol reader sees it.
"""

from __future__ import annotations

import os
import sys
from typing import NamedTuple


class HostChannel(NamedTuple):
    """The private descriptors frames travel on, and the host process at the other end."""

    protocol_in: int
    protocol_out: int
    host_pid: int


def claim_protocol_fds() -> HostChannel:
    # The parent is read first, so a host that dies during start-up is still noticed.
    host_pid = os.getppid()
    protocol_in = os.dup(0)
    protocol_out = os.dup(1)
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    for fd in (protocol_in, protocol_out):
        os.set_inheritable(fd, False)
    # Python's own stdout object now writes to stderr too, line by line.
    sys.stdout = os.fdopen(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    return HostChannel(protocol_in, protocol_out, host_pid)
