"""Durable file operations: temp file → fsync → atomic rename → fsync of the folder."""

from __future__ import annotations

import json
import os
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
    """Write via `write(fh)` into `<dest>.incomplete` (or tmp_dir), then move into place.

    A reader never sees a half-written `dest`: before the rename it does not exist,
    after it the bytes are on disk.
    """
    tmp_dir = tmp_dir or dest.parent
    tmp = tmp_dir / (dest.name + ".incomplete")
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
