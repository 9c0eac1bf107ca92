"""OUT's locks: a whole-job run holds run.lock exclusively, a shard holds it shared plus its own
shard lock; shards take turns on the done markers.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import OutputError, OutputLocked
from .layout import OutLayout


class RunLock:
    """A whole-job run holds run.lock exclusively. A shard holds it shared (so shards run
    side by side but never next to a whole-job run) plus its own shard lock."""

    def __init__(self, layout: OutLayout, shard: tuple[int, int] | None) -> None:
        self.layout = layout
        self.shard = shard
        self._held: list[Any] = []

    def acquire(self) -> None:
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

    def try_exclusive(self) -> bool:
        """Turn our shared hold on run.lock into an exclusive one if no one else holds it."""
        if not self._held:
            return False
        try:
            fcntl.flock(self._held[0], fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def release(self) -> None:
        for fh in self._held:
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()
        self._held.clear()


def shard_file(layout: OutLayout, shard: tuple[int, int], suffix: str) -> Path:
    return layout.meta / "shards" / f"{shard[0]}-of-{shard[1]}.{suffix}"


@contextmanager
def shard_markers(layout: OutLayout) -> Iterator[None]:
    """Shards read and write the done markers one at a time (so a shard starting a new job
    cannot remove a marker another shard of that job just wrote)."""
    with open(layout.meta / "shards" / "markers.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
