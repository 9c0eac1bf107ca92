"""Ray with no shared disk: two replicas of the tiny model on the loopback cluster write straight
into a bucket (moto's S3 on 127.0.0.1, reached through the node's own environment), and the
records match a single-process run into a local folder, record for record (float32)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from gemma4u_batch.config.job import JobConfig, SamplingConfig
from gemma4u_batch.console import Reporter
from gemma4u_batch.job.job import run_job
from gemma4u_batch.store.layout import OutLayout
from gemma4u_batch.store.ledger import read_status

from .helpers import GEMMA4U, make_images, records_by_id
from .object_stores import ObjectStore, clear_fsspec_instances, s3_server
from .ray_cluster import machine_state, running_cluster

__all__ = ["machine_state", "s3_server"]


@pytest.mark.engine
@pytest.mark.timeout(1500)
def test_two_replicas_write_into_a_bucket_as_one_process_would(
    s3_server: ObjectStore, tiny_model: Path, shared_engine, tmp_path: Path, machine_state, monkeypatch
) -> None:
    inputs = tmp_path / "in"
    make_images(inputs, 16)
    local = tmp_path / "local"
    config = JobConfig(input=inputs, output=local, model=str(tiny_model), sampling=SamplingConfig(max_tokens=12))
    run_job(config, shared_engine, reporter=Reporter("quiet"))
    expected = {i: (r["key"], r["text"]) for i, r in records_by_id(local).items()}

    store = s3_server.apply(monkeypatch)
    url = store.url(store.create_bucket(), "nightly/out")
    node_env = {**os.environ, **store.env}  # the node's own credentials and endpoint (AWS_*)
    with running_cluster(tmp_path / "ray", node_env) as cluster:
        driver_dir = tmp_path / "driver"  # the driver's working folder: nothing of OUT lands in it
        driver_dir.mkdir()
        args = [GEMMA4U, "caption", str(inputs), "-o", url, "--model", str(tiny_model), "--ray", cluster.address]
        args += [
            "--dtype",
            "float32",
            "--max-tokens",
            "12",
            "--max-model-len",
            "4096",
            "--max-num-seqs",
            "8",
            "--workers",
            "0",
        ]
        args += ["--replicas", "2", "--commit-every", "2", "--progress", "quiet"]
        env = {**cluster.env, **store.env, "XDG_CACHE_HOME": str(tmp_path / "driver-cache")}
        proc = subprocess.run(args, cwd=driver_dir, env=env, capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert list(driver_dir.iterdir()) == []
    clear_fsspec_instances()
    got = {i: (r["key"], r["text"]) for i, r in records_by_id(url).items()}  # type: ignore[arg-type]
    assert got == expected
    st = read_status(OutLayout(url))
    assert st.complete and st.records == 16 and not st.active
