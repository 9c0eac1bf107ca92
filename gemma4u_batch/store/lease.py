"""A lock that works where flock does not (an object store, or machines that share no disk):
a lock object holding a lease, renewed while its holder lives.

* Take: create the object exclusively. If it exists and its lease has not run out, another
  run holds it: OutputLocked at once. If it has run out (its holder died), take it over with a
  swap at the version read, so of two runs finding the same dead lease one wins.
* Renew: a thread swaps the object every `seconds / 3`, each time at the version it wrote last.
  A swap that fails means someone took the lease over (this holder stalled past its lease):
  `lost` is set and the run must stop before it commits again.
* Release: delete the object if it is still this holder's.

Expiry is judged on the holder's clock, written into the object (`expires_at`): hosts sharing
OUT are assumed to keep time within `SKEW_SECONDS` of each other (NTP does much better).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from ..errors import OutputLocked
from .objects import OutFiles

log = logging.getLogger(__name__)

LEASE_SECONDS = float(os.environ.get("GEMMA4U_LEASE_SECONDS") or 60.0)
"""How long a lease lasts without renewal (GEMMA4U_LEASE_SECONDS): how long a dead holder's lock
stays taken."""
SKEW_SECONDS = 5.0


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, as its object says (for the message a second run prints)."""

    holder: str
    host: str
    pid: int
    expires_at: float

    @classmethod
    def parse(cls, data: bytes) -> Holder | None:
        try:
            raw = json.loads(data)
            return cls(str(raw["holder"]), str(raw.get("host", "?")), int(raw.get("pid", 0)), float(raw["expires_at"]))
        except (ValueError, KeyError, TypeError):
            return None  # unreadable: a lease nobody can claim to hold

    def live(self, now: float) -> bool:
        return self.expires_at + SKEW_SECONDS > now


class Lease:
    """One lease on `name` in OUT's files; `with Lease(...)` takes and releases it."""

    def __init__(self, files: OutFiles, name: str, *, what: str, seconds: float | None = None) -> None:
        self.files = files
        self.name = name
        self.what = what  # "gemma4u run", "shard 2/4": for the OutputLocked message
        self.seconds = LEASE_SECONDS if seconds is None else seconds
        self.holder = f"{socket.gethostname().split('.')[0][:24] or 'host'}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.lost = threading.Event()
        self._tag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _body(self) -> bytes:
        now = time.time()
        return json.dumps(
            {
                "holder": self.holder,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "renewed_at": now,
                "expires_at": now + self.seconds,
            }
        ).encode()

    def acquire(self, wait: float = 0.0) -> None:
        """Take the lease; OutputLocked when it is live, or, with `wait`, still live after that
        many seconds (a holder known to be dead, whose lease has yet to run out)."""
        deadline = time.monotonic() + wait
        while True:
            try:
                self._take()
                return
            except OutputLocked:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

    def _take(self) -> None:
        for _ in range(3):  # the object may come and go between our create and our read
            if self.files.create(self.name, self._body()):
                seen = self.files.read_tagged(self.name)
                if seen is None:
                    continue
                self._tag = seen.tag
                break
            seen = self.files.read_tagged(self.name)
            if seen is None:
                continue
            other = Holder.parse(seen.data)
            if other is not None and other.live(time.time()):
                raise OutputLocked(
                    f"another {self.what} is writing into {self.files.where} (lease held by {other.holder} "
                    f"on {other.host}, renewed until {time.strftime('%H:%M:%S', time.localtime(other.expires_at))})"
                )
            tag = self.files.swap(self.name, self._body(), seen.tag)
            if tag is None:
                continue  # another run took the dead lease first: look again
            log.info("took over %s from %s (its lease ran out)", self.name, other.holder if other else "?")
            self._tag = tag
            break
        else:
            raise OutputLocked(f"another {self.what} is taking {self.files.where}'s lease right now")
        self._thread = threading.Thread(target=self._renew_loop, name="gemma4u-lease", daemon=True)
        self._thread.start()

    def renew(self) -> bool:
        """Extend the lease now; False once it has been lost."""
        with self._lock:
            if self._tag is None or self.lost.is_set():
                return False
            tag = self.files.swap(self.name, self._body(), self._tag)
            if tag is None:
                log.warning("gemma4u: lost the lease on %s/%s", self.files.where, self.name)
                self.lost.set()
                return False
            self._tag = tag
            return True

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                if not self.renew():
                    return
            except OSError as exc:  # the store unreachable for a moment: try again at the next tick
                log.warning("gemma4u: could not renew the lease on %s: %s", self.name, exc)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            if self._tag is not None and not self.lost.is_set():
                seen = self.files.read_tagged(self.name)
                if seen is not None and seen.tag == self._tag:
                    self.files.delete(self.name)
            self._tag = None

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def lease_holder(files: OutFiles, name: str) -> Holder | None:
    """The live holder of `name`'s lease, or None (no object, unreadable, or run out)."""
    seen = files.read_tagged(name)
    if seen is None:
        return None
    holder = Holder.parse(seen.data)
    return holder if holder is not None and holder.live(time.time()) else None
