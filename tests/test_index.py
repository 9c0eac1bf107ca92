"""OUT's index and the input quick check (issue #13): a rerun decides before it reads,
never trusts a stale or foreign cache, and no kill leaves index and data disagreeing."""

from __future__ import annotations

import functools
import json
import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from PIL import Image

from gemma4u_batch.decode.workers import DecodePool
from gemma4u_batch.engine.fake import FakeEngine
from gemma4u_batch.store import compaction as compact_mod
from gemma4u_batch.store.index import OutIndex
from gemma4u_batch.store.layout import OutLayout
from gemma4u_batch.store.ledger import read_status
from gemma4u_batch.store.writer import committed_parts

from .helpers import (
    HOUR_AGO,
    aged,
    data_records,
    fake_config,
    fake_job,
    gemma4u,
    make_images,
    records_by_id,
    run_fake,
)


def test_noop_rerun_opens_no_file_and_starts_nothing(tmp_path: Path, reads, monkeypatch) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 12)
    (inp / "broken.png").write_bytes(b"not a png")  # an error record is done too
    aged(inp)
    run_fake(inp, out)
    assert len(reads) == 13
    reads.clear()
    spawned: list[int] = []
    monkeypatch.setattr(DecodePool, "_spawn", lambda self: spawned.append(1) or pytest.fail("worker started"))
    engine = FakeEngine()
    summary = run_fake(inp, out, engine=engine, workers=2)
    assert (summary.done, summary.skipped, summary.already_complete) == (0, 13, True)
    assert reads == [] and spawned == [] and engine.added == 0


def test_racy_rewrite_within_the_timestamp_tick_is_read_again(tmp_path: Path, reads) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 4)
    aged(inp)
    racy = inp / "img_0001.png"
    os.utime(racy, ns=(time.time_ns(), time.time_ns()))  # written just before the run hashed it
    run_fake(inp, out)
    before = records_by_id(out)["img_0001.png"]
    st = racy.stat()
    data = bytearray(racy.read_bytes())
    data[-20] ^= 0xFF  # same size, same inode, and the mtime put back: only the racy guard can tell
    with open(racy, "r+b") as fh:
        fh.write(bytes(data))
    os.utime(racy, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert racy.stat().st_size == st.st_size and racy.stat().st_ino == st.st_ino
    reads.clear()
    summary = run_fake(inp, out)
    assert reads == ["img_0001.png"]  # the three trusted files are not opened
    now = records_by_id(out)["img_0001.png"]
    assert summary.done == 1 and now["content_sha256"] != before["content_sha256"]
    assert now["supersedes"] == before["key"]


def test_an_unchanged_racy_file_is_hashed_not_decoded(tmp_path: Path, reads) -> None:
    """A stat too recent to vouch for a file: its bytes are hashed in the run's own process and,
    unchanged, it is skipped without a decode."""
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 3)
    aged(inp)
    os.utime(inp / "img_0001.png", ns=(time.time_ns(), time.time_ns()))
    run_fake(inp, out)
    reads.clear()
    summary = run_fake(inp, out)
    assert reads == [] and (summary.skipped, summary.done) == (3, 0)


def test_copied_inputs_and_changed_files_are_read_again(tmp_path: Path, reads) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 5)
    aged(inp)
    run_fake(inp, out)
    # Another copy of the files (restored from backup, another machine): new inodes, same
    # mtimes and sizes. The cache does not match; the content does, so nothing is redone.
    for p in sorted(inp.iterdir()):
        shutil.copy2(p, p.with_suffix(".tmp"))
        os.replace(p.with_suffix(".tmp"), p)
    reads.clear()
    summary = run_fake(inp, out)
    assert sorted(reads) == sorted(p.name for p in inp.iterdir()) and summary.done == 0 and summary.skipped == 5
    Image.new("RGB", (40, 40), (9, 9, 9)).save(inp / "img_0003.png")  # a real change, new mtime
    aged(inp)
    os.utime(inp / "img_0003.png", (HOUR_AGO + 60, HOUR_AGO + 60))
    reads.clear()
    summary = run_fake(inp, out)
    assert reads == ["img_0003.png"] and summary.done == 1


def test_changed_row_prompt_redoes_that_row_only(tmp_path: Path, reads) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 3)
    aged(inp)
    rows = [{"path": f"img_{i:04d}.png", "prompt": f"Describe {i}."} for i in range(3)]
    man = inp / "m.jsonl"
    man.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_fake(man, out)
    first = records_by_id(out)
    rows[1]["prompt"] = "Describe it differently."
    man.write_text("".join(json.dumps(r) + "\n" for r in rows))
    reads.clear()
    summary = run_fake(man, out)
    assert summary.done == 1 and summary.skipped == 2 and reads == ["img_0001.png"]
    assert records_by_id(out)["img_0001.png"]["supersedes"] == first["img_0001.png"]["key"]


def test_unchanged_dataset_rows_are_skipped_without_decoding(tmp_path: Path, reads) -> None:
    """Dataset rows carry their bytes: an unchanged row is hashed, never decoded; a row whose
    bytes or prompt-template field changed is redone, the others are not."""
    import io

    import datasets

    def png(i: int) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (20 + i % 9, 16), ((i * 40) % 255, 9, 9)).save(buf, format="PNG")
        return buf.getvalue()

    def save(folder: Path, rows: list[tuple[bytes, str]]) -> Path:
        cells = {"image": [{"bytes": b, "path": None} for b, _ in rows], "label": [label for _, label in rows]}
        cells["id"] = [f"r{i}" for i in range(len(rows))]
        datasets.Dataset.from_dict(cells).cast_column("image", datasets.Image()).save_to_disk(str(folder))
        return folder

    rows = [(png(i), f"thing {i}") for i in range(5)]
    out, prompt = tmp_path / "out", "Describe the {{ label }}."
    run_fake(save(tmp_path / "v1", rows), out, prompt=prompt)
    assert sorted(reads) == [f"r{i}" for i in range(5)]
    first = records_by_id(out)
    reads.clear()
    engine = FakeEngine()
    summary = run_fake(tmp_path / "v1", out, engine=engine, prompt=prompt)
    assert (summary.done, summary.skipped, reads, engine.added) == (0, 5, [], 0)
    rows[1] = (png(99), rows[1][1])  # new bytes, same row fields
    rows[3] = (rows[3][0], "other thing")  # same bytes, a field the prompt uses changed
    summary = run_fake(save(tmp_path / "v2", rows), out, prompt=prompt)
    assert (summary.done, summary.skipped, sorted(reads)) == (2, 3, ["r1", "r3"])
    now = records_by_id(out)
    assert [now[i]["supersedes"] for i in ("r1", "r3")] == [first[i]["key"] for i in ("r1", "r3")]
    assert now["r0"]["key"] == first["r0"]["key"]


def _quick_check(inp: Path, out: Path, **kw) -> tuple[list[str], int, int]:
    """What the quick check makes of OUT for a job with these settings, nothing read:
    (ids it hands on to be read, units it found done, items it knew need generating)."""
    from gemma4u_batch.job.job import Job
    from gemma4u_batch.job.quickcheck import QuickCheck
    from gemma4u_batch.prompting.builder import RequestBuilder
    from gemma4u_batch.sources.job_input import JobInput

    config = fake_config(inp, out, **kw)
    requests = RequestBuilder(config, FakeEngine(), Job(config).fingerprint)
    skipped: list[int] = []
    new_work: list[int] = []
    with OutIndex(OutLayout(out)) as index:
        quick = QuickCheck(config, index, requests)
        ids = [
            i.id for i in quick.pending(JobInput(config).nonempty(), skipped.append, lambda surely: new_work.append(1))
        ]
    return sorted(ids), sum(skipped), len(new_work)


@pytest.mark.parametrize(
    "change",
    [
        {"prompt": "Say more."},
        {"system_prompt": "Be terse."},
        {"sampling": {"max_tokens": 7}},
        {"image_tokens": 560},
        {"model": "another-model"},
    ],
)
def test_changed_prompt_or_settings_invalidate_the_cached_keys(tmp_path: Path, reads, change: dict) -> None:
    """The file cache gives the hash, not the answer: keys are made from it with the job's
    prompt and settings, so other settings find nothing done (and still open no file)."""
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 4)
    aged(inp)
    run_fake(inp, out)
    reads.clear()
    names = sorted(p.name for p in inp.iterdir())
    assert _quick_check(inp, out) == ([], 4, 0)
    assert _quick_check(inp, out, **change) == (names, 0, 4)
    assert reads == []


def test_a_file_cache_from_another_device_is_not_trusted(tmp_path: Path, reads) -> None:
    """OUT copied to another machine or mount: same paths, sizes and mtimes, another device
    (or inode): every file is read again once, nothing is redone, and the cache is renewed."""
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 4)
    aged(inp)
    run_fake(inp, out)
    with sqlite3.connect(out / ".gemma4u" / "index.sqlite") as db:
        db.execute("UPDATE files SET dev = dev + 1")
    reads.clear()
    summary = run_fake(inp, out)
    assert sorted(reads) == sorted(p.name for p in inp.iterdir()) and (summary.done, summary.skipped) == (0, 4)
    reads.clear()
    summary = run_fake(inp, out)
    assert reads == [] and (summary.done, summary.skipped) == (0, 4)


def test_deleted_input_keeps_its_record(tmp_path: Path) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 3)
    run_fake(inp, out)
    (inp / "img_0000.png").unlink()
    summary = run_fake(inp, out)
    assert summary.done == 0 and "img_0000.png" in records_by_id(out) and read_status(OutLayout(out)).records == 3


@pytest.mark.parametrize("damage", ["garbage", "old_version", "deleted", "behind"])
def test_a_broken_or_stale_index_is_rebuilt_from_the_data(tmp_path: Path, damage: str) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 10)
    run_fake(inp, out, commit_every=3, format="both")
    expected = records_by_id(out)
    path = out / ".gemma4u" / "index.sqlite"
    if damage == "garbage":
        path.write_bytes(b"\x00garbage" * 100)
    elif damage == "old_version":
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA user_version = 1")
    elif damage == "deleted":
        path.unlink()
    else:  # killed after a marker was written, before the index took the part in
        with sqlite3.connect(path) as db:
            part = db.execute("SELECT part FROM parts LIMIT 1").fetchone()[0]
            db.execute("DELETE FROM records WHERE part = ?", (part,))
            db.execute("DELETE FROM parts WHERE part = ?", (part,))
    st = read_status(OutLayout(out))
    assert (st.records, st.done) == (10, 10)
    assert records_by_id(out) == expected
    make_images(inp, 2, start=10)
    summary = run_fake(inp, out)
    assert summary.done == 2 and summary.skipped == 10 and len(records_by_id(out)) == 12


def _damage(db_path: Path, table: str) -> None:
    """Overwrite one table's pages with garbage; the header and the schema stay readable."""
    db = sqlite3.connect(db_path)
    try:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        pages = [p for (p,) in db.execute("SELECT pageno FROM dbstat WHERE name = ?", (table,))]
    except sqlite3.OperationalError:
        pytest.skip("this SQLite has no dbstat table")
    finally:
        db.close()
    assert pages and 1 not in pages
    with open(db_path, "r+b") as fh:
        for page in pages:
            fh.seek((page - 1) * page_size)
            fh.write(b"\xff" * page_size)


@pytest.mark.parametrize("table", ["records", "files", "prompts"])
def test_a_damaged_index_page_is_rebuilt_not_fatal(tmp_path: Path, reads, table: str) -> None:
    """A damaged page that opening the index does not reach (SQLite finds it when a query
    does): status and the next run rebuild the index from the data instead of failing."""
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 40)
    aged(inp)
    run_fake(inp, out, commit_every=8)
    expected = records_by_id(out)
    path = out / ".gemma4u" / "index.sqlite"
    _damage(path, table)
    st = read_status(OutLayout(out))
    assert (st.records, st.done) == (40, 40)
    _damage(path, table)
    reads.clear()
    summary = run_fake(inp, out)
    assert (summary.done, summary.skipped) == (0, 40) and records_by_id(out) == expected
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    db.close()


def test_compaction_leaves_few_files_of_current_records(tmp_path: Path) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 30)
    run_fake(inp, out, commit_every=2, format="both")
    assert len(list(out.glob("__jsonl__/part-*.jsonl"))) == 1 and len(list(out.glob("part-*.parquet"))) == 1
    assert not list(out.glob("*.jsonl"))  # Parquet is the table under OUT, JSONL beside it
    Image.new("RGB", (50, 50), (1, 2, 3)).save(inp / "img_0002.png")
    run_fake(inp, out, commit_every=2, format="both")
    recs = data_records(out)  # what a naive reader loads: current records only
    assert sorted(r["id"] for r in recs) == sorted(f"img_{i:04d}.png" for i in range(30))
    assert len(committed_parts(OutLayout(out))) == 1


def test_compaction_splits_at_the_target_size(tmp_path: Path, monkeypatch) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 20)
    monkeypatch.setattr("gemma4u_batch.job.job.compact", lambda layout, index: None)  # keep the 10 small parts
    run_fake(inp, out, commit_every=2)
    layout = OutLayout(out)
    assert len(committed_parts(layout)) == 10
    with OutIndex(layout) as index:
        compact_mod.compact(layout, index, target_records=8)
    assert [p["records"] for p in committed_parts(layout)] == [8, 8, 4]
    assert len(records_by_id(out)) == 20 and len(data_records(out)) == 20


@pytest.mark.parametrize("kill_at", ["before_marker", "after_marker"])
def test_a_killed_compaction_loses_nothing_and_duplicates_nothing(tmp_path: Path, monkeypatch, kill_at: str) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 16)
    layout = OutLayout(out)

    class Killed(BaseException):
        pass

    def die(*a, **k):
        raise Killed

    target = "json_bytes" if kill_at == "before_marker" else "finish_replaced"  # the marker made, or committed
    monkeypatch.setattr(compact_mod, target, die)
    with pytest.raises(Killed):
        run_fake(inp, out, commit_every=3)
    monkeypatch.undo()
    recs = records_by_id(out)  # readers are right at once: old parts, or the new one, never both
    assert sorted(recs) == sorted(f"img_{i:04d}.png" for i in range(16))
    summary = run_fake(inp, out, commit_every=3)  # the next run cleans up and compacts
    assert summary.done == 0 and summary.skipped == 16
    assert len(committed_parts(layout)) == 1 and len(data_records(out)) == 16
    assert not list(layout.tmp.iterdir())


@pytest.mark.parametrize("kill_at", ["markers", "data"])
def test_a_killed_overwrite_never_leaves_a_marker_without_its_data(tmp_path: Path, monkeypatch, kill_at: str) -> None:
    """--overwrite killed part-way: what remains is committed parts whole, or data files
    without markers (orphans, removed next time); a rerun ends with every id once."""
    from gemma4u_batch.store.objects import LocalFiles

    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 12)
    run_fake(inp, out, commit_every=3)
    layout = OutLayout(out)

    class Killed(BaseException):
        pass

    def die(*a, **k):
        raise Killed

    real_delete = LocalFiles.delete
    deleted: list[str] = []

    def delete(self: LocalFiles, name: str) -> None:  # killed as the first marker, or data file, goes
        kind = "markers" if name.startswith(".gemma4u/commits/") else "data" if "/part-" in f"/{name}" else None
        if kind == kill_at:
            deleted.append(name)
            if len(deleted) == 1:
                die()
        real_delete(self, name)

    monkeypatch.setattr(LocalFiles, "delete", delete)
    with pytest.raises(Killed):
        run_fake(inp, out, overwrite=True)
    monkeypatch.undo()
    assert all((out / f).exists() for p in committed_parts(layout) for f in p["files"])
    assert read_status(layout).records == len(records_by_id(out))
    run_fake(inp, out)
    assert sorted(records_by_id(out)) == sorted(f"img_{i:04d}.png" for i in range(12))
    assert sorted(r["id"] for r in data_records(out)) == sorted(records_by_id(out))


def test_last_shard_compacts_and_compact_command(tmp_path: Path) -> None:
    import fcntl

    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 12)
    run_fake(inp, out, commit_every=1, shard="0/2")
    layout = OutLayout(out)
    n0 = len(committed_parts(layout))
    assert n0 > 1  # the other shard still has to run: nobody may compact yet
    run_fake(inp, out, commit_every=1, shard="1/2")
    assert len(committed_parts(layout)) == 1 and len(records_by_id(out)) == 12  # the last shard compacted

    out2 = tmp_path / "out2"
    run_fake(inp, out2, commit_every=1, shard="0/2")
    parts = len(committed_parts(OutLayout(out2)))
    with open(out2 / ".gemma4u" / "run.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_SH)  # a shard is running
        busy = gemma4u("compact", str(out2))
    assert busy.returncode == 73 and "lock held" in busy.stderr and len(committed_parts(OutLayout(out2))) == parts
    done = gemma4u("compact", str(out2))
    assert done.returncode == 0, done.stderr
    assert f"{parts} data part(s) → 1" in done.stderr and len(committed_parts(OutLayout(out2))) == 1


def _kill_when(proc, exists, timeout: float = 120.0) -> bool:
    """SIGKILL the job's process group the moment `exists()` is true; False if it finished first."""
    import signal

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if exists():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.0005)
    proc.wait()
    return False


@pytest.mark.timeout(900)
@pytest.mark.parametrize("moment", ["index_update", "compaction"])
def test_sigkill_during_index_update_or_compaction_then_resume_exactly_once(tmp_path: Path, moment: str) -> None:
    """A real SIGKILL inside an index transaction (its rollback journal exists) or inside
    compaction (a compacted file is being written): afterwards index and data agree, and a
    rerun ends with every id once in few files."""
    inp = tmp_path / "in"
    make_images(inp, 1500)
    for attempt in range(3):
        out = tmp_path / f"out{attempt}"
        meta = out / ".gemma4u"
        probe = functools.partial(_journal if moment == "index_update" else _compacting, meta)
        if _kill_when(fake_job(inp, out, "--commit-every", "1", "--step-delay", "0"), probe):
            break
    else:
        pytest.fail(f"the job never reached the {moment} moment in 3 tries")
    layout = OutLayout(out)
    committed = [r["id"] for p in committed_parts(layout) for r in _records_of(out, p)]
    assert len(committed) == len(set(committed))  # readable data is duplicate-free right after the kill
    assert read_status(layout).records == len(committed)  # the index agrees with the data (caught up)
    summary = run_fake(inp, out)
    assert summary.done == 1500 - len(committed)
    assert sorted(records_by_id(out)) == sorted(f"img_{i:04d}.png" for i in range(1500))
    assert len(data_records(out)) == 1500 and len(committed_parts(layout)) == 1
    assert not list((meta / "tmp").iterdir())


def _journal(meta: Path) -> bool:
    return (meta / "index.sqlite-journal").exists()


def _compacting(meta: Path) -> bool:
    return any(meta.joinpath("tmp").glob("part-*-c0*.incomplete"))


def _records_of(out: Path, part: dict) -> list[dict]:
    return [json.loads(line) for f in part["files"] for line in (out / f).read_text().splitlines()]


def test_an_index_of_the_previous_version_keeps_its_file_cache(tmp_path: Path, reads) -> None:
    """Version 2 (before records kept their fingerprint, tombstone and copy) is upgraded in place:
    its records gain the new columns and the input files' quick check survives, so the first
    rerun after an upgrade reads no input (a rebuild would read every one again)."""
    import sqlite3

    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 4)
    aged(inp)
    run_fake(inp, out)
    db = sqlite3.connect(out / ".gemma4u" / "index.sqlite", isolation_level=None)
    db.executescript(
        """BEGIN;
        DROP INDEX records_key; DROP INDEX files_inode; DROP INDEX files_size;
        ALTER TABLE records DROP COLUMN fingerprint; ALTER TABLE records DROP COLUMN tombstone;
        ALTER TABLE records DROP COLUMN reused; PRAGMA user_version = 2; COMMIT;"""
    )
    db.close()
    reads.clear()
    again = run_fake(inp, out)
    assert again.skipped == 4 and again.done == 0 and not reads, "the upgrade lost the file cache"
    db = sqlite3.connect(out / ".gemma4u" / "index.sqlite")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 3
    assert db.execute("SELECT count(*) FROM records WHERE tombstone = 0 AND reused = 0").fetchone()[0] == 4


def test_chunk_lookups_answer_exactly_the_asked_ids_scattered_or_not(tmp_path: Path) -> None:
    """A chunk is looked up by a range scan when its ids are neighbours, value by value when
    they are scattered among others: either way exactly the asked pairs and files come back."""
    import random

    inp, out = tmp_path / "in", tmp_path / "out"
    for folder in ("a", "b", "c"):
        make_images(inp / folder, 40)
    aged(inp)
    run_fake(inp, out)
    with OutIndex(OutLayout(out)) as index:
        ids = sorted(r[0] for r in index.db.execute("SELECT id FROM records"))
        assert len(ids) == 120
        scattered = ids[::13]  # 10 ids whose range holds 120 rows: more than a range scan may read
        random.Random(0).shuffle(scattered)
        for asked in (ids[5:40], scattered, [*ids[::13][:9], "a/missing.png", "zz/none.png"]):
            got = index.get_many(asked)
            assert set(got) == {(i, "caption") for i in asked if i in ids}
            assert got == {(i, "caption"): index.get(i, "caption") for i in asked if i in ids}
            paths = [str((inp / i).resolve()) for i in asked]
            facts, changed = index.unchanged_files(paths)
            assert set(facts) == {p for p in paths if os.path.exists(p)} and not changed
