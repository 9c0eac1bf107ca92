"""The feeding loop: keep a bounded number of requests inside the engine, top up, harvest.

There is no barrier between batches: as soon as a request finishes, another takes its place,
so the engine never waits for a whole chunk. One loop serves every runner (a job, run-batch);
what differs between them — where requests come from, what a finished one becomes, how
finished work is made durable — is the `Work` they hand it.

When the engine dies the loop makes finished work durable, takes back the requests in flight,
sends them again first (the engine restarts on the next add), and gives up after a bounded
number of restarts. After a stop request (Ctrl-C reaches vLLM's engine process too) a death
is part of stopping, not a failure.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Protocol

from ..engine.protocol import Engine, EngineResult
from ..errors import EngineDied, EngineFailure
from ..prompting.units import EngineRequest
from .signals import StopSignal

log = logging.getLogger(__name__)


class Work(Protocol):
    """What the feeding loop asks of the work it feeds to the engine."""

    def pull(self, idle: bool) -> None:
        """Take in newly available input; may wait briefly when `idle` (nothing in flight)."""

    def admit(self, queue: deque[EngineRequest]) -> bool:
        """Turn the next ready input into requests appended to `queue` (possibly none: it was
        answered without the engine); False when no input is ready now."""

    def exhausted(self) -> bool:
        """No input is waiting and none will come."""

    def rejected(self, result: EngineResult) -> None:
        """The engine refused a request at once (`result.error`)."""

    def finished(self, result: EngineResult) -> list[EngineRequest]:
        """A request finished; requests to send again first (a retry), usually none."""

    def save(self) -> None:
        """Make finished work durable (before the engine restarts)."""

    def tick(self) -> None:
        """Once per loop: commit on schedule, report progress, notice an outside stop request."""


class FeedingLoop:
    """Drive one engine from one `Work` until the work is exhausted or a stop is requested."""

    def __init__(self, engine: Engine, work: Work, stop: StopSignal, *, restarts: int, saved: str) -> None:
        self.engine = engine
        self.work = work
        self.stop = stop
        self.restarts = restarts  # engine deaths allowed before giving up
        self.saved = saved  # what a give-up message says about finished work
        self.queue: deque[EngineRequest] = deque()  # ready to send: requeued and retried first
        self.deaths = 0

    def run(self) -> None:
        while not self.stop.requested:
            self.work.pull(idle=not self.engine.has_unfinished() and not self.queue)
            self._top_up()
            if self.engine.has_unfinished():
                self._harvest()
            elif not self.queue and self.work.exhausted():
                return
            self.work.tick()

    def _top_up(self) -> None:
        """Fill the engine's free capacity: queued requests first, then newly admitted input."""
        while self.engine.capacity() > 0:
            if not self.queue:
                if not self.work.admit(self.queue):
                    return
                continue
            req = self.queue.popleft()
            try:
                rejected = self.engine.add(req.with_media_read())
            except EngineDied as exc:
                self.queue.appendleft(req)
                self._died(exc)
                continue
            if rejected is not None:
                self.work.rejected(rejected)

    def _harvest(self) -> None:
        try:
            results = self.engine.step()
        except EngineDied as exc:
            self._died(exc)
            return
        for res in results:
            again = self.work.finished(res)
            self.queue.extendleft(reversed(again))

    def _died(self, exc: EngineDied) -> None:
        """Save what finished, take back what was in flight, allow a bounded number of restarts."""
        self.work.save()
        lost = self.engine.take_inflight()
        if self.stop.requested:
            return
        self.deaths += 1
        if self.deaths > self.restarts:
            last = str(exc).splitlines()[0] if str(exc) else "no message"
            raise EngineFailure(
                f"the engine died {self.deaths} times (last: {last}); {self.saved}, rerun the same command to resume"
            ) from exc
        log.warning("engine died (%s); restarting and requeueing %d requests", exc, len(lost))
        self.queue.extendleft(reversed(lost))
