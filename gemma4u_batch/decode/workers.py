"""Decode workers: a pool of processes that can be timed out, killed and replaced.

Each worker owns one duplex pipe and decodes one item at a time, so when a worker hangs
(stalled read, spinning codec) or dies (segfault in a native decoder, OOM kill) we know
exactly which item it cost: that item becomes an error record and a fresh worker takes
its place. Remote items (a URL: decode/fetch.py) are handed over up to `fetch_ahead` at a time:
the worker fetches them in threads while it decodes the one before (object stores and web
servers are latency-bound), and the ones still fetching when it dies go back to the queue.
Memory stays flat: at most `workers` items decoding plus `prefetch` ready (and, per worker,
`fetch_ahead` bodies of at most AHEAD_LIMIT bytes), and long audio (over `SPILL_SECONDS`) is
not held at all: a worker writes its waveform to a spill file of this pool's folder and sends
a small handle (decode/spill.py).
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import pickle
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from ..config.job import JobConfig
from ..errors import ItemError
from ..records import WorkItem
from . import DecodeOptions, decode_fetched, decode_item
from .fetch import fetch, is_remote
from .item import DecodedItem
from .spill import SpillDir

DecodeFn = Callable[[WorkItem, DecodeOptions], DecodedItem]


AUTO_MAX_WORKERS = 32
WORKER_MEMORY = 1 << 30  # what one worker may take at peak (torch loaded, a 12 MP photo or 30 min of audio)


def auto_workers(engine_processes: int) -> int:
    """`--workers auto`: the cores this process may run on, less one for itself (it feeds the
    engine) and one per engine process (vLLM's engine core drives the accelerator; each
    tensor/pipeline-parallel worker needs a core too); at most one per GiB of available
    memory and AUTO_MAX_WORKERS; at least 1."""
    import psutil

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    by_memory = int(psutil.virtual_memory().available // WORKER_MEMORY)
    return max(1, min(cores - 1 - engine_processes, by_memory, AUTO_MAX_WORKERS))


def worker_count(config: JobConfig) -> int:
    """Decode worker processes for a job: the number given, or for `auto` the cores left
    after the engine's processes and this one (`auto_workers`)."""
    if config.workers != "auto":
        return int(config.workers)
    engine = config.engine
    return auto_workers(1 + engine.tensor_parallel_size * engine.pipeline_parallel_size)


def _prefer_oom_kill() -> None:
    """Make the kernel's OOM killer pick this worker (one item) before the engine (the run)."""
    try:
        with open("/proc/self/oom_score_adj", "w") as fh:
            fh.write("1000")
    except OSError:
        pass


def _failed(item: WorkItem, exc: BaseException) -> DecodedItem:
    text = " ".join(str(exc).split())[:300]
    return DecodedItem(
        item=item, error=f"decode failed: {type(exc).__name__}{': ' + text if text else ''}", error_kind="decode_error"
    )


_READY = "ready"
_MAX_START_FAILURES = 3


@dataclass
class _Framed:
    """A decoded item pickled with its arrays out of band (pickle protocol 5). The arrays follow
    as raw bytes on the pipe, written from the arrays themselves and read straight into the
    buffers the unpickled arrays then use: no pickled copy in the worker (460 MB for a 2-hour
    waveform) and, in the feeding process, one copy instead of three per image's 1.9 MB of
    patches (the pipe's chunks, their concatenation, the unpickled array)."""

    header: bytes
    sizes: list[int]


def _send_result(conn: Connection, result: DecodedItem) -> None:
    """Pickled once: the header carries everything but the arrays, which follow raw."""
    buffers: list[pickle.PickleBuffer] = []
    header = pickle.dumps(result, protocol=5, buffer_callback=buffers.append)
    views = [b.raw() for b in buffers]
    conn.send(_Framed(header, [v.nbytes for v in views]))
    for view in views:
        while view:
            view = view[os.write(conn.fileno(), view) :]


def _read_exactly(conn: Connection, size: int) -> bytearray:
    """`size` raw bytes from the pipe into a new buffer (EOFError when the worker is gone)."""
    buf = bytearray(size)
    view, got = memoryview(buf), 0
    while got < size:
        n = os.readv(conn.fileno(), [view[got:]])
        if n == 0:
            raise EOFError("decode worker closed its pipe mid-result")
        got += n
    return buf


def _warm_up(opts: DecodeOptions) -> None:
    """Import the decoders (and load the VAD model when speech tasks need it) before saying
    ready, so decode_timeout measures decoding only."""
    try:
        from . import audio, image, video  # noqa: F401

        if opts.vad:
            from .vad import load_model

            load_model()
        if opts.patches:
            from .patches import warm_up

            warm_up()
    except ImportError:
        pass


AHEAD_LIMIT = 64 * 1024**2
"""An item fetched ahead (before its turn to decode) is read up to this many bytes; a larger one
is fetched again when its turn comes, so the bodies a worker holds ahead stay bounded."""


class _Fetcher:
    """A worker's fetches of remote items, many in flight while the worker decodes in order."""

    def __init__(self, opts: DecodeOptions) -> None:
        self.opts = opts
        self._pool: Any = None

    def ahead(self, item: WorkItem) -> Any:
        """Start fetching a remote item now (a future), or None for an item read locally."""
        if not is_remote(item):
            return None
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max(1, self.opts.fetch_ahead), thread_name_prefix="gemma4u-fetch")
        limit = min(self.opts.max_input_bytes, AHEAD_LIMIT)
        return self._pool.submit(fetch, item, self.opts, limit)

    def decoded(self, item: WorkItem, fut: Any, decode_fn: DecodeFn) -> DecodedItem:
        """The item decoded, from the bytes fetched ahead when there are any."""
        if fut is None:
            return decode_fn(item, self.opts)
        try:
            fetched = fut.result()
        except ItemError as exc:
            if exc.kind != "too_large" or self.opts.max_input_bytes <= AHEAD_LIMIT:
                return DecodedItem(item=item, error=exc.message, error_kind=exc.kind)
            return decode_fn(item, self.opts)  # over the ahead limit: fetched now, with the item's own
        return decode_fetched(item, fetched, self.opts, decode_fn)


def _worker_main(conn: Connection, opts: DecodeOptions, decode_fn: DecodeFn) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    _prefer_oom_kill()
    _warm_up(opts)
    try:
        conn.send(_READY)
    except OSError:
        return
    fetcher = _Fetcher(opts)
    queued: deque[tuple[WorkItem, Any]] = deque()  # in the order handed over: results go back in it
    while True:
        try:
            while not queued or conn.poll():  # take every item handed over; wait only when idle
                item = conn.recv()
                if item is None:
                    # Told to stop: every result went over the pipe, nothing to flush; skip the
                    # interpreter's teardown (~0.5 s with torch loaded, paid while the job waits).
                    os._exit(0)
                queued.append((item, fetcher.ahead(item)))
        except (EOFError, OSError):
            return
        item, fut = queued.popleft()
        try:
            result = fetcher.decoded(item, fut, decode_fn)
        except Exception as exc:
            result = _failed(item, exc)
        try:
            _send_result(conn, result)
        except (EOFError, OSError):
            return
        except Exception as exc:  # result could not be pickled
            conn.send(_failed(item, exc))


@dataclass
class _Worker:
    process: Any
    conn: Connection
    spawned: float
    ready: bool = False
    items: deque[WorkItem] = dataclasses.field(default_factory=deque)  # handed over, in order
    started: float = 0.0  # when the first of `items` became the one the worker decodes

    @property
    def item(self) -> WorkItem | None:
        """The item the worker decodes now (the rest of `items` are being fetched ahead)."""
        return self.items[0] if self.items else None


class DecodePool:
    """Feeds WorkItems to worker processes and hands back DecodedItems as they finish.

    `poll(timeout)` never blocks longer than `timeout`, so the caller can keep the
    engine stepping while decoding goes on. With `workers=0` decoding runs inline.
    A worker gets items only once it has started and says so; an item's `timeout`
    clock starts when the item is handed over.
    `decode_fn` (a picklable top-level function, default decode_item) lets tests make a
    decode hang or crash; nothing in an item can select it. `items` may yield None for
    "nothing to decode yet": run-batch feeds the media of each line as it prepares it.
    """

    def __init__(
        self,
        items: Iterator[WorkItem | None],
        opts: DecodeOptions,
        workers: int = 2,
        prefetch: int = 8,
        timeout: float = 60.0,
        decode_fn: DecodeFn | None = None,
        start_timeout: float = 120.0,
        spill_root: Path | None = None,
    ) -> None:
        self._items = items
        # Long audio is written to spill files in a folder of this pool's (decode/spill.py):
        # under `spill_root` (a job: OUT/.gemma4u/tmp), else the system's temp folder.
        self._spill = SpillDir(spill_root or Path(tempfile.gettempdir()))
        opts = dataclasses.replace(opts, spill_dir=str(self._spill.path))
        self._opts = opts
        self._n = workers
        self._prefetch = max(1, prefetch)
        self._timeout = timeout
        self._start_timeout = start_timeout
        self._decode = decode_fn or decode_item
        self._ahead = max(1, opts.fetch_ahead)
        self._exhausted = False
        self._taken: deque[WorkItem] = deque()  # taken from the source, not yet handed to a worker
        self._ready: deque[DecodedItem] = deque()
        self._ctx = mp.get_context("spawn")
        self._workers: list[_Worker] = []
        self._start_failures = 0
        self.respawns = 0
        self.dispatched = 0

    def __enter__(self) -> DecodePool:
        return self

    def _start_workers(self) -> bool:
        """Start the workers with the first item, so a run with nothing to decode starts none."""
        if self._workers or self._exhausted:
            return bool(self._workers)
        item = self._next_item()
        if item is None:
            return False
        self._taken.appendleft(item)
        for _ in range(self._n):
            self._workers.append(self._spawn())
        return True

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=_worker_main, args=(child, self._opts, self._decode), daemon=True)
        proc.start()
        child.close()
        return _Worker(proc, parent, spawned=time.monotonic())

    def _next_item(self) -> WorkItem | None:
        if self._taken:
            return self._taken.popleft()
        if self._exhausted:
            return None
        try:
            item = next(self._items)
        except StopIteration:
            self._exhausted = True
            return None
        if item is not None:  # None: nothing to decode yet (an open feed), ask again later
            self.dispatched += 1
        return item

    @property
    def in_progress(self) -> int:
        return sum(len(w.items) for w in self._workers)

    @property
    def held(self) -> int:
        """Items taken from the source and not yet handed back (queued, decoding or ready)."""
        return len(self._taken) + self.in_progress + len(self._ready)

    @property
    def done(self) -> bool:
        return self._exhausted and not self._taken and not self._ready and self.in_progress == 0

    def stop_feeding(self) -> None:
        """Take no new items (SIGINT/SIGTERM); items already decoding still finish."""
        self._exhausted = True
        self._taken.clear()

    def _replace(self, idx: int, kind: str | None = None, message: str = "") -> None:
        """Kill worker `idx` and start a fresh one; the item it decoded (if any) becomes an error,
        the items it was fetching ahead go back to the queue."""
        w = self._workers[idx]
        item = w.item
        self._taken.extendleft(reversed(list(w.items)[1:]))
        if w.process.is_alive():
            w.process.kill()
        w.process.join(timeout=2)  # a kill in uninterruptible sleep may take longer: don't wait
        w.conn.close()
        self._spill.remove_files_of(w.process.pid)
        self._workers[idx] = self._spawn()
        self.respawns += 1
        if item is not None and kind is not None:
            self._ready.append(
                DecodedItem(item=item, error=message, error_kind=kind, decode_seconds=time.monotonic() - w.started)
            )

    def _start_failed(self, idx: int, why: str) -> None:
        """A worker died or hung before it was ready: retry a few times, then give up loudly
        (no item can be decoded on this machine, so going on would only hide it)."""
        self._start_failures += 1
        if self._start_failures > _MAX_START_FAILURES:
            raise RuntimeError(f"decode workers fail to start ({why}); check the installation")
        self._replace(idx)

    def _dispatch(self) -> None:
        """Hand items to ready workers: one at a time, or for remote items up to `fetch_ahead`
        each, which the worker fetches while it decodes the one before."""
        for idx, w in enumerate(self._workers):
            while w.ready and self._backlog() < self._prefetch + self._n and self._may_take(w):
                item = self._next_item()
                if item is None:
                    return
                if not self._fits(w, item):
                    self._taken.appendleft(item)
                    break
                try:
                    w.conn.send(item)
                except (OSError, EOFError):  # died while idle: the item waits for the next worker
                    self._taken.appendleft(item)
                    self._crashed(idx)
                    break
                if not w.items:
                    w.started = time.monotonic()
                w.items.append(item)

    def _backlog(self) -> int:
        """Items taken and not handed back, items fetched ahead left out (`fetch_ahead` bounds them)."""
        return len(self._taken) + len(self._ready) + sum(1 for w in self._workers if w.items)

    def _may_take(self, w: _Worker) -> bool:
        """Whether to take an item for this worker: when idle, or busy with remote items only (a
        worker busy decoding a local item takes nothing: the next item waits in the source)."""
        return not w.items or (len(w.items) < self._ahead and all(is_remote(i) for i in w.items))

    def _fits(self, w: _Worker, item: WorkItem) -> bool:
        """An idle worker takes any item; a busy one another remote item, up to `fetch_ahead`."""
        if not w.items:
            return True
        return is_remote(item) and len(w.items) < self._ahead and all(is_remote(i) for i in w.items)

    def _crashed(self, idx: int) -> None:
        w = self._workers[idx]
        w.process.join(timeout=1)
        code = w.process.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        if not w.ready:
            self._start_failed(idx, how)
        elif w.item is None:
            self._replace(idx)
        else:
            self._replace(idx, "decoder_crashed", f"decoder process died on this item ({how})")

    def _receive(self, idx: int) -> None:
        w = self._workers[idx]
        try:
            msg = w.conn.recv()
        except (EOFError, OSError):
            self._crashed(idx)
            return
        if msg == _READY:
            w.ready = True
            self._start_failures = 0
        elif isinstance(msg, _Framed):
            try:
                buffers = [_read_exactly(w.conn, n) for n in msg.sizes]
            except (EOFError, OSError):
                self._crashed(idx)
                return
            self._take(w, pickle.loads(msg.header, buffers=buffers))
        elif isinstance(msg, DecodedItem):
            self._take(w, msg)

    def _take(self, w: _Worker, item: DecodedItem) -> None:
        """A result, for the worker's first item (results come back in the order handed over)."""
        if w.items:
            w.items.popleft()
            w.started = time.monotonic()  # the next item's turn starts now
            self._ready.append(item)

    def poll(self, timeout: float = 0.0) -> list[DecodedItem]:
        """Decoded items that are ready now (waiting at most `timeout` seconds for one)."""
        if self._n == 0:
            while len(self._ready) < self._prefetch:
                item = self._next_item()
                if item is None:
                    break
                self._ready.append(self._decode(item, self._opts))
            out = list(self._ready)
            self._ready.clear()
            return out
        if not self._start_workers():
            return []
        self._dispatch()
        if not self._ready:
            watch = {w.conn: i for i, w in enumerate(self._workers) if w.item is not None or not w.ready}
            deadlines = [w.started + self._limit(w) for w in self._workers if w.item is not None]
            deadlines += [w.spawned + self._start_timeout for w in self._workers if not w.ready]
            wait_for = timeout
            if deadlines:
                wait_for = max(0.0, min(timeout, min(deadlines) - time.monotonic()))
            for conn in wait(list(watch), timeout=wait_for) if watch else []:
                self._receive(watch[conn])  # type: ignore[index]
        now = time.monotonic()
        for idx, w in enumerate(self._workers):
            if not w.ready and now - w.spawned > self._start_timeout:
                self._start_failed(idx, f"not ready after {self._start_timeout:g} s")
            elif w.item is not None and now - w.started > self._limit(w):
                self._replace(
                    idx,
                    "timeout",
                    f"decode did not finish within the decode_timeout of {self._timeout:g} s; worker killed",
                )
        self._dispatch()
        out = list(self._ready)
        self._ready.clear()
        return out

    def _limit(self, w: _Worker) -> float:
        """Seconds the worker's current item may take: a remote one's fetch has its own deadline."""
        item = w.item
        return self._timeout + (self._opts.fetch_timeout if item is not None and is_remote(item) else 0.0)

    def close(self) -> None:
        for w in self._workers:
            try:
                if w.item is None:
                    w.conn.send(None)
            except OSError:
                pass
        for w in self._workers:
            if w.item is not None:
                w.process.kill()  # busy (maybe stuck): don't wait for it
            w.process.join(timeout=2)
            if w.process.is_alive():
                w.process.kill()
                w.process.join(timeout=2)
            w.conn.close()
        self._workers.clear()
        self._spill.close()
