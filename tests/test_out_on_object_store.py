"""OUT on an object store (moto's S3, Azurite and gcp-storage-emulator on 127.0.0.1): the same
records as a local OUT, a no-op rerun from a machine with no local state, status, the lock."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from gemma4u_batch.engine.fake import FakeEngine
from gemma4u_batch.errors import OutputLocked
from gemma4u_batch.export.dataset import ExportOptions, export
from gemma4u_batch.report.page import write_report
from gemma4u_batch.store.layout import OutLayout
from gemma4u_batch.store.ledger import read_status
from gemma4u_batch.store.lock import RunLock
from gemma4u_batch.store.writer import committed_parts

from .helpers import make_images, records_by_id, run_fake
from .object_stores import (
    ObjectStore,
    azure_server,
    azure_store,
    gcs_server,
    gcs_store,
    object_store,
    s3_server,
    s3_store,
)

__all__ = ["azure_server", "azure_store", "gcs_server", "gcs_store", "object_store", "s3_server", "s3_store"]

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("in")
    make_images(root, 12)
    return root


def _texts(out: Path | str) -> dict[str, tuple[str, str | None]]:
    return {i: (r["key"], r["text"]) for i, r in records_by_id(out).items()}  # type: ignore[arg-type]


def test_a_job_into_a_bucket_matches_a_local_one_and_reruns_from_nothing(
    object_store: ObjectStore, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = tmp_path / "local"
    run_fake(images, local, commit_every=5)
    url = object_store.url(object_store.create_bucket(), "runs/out")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-1"))
    summary = run_fake(images, url, commit_every=5)  # type: ignore[arg-type]
    assert summary.done == 12
    assert _texts(url) == _texts(local)
    st = read_status(OutLayout(url))
    assert st.records == 12 and st.complete and not st.active and st.errors == 0
    table = tmp_path / "captions.parquet"
    assert export(url, table, ExportOptions(media=False)).rows == 12  # straight from the bucket
    assert sorted(pq.read_table(table).column("id").to_pylist()) == sorted(_texts(local))
    page = write_report(url)  # the review page goes into the bucket, beside the data
    assert page.path == f"{url}/__report__/report.html" and page.records == 12
    assert b"<html" in OutLayout(url).files.read("__report__/report.html")[:2000].lower()

    for var, folder in (("XDG_CACHE_HOME", "cache-2"), ("HOME", "home-2"), ("TMPDIR", "tmp-2")):
        (tmp_path / folder).mkdir()
        monkeypatch.setenv(var, str(tmp_path / folder))  # a new pod: no local state
    monkeypatch.setattr("tempfile.tempdir", None)  # TMPDIR is read again
    object_store.clear_requests()
    again = FakeEngine()
    summary = run_fake(images, url, engine=again)  # type: ignore[arg-type]
    assert again.added == 0 and summary.done == 0 and summary.skipped == 12
    writes = [r for r in object_store.requests() if r.method in ("PUT", "POST", "DELETE")]
    data_writes = [r for r in writes if "/part-" in r.path or "commits" in r.path]
    assert data_writes == [], "a no-op rerun committed something"


def test_a_second_run_into_a_bucket_is_refused_at_once(s3_store: ObjectStore, images: Path, tmp_path: Path) -> None:
    url = s3_store.url(s3_store.create_bucket(), "out")
    held = RunLock(OutLayout(url), None)
    held.acquire()
    try:
        with pytest.raises(OutputLocked, match="another gemma4u run is writing into s3://"):
            run_fake(images, url)  # type: ignore[arg-type]
    finally:
        held.release()
    assert run_fake(images, url).done == 12  # type: ignore[arg-type]


KILLER = """
import os, signal, sys
from pathlib import Path
import gemma4u_batch.store.compaction as compaction
import gemma4u_batch.store.writer as writer
from tests.helpers import run_fake

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

point = sys.argv[3]
if point == "between_data_and_marker":  # the second part's data file is put, its marker never made
    made = writer.json_bytes
    seen = []
    def marker_bytes(obj):
        seen.append(obj)
        if len(seen) == 2:
            die()
        return made(obj)
    writer.json_bytes = marker_bytes
elif point == "compaction_before_marker":
    compaction.json_bytes = die
elif point == "compaction_after_marker":
    compaction.finish_replaced = die
run_fake(Path(sys.argv[1]), sys.argv[2], commit_every=3)
"""


@pytest.mark.parametrize("point", ["between_data_and_marker", "compaction_before_marker", "compaction_after_marker"])
def test_a_sigkill_at_any_point_loses_nothing_and_duplicates_nothing(
    s3_store: ObjectStore, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    import os
    import subprocess
    import sys
    import time

    from .helpers import REPO

    url = s3_store.url(s3_store.create_bucket(), "out")
    env = {**os.environ, "GEMMA4U_LEASE_SECONDS": "2"}
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, str(images), url, point], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    layout = OutLayout(url)
    before = records_by_id(url)  # type: ignore[arg-type]  # readers are right at once
    assert len(before) == (3 if point == "between_data_and_marker" else 12)
    time.sleep(3)  # the killed writer's leases (2 s) run out
    monkeypatch.setattr("gemma4u_batch.store.lease.SKEW_SECONDS", 0.5)
    run_fake(images, url)  # type: ignore[arg-type]
    after = records_by_id(url)  # type: ignore[arg-type]
    assert sorted(after) == sorted(f"img_{i:04d}.png" for i in range(12))
    names = [n for n in layout.files.list("") if n.startswith("part-")]
    named = {f for p in committed_parts(layout) for f in p["files"]}
    assert set(names) == named, "a data object no marker names was left in OUT"


def test_shards_compaction_and_overwrite_in_a_bucket(s3_store: ObjectStore, images: Path) -> None:
    url = s3_store.url(s3_store.create_bucket(), "out")
    layout = OutLayout(url)
    run_fake(images, url, shard="0/2", commit_every=1)  # type: ignore[arg-type]
    assert not read_status(layout).complete
    run_fake(images, url, shard="1/2", commit_every=1)  # type: ignore[arg-type]
    st = read_status(layout)
    assert st.complete and st.records == 12
    data = [n for n in layout.files.list("") if n.startswith("part-")]
    assert len(data) == 1, data  # the last shard, alone in OUT, compacted 12 one-record parts
    again = FakeEngine()
    run_fake(images, url, engine=again, overwrite=True)  # type: ignore[arg-type]
    assert again.added == 12 and len(records_by_id(url)) == 12  # type: ignore[arg-type]


def test_an_out_gemma4u_cannot_use_is_one_line_before_any_work(s3_store: ObjectStore, images: Path) -> None:
    import subprocess

    from .helpers import GEMMA4U

    url = "s3://no-such-bucket-here/out"
    r = subprocess.run(
        [GEMMA4U, "caption", str(images), "-o", url, "--model", "fake-model"], capture_output=True, text=True
    )
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert r.stderr.strip() == f"error: cannot use {url} as OUT: no bucket or container 'no-such-bucket-here'"


def test_a_bucket_out_reads_as_a_table_with_storage_options(s3_store: ObjectStore, tmp_path: Path) -> None:
    """pandas, pyarrow and polars read OUT in the bucket as one table (one row per id after an
    incremental run that superseded records), bookkeeping and the JSONL copy skipped."""
    import os

    import pandas as pd
    import polars as pl
    import pyarrow.dataset as pads
    import s3fs
    from PIL import Image

    inp = tmp_path / "in"
    make_images(inp, 8)
    url = s3_store.url(s3_store.create_bucket(), "table")
    run_fake(inp, url, format="both", commit_every=3)  # type: ignore[arg-type]
    Image.new("RGB", (40, 30), (9, 9, 9)).save(inp / "img_0001.png")
    make_images(inp, 1, start=8)
    assert run_fake(inp, url, format="both", commit_every=3).done == 2  # type: ignore[arg-type]
    expected = sorted(f"img_{i:04d}.png" for i in range(9))

    endpoint = os.environ["AWS_ENDPOINT_URL"]
    df = pd.read_parquet(url, storage_options={"endpoint_url": endpoint})
    assert sorted(df["id"]) == expected
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
    table = pads.dataset(url.removeprefix("s3://"), filesystem=fs).to_table()
    assert sorted(table.column("id").to_pylist()) == expected
    options = {
        "aws_endpoint_url": endpoint,
        "aws_allow_http": "true",
        "aws_region": "us-east-1",
        "aws_access_key_id": os.environ["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": os.environ["AWS_SECRET_ACCESS_KEY"],
    }
    lf = pl.scan_parquet(f"{url}/*.parquet", storage_options=options).collect()
    assert sorted(lf["id"].to_list()) == expected
