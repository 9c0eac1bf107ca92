"""Long audio on disk instead of in memory: the decoded 16 kHz float32 waveform of a file
longer than `SPILL_SECONDS` is written to a spill file as it is decoded, and everything
downstream (the VAD, the window search, each request's clip) reads only the stretch it
needs from it. Memory then grows with the window (30 s = 1.9 MB), not with the file.

Why a file and not the pipe: the windows are chosen from the whole file's speech regions
(the VAD's parallel streams depend on the total length), so the waveform must exist whole
somewhere until they are built, and each window is needed again until its requests are
answered (retries, engine restarts). Reads are plain `pread`s into fresh arrays rather than
a long-lived `np.memmap`: a mapping keeps every page it touched resident (and counted in the
process's RSS) until it is closed, so walking a 2-hour file through one would grow to the file.

(The input file itself is not held either when it is over `DecodeOptions.stream_input_bytes`:
decode_item hashes it in chunks and decodes it from the open file.)

Where the files live and when they go:
- `DecodePool` owns a folder `spill-<pid>-<random>/` under OUT's `.gemma4u/tmp` (a job) or
  the system temp folder, locked (flock) while the pool lives, removed when it closes;
  `cleanup_orphans` removes a folder whose lock is free (its process was killed).
- A worker names its files `<worker pid>-<n>.f32`; when the pool kills or replaces a worker
  (timeout, crash) it removes that worker's files.
- A decode that fails after spilling removes its file before it reports the error.
- The job removes an item's file once every unit (task) of the item is finished.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import lock_held
from ..errors import ItemError

__all__ = [
    "SPILL_SECONDS",
    "SpillDir",
    "SpillFile",
    "SpillWriter",
    "SpilledAudio",
    "Waveform",
    "remove_stale_spill_dirs",
]

SPILL_SECONDS = 300.0
"""Decoded audio longer than this (5 min: 19.2 MB of 16 kHz float32) goes to a spill file;
shorter audio, the common case, stays in memory (no disk round trip)."""

_DTYPE = np.dtype("<f4")
_LOCK = ".lock"
_PREFIX = "spill-"
_seq = itertools.count()


class SpillFile:
    """One spill file and how many units of its item still need it (set by the job)."""

    def __init__(self, path: str, num_samples: int) -> None:
        self.path = path
        self.num_samples = num_samples
        self.users = 0

    def hold(self, users: int) -> None:
        """The item became `users` units; with none, the file goes at once."""
        self.users = users
        if users <= 0:
            self.unlink()

    def release(self) -> None:
        """One unit is finished: the last one removes the file."""
        self.users -= 1
        if self.users <= 0:
            self.unlink()

    def unlink(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop) as a fresh float32 array (one pread, no mapping)."""
        out = np.empty(max(stop - start, 0), dtype=_DTYPE)
        if not len(out):
            return out.astype(np.float32, copy=False)
        fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            view, pos, off = out.data.cast("B"), 0, start * _DTYPE.itemsize
            while pos < len(view):
                got = os.preadv(fd, [view[pos:]], off + pos)
                if got <= 0:
                    raise OSError(errno.EIO, f"spill file {self.path} is shorter than expected")
                pos += got
        finally:
            os.close(fd)
        return out.astype(np.float32, copy=False)


class SpilledAudio:
    """A stretch [start, stop) of a spill file that behaves like a 1-D float32 array where
    the pipeline needs it: `len`, `size`, slicing (another stretch, nothing read) and
    `np.asarray` (reads exactly that stretch). Small and picklable: it crosses the pipe."""

    ndim = 1
    dtype = np.dtype(np.float32)

    def __init__(self, file: SpillFile, start: int = 0, stop: int | None = None) -> None:
        self.file = file
        self.start = start
        self.stop = file.num_samples if stop is None else stop

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def size(self) -> int:
        return len(self)

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def __getitem__(self, key: slice) -> SpilledAudio:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("spilled audio takes contiguous slices only")
        a, b, _ = key.indices(len(self))
        return SpilledAudio(self.file, self.start + a, self.start + max(a, b))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.file.read(self.start, self.stop)
        return out if dtype is None else out.astype(dtype, copy=False)


Waveform = np.ndarray | SpilledAudio
"""Decoded audio: in memory, or a stretch of a spill file."""


class SpillWriter:
    """Appends float32 samples to a new spill file in `folder`; a write error becomes the
    item's error (`disk_full` when the disk or quota is full) and removes the file."""

    def __init__(self, folder: str) -> None:
        self.path = os.path.join(folder, f"{os.getpid()}-{next(_seq)}.f32")
        self.count = 0
        try:
            self._fh = open(self.path, "xb", buffering=0)
        except OSError as exc:
            raise _spill_error(folder, exc) from exc

    def write(self, samples: np.ndarray) -> None:
        data = np.ascontiguousarray(samples, dtype=_DTYPE)
        try:
            view, pos = data.data.cast("B"), 0
            while pos < len(view):
                pos += self._fh.write(view[pos:]) or 0
        except OSError as exc:
            self.discard()
            raise _spill_error(os.path.dirname(self.path), exc) from exc
        self.count += len(data)

    def finish(self) -> SpilledAudio:
        self._fh.close()
        return SpilledAudio(SpillFile(self.path, self.count))

    def discard(self) -> None:
        self._fh.close()
        SpillFile(self.path, 0).unlink()


def _spill_error(folder: str, exc: OSError) -> ItemError:
    why = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return ItemError(
            "disk_full",
            f"no space to hold the decoded audio on disk ({why}) in {folder}: "
            "free space there (or lower --max-audio-seconds), then rerun with --retry-errors",
        )
    return ItemError("spill_failed", f"cannot write the decoded audio to {folder}: {why}")


class SpillDir:
    """A decode pool's own spill folder, locked while it lives (see module docstring)."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / f"{_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        self.path.mkdir()
        self._lock = open(self.path / _LOCK, "w")
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def remove_files_of(self, pid: int) -> None:
        """A killed worker's files (it cannot remove them itself)."""
        for path in self.path.glob(f"{pid}-*.f32"):
            path.unlink(missing_ok=True)

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self._lock.close()


def remove_stale_spill_dirs(root: Path) -> list[str]:
    """Spill folders under `root` whose pool is gone (their lock is free): removed."""
    removed = []
    for path in root.glob(f"{_PREFIX}*") if root.is_dir() else []:
        if path.is_dir() and not _alive(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed


def _alive(folder: Path) -> bool:
    """Whether the pool of this folder still holds its lock (a folder without its lock
    file counts as alive for a minute: its pool may be creating it right now)."""
    lock = folder / _LOCK
    try:
        if not lock.exists():
            return time.time() - folder.stat().st_mtime < 60.0
    except OSError:
        return False
    return lock_held(lock)
