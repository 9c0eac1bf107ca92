"""Exactly-once output under hard kills, torn files, full/read-only disks,
incremental growth — the commit protocol, on the FakeEngine."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image

from gemma4u_batch.engine.fake import FakeEngine
from gemma4u_batch.errors import OutputError, UsageError
from gemma4u_batch.store.layout import OutLayout
from gemma4u_batch.store.ledger import current_records, read_status
from gemma4u_batch.store.writer import committed_parts

from .helpers import SlowFakeEngine, data_records, fake_config, fake_job, make_images, run_fake
from .mounts import read_only, tmpfs


@pytest.mark.timeout(600)
def test_sigkill_at_random_points_then_resume_is_exactly_once(tmp_path: Path) -> None:
    inp, out, ref = tmp_path / "in", tmp_path / "out", tmp_path / "ref"
    make_images(inp, 120)
    run_fake(inp, ref)
    reference = {r["id"]: (r["key"], r["text"]) for r in data_records(ref)}
    assert len(reference) == 120

    rng = random.Random(1234)
    kills = 0
    for _ in range(5):
        before = len(committed_parts(OutLayout(out)))
        proc = fake_job(inp, out, "--step-delay", "0.03")
        # Kill at a random moment after this run has committed something (so every kill
        # lands mid-run, between or during commits), never after it finished.
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None and len(committed_parts(OutLayout(out))) <= before:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.4))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole process group, decoders included
            kills += 1
        proc.wait()
        # After any kill, what is readable as committed data is valid and duplicate-free.
        ids = [r["id"] for part in committed_parts(OutLayout(out)) for r in _part(out, part)]
        assert len(ids) == len(set(ids))
    assert kills >= 3
    final = fake_job(inp, out)
    assert final.wait(timeout=300) == 0, final.stderr.read() if final.stderr else ""
    recs = data_records(out)
    assert sorted(r["id"] for r in recs) == sorted(reference)  # every id exactly once, nothing lost
    assert {r["id"]: (r["key"], r["text"]) for r in recs} == reference  # identical to an uninterrupted run
    assert not list((out / ".gemma4u" / "tmp").iterdir())
    again = fake_job(inp, out)
    assert again.wait(timeout=120) == 0 and "Nothing to do" in again.stderr.read()


def _part(out: Path, part: dict) -> list[dict]:
    return [json.loads(line) for f in part["files"] for line in (out / f).read_text().splitlines()]


def test_torn_files_are_never_read_as_data(tmp_path: Path) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 10)
    run_fake(inp, out)
    good = sorted(r["id"] for r in data_records(out))
    # A crash between data rename and marker: a part file without a commit marker,
    # plus a half-written temp file.
    torn = out / "part-deadhost-1-00000000-00000.jsonl"
    torn.write_text('{"id": "img_0000.png", "key": "x", "text": "torn"}\n{"id": "img_00')
    (out / ".gemma4u" / "tmp" / "part-deadhost-1-00000000-00001.jsonl.incomplete").write_text("{")
    assert [r["id"] for r in current_records(OutLayout(out))] == good  # readers ignore it already
    summary = run_fake(inp, out)
    assert summary.already_complete
    assert not torn.exists() and not list((out / ".gemma4u" / "tmp").iterdir())
    assert sorted(r["id"] for r in data_records(out)) == good


def test_second_run_into_same_out_is_refused(tmp_path: Path) -> None:
    import fcntl

    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 3)
    run_fake(inp, out)
    with open(out / ".gemma4u" / "run.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        with pytest.raises(UsageError, match="another gemma4u run"):
            run_fake(inp, out)
        assert read_status(OutLayout(out)).active


def test_incremental_growth_and_changed_files_supersede(tmp_path: Path) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 6)
    run_fake(inp, out)
    first = {r["id"]: r for r in data_records(out)}
    make_images(inp, 2, start=6)  # two new files
    Image.new("RGB", (50, 50), (1, 2, 3)).save(inp / "img_0002.png")  # one changed file
    summary = run_fake(inp, out)
    assert summary.done == 3 and summary.skipped == 5
    cur = {r["id"]: r for r in current_records(OutLayout(out))}
    assert sorted(cur) == sorted(f"img_{i:04d}.png" for i in range(8))
    assert cur["img_0002.png"]["supersedes"] == first["img_0002.png"]["key"]
    assert cur["img_0002.png"]["key"] != first["img_0002.png"]["key"]
    assert cur["img_0001.png"]["key"] == first["img_0001.png"]["key"]
    st = read_status(OutLayout(out))
    assert st.records == 8 and st.superseded == 0 and st.complete  # the old record was compacted away


def test_retry_errors_supersedes_the_error_record(tmp_path: Path) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 3)
    (inp / "broken.png").write_bytes(b"not a png")
    run_fake(inp, out)
    (inp / "broken.png").unlink()
    make_images(inp, 1, start=99)
    (inp / "img_0099.png").rename(inp / "broken.png")  # now a valid image under the same id
    summary = run_fake(inp, out, retry_errors=True)
    cur = {r["id"]: r for r in current_records(OutLayout(out))}
    assert summary.done == 1 and cur["broken.png"]["error"] is None and cur["broken.png"]["supersedes"]


@pytest.mark.timeout(300)
def test_full_disk_stops_cleanly_and_resumes(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "96k") as mnt:
        inp = tmp_path / "in"
        make_images(inp, 400)
        config = fake_config(inp, mnt / "out", commit_every=2)
        with pytest.raises(OutputError, match="No space left"):
            run_fake(config)
        committed = list(current_records(OutLayout(mnt / "out")))
        assert committed and len({r["id"] for r in committed}) == len(committed)  # readable, no dupes
        # Move the output somewhere with room: the same job resumes from there.
        subprocess.run(["cp", "-a", str(mnt / "out"), str(tmp_path / "moved")], check=True)
        config2 = config.model_copy(update={"output": tmp_path / "moved"})
        summary = run_fake(config2)
        assert summary.skipped == len(committed)
        assert len(list(current_records(OutLayout(tmp_path / "moved")))) == 400


def test_read_only_output_is_a_clear_error(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "1m") as mnt:
        inp = tmp_path / "in"
        make_images(inp, 3)
        run_fake(inp, mnt / "out")
        before = sorted(p.name for p in (mnt / "out").iterdir())
        make_images(inp, 2, start=3)
        read_only(mnt)
        with pytest.raises((UsageError, OutputError), match=r"Read-only file system|cannot write"):
            run_fake(inp, mnt / "out")
        assert sorted(p.name for p in (mnt / "out").iterdir()) == before
        assert len(list(current_records(OutLayout(mnt / "out")))) == 3


def test_stop_file_stops_a_replica_like_a_signal(tmp_path: Path) -> None:
    """A Ray driver that is told to stop creates OUT/.gemma4u/stop; each replica's job sees
    it within a second, commits what finished and returns interrupted (no lost record)."""
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 200)
    stop_file = tmp_path / "stop"
    stop_file.touch()
    config = fake_config(inp, out, commit_every=4)
    summary = run_fake(config, engine=SlowFakeEngine(0.02), stop_file=stop_file)
    assert summary.interrupted and 0 < summary.done < 200
    assert len(list(current_records(OutLayout(out)))) == summary.done  # everything that finished is committed
    stop_file.unlink()
    again = run_fake(config, engine=SlowFakeEngine(0.0), stop_file=stop_file)
    assert not again.interrupted and again.done == 200 - summary.done
    ids = [r["id"] for r in current_records(OutLayout(out))]
    assert sorted(ids) == sorted(f"img_{i:04d}.png" for i in range(200))


def test_a_crashed_shard_rerun_leaves_no_false_complete_marker(tmp_path: Path) -> None:
    """Shard markers from an earlier, finished run must not complete a rerun in which one
    shard stopped early: each shard forgets its old done marker when it starts."""
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 8)

    def shard(i: int, engine: FakeEngine, stop_file: Path | None = None) -> object:
        return run_fake(inp, out, engine=engine, stop_file=stop_file, commit_every=2, shard=f"{i}/2")

    shard(0, FakeEngine())
    shard(1, FakeEngine())
    complete = out / ".gemma4u" / "complete.json"
    assert complete.exists()
    make_images(inp, 200, start=8)  # the corpus grew: both shards have work again
    stop = tmp_path / "stop"
    stop.touch()
    assert shard(0, SlowFakeEngine(0.02), stop_file=stop).interrupted  # shard 0 is stopped early
    assert not complete.exists()
    assert not shard(1, FakeEngine()).interrupted
    assert not complete.exists(), "shard 0 has not finished this run"
    shard(0, FakeEngine())
    assert complete.exists() and read_status(OutLayout(out)).records == 208


def test_markers_of_an_earlier_job_never_complete_a_rerun(tmp_path: Path) -> None:
    """After a complete sharded job the corpus grows and only shard 1 is rerun (shard 0 crashed
    before it started, or has not started yet): shard 0's marker is the earlier job's, so no
    complete.json until shard 0 ran too. The same after a whole-job run that was stopped."""
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 8)
    complete = out / ".gemma4u" / "complete.json"

    def shard(i: int) -> object:
        return run_fake(inp, out, commit_every=2, shard=f"{i}/2")

    shard(0)
    shard(1)
    assert complete.exists()
    make_images(inp, 20, start=8)  # the corpus grew: both shards have work again
    shard(1)
    assert not complete.exists(), "shard 0 has not run since the corpus grew"
    shard(0)
    assert complete.exists() and read_status(OutLayout(out)).records == 28

    make_images(inp, 200, start=28)
    stop = tmp_path / "stop"
    stop.touch()
    assert run_fake(inp, out, engine=SlowFakeEngine(0.02), stop_file=stop, commit_every=2).interrupted
    shard(1)  # the whole-job run began a new job: shard 0's old marker does not count
    assert not complete.exists()
    shard(0)
    assert complete.exists() and read_status(OutLayout(out)).records == 228
