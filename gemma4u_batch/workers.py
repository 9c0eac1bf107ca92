"""Decode workers: a pool of processes that can be timed out, killed and replaced.

Each worker owns one duplex pipe and holds at most one item, so when a worker hangs
(stalled read, spinning codec) or dies (segfault in a native decoder, OOM kill) we know
exactly which item it cost: that item becomes an error record and a fresh worker takes
its place. Memory stays flat: at most `workers` items decoding plus `prefetch` ready.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from .decode import DecodeOptions, decode_item
from .records import DecodedItem, WorkItem


def _worker_main(conn: Connection, opts: DecodeOptions) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    while True:
        try:
            item = conn.recv()
        except EOFError:
            return
        if item is None:
            return
        conn.send(decode_item(item, opts))


@dataclass
class _Worker:
    process: Any
    conn: Connection
    item: WorkItem | None = None
    started: float = 0.0


class DecodePool:
    """Feeds WorkItems to worker processes and hands back DecodedItems as they finish.

    `poll(timeout)` never blocks longer than `timeout`, so the caller can keep the
    engine stepping while decoding goes on. With `workers=0` decoding runs inline.
    """

    def __init__(
        self,
        items: Iterator[WorkItem],
        opts: DecodeOptions,
        workers: int = 2,
        prefetch: int = 8,
        timeout: float = 60.0,
    ) -> None:
        self._items = items
        self._opts = opts
        self._n = workers
        self._prefetch = max(1, prefetch)
        self._timeout = timeout
        self._exhausted = False
        self._ready: deque[DecodedItem] = deque()
        self._ctx = mp.get_context("spawn")
        self._workers: list[_Worker] = []
        self.respawns = 0
        self.dispatched = 0

    def __enter__(self) -> DecodePool:
        for _ in range(self._n):
            self._workers.append(self._spawn())
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=_worker_main, args=(child, self._opts), daemon=True)
        proc.start()
        child.close()
        return _Worker(proc, parent)

    def _next_item(self) -> WorkItem | None:
        if self._exhausted:
            return None
        try:
            item = next(self._items)
        except StopIteration:
            self._exhausted = True
            return None
        self.dispatched += 1
        return item

    @property
    def in_progress(self) -> int:
        return sum(1 for w in self._workers if w.item is not None)

    @property
    def done(self) -> bool:
        return self._exhausted and not self._ready and self.in_progress == 0

    def stop_feeding(self) -> None:
        """Take no new items (SIGINT/SIGTERM); items already decoding still finish."""
        self._exhausted = True

    def _replace(self, idx: int, kind: str, message: str) -> None:
        w = self._workers[idx]
        item = w.item
        if w.process.is_alive():
            w.process.kill()
        w.process.join(timeout=5)
        w.conn.close()
        self._workers[idx] = self._spawn()
        self.respawns += 1
        if item is not None:
            self._ready.append(
                DecodedItem(item=item, error=message, error_kind=kind, decode_seconds=time.monotonic() - w.started)
            )

    def _dispatch(self) -> None:
        for w in self._workers:
            if len(self._ready) + self.in_progress >= self._prefetch + self._n:
                return
            if w.item is None:
                item = self._next_item()
                if item is None:
                    return
                w.item, w.started = item, time.monotonic()
                w.conn.send(item)

    def poll(self, timeout: float = 0.0) -> list[DecodedItem]:
        """Decoded items that are ready now (waiting at most `timeout` seconds for one)."""
        if self._n == 0:
            while len(self._ready) < self._prefetch:
                item = self._next_item()
                if item is None:
                    break
                self._ready.append(decode_item(item, self._opts))
            out = list(self._ready)
            self._ready.clear()
            return out
        self._dispatch()
        if not self._ready:
            busy = {w.conn: i for i, w in enumerate(self._workers) if w.item is not None}
            deadline = min((w.started + self._timeout for w in self._workers if w.item is not None), default=None)
            wait_for = timeout
            if deadline is not None:
                wait_for = max(0.0, min(timeout, deadline - time.monotonic()))
            for conn in wait(list(busy), timeout=wait_for) if busy else []:
                idx = busy[conn]  # type: ignore[index]
                try:
                    result = self._workers[idx].conn.recv()
                except (EOFError, OSError):
                    code = self._workers[idx].process.exitcode
                    self._replace(idx, "decoder_crashed", f"decoder process died (exit code {code}) on this item")
                    continue
                self._workers[idx].item = None
                self._ready.append(result)
        now = time.monotonic()
        for idx, w in enumerate(self._workers):
            if w.item is not None and not w.process.is_alive():
                self._replace(idx, "decoder_crashed", f"decoder process died (exit code {w.process.exitcode})")
            elif w.item is not None and now - w.started > self._timeout:
                self._replace(idx, "timeout", f"decode did not finish within {self._timeout:g} s (decode_timeout)")
        self._dispatch()
        out = list(self._ready)
        self._ready.clear()
        return out

    def close(self) -> None:
        for w in self._workers:
            try:
                if w.item is None:
                    w.conn.send(None)
            except OSError:
                pass
        for w in self._workers:
            w.process.join(timeout=2)
            if w.process.is_alive():
                w.process.kill()
                w.process.join(timeout=5)
            w.conn.close()
        self._workers.clear()
