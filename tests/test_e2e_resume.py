"""A real `gemma4u caption` killed with SIGKILL mid-run resumes exactly once, with the same
greedy texts as an uninterrupted run (tiny model: meaningless but deterministic text)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from gemma4u_batch.config import JobConfig, SamplingConfig
from gemma4u_batch.progress import Reporter
from gemma4u_batch.runner import run_job
from gemma4u_batch.writer import OutLayout, committed_parts, iter_committed_records

from .conftest import GEMMA4U
from .test_resume import data_records, make_images

pytestmark = pytest.mark.engine


@pytest.mark.timeout(1200)
def test_cli_sigkill_then_resume(tmp_path: Path, tiny_model: Path, shared_engine) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 40)
    args = [GEMMA4U, "caption", str(inp), "-o", str(out), "--model", str(tiny_model), "--dtype", "float32",
            "--max-tokens", "24", "--max-model-len", "4096", "--commit-every", "3", "--max-num-seqs", "2",
            "--progress", "quiet"]  # fmt: skip
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
    assert sorted(r["id"] for r in recs) == sorted(f"img_{i:04d}.png" for i in range(40))

    # Same texts as one uninterrupted (greedy) run.
    ref = tmp_path / "ref"
    config = JobConfig(input=inp, output=ref, model=str(tiny_model), sampling=SamplingConfig(max_tokens=24))
    run_job(config, engine_factory=lambda c: shared_engine, reporter=Reporter("quiet"))
    expected = {r["id"]: r["text"] for r in iter_committed_records(OutLayout(ref))}
    assert {r["id"]: r["text"] for r in recs} == expected
    status = subprocess.run([GEMMA4U, "status", str(out), "--json"], capture_output=True, text=True, timeout=120)
    st = json.loads(status.stdout)
    assert st["records"] == 40 and st["pending"] == 0 and st["complete"] and not st["active"]
