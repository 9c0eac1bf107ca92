"""OUT is a table (#15): after a run, every common reader loads one row per (id, task) from OUT
itself — pandas, pyarrow, polars, DuckDB, datasets — for each --format, after an incremental
run that supersedes records, with transcripts and bookkeeping beside the data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from gemma4u_batch.config import JobConfig
from gemma4u_batch.engine import FakeEngine
from gemma4u_batch.job import run_job
from gemma4u_batch.languages import DETECT_CODES
from gemma4u_batch.progress import Reporter

from .conftest import REPO
from .test_resume import make_images


def run(inp: Path, out: Path, **kw) -> object:
    config = JobConfig(input=inp, output=out, model="fake-model", workers=0, commit_every=3, **kw)
    return run_job(config, FakeEngine(), reporter=Reporter("quiet"))


def incremental(tmp_path: Path, fmt: str, **kw) -> tuple[Path, set[str]]:
    """An OUT after two runs, the second superseding two records and adding one."""
    inp, out = tmp_path / "in", tmp_path / f"out-{fmt}"
    make_images(inp, 8)
    shutil.copy(REPO / "examples" / "audio" / "hello.wav", inp / "hello.wav")
    run(inp, out, format=fmt, **kw)
    Image.new("RGB", (40, 30), (9, 9, 9)).save(inp / "img_0001.png")
    Image.new("RGB", (40, 30), (7, 7, 7)).save(inp / "img_0005.png")
    make_images(inp, 1, start=8)
    summary = run(inp, out, format=fmt, **kw)
    assert summary.done == 3
    ids = {f"img_{i:04d}.png" for i in range(9)} | {"hello.wav"}
    return out, ids


def check_rows(ids: list[str], expected: set[str]) -> None:
    assert sorted(ids) == sorted(expected), "one row per (id, task), superseded rows gone"


@pytest.mark.parametrize("fmt", ["parquet", "both"])
def test_parquet_table_reads_in_every_reader(tmp_path: Path, fmt: str) -> None:
    import datasets
    import duckdb
    import pandas as pd
    import polars as pl
    import pyarrow as pa
    import pyarrow.dataset as pads

    out, expected = incremental(tmp_path, fmt)
    if fmt == "both":
        assert list((out / "__jsonl__").glob("part-*.jsonl")) and not list(out.glob("*.jsonl"))

    df = pd.read_parquet(out)
    check_rows(list(df["id"]), expected)
    assert df["run_id"].nunique() == 2 and str(df["created_at"].dtype).startswith("datetime64")
    assert str(df["mean_logprob"].dtype) == "float64" and (df["mean_logprob"] <= 0).all()
    table = pads.dataset(out).to_table()
    check_rows(table.column("id").to_pylist(), expected)
    assert table.schema.field("segments").type == pa.list_(
        pa.struct([("start", pa.float64()), ("end", pa.float64()), ("text", pa.string()), ("language", pa.string())])
    )
    assert table.schema.field("language").type == pa.string()
    check_rows(pl.scan_parquet(f"{out}/**/*.parquet").collect()["id"].to_list(), expected)
    check_rows([r[0] for r in duckdb.sql(f"SELECT id FROM read_parquet('{out}/**/*.parquet')").fetchall()], expected)
    ds = datasets.load_dataset("parquet", data_dir=str(out), split="train", cache_dir=str(tmp_path / "hf"))
    check_rows(ds["id"], expected)
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
    check_rows(list(df["id"]), expected)
    assert df["run_id"].notna().all() and df["created_at"].notna().all()
    check_rows(pads.dataset(out, format="json").to_table().column("id").to_pylist(), expected)
    check_rows(pl.scan_ndjson(f"{out}/*.jsonl").collect()["id"].to_list(), expected)
    rows = duckdb.sql(f"SELECT id FROM read_json_auto('{out}/*.jsonl')").fetchall()
    check_rows([r[0] for r in rows], expected)
    ds = datasets.load_dataset("json", data_dir=str(out), split="train", cache_dir=str(tmp_path / "hf"))
    check_rows(ds["id"], expected)


def test_transcripts_sit_beside_the_table(tmp_path: Path) -> None:
    import datasets
    import pandas as pd

    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    shutil.copy(REPO / "examples" / "audio" / "hello.wav", inp / "hello.wav")
    run(inp, out, task="transcribe", format="parquet", subtitles=["srt", "vtt", "txt"])
    assert (out / "__transcripts__" / "hello.wav.srt").read_text().startswith("1\n")
    df = pd.read_parquet(out)
    assert list(df["id"]) == ["hello.wav"] and list(df["segments"][0][0]) == ["start", "end", "text", "language"]
    assert df["language"][0] in DETECT_CODES and df["segments"][0][0]["language"] == df["language"][0]
    ds = datasets.load_dataset("parquet", data_dir=str(out), split="train", cache_dir=str(tmp_path / "hf"))
    assert ds["id"] == ["hello.wav"]


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

    from gemma4u_batch.ledger import current_records
    from gemma4u_batch.writer import OutLayout

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
    assert len(list(current_records(OutLayout(out)))) == 6
    Image.new("RGB", (40, 30), (9, 9, 9)).save(inp / "img_0001.png")
    make_images(inp, 1, start=6)
    assert run(inp, out, format="both").done == 2
    assert not list(out.glob("*.jsonl"))  # compaction rewrote the old parts into the new layout
    df = pd.read_parquet(out)
    check_rows(list(df["id"]), {f"img_{i:04d}.png" for i in range(7)})
    assert df["run_id"].notna().sum() == 2  # the old records have none
