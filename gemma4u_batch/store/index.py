"""OUT's index: the current record of every (id, task) and the input files' quick check.

A cache kept in `.gemma4u/index.sqlite`, never the truth: the truth is the data files
and their commit markers. A part is ingested only after its marker is durable, so a
kill can leave the index behind the markers but never ahead; every open catches up
(`sync`). A missing, corrupt or other-version index is rebuilt from the markers.

`records` answers "is this item done with this key?" with one indexed lookup, so
resume, `status` and the Ray driver never re-read every record, and memory does not
grow with OUT. `files` is git's index / rsync's quick check: an input file whose
(size, mtime_ns, inode, device) match what was hashed is known by its hash without
being opened — unless it was modified within `RACY_NS` of being hashed (git's "racy
clean" case: a rewrite in the same timestamp tick would go unseen), then it is read.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..records import ObjectStat
from .layout import OutLayout
from .writer import effective_parts, iter_part_records

log = logging.getLogger(__name__)

VERSION = 2
SYNC_ATTEMPTS = 5
RACY_NS = 2_000_000_000  # coarse filesystems keep 1-2 s timestamps
INDEX_COLUMNS = ("id", "task", "key", "error", "error_kind")

_REMOTE = """CREATE TABLE IF NOT EXISTS remote (
    url TEXT PRIMARY KEY, etag TEXT, version TEXT, size INTEGER, mtime_ns INTEGER, last_modified TEXT,
    sha256 TEXT, has_audio INTEGER) WITHOUT ROWID;"""
"""Remote inputs' quick check: a URL's listing facts (or its last fetch's validators) and the
sha256 its bytes had. Added beside version 2's tables when missing (no rebuild needed)."""

_SCHEMA = f"""
BEGIN;
CREATE TABLE parts (part TEXT PRIMARY KEY, committed_at REAL, records INTEGER, writer TEXT) WITHOUT ROWID;
CREATE TABLE records (
    id TEXT, task TEXT, key TEXT, failed INTEGER, error_kind TEXT,
    part TEXT, row INTEGER, committed_at REAL,
    PRIMARY KEY (id, task)) WITHOUT ROWID;
CREATE INDEX records_part ON records (part);
CREATE TABLE files (
    path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, ino INTEGER, dev INTEGER,
    sha256 TEXT, has_audio INTEGER, hashed_at_ns INTEGER) WITHOUT ROWID;
CREATE TABLE prompts (digest TEXT PRIMARY KEY, rendered TEXT) WITHOUT ROWID;
{_REMOTE}
PRAGMA user_version = {VERSION};
COMMIT;
"""

_UPSERT = """
INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id, task) DO UPDATE SET
    key = excluded.key, failed = excluded.failed, error_kind = excluded.error_kind,
    part = excluded.part, row = excluded.row, committed_at = excluded.committed_at
WHERE (excluded.committed_at, excluded.part, excluded.row) >= (records.committed_at, records.part, records.row)
"""


_REHOME = """
INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id, task) DO UPDATE SET part = excluded.part, row = excluded.row, committed_at = excluded.committed_at
WHERE records.part IN (SELECT part FROM _replaced)
"""


@dataclass(frozen=True)
class FileStat:
    """What the quick check compares: an unchanged file keeps all four."""

    size: int
    mtime_ns: int
    ino: int
    dev: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileStat:
        return cls(st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


@dataclass(frozen=True)
class FileFacts:
    """What hashing and decoding an input file told us, valid while its stat is unchanged.
    `has_audio`: a video's soundtrack was decoded (None: not asked for, so unknown)."""

    sha256: str
    has_audio: bool | None


def index_path(layout: OutLayout) -> Path:
    """Beside the data for a local OUT; for an object-store OUT a local cache of it, under
    $XDG_CACHE_HOME/gemma4u/out/ (else ~/.cache/...), keyed by OUT's URL."""
    if layout.is_local:
        return layout.meta / "index.sqlite"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gemma4u" / "out"
    digest = hashlib.sha256(str(layout.root).rstrip("/").encode()).hexdigest()[:24]
    folder = base / digest
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "index.sqlite"


class OutIndex:
    """`with OutIndex(layout) as idx:` — opened, caught up with the markers."""

    def __init__(self, layout: OutLayout) -> None:
        self.layout = layout
        self.path = index_path(layout)
        self._db: sqlite3.Connection | None = None
        self._pending_files: list[tuple[Any, ...]] = []
        self._pending_prompts: list[tuple[str, str]] = []
        self._pending_remote: list[tuple[Any, ...]] = []
        self._recovering = False

    # ------------------------------------------------------------------ open / sync

    def open(self) -> OutIndex:
        try:
            self._db = self._connect()
            self.sync()
        except sqlite3.DatabaseError as exc:  # corrupt, or OUT is read-only or full: a cache, so start over
            log.info("rebuilding %s (%s)", self.path, exc)
            self._recover()
        return self

    def _recover(self) -> None:
        """Start over from the markers; in memory if OUT cannot hold the index."""
        self._recovering = True
        try:
            self._rebuild()
        except (sqlite3.DatabaseError, OSError) as again:
            log.info("index in memory (%s)", again)
            self._close_db()
            self._db = sqlite3.connect(":memory:", isolation_level=None)
            self._db.executescript(_SCHEMA)
            self.sync()
        finally:
            self._recovering = False

    def _damaged(self, exc: sqlite3.DatabaseError) -> bool:
        """A damaged page the open did not touch (SQLite finds it when a query reaches it):
        rebuild from the markers, and say whether the caller may go on (False while
        rebuilding already, or for other errors: busy, read-only, full)."""
        name = getattr(exc, "sqlite_errorname", "")
        if self._recovering or not (name.startswith("SQLITE_CORRUPT") or name == "SQLITE_NOTADB"):
            return False
        log.warning("gemma4u: %s is damaged (%s); rebuilding it from the data", self.path, exc)
        self._recover()
        return True

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """A read's rows; read again once the index was rebuilt if it turned out damaged."""
        try:
            return self.db.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            if not self._damaged(exc):
                raise
            return self.db.execute(sql, params).fetchall()

    def _rows_in(self, select_where: str, values: Sequence[Any]) -> Iterator[Any]:
        """Rows of `select_where` + ` IN (…)` over `values`, 500 at a time (SQLite's variable limit)."""
        for start in range(0, len(values), 500):
            part = list(values[start : start + 500])
            yield from self._rows(f"{select_where} IN ({','.join('?' * len(part))})", part)

    def _close_db(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        db.execute("PRAGMA synchronous = NORMAL")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if version == VERSION and not {"parts", "records", "files", "prompts"} <= tables:
            raise sqlite3.DatabaseError("index tables missing")
        if version != VERSION:
            tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if tables:  # another version's index: ours is rebuilt, never trusted
                db.close()
                self._unlink()
                db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
                db.execute("PRAGMA synchronous = NORMAL")
            db.executescript(_SCHEMA)
        db.execute(_REMOTE)  # an index made before remote inputs gains its table
        return db

    def _unlink(self) -> None:
        for suffix in ("", "-journal", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    def _rebuild(self) -> None:
        self._close_db()
        self._unlink()
        self._db = self._connect()
        self.sync()

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("OutIndex is not open")
        return self._db

    def sync(self) -> None:
        """Catch up with the commit markers: ingest parts not seen yet, forget parts that
        compaction replaced. A part that vanished any other way means OUT changed under
        us (wiped, files deleted by hand): rebuild. A part whose data file is gone by the time
        it is read was replaced by a compaction running meanwhile (a shard's, or a Ray
        replica's, while the driver follows progress): look at the markers again."""
        for attempt in range(SYNC_ATTEMPTS):
            try:
                self._sync_once()
                return
            except FileNotFoundError:
                if attempt == SYNC_ATTEMPTS - 1:
                    raise
                log.info("a part was replaced while it was read; reading OUT's markers again")

    def _sync_once(self) -> None:
        parts, replaced = effective_parts(self.layout)
        known = {row[0] for row in self._rows("SELECT part FROM parts")}
        names = {p["part"] for p in parts}
        gone = known - names
        if gone - replaced:
            self._rebuild_from(parts)
            return
        for part in parts:
            if part["part"] in known:
                continue
            if part.get("replaces"):
                self.ingest_compacted(part, self.layout)
            else:
                self.ingest(part, iter_part_records(self.layout, part, INDEX_COLUMNS))
        if gone:
            with self._tx():
                self.db.executemany("DELETE FROM parts WHERE part = ?", [(g,) for g in gone])

    def _rebuild_from(self, parts: list[dict[str, Any]]) -> None:
        with self._tx():
            self.db.execute("DELETE FROM parts")
            self.db.execute("DELETE FROM records")
        for part in parts:
            self.ingest(part, iter_part_records(self.layout, part, INDEX_COLUMNS))

    def close(self) -> None:
        if self._db is not None:
            try:
                self.flush_files()
            except sqlite3.Error as exc:  # hints only: the next run reads those files again
                log.info("file cache not saved: %s", exc)
            self._close_db()

    def __enter__(self) -> OutIndex:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[None]:
        """A write transaction. On a damaged index it is rebuilt from the markers instead: every
        write follows a durable marker (or is a hint), so the rebuilt index holds it."""
        try:
            with _Transaction(self.db):
                yield
        except sqlite3.DatabaseError as exc:
            if not self._damaged(exc):
                raise

    # ---------------------------------------------------------------------- records

    def ingest(self, part: dict[str, Any], records: Iterable[dict[str, Any]]) -> None:
        """Add a committed part's records (call only once its marker is durable)."""
        name, at = part["part"], float(part.get("committed_at", 0.0))
        rows = (
            (r["id"], r["task"], r["key"], int(r["error"] is not None), r.get("error_kind"), name, i, at)
            for i, r in enumerate(records)
        )
        with self._tx():
            self.db.executemany(_UPSERT, rows)
            self.db.execute(
                "INSERT OR REPLACE INTO parts VALUES (?, ?, ?, ?)", (name, at, part["records"], part.get("writer"))
            )

    def ingest_compacted(self, marker: dict[str, Any], layout: OutLayout) -> None:
        """A compacted part: its records move there from the parts it replaces (a record
        that a later part superseded in the meantime stays where it is)."""
        replaced = list(marker.get("replaces", ()))
        name, at = marker["part"], float(marker.get("committed_at", 0.0))
        with self._tx():
            self.db.execute("CREATE TEMP TABLE IF NOT EXISTS _replaced (part TEXT PRIMARY KEY)")
            self.db.execute("DELETE FROM _replaced")
            self.db.executemany("INSERT OR IGNORE INTO _replaced VALUES (?)", [(r,) for r in replaced])
            for i, r in enumerate(iter_part_records(layout, marker, INDEX_COLUMNS)):
                failed = int(r["error"] is not None)
                self.db.execute(_REHOME, (r["id"], r["task"], r["key"], failed, r.get("error_kind"), name, i, at))
            self.db.executemany("DELETE FROM parts WHERE part = ?", [(r,) for r in replaced])
            self.db.execute(
                "INSERT OR REPLACE INTO parts VALUES (?, ?, ?, ?)", (name, at, marker["records"], marker.get("writer"))
            )

    def get_many(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[str, bool]]:
        """`get` for many (id, task) pairs in one query."""
        ids = sorted({i for i, _ in pairs})
        rows = self._rows_in("SELECT id, task, key, failed FROM records WHERE id", ids)
        return {(r[0], r[1]): (r[2], bool(r[3])) for r in rows}

    def get(self, id: str, task: str) -> tuple[str, bool] | None:
        """(key, failed) of the current record of (id, task), or None."""
        rows = self._rows("SELECT key, failed FROM records WHERE id = ? AND task = ?", (id, task))
        return (rows[0][0], bool(rows[0][1])) if rows else None

    def current_rows(self, part: str) -> set[int]:
        """Rows of a part that hold current records."""
        return {r[0] for r in self._rows("SELECT row FROM records WHERE part = ?", (part,))}

    def has_id(self, id: str) -> bool:
        """Whether any task of `id` has a current record (one indexed lookup)."""
        return bool(self._rows("SELECT 1 FROM records WHERE id = ? LIMIT 1", (id,)))

    def totals(self) -> dict[str, Any]:
        """Counts for `status`: current records, errors by kind, committed, parts, writers."""
        [(records, errors)] = self._rows("SELECT count(*), coalesce(sum(failed), 0) FROM records")
        kinds = self._rows(
            "SELECT coalesce(error_kind, 'error'), count(*) FROM records WHERE failed GROUP BY 1 ORDER BY 1"
        )
        [(committed, n_parts, first, last)] = self._rows(
            "SELECT coalesce(sum(records), 0), count(*), min(committed_at), max(committed_at) FROM parts"
        )
        writers = sorted({w or "?" for (w,) in self._rows("SELECT DISTINCT writer FROM parts")})
        return {
            "records": records,
            "errors": errors,
            "errors_by_kind": dict(kinds),
            "committed": committed,
            "parts": n_parts,
            "first_commit": first,
            "last_commit": last,
            "writers": writers,
        }

    def commit_times(self) -> list[tuple[float, int]]:
        """(committed_at, records) of every part, in commit order (the report's timeline)."""
        rows = self._rows("SELECT committed_at, records FROM parts ORDER BY committed_at, part")
        return [(float(at or 0.0), int(n or 0)) for at, n in rows]

    # ------------------------------------------------------------------------ files

    def file_facts_many(self, stats: dict[str, FileStat]) -> dict[str, FileFacts]:
        """The hashes of the input files whose stat shows them unchanged since they were read."""
        out: dict[str, FileFacts] = {}
        q = "SELECT path, size, mtime_ns, ino, dev, sha256, has_audio, hashed_at_ns FROM files WHERE path"
        for row in self._rows_in(q, list(stats)):
            st = stats[row[0]]
            if FileStat(*row[1:5]) != st:
                continue
            if st.mtime_ns + RACY_NS >= row[7]:  # modified too close to being read: can't trust the stat
                continue
            out[row[0]] = FileFacts(row[5], None if row[6] is None else bool(row[6]))
        return out

    def remember_file(self, path: str, st: FileStat, facts: FileFacts, hashed_at_ns: int) -> None:
        """Queue a file's facts; written with the next flush (a hint: losing it costs a read)."""
        self._pending_files.append(
            (path, st.size, st.mtime_ns, st.ino, st.dev, facts.sha256, facts.has_audio, hashed_at_ns)
        )

    def remote_facts_many(self, urls: list[str]) -> dict[str, tuple[ObjectStat, FileFacts]]:
        """What OUT knows of each URL: the listing's facts (or the last fetch's validators) and the
        hash of its bytes then."""
        q = "SELECT url, etag, version, size, mtime_ns, last_modified, sha256, has_audio FROM remote WHERE url"
        return {
            row[0]: (ObjectStat(*row[1:6]), FileFacts(row[6], None if row[7] is None else bool(row[7])))
            for row in self._rows_in(q, urls)
        }

    def remember_remote(self, url: str, stat: ObjectStat, facts: FileFacts) -> None:
        """Queue a URL's facts; written with the next flush (a hint: losing it costs a fetch)."""
        self._pending_remote.append(
            (url, stat.etag, stat.version, stat.size, stat.mtime_ns, stat.last_modified, facts.sha256, facts.has_audio)
        )

    def flush_files(self) -> None:
        """Write the queued file facts, remote facts and rendered prompts."""
        if not (self._pending_files or self._pending_prompts or self._pending_remote) or self._db is None:
            return
        with self._tx():
            self.db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?)", self._pending_files)
            self.db.executemany("INSERT OR REPLACE INTO prompts VALUES (?, ?)", self._pending_prompts)
            self.db.executemany("INSERT OR REPLACE INTO remote VALUES (?, ?, ?, ?, ?, ?, ?, ?)", self._pending_remote)
        self._pending_files.clear()
        self._pending_prompts.clear()
        self._pending_remote.clear()

    # ---------------------------------------------------------------------- prompts

    def rendered_prompt(self, digest: str) -> str | None:
        """A chat prompt rendered by an earlier run (digest: model fingerprint + messages),
        so a rerun with nothing to do never loads the tokenizer."""
        rows = self._rows("SELECT rendered FROM prompts WHERE digest = ?", (digest,))
        return rows[0][0] if rows else None

    def remember_prompt(self, digest: str, rendered: str) -> None:
        self._pending_prompts.append((digest, rendered))


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT (ROLLBACK on error): one writer at a time, all or nothing."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.db.execute("COMMIT")
        elif self.db.in_transaction:  # SQLite may already have rolled back (disk full)
            self.db.execute("ROLLBACK")
