"""Where things live under OUT: the table's data files, bookkeeping under `.gemma4u/`, JSONL and
transcripts in `__` folders that table readers skip. OUT is a local folder or an object-store
URL; the names below (relative to OUT, `/`-separated) are the same in both, read and written
through `OutLayout.files`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from .objects import OutFiles, out_files

META_DIR = ".gemma4u"
COMMITS = f"{META_DIR}/commits"
WRITERS = f"{META_DIR}/writers"
LOCKS = f"{META_DIR}/locks"
RUN_MANIFEST = f"{META_DIR}/run.json"
COMPLETE = f"{META_DIR}/complete.json"
SHARDS = f"{META_DIR}/shards"
STOP = f"{META_DIR}/stop"
"""A Ray driver asks its replicas to commit what finished and return by creating it."""
INPUTS = f"{META_DIR}/inputs.json"
"""What the last run that walked the whole input found: current records whose input is gone."""

# Folders under OUT that table readers skip: pyarrow (and so pandas) ignore names starting
# with "_" or ".", `datasets` ignores folders starting with "__" or ".". The table's data
# files sit directly under OUT; JSONL goes here when Parquet is the table (--format both).
JSONL_DIR = "__jsonl__"
TOMBSTONES_DIR = "__tombstones__"
"""Tombstone parts (--prune), JSONL only: current records of their (id, task), never in the table."""
DATA_DIRS = ("", JSONL_DIR, TOMBSTONES_DIR)
"""Where data files may be, relative to OUT (old OUTs: everything directly under OUT)."""

TRANSCRIPTS_DIR = "__transcripts__"


def data_file_name(part: str, fmt: str, formats: tuple[str, ...] | list[str]) -> str:
    """A part's data file, relative to OUT: `<part>.<fmt>` directly under OUT (the table),
    JSONL under `__jsonl__/` when the part also has Parquet."""
    name = f"{part}.{fmt}"
    return f"{JSONL_DIR}/{name}" if fmt == "jsonl" and "parquet" in formats else name


def tombstone_file_name(part: str) -> str:
    """A tombstone part's one data file: JSONL under `__tombstones__/`, which table readers skip."""
    return f"{TOMBSTONES_DIR}/{part}.jsonl"


def is_tombstone_part(part: dict[str, Any]) -> bool:
    """Whether a committed part (its marker) holds tombstones: its files are under `__tombstones__/`."""
    files = part.get("files") or ()
    return bool(files) and all(f.startswith(f"{TOMBSTONES_DIR}/") for f in files)


@dataclass(frozen=True)
class OutLayout:
    """Where things live under OUT. The table's data files sit directly under OUT; JSONL
    next to Parquet (--format both) in `__jsonl__/`, transcripts in `__transcripts__/`."""

    root: Path | str

    @cached_property
    def files(self) -> OutFiles:
        """OUT's files, wherever OUT is (the one way to read and write them on an object store)."""
        return out_files(self.root)

    @property
    def is_local(self) -> bool:
        return isinstance(self.root, Path)

    @property
    def where(self) -> str:
        """OUT as messages show it."""
        return self.files.where

    @property
    def folder(self) -> Path:
        """OUT as a local folder (what only a local OUT has: flocks, the index beside the data)."""
        if not isinstance(self.root, Path):
            raise TypeError(f"{self.where} is not a local folder")
        return self.root

    def made(self) -> bool:
        """Whether OUT holds a gemma4u job's bookkeeping (a run manifest or a commit)."""
        if self.is_local:
            return self.meta.is_dir()
        return self.files.exists(RUN_MANIFEST) or bool(self.files.list(COMMITS))

    def read_json(self, name: str) -> dict[str, Any] | None:
        """A bookkeeping file's JSON object; None when it is missing or unreadable."""
        try:
            obj = json.loads(self.files.read(name))
        except (OSError, ValueError):
            return None
        return obj if isinstance(obj, dict) else None

    @property
    def jsonl_dir(self) -> Path:
        return self.folder / JSONL_DIR

    @property
    def transcripts(self) -> Path:
        return self.folder / TRANSCRIPTS_DIR

    def data_dirs(self) -> list[Path]:
        """Folders that may hold data files (old OUTs: everything directly under OUT)."""
        return [self.folder, self.jsonl_dir]

    @property
    def meta(self) -> Path:
        return self.folder / META_DIR

    @property
    def tmp(self) -> Path:
        return self.meta / "tmp"

    @property
    def commits(self) -> Path:
        return self.meta / "commits"

    @property
    def writers(self) -> Path:
        return self.meta / "writers"

    @property
    def run_manifest(self) -> Path:
        return self.meta / "run.json"

    @property
    def complete_marker(self) -> Path:
        return self.meta / "complete.json"

    def ensure(self) -> None:
        """A local OUT's folders (an object store has none to make)."""
        if self.is_local:
            for d in (self.folder, self.meta, self.tmp, self.commits, self.writers):
                d.mkdir(parents=True, exist_ok=True)


def unreachable(layout: OutLayout) -> str | None:
    """Why an object-store OUT cannot be used (the scheme's extra missing, no credentials, no
    bucket, the store unreachable), as one line; None when listing its bookkeeping works."""
    from ..errors import UsageError
    from .objects import ObjectFiles

    try:
        files = layout.files
        if isinstance(files, ObjectFiles):
            files.probe()
    except FileNotFoundError as exc:
        if "no bucket" in str(exc):
            return f"cannot use {layout.where} as OUT: {exc}"
    except UsageError as exc:
        return str(exc)
    except Exception as exc:  # the store's own errors: credentials, permissions, endpoint, network
        return f"cannot use {layout.where} as OUT: {type(exc).__name__}: {exc}"
    return None
