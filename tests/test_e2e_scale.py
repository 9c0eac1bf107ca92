"""Scale-out with the same exactly-once output: --shard runs and Ray replicas
(real engines on the tiny checkpoint; its text is meaningless but deterministic)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gemma4u_batch.config import JobConfig, SamplingConfig
from gemma4u_batch.ledger import read_status
from gemma4u_batch.progress import Reporter
from gemma4u_batch.runner import run_job
from gemma4u_batch.writer import OutLayout, committed_parts

from .conftest import GEMMA4U
from .test_resume import data_records, make_images

pytestmark = pytest.mark.engine


def _texts(out: Path) -> dict[str, tuple[str, str]]:
    recs = data_records(out)
    assert len({r["id"] for r in recs}) == len(recs), "duplicate ids"
    return {r["id"]: (r["key"], r["text"]) for r in recs}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scale") / "in"
    make_images(root, 24)
    return root


@pytest.fixture(scope="module")
def reference(inputs: Path, tiny_model: Path, shared_engine, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("ref") / "out"
    config = JobConfig(input=inputs, output=out, model=str(tiny_model), sampling=SamplingConfig(max_tokens=12))
    run_job(config, engine_factory=lambda c: shared_engine, reporter=Reporter("quiet"))
    return _texts(out)


def test_three_shards_add_up_to_one_full_run(inputs: Path, tiny_model: Path, shared_engine, reference, tmp_path):
    out = tmp_path / "out"
    sizes = []
    for i in range(3):
        config = JobConfig(input=inputs, output=out, model=str(tiny_model), shard=f"{i}/3",
                           sampling=SamplingConfig(max_tokens=12))  # fmt: skip
        summary = run_job(config, engine_factory=lambda c: shared_engine, reporter=Reporter("quiet"))
        sizes.append(summary.done)
        assert (out / ".gemma4u" / "complete.json").exists() == (i == 2)
    assert sum(sizes) == 24 and all(0 < s < 24 for s in sizes)
    assert _texts(out) == reference
    st = read_status(OutLayout(out))
    assert st.records == 24 and st.complete and len(st.writers) == 3
    # A shard rerun finds nothing to do.
    again = run_job(
        JobConfig(input=inputs, output=out, model=str(tiny_model), shard="1/3", sampling=SamplingConfig(max_tokens=12)),
        engine_factory=lambda c: shared_engine, reporter=Reporter("quiet"),
    )  # fmt: skip
    assert again.done == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("ray")
    ray_bin = str(Path(sys.executable).with_name("ray"))
    port = _free_port()
    tmp = tmp_path_factory.mktemp("ray")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run(
        [ray_bin, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2",
         "--include-dashboard", "false", "--temp-dir", str(tmp), "--disable-usage-stats"],
        check=True, capture_output=True, env=env, timeout=180,
    )  # fmt: skip
    yield f"127.0.0.1:{port}"
    subprocess.run([ray_bin, "stop", "--force"], capture_output=True, env=env, timeout=120)


def _replica_pids() -> list[int]:
    import psutil

    pids = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "ray::_Replica" in cmd:
            pids.append(p.info["pid"])
    return pids


@pytest.mark.timeout(1500)
def test_ray_two_replicas_one_killed_still_exactly_once(inputs, tiny_model, reference, ray_cluster, tmp_path):
    out = tmp_path / "out"
    args = [GEMMA4U, "caption", str(inputs), "-o", str(out), "--model", str(tiny_model), "--dtype", "float32",
            "--max-tokens", "12", "--max-model-len", "4096", "--max-num-seqs", "8", "--commit-every", "2",
            "--workers", "0", "--ray", ray_cluster, "--replicas", "2", "--progress", "json"]  # fmt: skip
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    killed = False
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None:
        if not killed and len(committed_parts(OutLayout(out))) >= 2:
            pids = _replica_pids()
            if pids:
                os.kill(pids[0], signal.SIGKILL)  # a replica dies mid-run (its engine with it)
                killed = True
        time.sleep(0.2)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert killed, "the job finished before a replica could be killed"
    assert _texts(out) == reference  # exactly once, and equal to the single-process run
    run = json.loads((out / ".gemma4u" / "run.json").read_text())
    assert run["cluster"]["replicas"] == 2 and run["cluster"]["shards"] == 8
    st = read_status(OutLayout(out))
    assert st.complete and st.records == 24
