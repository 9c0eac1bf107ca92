"""OUT's locks: a whole-job run holds run.lock exclusively, a shard holds it shared plus its own
shard lock; shards take turns on the done markers.

On an object store (no flock) the same rules hold with leases (lease.py): a whole-job run holds
`.gemma4u/locks/run.json`, a shard `.gemma4u/locks/shard-I-of-N.json`; each takes its own and
then looks for the other kind, letting go if one is live. Two runs racing may both let go
(both exit 73, a scheduler retries), never both go on.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..atomic import lock_held
from ..errors import OutputError, OutputLocked
from .layout import LOCKS, SHARDS, OutLayout
from .lease import Lease, lease_holder


class RunLock:
    """A whole-job run holds run.lock exclusively. A shard holds it shared (so shards run
    side by side but never next to a whole-job run) plus its own shard lock."""

    def __init__(self, layout: OutLayout, shard: tuple[int, int] | None, wait: float = 0.0) -> None:
        self.layout = layout
        self.shard = shard
        self.wait = wait  # seconds to wait for a lease to run out (object stores)
        self._held: list[Any] = []
        self._lease: Lease | None = None

    @property
    def lost(self) -> bool:
        """A lease this run held was taken over (the run stalled past it): stop before committing."""
        return self._lease is not None and self._lease.lost.is_set()

    def acquire(self) -> None:
        if not self.layout.is_local:
            self._acquire_lease()
            return
        try:
            self.layout.ensure()
            for path, mode in self._paths():
                self._take(path, mode)
        except OSError as exc:
            self.release()
            raise OutputError(f"cannot write to output folder {self.layout.root}: {exc.strerror or exc}") from exc

    def _paths(self) -> list[tuple[Path, int]]:
        paths = [(self.layout.meta / "run.lock", fcntl.LOCK_SH if self.shard else fcntl.LOCK_EX)]
        if self.shard:
            (self.layout.meta / "shards").mkdir(exist_ok=True)
            paths.append((shard_file(self.layout, self.shard, "lock"), fcntl.LOCK_EX))
        return paths

    def _take(self, path: Path, mode: int) -> None:
        fh = open(path, "a+")
        try:
            fcntl.flock(fh, mode | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            fh.close()
            self.release()
            shard = self.shard
            what = f"shard {shard[0]}/{shard[1]}" if shard and path.name != "run.lock" else "gemma4u run"
            raise OutputLocked(f"another {what} is writing into {self.layout.root} (lock held)") from exc
        self._held.append(fh)

    def _acquire_lease(self) -> None:
        files, shard = self.layout.files, self.shard
        mine = f"{LOCKS}/shard-{shard[0]}-of-{shard[1]}.json" if shard else f"{LOCKS}/run.json"
        what = f"shard {shard[0]}/{shard[1]}" if shard else "gemma4u run"
        lease = Lease(files, mine, what=what)
        lease.acquire(wait=self.wait)
        others = (
            [f"{LOCKS}/run.json"] if shard else [f"{LOCKS}/{n}" for n in files.list(LOCKS) if n.startswith("shard-")]
        )
        if any(lease_holder(files, name) is not None for name in others):
            lease.release()
            kind = "gemma4u run" if shard else "shard"
            raise OutputLocked(f"another {kind} is writing into {self.layout.where} (lease held)")
        self._lease = lease

    def _other_shards_live(self) -> bool:
        assert self._lease is not None
        names = _shard_leases(self.layout)
        return any(lease_holder(self.layout.files, n) is not None for n in names if n != self._lease.name)

    def try_exclusive(self) -> bool:
        """Turn our shared hold on run.lock into an exclusive one if no one else holds it
        (on an object store: no other shard's lease is live)."""
        if self._lease is not None:
            return not self._other_shards_live()
        if not self._held:
            return False
        try:
            fcntl.flock(self._held[0], fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def release(self) -> None:
        if self._lease is not None:
            self._lease.release()
            self._lease = None
        for fh in self._held:
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()
        self._held.clear()


def run_lock_held(layout: OutLayout) -> bool:
    """Whether a run (whole-job or a shard) holds OUT's lock now."""
    if layout.is_local:
        run_lock = layout.meta / "run.lock"
        return run_lock.exists() and lock_held(run_lock)
    names = [f"{LOCKS}/run.json", *_shard_leases(layout)]
    return any(lease_holder(layout.files, n) is not None for n in names)


def _shard_leases(layout: OutLayout) -> list[str]:
    return [f"{LOCKS}/{n}" for n in layout.files.list(LOCKS) if n.startswith("shard-")]


def shard_name(shard: tuple[int, int], suffix: str) -> str:
    """A shard's file under OUT: its lock, run manifest or done marker."""
    return f"{SHARDS}/{shard[0]}-of-{shard[1]}.{suffix}"


def shard_file(layout: OutLayout, shard: tuple[int, int], suffix: str) -> Path:
    return layout.folder / shard_name(shard, suffix)


@contextmanager
def shard_markers(layout: OutLayout) -> Iterator[None]:
    """On a local OUT shards read and write the done markers one at a time (so a shard
    starting a new job cannot remove a marker another shard of that job just wrote); on an
    object store there is no such lock (see `runs.mark_done`)."""
    if not layout.is_local:
        yield
        return
    (layout.meta / "shards").mkdir(parents=True, exist_ok=True)
    with open(layout.meta / "shards" / "markers.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
