"""The protocol descriptors, below the serving loop.

Requests are read by the loop itself where the descriptor can be polled (a pipe or a
socket, as a host's port gives): each readable turn reads up to READ_CHUNK, so a large
frame arrives over many turns and never stalls replies, and no thread hop sits between
a frame and its handling. Reading pauses while unread replies are over the outbox
budget. A descriptor the loop cannot poll (a regular file) is read by a thread that hands
the bytes over. Replies are written by the loop while the pipe takes them at once (the
descriptor is non-blocking); once the pipe is full, a writer thread takes over the
backlog, in order, coalescing it into large writes. A watcher waits for the host process
to exit. The loop hears of them only through the callbacks given to `start`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import select
import stat
import threading
import time
from collections.abc import Callable

from dspy_bridge.io.channel import HostChannel
from dspy_bridge.io.outbox import OutboxBudget
from dspy_bridge.protocol.connection import Connection, Rejected
from dspy_bridge.protocol.envelope import Request

READ_CHUNK = 256 * 1024
PARENT_POLL_S = 0.1

Items = list[Request | Rejected]


class HostPipes:
    def __init__(self, channel: HostChannel, connection: Connection, budget: OutboxBudget) -> None:
        self._in_fd, self._out_fd = channel.protocol_in, channel.protocol_out
        self._host_pid = channel.host_pid
        self._connection = connection
        self.outbox_budget = budget
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        # Set while the writer thread owns the output (a backlog is queued or being
        # written); the loop then queues behind it instead of writing, keeping the order.
        self._backlog = False
        self._backlog_lock = threading.Lock()
        self._direct = False  # whether the loop may write (see start)
        self._unflushed: list[bytes] = []
        # Set while a read's frames are handled: the read's end flushes what they send.
        self._handing_over = False
        self._after_flush: list[Callable[[], None]] = []
        self._dispatched = threading.Event()  # the reading thread's batch was handled
        self._reading: asyncio.Future[None]
        self._polled = False  # whether the loop reads (see start)
        # Written once when the exit is decided: the reader and the parent watcher stop.
        self._stop_reader, self._stop_writer = os.pipe()
        self._loop: asyncio.AbstractEventLoop
        self._on_items: Callable[[Items, float], None]
        self._on_eof: Callable[[bool], None]
        self._on_gone: Callable[[str], None]

    def start(
        self,
        loop: asyncio.AbstractEventLoop,
        on_items: Callable[[Items, float], None],
        on_eof: Callable[[bool], None],
        on_gone: Callable[[str], None],
    ) -> tuple[asyncio.Future[None], asyncio.Future[None]]:
        """Start reading and the threads; the futures are done when reading and the writer
        end."""
        self._loop, self._on_items, self._on_eof, self._on_gone = loop, on_items, on_eof, on_gone
        # Only a pipe or socket is made non-blocking: that flag is shared by every
        # process holding the descriptor, and a terminal's belongs to the shell too.
        mode = os.fstat(self._out_fd).st_mode
        self._direct = stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)
        if self._direct:
            os.set_blocking(self._out_fd, False)
        writer = self._start_thread(self._write_frames, "frame-writer")
        self._reading = self._start_reading()
        self._start_thread(self._watch_parent, "parent-watcher")
        return self._reading, writer

    def send(self, frame: bytes) -> None:
        """Queue a frame (on the loop). The frames of one loop iteration go out together,
        in one write, when it ends (or when the read that made them has been handled)."""
        self.outbox_budget.take(len(frame))
        if not self._unflushed and not self._handing_over:
            self._loop.call_soon(self._flush)
        self._unflushed.append(frame)

    def after_flush(self, callback: Callable[[], None]) -> None:
        """Run `callback` once the frames queued so far have been written (or handed to
        the writer thread): a request's log line never goes out before its reply."""
        if self._unflushed:
            self._after_flush.append(callback)
        else:
            callback()

    def _flush(self) -> None:
        if not self._unflushed:  # flushed already, at the end of the read that made them
            return
        data = b"".join(self._unflushed)
        self._unflushed.clear()
        try:
            self._write_or_queue(data)
        finally:
            callbacks, self._after_flush = self._after_flush, []
            for callback in callbacks:
                callback()

    def _write_or_queue(self, data: bytes) -> None:
        with self._backlog_lock:
            if self._direct and not self._backlog:
                try:
                    written = os.write(self._out_fd, data)
                except BlockingIOError:
                    written = 0
                except OSError as exc:
                    self._writer_failed(exc)
                    return
                self.outbox_budget.release(written)
                if written == len(data):
                    return
                data = data[written:]
                self._backlog = True
            self._outbox.put(data)

    def stop_reading(self) -> None:
        """Read no more frames (the exit is decided); the watcher stops too."""
        os.write(self._stop_writer, b"x")
        self.outbox_budget.close()
        if self._polled:
            self._loop.remove_reader(self._in_fd)
            self._end_reading()

    # ----- reading -----

    def _start_reading(self) -> asyncio.Future[None]:
        mode = os.fstat(self._in_fd).st_mode
        self._polled = stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)
        if not self._polled:
            return self._start_thread(self._read_in_thread, "frame-reader")
        os.set_blocking(self._in_fd, False)  # see start: a pipe's flag is ours alone
        self._loop.add_reader(self._in_fd, self._read_ready)
        return self._loop.create_future()

    def _read_ready(self) -> None:
        """One readable turn on the loop: read what is there, hand over its frames."""
        if self.outbox_budget.pause_while_over(self._resume_soon):
            self._loop.remove_reader(self._in_fd)
            return
        try:
            data = os.read(self._in_fd, READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._loop.remove_reader(self._in_fd)
            self._end_reading()
            self._on_gone(f"stdin error: {exc}")
            return
        if not data:
            self._loop.remove_reader(self._in_fd)
            self._end_reading()
            self._on_eof(self._connection.has_partial_frame)
            return
        self._hand_over(data, time.perf_counter())

    def _resume_soon(self) -> None:
        """Room again in the outbox (called from whichever thread released it)."""
        with contextlib.suppress(RuntimeError):  # the loop already closed
            self._loop.call_soon_threadsafe(self._resume)

    def _resume(self) -> None:
        if not self._reading.done():
            self._loop.add_reader(self._in_fd, self._read_ready)

    def _end_reading(self) -> None:
        if not self._reading.done():
            self._reading.set_result(None)

    def _hand_over(self, data: bytes, received: float) -> None:
        # every request's duration counts from `received`
        items = self._connection.receive_data(data)
        if items:
            # Replies made while handling them (control commands, refusals) go out at the
            # end, not a loop turn later (and no turn is scheduled for them).
            self._handing_over = True
            try:
                self._on_items(items, received)
            finally:
                self._handing_over = False
                self._flush()

    def finish_writing(self) -> None:
        """The writer writes what is queued, then ends."""
        if self._unflushed:
            self._flush()
        self._outbox.put(None)

    def _start_thread(self, target: Callable[[], None], name: str) -> asyncio.Future[None]:
        """Run `target` in a daemon thread; the future is done when it returns."""
        done: asyncio.Future[None] = self._loop.create_future()

        def settle() -> None:
            if not done.done():
                done.set_result(None)

        def run() -> None:
            try:
                target()
            finally:
                with contextlib.suppress(RuntimeError):  # the loop already closed
                    self._loop.call_soon_threadsafe(settle)

        threading.Thread(target=run, name=name, daemon=True).start()
        return done

    def _read_in_thread(self) -> None:
        """Reads a descriptor the loop cannot poll, handing each read to the loop and
        reading on once it was handled (never running ahead of the loop, so the outbox
        check sees the replies of what was read)."""
        while self.outbox_budget.wait_for_room():
            readable, _, _ = select.select([self._in_fd, self._stop_reader], [], [])
            if self._stop_reader in readable:
                return
            try:
                data = os.read(self._in_fd, READ_CHUNK)
            except OSError as exc:
                self._loop.call_soon_threadsafe(self._on_gone, f"stdin error: {exc}")
                return
            if not data:
                partial = self._connection.has_partial_frame
                self._loop.call_soon_threadsafe(self._on_eof, partial)
                return
            self._dispatched.clear()
            self._loop.call_soon_threadsafe(self._hand_over_batch, data, time.perf_counter())
            self._dispatched.wait()

    def _hand_over_batch(self, data: bytes, received: float) -> None:
        try:
            self._hand_over(data, received)
        finally:
            self._dispatched.set()

    def _write_frames(self) -> None:
        """Writes the backlog, waiting for the pipe to take it; hands the output back to
        the loop when the backlog is gone."""
        while True:
            frame = self._outbox.get()
            batch = [frame]
            # Coalesce whatever else is queued into one write.
            while frame is not None and not self._outbox.empty():
                frame = self._outbox.get()
                batch.append(frame)
            view = memoryview(b"".join(item for item in batch if item is not None))
            try:
                while view:
                    select.select([], [self._out_fd], [])
                    try:
                        written = os.write(self._out_fd, view)
                    except BlockingIOError:
                        continue  # writable, yet full again (another write won): wait on
                    view = view[written:]
                    self.outbox_budget.release(written)
            except OSError as exc:
                self._writer_failed(exc)
                return
            if batch[-1] is None:
                return
            with self._backlog_lock:
                if self._outbox.empty():
                    self._backlog = False

    def _writer_failed(self, exc: OSError) -> None:
        self.outbox_budget.close()
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._on_gone, f"stdout error: {exc}")

    def _watch_parent(self) -> None:
        """Wait (in its own thread) for the host process to exit: by a pidfd where the
        system has them, else by polling the parent pid."""
        try:
            pidfd: int | None = os.pidfd_open(self._host_pid)
        except (OSError, AttributeError):
            pidfd = None
        while os.getppid() == self._host_pid:
            watched = [self._stop_reader] if pidfd is None else [pidfd, self._stop_reader]
            timeout = PARENT_POLL_S if pidfd is None else None
            readable, _, _ = select.select(watched, [], [], timeout)
            if self._stop_reader in readable:
                return
            if pidfd is not None and pidfd in readable:
                break
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._on_gone, "parent process exited")
