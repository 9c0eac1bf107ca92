"""OUT is a table (#15): after a run, every common reader loads one row per (id, task) from OUT
itself — pandas, pyarrow, polars, DuckDB, datasets — for each --format, after an incremental
run that supersedes records, and after a run stopped with Ctrl-C, with transcripts and
bookkeeping beside the data."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from gemma4u_batch.config.languages import DETECT_CODES
from gemma4u_batch.job.job import JobSummary

from .helpers import EXAMPLES, fake_job, make_images, records, run_fake


def run(inp: Path, out: Path, **settings) -> JobSummary:
    """A FakeEngine job committing every 3 records (several parts, compacted at the end)."""
    return run_fake(inp, out, commit_every=3, **settings)


TASKS = ["caption", "tags"]


def incremental(tmp_path: Path, fmt: str, **kw) -> tuple[Path, set[tuple[str, str]]]:
    """An OUT after two runs of two tasks, the second superseding two items' records (both
    tasks) and adding one item."""
    inp, out = tmp_path / "in", tmp_path / f"out-{fmt}"
    make_images(inp, 8)
    shutil.copy(EXAMPLES / "audio" / "hello.wav", inp / "hello.wav")
    run(inp, out, format=fmt, tasks=TASKS, **kw)
    Image.new("RGB", (40, 30), (9, 9, 9)).save(inp / "img_0001.png")
    Image.new("RGB", (40, 30), (7, 7, 7)).save(inp / "img_0005.png")
    make_images(inp, 1, start=8)
    summary = run(inp, out, format=fmt, tasks=TASKS, **kw)
    assert summary.done == 3 * len(TASKS)
    ids = {f"img_{i:04d}.png" for i in range(9)} | {"hello.wav"}
    return out, {(i, t) for i in ids for t in TASKS}


def check_rows(ids: list[str], tasks: list[str], expected: set[tuple[str, str]]) -> None:
    assert sorted(zip(ids, tasks, strict=True)) == sorted(expected), "one row per (id, task), superseded rows gone"


@pytest.mark.parametrize("fmt", ["parquet", "both"])
def test_parquet_table_reads_in_every_reader(tmp_path: Path, fmt: str) -> None:
    import datasets
    import duckdb
    import pandas as pd
    import polars as pl
    import pyarrow as pa
    import pyarrow.dataset as pads

    out, expected = incremental(tmp_path, fmt)
    if fmt == "both":  # the JSONL copy sits beside the table, and holds the same current records
        files = list((out / "__jsonl__").glob("part-*.jsonl"))
        assert files and not list(out.glob("*.jsonl"))
        copy = pd.concat([pd.read_json(f, lines=True) for f in files])
        check_rows(list(copy["id"]), list(copy["task"]), expected)

    df = pd.read_parquet(out)
    check_rows(list(df["id"]), list(df["task"]), expected)
    assert df["run_id"].nunique() == 2 and str(df["created_at"].dtype).startswith("datetime64")
    assert str(df["mean_logprob"].dtype) == "float64" and (df["mean_logprob"] <= 0).all()
    table = pads.dataset(out).to_table()
    check_rows(table.column("id").to_pylist(), table.column("task").to_pylist(), expected)
    assert table.schema.field("segments").type == pa.list_(
        pa.struct([("start", pa.float64()), ("end", pa.float64()), ("text", pa.string()), ("language", pa.string())])
    )
    assert table.schema.field("language").type == pa.string()
    lf = pl.scan_parquet(f"{out}/**/*.parquet").collect()
    check_rows(lf["id"].to_list(), lf["task"].to_list(), expected)
    rows = duckdb.sql(f"SELECT id, task FROM read_parquet('{out}/**/*.parquet')").fetchall()
    check_rows([r[0] for r in rows], [r[1] for r in rows], expected)
    ds = datasets.load_dataset("parquet", data_dir=str(out), split="train", cache_dir=str(tmp_path / "hf"))
    check_rows(ds["id"], ds["task"], expected)
    man = json.loads((out / ".gemma4u" / "run.json").read_text())
    assert man["run_id"] in set(df["run_id"])


def test_jsonl_table_reads_in_every_reader(tmp_path: Path) -> None:
    import datasets
    import duckdb
    import pandas as pd
    import polars as pl
    import pyarrow.dataset as pads

    out, expected = incremental(tmp_path, "jsonl")
    files = sorted(out.glob("*.jsonl"))
    df = pd.concat([pd.read_json(f, lines=True) for f in files])
    check_rows(list(df["id"]), list(df["task"]), expected)
    assert df["run_id"].nunique() == 2 and df["created_at"].notna().all()
    table = pads.dataset(out, format="json").to_table()
    check_rows(table.column("id").to_pylist(), table.column("task").to_pylist(), expected)
    lf = pl.scan_ndjson(f"{out}/*.jsonl").collect()
    check_rows(lf["id"].to_list(), lf["task"].to_list(), expected)
    rows = duckdb.sql(f"SELECT id, task FROM read_json_auto('{out}/*.jsonl')").fetchall()
    check_rows([r[0] for r in rows], [r[1] for r in rows], expected)
    ds = datasets.load_dataset("json", data_dir=str(out), split="train", cache_dir=str(tmp_path / "hf"))
    check_rows(ds["id"], ds["task"], expected)


@pytest.mark.parametrize("fmt", ["both", "jsonl"])
def test_transcripts_sit_beside_the_table(tmp_path: Path, fmt: str) -> None:
    """Subtitle files (.srt/.vtt/.txt) live in __transcripts__/, which every reader skips."""
    import datasets
    import duckdb
    import pandas as pd
    import polars as pl
    import pyarrow.dataset as pads

    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    shutil.copy(EXAMPLES / "audio" / "hello.wav", inp / "hello.wav")
    run(inp, out, task="transcribe", format=fmt, subtitles=["srt", "vtt", "txt"])
    assert (out / "__transcripts__" / "hello.wav.srt").read_text().startswith("1\n")
    data = {p.suffix for p in out.iterdir() if not p.name.startswith(("_", "."))}
    assert data == {".parquet" if fmt == "both" else ".jsonl"}  # only data files outside _/. folders
    if fmt == "both":
        df = pd.read_parquet(out)
        assert list(df["segments"][0][0]) == ["start", "end", "text", "language"]
        assert df["language"][0] in DETECT_CODES and df["segments"][0][0]["language"] == df["language"][0]
        ids = [
            list(df["id"]),
            pads.dataset(out).to_table().column("id").to_pylist(),
            pl.scan_parquet(f"{out}/**/*.parquet").collect()["id"].to_list(),
            [r[0] for r in duckdb.sql(f"SELECT id FROM read_parquet('{out}/**/*.parquet')").fetchall()],
            datasets.load_dataset("parquet", data_dir=str(out), split="train", cache_dir=str(tmp_path / "hf"))["id"],
        ]
    else:
        ids = [
            list(pd.read_json(next(out.glob("*.jsonl")), lines=True)["id"]),
            pads.dataset(out, format="json").to_table().column("id").to_pylist(),
            pl.scan_ndjson(f"{out}/*.jsonl").collect()["id"].to_list(),
            [r[0] for r in duckdb.sql(f"SELECT id FROM read_json_auto('{out}/*.jsonl')").fetchall()],
            datasets.load_dataset("json", data_dir=str(out), split="train", cache_dir=str(tmp_path / "hf"))["id"],
        ]
    assert ids == [["hello.wav"]] * 5


def test_json_schema_gives_typed_columns(tmp_path: Path) -> None:
    import pandas as pd
    import pyarrow.parquet as pq

    # FakeEngine answers {"tags": [...]}: `count` stays null, `tags` is typed.
    schema = {
        "type": "object",
        "properties": {"tags": {"type": "array", "items": {"type": "string"}}, "count": {"type": "integer"}},
        "required": ["tags"],
    }
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 4)
    run(inp, out, format="parquet", json_schema=schema)
    df = pd.read_parquet(out)
    assert df["error"].isna().all()
    for data, typed in zip(df["data"], df["data_typed"], strict=True):
        assert list(typed["tags"]) == json.loads(data)["tags"] and typed["count"] is None
    t = pq.read_table(next(out.glob("*.parquet")))
    assert str(t.schema.field("data_typed").type) == "struct<tags: list<element: string>, count: int64>"


def test_an_out_in_the_old_layout_still_reads_and_compacts(tmp_path: Path) -> None:
    """An OUT written before #15: JSONL next to Parquet directly under OUT, no run_id/created_at."""
    import pandas as pd
    import pyarrow.parquet as pq

    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 6)
    run(inp, out, format="both")
    for marker_path in (out / ".gemma4u" / "commits").glob("*.json"):
        marker = json.loads(marker_path.read_text())
        for f in marker["files"]:
            if f.endswith(".jsonl"):
                (out / f).rename(out / Path(f).name)
            else:
                t = pq.read_table(out / f)
                pq.write_table(t.drop_columns(["run_id", "created_at"]), out / f)
        marker["files"] = [Path(f).name for f in marker["files"]]
        marker_path.write_text(json.dumps(marker))
    (out / ".gemma4u" / "index.sqlite").unlink()  # rebuilt from the markers
    assert len(records(out)) == 6
    Image.new("RGB", (40, 30), (9, 9, 9)).save(inp / "img_0001.png")
    make_images(inp, 1, start=6)
    assert run(inp, out, format="both").done == 2
    assert not list(out.glob("*.jsonl"))  # compaction rewrote the old parts into the new layout
    df = pd.read_parquet(out)
    check_rows(list(df["id"]), list(df["task"]), {(f"img_{i:04d}.png", "caption") for i in range(7)})
    assert df["run_id"].notna().sum() == 2  # the old records have none


@pytest.mark.timeout(600)
@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_a_stopped_run_leaves_a_clean_table(tmp_path: Path, fmt: str) -> None:
    """Ctrl-C (SIGINT to the process group) in the middle of an incremental run that supersedes
    records: the run commits what finished and compacts, so OUT reads as one row per (id, task),
    nothing lost, no superseded row left, in one data file."""
    import signal
    import time

    from gemma4u_batch.store.layout import OutLayout
    from gemma4u_batch.store.writer import committed_parts

    inp = tmp_path / "in"
    make_images(inp, 20)
    ids = {f"img_{i:04d}.png" for i in range(20)}
    for attempt in range(3):
        out = tmp_path / f"out{attempt}"
        run(inp, out, format=fmt)
        first = {r["id"]: r["key"] for r in _read(out, fmt).to_dict("records")}
        for i in range(20):  # every item changes: each one the second run finishes supersedes a record
            Image.new("RGB", (40, 30), (i, 2 * i, 3 * i + attempt + 1)).save(inp / f"img_{i:04d}.png")
        make_images(inp, 300, start=20 + 300 * attempt)
        ids |= {f"img_{i:04d}.png" for i in range(20 + 300 * attempt, 320 + 300 * attempt)}
        proc = fake_job(inp, out, "--commit-every", "1", "--step-delay", "0.02", "--format", fmt)
        while proc.poll() is None and len(committed_parts(OutLayout(out))) < 4:
            time.sleep(0.01)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        if "stopping — committing finished work" in err:
            break
    else:
        pytest.fail("the run finished before it could be stopped, 3 times")

    layout = OutLayout(out)
    df = _read(out, fmt)
    assert len(df) < len(ids)  # stopped before the end
    assert len(df) == df["id"].nunique() and set(first) <= set(df["id"]) <= ids  # nothing lost, nothing twice
    redone = df[df["key"] != df["id"].map(first)]
    assert len(redone) > 0 and redone["supersedes"].notna().all()  # ... and superseded rows are gone
    assert len(committed_parts(layout)) == 1 and len(list(out.glob(f"*.{fmt}"))) == 1  # compacted at the stop
    not_redone = int((df["key"] == df["id"].map(first)).sum())  # changed items the stopped run had not reached
    assert run(inp, out, format=fmt).done == len(ids) - len(df) + not_redone
    assert sorted(_read(out, fmt)["id"]) == sorted(ids)


def _read(out: Path, fmt: str):
    import pandas as pd

    if fmt == "parquet":
        return pd.read_parquet(out)
    return pd.concat([pd.read_json(f, lines=True) for f in sorted(out.glob("*.jsonl"))])
