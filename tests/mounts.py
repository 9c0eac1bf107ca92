"""Small filesystems for the full-disk and read-only tests: a tmpfs mounted for one block."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` at `path` for the block, unmounted after it even when the test fails;
    the test is skipped where mounting is not allowed (it needs root)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root; root ignores chmod, so a mount is the only way)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def read_only(path: Path) -> None:
    """Remount the tmpfs at `path` read-only."""
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)


def fill_up(mnt: Path) -> None:
    """Take every free byte of the filesystem at `mnt`."""
    fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        with contextlib.suppress(OSError):  # until ENOSPC
            while os.write(fd, b"\0" * 4096):
                pass
    finally:
        os.close(fd)
