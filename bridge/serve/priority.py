"""While DSPy loads, its import gives way to the event loop.

DSPy is imported in a thread of its own (`serve/engine_loader`) so the loop can answer at
once; but an import holds the GIL for long stretches, and every frame the loop handles
meanwhile waits for it at each turn (pings answered during the load took 2.2 to 2.7 times
as long as after it). So the loop marks itself busy whenever it is not waiting for I/O
(`LoopPriority.selector`, the loop's selector), and before each module it imports the
loader waits until the loop is idle (`LoopPriority.imports_give_way`): at most
`MAX_GIVE_WAY_S` a module, so a loop that is never idle slows the load, never stops it.

The wait must never stall the loop instead of freeing it. The import system calls a
finder holding its global import lock, which every new import in any thread needs: the
loader lets go of it while it waits. And the loader never waits while the loop's thread
is blocked on the lock of a module the loader is importing: CPython lists the threads
blocked on module locks in `importlib._bootstrap._blocking_on` (for its deadlock
detection). `tests/test_priority.py` fails if either detail changes.
"""

from __future__ import annotations

import _imp
import contextlib
import selectors
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from enum import Enum
from importlib import _bootstrap
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from types import ModuleType

MAX_GIVE_WAY_S = 0.002
# How often a waiting loader looks whether the loop's thread is blocked on an import lock.
POLL_S = 0.0001


class GaveWay(Enum):
    """How the loader's wait before a module ended."""

    LOOP_IDLE = "loop_idle"
    LOOP_BLOCKED_ON_IMPORT = "loop_blocked_on_import"
    WAITED_LONGEST = "waited_longest"


class LoopPriority:
    """The loop's busy mark, and the loader's wait for it to clear."""

    def __init__(self, max_give_way_s: float = MAX_GIVE_WAY_S) -> None:
        self._busy = threading.Lock()
        self._loop_thread: int | None = None
        self._polls = max(1, round(max_give_way_s / POLL_S))

    def selector(self, busy_wait_s: float = 0.0) -> selectors.BaseSelector:
        """The loop's selector; call it in the loop's thread, which is busy from now on
        except while it waits in `select` (after polling for `busy_wait_s`, if any)."""
        self._busy.acquire()
        self._loop_thread = threading.get_ident()
        return _BusyMarkingSelector(self._busy, busy_wait_s)

    @contextlib.contextmanager
    def imports_give_way(self) -> Iterator[None]:
        """Around the loader's import, in its thread: each module it imports first waits
        for the loop (no-op when no loop uses this priority's selector)."""
        if self._loop_thread is None:
            yield
            return
        finder = _GiveWay(threading.get_ident(), self.wait_for_idle_loop)
        # A new list, never one mutated in place: another thread may be iterating it.
        sys.meta_path = [finder, *sys.meta_path]
        try:
            yield
        finally:
            sys.meta_path = [found for found in sys.meta_path if found is not finder]

    def wait_for_idle_loop(self) -> GaveWay:
        blocked_on = getattr(_bootstrap, "_blocking_on", None)
        for _ in range(self._polls):
            if blocked_on is not None and blocked_on.get(self._loop_thread):
                return GaveWay.LOOP_BLOCKED_ON_IMPORT
            if self._busy.acquire(timeout=POLL_S):
                self._busy.release()
                return GaveWay.LOOP_IDLE
        return GaveWay.WAITED_LONGEST


class _GiveWay(MetaPathFinder):
    """First on `sys.meta_path`: finds nothing, only makes the loader's thread wait."""

    def __init__(self, thread: int, wait: Callable[[], GaveWay]) -> None:
        self._thread = thread
        self._wait = wait

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        if threading.get_ident() == self._thread:
            with _import_lock_released():
                self._wait()
        return None


@contextlib.contextmanager
def _import_lock_released() -> Iterator[None]:
    """Let go of the global import lock, which `_find_spec` holds around each finder."""
    try:
        _imp.release_lock()
    except RuntimeError:  # not held by this thread: a finder called outside an import
        yield
        return
    try:
        yield
    finally:
        _imp.acquire_lock()


class _BusyMarkingSelector(selectors.DefaultSelector):
    """The default selector, releasing `busy` while it waits for I/O (a zero timeout is a
    poll, not a wait) and taking it back before the loop goes on.

    With a busy wait (`--busy-wait-us`), it first polls for that long, still busy, before
    it sleeps, as the BEAM's schedulers do: a request that comes within it is read without
    the kernel waking a sleeping thread (on a VM, tens of µs a request), and an idle
    worker sleeps again after it."""

    def __init__(self, busy: threading.Lock, busy_wait_s: float = 0.0) -> None:
        super().__init__()
        self._busy = busy
        self._busy_wait_s = busy_wait_s

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout <= 0:
            return super().select(timeout)
        if self._busy_wait_s:
            started = time.monotonic()
            polled = self._busy_wait_s if timeout is None else min(self._busy_wait_s, timeout)
            if ready := self._poll_for(polled):
                return ready
            # The rest of this call's wait: returning early would only bring the loop
            # back here to poll again.
            if timeout is not None:
                timeout = max(0.0, timeout - (time.monotonic() - started))
        self._busy.release()
        try:
            return super().select(timeout)
        finally:
            self._busy.acquire()

    def _poll_for(self, seconds: float) -> list[tuple[selectors.SelectorKey, int]]:
        until = time.monotonic() + seconds
        while not (ready := super().select(0)) and time.monotonic() < until:
            pass
        return ready
