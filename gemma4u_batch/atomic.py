"""Durable file operations: temp file → fsync → atomic rename → fsync of the folder."""

from __future__ import annotations

import fcntl
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(dest: Path, write: Callable[[BinaryIO], object], tmp_dir: Path | None = None) -> None:
    """Write via `write(fh)` into `<dest>.<pid>-<random>.incomplete` (in tmp_dir, or beside
    dest), then move into place.

    A reader never sees a half-written `dest`: before the rename it does not exist,
    after it the bytes are on disk. The temp name is unique, so writers racing for the
    same `dest` (shards writing run.json) never trip over each other's temp file.
    """
    tmp_dir = tmp_dir or dest.parent
    tmp = tmp_dir / f"{dest.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.incomplete"
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)


def write_json_atomic(dest: Path, obj: Any, tmp_dir: Path | None = None) -> None:
    payload = (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()
    write_atomic(dest, lambda fh: fh.write(payload), tmp_dir)


def lock_held(path: Path) -> bool:
    """Whether some process holds a flock on `path` (locks die with their process)."""
    try:
        fh = open(path, "a")
    except OSError:
        return False
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False
