"""A real `gemma4u caption` killed with SIGKILL mid-run resumes exactly once, with the same
greedy texts as an uninterrupted run (tiny model: meaningless but deterministic text)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from gemma4u_batch.config.job import JobConfig, SamplingConfig
from gemma4u_batch.console import Reporter
from gemma4u_batch.job.job import run_job
from gemma4u_batch.store.layout import OutLayout
from gemma4u_batch.store.ledger import current_records
from gemma4u_batch.store.writer import committed_parts

from .helpers import GEMMA4U, data_records, gemma4u, make_images, records_by_id, tiny_args

pytestmark = pytest.mark.engine


@pytest.mark.timeout(1200)
def test_cli_sigkill_then_resume(tmp_path: Path, tiny_model: Path, shared_engine) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 40)
    args = [
        GEMMA4U,
        "caption",
        str(inp),
        "-o",
        str(out),
        *tiny_args(tiny_model, max_tokens=24),
        "--commit-every",
        "3",
        "--max-num-seqs",
        "2",
        "--progress",
        "quiet",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and len(committed_parts(OutLayout(out))) < 2 and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, "job finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # CLI, engine core and decoders at once
    proc.wait()
    partial = data_records(out)
    assert 0 < len({r["id"] for r in partial}) < 40
    done = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    recs = data_records(out)
    dupes = [(r["id"], r["key"][:10], r["supersedes"]) for r in recs if sum(x["id"] == r["id"] for x in recs) > 1]
    assert not dupes, (dupes, [p.name for p in out.iterdir()], done.stderr[-2000:])
    assert sorted(r["id"] for r in recs) == sorted(f"img_{i:04d}.png" for i in range(40))

    # Same texts as one uninterrupted (greedy) run.
    ref = tmp_path / "ref"
    config = JobConfig(input=inp, output=ref, model=str(tiny_model), sampling=SamplingConfig(max_tokens=24))
    run_job(config, shared_engine, reporter=Reporter("quiet"))
    expected = {i: r["text"] for i, r in records_by_id(ref).items()}
    assert {r["id"]: r["text"] for r in recs} == expected
    status = gemma4u("status", str(out), "--json", "--count-pending", timeout=120)
    st = json.loads(status.stdout)
    assert st["records"] == 40 and st["pending"] == 0 and st["complete"] and not st["active"]

    # Moved and copied files (#29): their records are copied by content key; the engine never starts.
    (inp / "moved").mkdir()
    for i in range(5):
        os.rename(inp / f"img_{i:04d}.png", inp / "moved" / f"img_{i:04d}.png")
    for i in range(5, 10):
        shutil.copy(inp / f"img_{i:04d}.png", inp / f"copy_{i}.png")
    again = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    notes = json.loads((out / ".gemma4u" / "complete.json").read_text())["engine_notes"]
    assert "the engine had not started" in notes["bidi_plugin"]["summary"]
    now = {r["id"]: r for r in current_records(OutLayout(out))}
    assert len(now) == 50
    for new, old in [
        *((f"moved/img_{i:04d}.png", f"img_{i:04d}.png") for i in range(5)),
        *((f"copy_{i}.png", f"img_{i:04d}.png") for i in range(5, 10)),
    ]:
        assert (now[new]["text"], now[new]["reused_from"], now[new]["key"]) == (expected[old], old, now[old]["key"])


def _engine_core_pids() -> list[int]:
    import psutil

    me = psutil.Process()
    return [p.pid for p in me.children(recursive=True) if "EngineCor" in " ".join(p.cmdline() or [p.name()])]


@pytest.mark.timeout(1200)
def test_engine_core_killed_mid_run_is_restarted_exactly_once(tmp_path: Path, tiny_model: Path, shared_engine) -> None:
    import threading

    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 16)
    config = JobConfig(
        input=inp, output=out, model=str(tiny_model), commit_every=2, sampling=SamplingConfig(max_tokens=24)
    )
    killed: list[int] = []
    socket_open_while_held: list[bool] = []

    def killer() -> None:
        deadline = time.time() + 600
        while time.time() < deadline and len(committed_parts(OutLayout(out))) < 1:
            time.sleep(0.05)
        pids = _engine_core_pids()
        if not pids:
            return
        # Kill the core while holding the lock the feeding thread holds around each send: vLLM's
        # monitor thread must not close the client's socket under it (libzmq would abort).
        client = shared_engine._llm.engine_core
        with shared_engine._sockets:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])
            while time.time() < deadline and not client.resources.engine_dead:
                time.sleep(0.05)  # the monitor saw the death and is shutting the client down
            time.sleep(1.0)
            socket_open_while_held.append(not client.resources.input_socket.closed)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    before = shared_engine.restarts
    summary = run_job(config, shared_engine, reporter=Reporter("quiet"))
    t.join(timeout=5)
    assert killed, "no engine core process was found to kill"
    assert socket_open_while_held == [True]
    assert shared_engine.restarts == before + 1
    recs = data_records(out)
    assert sorted(r["id"] for r in recs) == sorted(f"img_{i:04d}.png" for i in range(16))
    assert summary.done == 16 and all(r["text"] for r in recs)
