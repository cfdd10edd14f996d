"""The loop's priority over DSPy's import (`serve/priority`): the loader waits while the
loop is busy, never while the loop's thread waits on an import the loader holds, and the
CPython detail that last rule relies on."""

from __future__ import annotations

import importlib
import os
import sys
import threading
from collections.abc import Callable
from importlib import _bootstrap
from pathlib import Path
from typing import Any

import pytest

from dspy_bridge.serve.priority import GaveWay, LoopPriority

LONG_S = 30.0  # never reached when the rule holds; a broken rule fails slowly, not silently


def in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(target()), daemon=True)
    thread.start()
    return thread, result


def module_file(directory: Path, name: str, body: str = "VALUE = 1\n") -> str:
    (directory / f"{name}.py").write_text(body)
    return name


class RecordedLoader:
    """A loader thread importing `name` under the priority's finder, each wait recorded;
    `waiting` is set as its first wait begins."""

    def __init__(self, priority: LoopPriority, name: str) -> None:
        self.outcomes: list[GaveWay] = []
        self.waiting = threading.Event()
        wait = priority.wait_for_idle_loop

        def recorded_wait() -> GaveWay:
            self.waiting.set()
            self.outcomes.append(wait())
            return self.outcomes[-1]

        priority.wait_for_idle_loop = recorded_wait  # type: ignore[method-assign]

        def load() -> Any:
            with priority.imports_give_way():
                return importlib.import_module(name)

        self.thread, self.loaded = in_thread(load)


@pytest.fixture
def import_dir(tmp_path: Path) -> Any:
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()
    yield tmp_path
    sys.path.remove(str(tmp_path))


def test_cpython_lists_a_thread_blocked_on_an_import_lock(import_dir: Path) -> None:
    """The rule "never wait for a loop blocked on an import" reads
    `importlib._bootstrap._blocking_on`; if a Python upgrade changes it, this fails."""
    started, release = threading.Event(), threading.Event()
    sys.modules["priority_gate"] = gate = type(sys)("priority_gate")
    gate.started, gate.release = started, release  # type: ignore[attr-defined]
    name = module_file(import_dir, "priority_slow_module",
                       "import priority_gate\npriority_gate.started.set()\n"
                       f"priority_gate.release.wait({LONG_S})\n")
    first, _ = in_thread(lambda: importlib.import_module(name))
    assert started.wait(LONG_S)
    second, imported = in_thread(lambda: importlib.import_module(name))
    seen = False
    try:
        for _ in range(int(LONG_S * 1000)):
            if _bootstrap._blocking_on.get(second.ident):
                seen = True
                break
            second.join(0.001)
    finally:
        release.set()
        first.join(LONG_S)
        second.join(LONG_S)
        del sys.modules["priority_gate"]
    assert seen, "a thread waiting on a module's import lock is no longer in _blocking_on"
    assert [module.__name__ for module in imported] == [name]


# With a busy wait the selector polls before it waits; after the poll it waits as without.
@pytest.mark.parametrize("busy_wait_s", [0.0, 0.001])
def test_the_loader_waits_while_the_loop_is_busy_and_goes_on_once_it_waits_for_io(
    busy_wait_s: float,
) -> None:
    priority = LoopPriority(max_give_way_s=LONG_S)
    selector = priority.selector(busy_wait_s)  # this thread is the loop, busy from now on
    wake_read, wake_write = os.pipe()
    try:
        selector.register(wake_read, 1)  # EVENT_READ

        def loader() -> GaveWay:
            outcome = priority.wait_for_idle_loop()
            os.write(wake_write, b"x")  # let the loop's select return
            return outcome

        thread, outcome = in_thread(loader)
        # Only a select that waits lets the loader go (busy is held until then), so
        # LOOP_IDLE below proves it waited for the loop; a poll (timeout 0) does not free it.
        assert selector.select(timeout=0) == []
        assert thread.is_alive()
        assert selector.select(timeout=LONG_S)
        thread.join(LONG_S)
        assert outcome == [GaveWay.LOOP_IDLE]
        # The loop is busy again once its select returned.
        short = LoopPriority(max_give_way_s=0.001)
        short._busy, short._loop_thread = priority._busy, priority._loop_thread
        assert short.wait_for_idle_loop() is GaveWay.WAITED_LONGEST
    finally:
        selector.close()
        os.close(wake_read)
        os.close(wake_write)


class CountedLock:
    """A lock that counts its releases."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.releases = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self.releases += 1
        self._lock.release()


def test_a_frame_that_comes_within_the_busy_wait_is_read_with_the_loop_still_busy() -> None:
    priority = LoopPriority()
    priority._busy = busy = CountedLock()  # type: ignore[assignment]
    selector = priority.selector(LONG_S)
    ready_read, ready_write = os.pipe()
    try:
        selector.register(ready_read, 1)  # EVENT_READ
        os.write(ready_write, b"x")
        assert [key.fd for key, _ in selector.select(timeout=None)] == [ready_read]
        assert [key.fd for key, _ in selector.select(timeout=LONG_S)] == [ready_read]
        assert busy.releases == 0  # it never slept, so the loader never had its turn
    finally:
        selector.close()
        os.close(ready_read)
        os.close(ready_write)


def test_the_loader_does_not_wait_for_a_loop_blocked_on_a_module_it_imports(
    import_dir: Path,
) -> None:
    priority = LoopPriority(max_give_way_s=LONG_S)
    priority.selector().close()  # this thread is the loop, and stays busy
    name = module_file(import_dir, "priority_shared_module")
    loader = RecordedLoader(priority, name)
    assert loader.waiting.wait(LONG_S)  # the loader holds the module's import lock now
    module = importlib.import_module(name)  # blocks on the loader's lock, busy held
    loader.thread.join(LONG_S)
    assert loader.outcomes == [GaveWay.LOOP_BLOCKED_ON_IMPORT]
    assert loader.loaded == [module]


def test_imports_give_way_leaves_meta_path_as_it_found_it(import_dir: Path) -> None:
    before = list(sys.meta_path)
    priority = LoopPriority(max_give_way_s=0.001)
    priority.selector().close()
    name = module_file(import_dir, "priority_plain_module")
    with priority.imports_give_way():
        assert len(sys.meta_path) == len(before) + 1
        assert importlib.import_module(name).VALUE == 1  # the finder finds nothing itself
    assert sys.meta_path == before


def test_without_a_loop_on_its_selector_imports_do_not_wait(import_dir: Path) -> None:
    before = list(sys.meta_path)
    with LoopPriority(max_give_way_s=LONG_S).imports_give_way():
        assert sys.meta_path == before


def test_while_the_loader_waits_the_loop_imports_other_modules(import_dir: Path) -> None:
    """The import system holds its global lock around each finder; the waiting loader lets
    go of it, or every new import in the loop's thread would wait for the loader."""
    priority = LoopPriority(max_give_way_s=LONG_S)
    priority.selector().close()  # this thread is the loop, busy
    ours = module_file(import_dir, "priority_loop_module")
    loader = RecordedLoader(priority, module_file(import_dir, "priority_loader_module"))
    assert loader.waiting.wait(LONG_S)
    assert importlib.import_module(ours).VALUE == 1
    assert loader.outcomes == []  # the loader still waits for the loop...
    priority._busy.release()  # ...until it is idle
    loader.thread.join(LONG_S)
    assert loader.outcomes == [GaveWay.LOOP_IDLE]
    assert loader.loaded[0].VALUE == 1


def test_a_finder_called_outside_an_import_waits_without_touching_the_import_lock() -> None:
    """Some libraries call the finders on sys.meta_path themselves: the loader's finder
    then holds no import lock to let go of, and must not fail for it."""
    priority = LoopPriority(max_give_way_s=0.001)
    priority.selector().close()  # the loop is busy: the finder waits its longest, briefly

    def loader() -> Any:
        with priority.imports_give_way():
            return sys.meta_path[0].find_spec("priority_no_such_module", None)

    thread, found = in_thread(loader)
    thread.join(LONG_S)
    assert found == [None]
