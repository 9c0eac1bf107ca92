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
import json
import logging
import operator
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ..records import ObjectStat
from .layout import OutLayout
from .writer import effective_parts, iter_part_records

log = logging.getLogger(__name__)

VERSION = 3
SYNC_ATTEMPTS = 5
RACY_NS = 2_000_000_000  # coarse filesystems keep 1-2 s timestamps
RANGE_SLACK = 4  # a range scan may read this many rows per value asked for before it gives up
RANGE_BACKOFF = 16
INDEX_COLUMNS = ("id", "task", "key", "error", "error_kind", "model_fingerprint", "tombstone", "reused_from")

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
    fingerprint TEXT, tombstone INTEGER NOT NULL DEFAULT 0, reused INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (id, task)) WITHOUT ROWID;
CREATE INDEX records_part ON records (part);
CREATE INDEX records_key ON records (key);
CREATE TABLE files (
    path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, ino INTEGER, dev INTEGER,
    sha256 TEXT, has_audio INTEGER, hashed_at_ns INTEGER) WITHOUT ROWID;
CREATE INDEX files_inode ON files (dev, ino);
CREATE INDEX files_size ON files (size);
CREATE TABLE prompts (digest TEXT PRIMARY KEY, rendered TEXT) WITHOUT ROWID;
{_REMOTE}
PRAGMA user_version = {VERSION};
COMMIT;
"""

_FROM_2 = f"""
BEGIN;
ALTER TABLE records ADD COLUMN fingerprint TEXT;
ALTER TABLE records ADD COLUMN tombstone INTEGER NOT NULL DEFAULT 0;
ALTER TABLE records ADD COLUMN reused INTEGER NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS records_key ON records (key);
CREATE INDEX IF NOT EXISTS files_inode ON files (dev, ino);
CREATE INDEX IF NOT EXISTS files_size ON files (size);
PRAGMA user_version = {VERSION};
COMMIT;
"""
"""Version 2 → 3: records made before had no fingerprint, tombstone or copy, so the columns'
defaults are what a rebuild would give them; the input files' quick check is kept."""

_UPSERT = """
INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id, task) DO UPDATE SET
    key = excluded.key, failed = excluded.failed, error_kind = excluded.error_kind,
    part = excluded.part, row = excluded.row, committed_at = excluded.committed_at,
    fingerprint = excluded.fingerprint, tombstone = excluded.tombstone, reused = excluded.reused
WHERE (excluded.committed_at, excluded.part, excluded.row) >= (records.committed_at, records.part, records.row)
"""


_REHOME = """
INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id, task) DO UPDATE SET part = excluded.part, row = excluded.row, committed_at = excluded.committed_at
WHERE records.part IN (SELECT part FROM _replaced)
"""


def _index_row(r: dict[str, Any], part: str, row: int, at: float) -> tuple[Any, ...]:
    """A record's row in `records`: what lookups, status and reuse need, and where it lives."""
    failed = int(r["error"] is not None)
    return (
        r["id"],
        r["task"],
        r["key"],
        failed,
        r.get("error_kind"),
        part,
        row,
        at,
        r.get("model_fingerprint"),
        int(bool(r.get("tombstone"))),
        int(r.get("reused_from") is not None),
    )


@dataclass(frozen=True)
class RecordAt:
    """Where a current record lives: its (id, task) and its row in a committed part."""

    id: str
    task: str
    part: str
    row: int


class FileStat(NamedTuple):
    """What the quick check compares: an unchanged file keeps all four. (A tuple: a no-op
    rerun makes one per input file.)"""

    size: int
    mtime_ns: int
    ino: int
    dev: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileStat:
        return tuple.__new__(cls, _STAT_FIELDS(st))


_STAT_FIELDS = operator.attrgetter("st_size", "st_mtime_ns", "st_ino", "st_dev")  # FileStat's, in C


class FileFacts(NamedTuple):
    """What hashing and decoding an input file told us, valid while its stat is unchanged.
    `has_audio`: a video's soundtrack was decoded (None: not asked for, so unknown)."""

    sha256: str
    has_audio: bool | None


_new_facts = tuple.__new__  # FileFacts, FileStat without NamedTuple's Python-level __new__ (one per input file)
_AUDIO = {None: None, 0: False, 1: True}  # has_audio as stored → as FileFacts has it


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
        self._lookups_left = 0  # chunks to look up value by value before a range scan is tried again

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

    def _rows_in(self, select_where: str, values: Sequence[Any], args: tuple[Any, ...] = ()) -> Iterator[Any]:
        """Rows of `select_where` + ` IN (…)` over `values`, 500 at a time (SQLite's variable
        limit); `args` are the values of the `?` before."""
        for start in range(0, len(values), 500):
            part = list(values[start : start + 500])
            yield from self._rows(f"{select_where} IN ({','.join('?' * len(part))})", [*args, *part])

    def _rows_of(
        self, select: str, column: str, values: Sequence[str], where: str = "", args: tuple[Any, ...] = ()
    ) -> Iterable[Any]:
        """Rows of `select` whose `column` (the first selected) is one of `values`. A chunk of a
        folder's walk is a narrow run of neighbouring keys: one range scan along the b-tree's
        leaves costs a fraction of a lookup per value. The scan stops after `RANGE_SLACK` × as
        many rows as asked for (the values are scattered: a manifest's rows, a link's target):
        then, and for a few chunks after, each value is looked up."""
        if self._lookups_left > 0 or len(values) < 8:
            self._lookups_left = max(0, self._lookups_left - 1)
            return self._rows_in(f"{select} WHERE {where}{column}", values, args)
        wanted = set(values)
        limit = RANGE_SLACK * len(wanted) + 64
        between = (*args, min(wanted), max(wanted), limit)
        rows = self._rows(f"{select} WHERE {where}{column} BETWEEN ? AND ? LIMIT ?", between)
        if len(rows) < limit:
            return [r for r in rows if r[0] in wanted]
        self._lookups_left = RANGE_BACKOFF
        return self._rows_in(f"{select} WHERE {where}{column}", values, args)

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
        if version == 2 and {"parts", "records", "files", "prompts"} <= tables:
            db.executescript(_FROM_2)  # keeps the file cache: a rebuild would read every input again
            version = VERSION
        if version != VERSION:
            tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if tables:  # another version's index: ours is rebuilt, never trusted
                db.close()
                self._unlink()
                db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
                db.execute("PRAGMA synchronous = NORMAL")
            db.executescript(_SCHEMA)
        db.execute(_REMOTE)  # an index made before remote inputs gains its table
        db.execute("CREATE INDEX IF NOT EXISTS files_size ON files (size)")
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
        rows = (_index_row(r, name, i, at) for i, r in enumerate(records))
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
                self.db.execute(_REHOME, _index_row(r, name, i, at))
            self.db.executemany("DELETE FROM parts WHERE part = ?", [(r,) for r in replaced])
            self.db.execute(
                "INSERT OR REPLACE INTO parts VALUES (?, ?, ?, ?)", (name, at, marker["records"], marker.get("writer"))
            )

    def get_many(self, ids: Sequence[str]) -> dict[tuple[str, str], tuple[str, bool, bool]]:
        """`get` for every task of many ids in one query."""
        rows = self._rows_of("SELECT id, task, key, failed, tombstone FROM records", "id", ids)
        return {(r[0], r[1]): (r[2], r[3] == 1, r[4] == 1) for r in rows}

    def usable_keys(self, ids: Sequence[str], tasks: Sequence[str], retry_errors: bool) -> dict[str, dict[str, str]]:
        """task → id → key of the current record of each of `ids`, for each of `tasks`: the
        records an input may be done by (no tombstone; no error under --retry-errors). Two
        columns a row, made into a dict in C: a no-op rerun asks this of every input."""
        where = "task = ? AND NOT tombstone AND " + ("failed = 0 AND " if retry_errors else "")
        return {t: dict(self._rows_of("SELECT id, key FROM records", "id", ids, where, (t,))) for t in tasks}

    def get(self, id: str, task: str) -> tuple[str, bool, bool] | None:
        """(key, failed, tombstone) of the current record of (id, task), or None. A tombstone is
        no result (its input was gone, so an input by that id is new work), but it is what the
        input's next record supersedes."""
        rows = self._rows("SELECT key, failed, tombstone FROM records WHERE id = ? AND task = ?", (id, task))
        return (rows[0][0], rows[0][1] == 1, rows[0][2] == 1) if rows else None

    def sources_of(self, keys: Sequence[str]) -> dict[str, RecordAt]:
        """For each key, a current result made with it under any id (no error, no tombstone): what
        an input with that content, prompt and settings can copy instead of being generated.
        The smallest id when several have it, so every run picks the same one."""
        q = "SELECT key, id, task, part, row FROM records WHERE failed = 0 AND NOT coalesce(tombstone, 0) AND key"
        found: dict[str, RecordAt] = {}
        for key, id, task, part, row in sorted(self._rows_in(q, sorted(set(keys))), key=lambda r: (r[0], r[1])):
            found.setdefault(key, RecordAt(id, task, part, row))
        return found

    def current_rows(self, part: str, tombstones: bool = True) -> set[int]:
        """Rows of a part that hold current records (tombstones among them unless `tombstones` is False)."""
        q = "SELECT row FROM records WHERE part = ?" + ("" if tombstones else " AND NOT tombstone")
        return {r[0] for r in self._rows(q, (part,))}

    def current_count(self, part: str) -> int:
        """How many rows of a part hold current records."""
        return int(self._rows("SELECT count(*) FROM records WHERE part = ?", (part,))[0][0])

    def has_id(self, id: str) -> bool:
        """Whether any task of `id` has a current record (one indexed lookup)."""
        return bool(self._rows("SELECT 1 FROM records WHERE id = ? LIMIT 1", (id,)))

    def totals(self) -> dict[str, Any]:
        """Counts for `status`: current records, errors by kind, copies, tombstones, records by
        model, committed, parts, writers. One pass over the records; errors by kind and records
        by model take another only when there are errors, or records of more than one model."""
        [(everything, errors, tombstones, reused, low, high, fingerprinted)] = self._rows(
            "SELECT count(*), coalesce(sum(failed), 0), coalesce(sum(tombstone), 0), coalesce(sum(reused), 0), "
            "min(fingerprint), max(fingerprint), count(fingerprint) FROM records"
        )
        records = everything - tombstones  # tombstones are no results (their error is null)
        kinds: dict[str, int] = {}
        if errors:
            q = "SELECT coalesce(error_kind, 'error'), count(*) FROM records WHERE failed GROUP BY 1 ORDER BY 1"
            kinds = dict(self._rows(q))
        by_model: dict[str | None, int] = {}
        if low == high and fingerprinted in (0, everything):  # one model (or none recorded): no second pass
            by_model = {low: records} if records else {}
        else:
            q = "SELECT fingerprint, count(*) FROM records WHERE NOT tombstone GROUP BY 1 ORDER BY 1"
            by_model = {fp: int(n) for fp, n in self._rows(q)}
        [(committed, n_parts, first, last)] = self._rows(
            "SELECT coalesce(sum(records), 0), count(*), min(committed_at), max(committed_at) FROM parts"
        )
        writers = sorted({w or "?" for (w,) in self._rows("SELECT DISTINCT writer FROM parts")})
        return {
            "records": records,
            "errors": errors,
            "reused": reused,
            "tombstones": tombstones,
            "errors_by_kind": kinds,
            "by_model": by_model,
            "committed": committed,
            "parts": n_parts,
            "first_commit": first,
            "last_commit": last,
            "writers": writers,
        }

    def committed_since(self, t: float) -> int:
        """Records in the parts committed at or after `t` (a running job's own, before compaction)."""
        [(n,)] = self._rows("SELECT coalesce(sum(records), 0) FROM parts WHERE committed_at >= ?", (t,))
        return int(n)

    # ------------------------------------------------------------------ input walk

    def walk_begin(self) -> None:
        """A walk over the whole input starts: the ids it sees go into a temp table (SQLite keeps it
        in its temp store, paged out to a file, so memory stays flat however large the input)."""
        self.db.execute("CREATE TEMP TABLE IF NOT EXISTS _walked (id TEXT PRIMARY KEY) WITHOUT ROWID")
        self.db.execute("DELETE FROM _walked")

    def walk_saw(self, ids: Sequence[str]) -> None:
        """Ids the walk met: one statement per chunk, the ids as one JSON array (SQLite's json_each
        unpacks it in C: a third of what a row per id through executemany costs)."""
        self.db.execute(
            "INSERT OR IGNORE INTO temp._walked SELECT value FROM json_each(?)", (json.dumps(ids, ensure_ascii=False),)
        )

    _GONE = "FROM records WHERE NOT tombstone AND id NOT IN (SELECT id FROM temp._walked)"

    def walk_missing(self) -> int:
        """Current records (tombstones aside) whose id the walk did not meet: their input is gone."""
        [(n,)] = self._rows(f"SELECT count(*) {self._GONE}")
        return int(n)

    def walk_missing_parts(self) -> list[str]:
        """The parts holding those records, in order."""
        return [r[0] for r in self._rows(f"SELECT DISTINCT part {self._GONE} ORDER BY part")]

    def walk_missing_rows(self, part: str) -> dict[int, tuple[str, str]]:
        """Row → (id, task) of those records in one part."""
        rows = self._rows(f"SELECT row, id, task {self._GONE} AND part = ?", (part,))
        return {r[0]: (r[1], r[2]) for r in rows}

    def walk_end(self) -> None:
        """Forget the walk's ids."""
        self.db.execute("DROP TABLE IF EXISTS temp._walked")

    def commit_times(self) -> list[tuple[float, int]]:
        """(committed_at, records) of every part, in commit order (the report's timeline)."""
        rows = self._rows("SELECT committed_at, records FROM parts ORDER BY committed_at, part")
        return [(float(at or 0.0), int(n or 0)) for at, n in rows]

    # ------------------------------------------------------------------------ files

    def unchanged_files(
        self, paths: Sequence[str], racy: set[str] | None = None
    ) -> tuple[dict[str, FileFacts], dict[str, FileStat]]:
        """`stat` each of `paths` (absolute) against what OUT saw when it read it (git's index):
        the facts of the files unchanged since, and the stat of the others (new, changed, moved
        here; racy: unchanged but modified too close to their read to vouch, also put in `racy`).
        A path that cannot be stat-ed is in neither: reading it will say why. One range scan for
        all, and per file a `stat` and a tuple compare: a no-op rerun asks this of every file."""
        q = "SELECT path, size, mtime_ns, ino, dev, hashed_at_ns, sha256, has_audio FROM files"
        seen = {row[0]: row for row in self._rows_of(q, "path", paths)}
        facts: dict[str, FileFacts] = {}
        stats: dict[str, FileStat] = {}
        stat, fields = os.stat, _STAT_FIELDS
        for path in paths:
            try:
                st = fields(stat(path))
            except (OSError, ValueError):
                continue
            row = seen.get(path)
            if row is not None and row[1:5] == st:  # (size, mtime_ns, ino, dev): FileStat's order
                if row[2] + RACY_NS < row[5]:
                    facts[path] = _new_facts(FileFacts, (row[6], _AUDIO[row[7]]))
                    continue
                if racy is not None:  # modified too close to being read: can't trust the stat
                    racy.add(path)
            stats[path] = _new_facts(FileStat, st)
        return facts, stats

    def moved_facts_many(self, stats: dict[str, FileStat]) -> dict[str, FileFacts]:
        """The hashes of input files seen under another path with the same inode, device, size and
        mtime_ns (a move or rename keeps all four): known without reading, as the same file. The
        racy case is left out as for `unchanged_files`."""
        by_inode = {(st.dev, st.ino): (path, st) for path, st in stats.items()}
        q = "SELECT dev, ino, size, mtime_ns, sha256, has_audio, hashed_at_ns FROM files WHERE (dev, ino)"
        out: dict[str, FileFacts] = {}
        pairs = list(by_inode)
        for start in range(0, len(pairs), 250):
            part = pairs[start : start + 250]
            sql = f"{q} IN (VALUES {','.join(['(?, ?)'] * len(part))})"
            for dev, ino, size, mtime_ns, sha, has_audio, hashed_at in self._rows(sql, [v for p in part for v in p]):
                path, st = by_inode[(dev, ino)]
                if (size, mtime_ns) != (st.size, st.mtime_ns) or st.mtime_ns + RACY_NS >= hashed_at:
                    continue
                out[path] = FileFacts(sha, None if has_audio is None else bool(has_audio))
                self.remember_file(path, st, out[path], hashed_at)  # found by its path next time
        return out

    def known_sizes(self, sizes: Sequence[int]) -> set[int]:
        """Which of these sizes an input file OUT read had: a new file of another size cannot be a
        copy of one (so it is not hashed before its turn in the decode workers)."""
        return {r[0] for r in self._rows_in("SELECT DISTINCT size FROM files WHERE size", sorted(set(sizes)))}

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
