"""Where things live under OUT: the table's data files, bookkeeping under `.gemma4u/`, JSONL and
transcripts in `__` folders that table readers skip.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

META_DIR = ".gemma4u"

# Folders under OUT that table readers skip: pyarrow (and so pandas) ignore names starting
# with "_" or ".", `datasets` ignores folders starting with "__" or ".". The table's data
# files sit directly under OUT; JSONL goes here when Parquet is the table (--format both).
JSONL_DIR = "__jsonl__"

TRANSCRIPTS_DIR = "__transcripts__"


def data_file_name(part: str, fmt: str, formats: tuple[str, ...] | list[str]) -> str:
    """A part's data file, relative to OUT: `<part>.<fmt>` directly under OUT (the table),
    JSONL under `__jsonl__/` when the part also has Parquet."""
    name = f"{part}.{fmt}"
    return f"{JSONL_DIR}/{name}" if fmt == "jsonl" and "parquet" in formats else name


@dataclass(frozen=True)
class OutLayout:
    """Where things live under OUT. The table's data files sit directly under OUT; JSONL
    next to Parquet (--format both) in `__jsonl__/`, transcripts in `__transcripts__/`."""

    root: Path

    @property
    def jsonl_dir(self) -> Path:
        return self.root / JSONL_DIR

    @property
    def transcripts(self) -> Path:
        return self.root / TRANSCRIPTS_DIR

    def data_dirs(self) -> list[Path]:
        """Folders that may hold data files (old OUTs: everything directly under OUT)."""
        return [self.root, self.jsonl_dir]

    @property
    def meta(self) -> Path:
        return self.root / META_DIR

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
        for d in (self.root, self.meta, self.tmp, self.commits, self.writers):
            d.mkdir(parents=True, exist_ok=True)
