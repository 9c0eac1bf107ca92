"""The pipeline on the FakeEngine: batching, one record per input, resume and guards.

Fast unit tests; the real engine is exercised in test_e2e_*.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gemma4u_batch.config.job import JobConfig, SamplingConfig
from gemma4u_batch.engine.fake import FakeEngine
from gemma4u_batch.errors import UsageError
from gemma4u_batch.prompting.units import EngineRequest
from gemma4u_batch.store.layout import OutLayout
from gemma4u_batch.store.writer import committed_parts

from .helpers import fake_config, records, run_fake, write_image_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("imgs") / "in"
    return root, write_image_folder(root)


def cfg(inp: Path, out: Path, **settings) -> JobConfig:
    """A FakeEngine job committing every 3 records (several parts, compacted at the end)."""
    return fake_config(inp, out, commit_every=3, **settings)


def test_one_record_per_input_with_errors(folder, tmp_path: Path) -> None:
    root, expected = folder
    summary = run_fake(cfg(root, tmp_path / "out", workers=2))
    recs = records(tmp_path / "out")
    assert sorted(r["id"] for r in recs) == sorted(expected)
    assert summary.done == len(expected)
    by_id = {r["id"]: r for r in recs}
    for rid, kind in expected.items():
        if kind == "ok":
            assert by_id[rid]["error"] is None and by_id[rid]["text"].startswith("fake ")
            assert "image" in by_id[rid]["text"]
        else:
            assert by_id[rid]["error_kind"] == kind and by_id[rid]["text"] is None
    assert summary.errors == sum(1 for k in expected.values() if k != "ok")
    # Data files sit directly under OUT, bookkeeping in .gemma4u/, and everything committed.
    out = tmp_path / "out"
    assert all(p.name.startswith("part-") for p in out.iterdir() if p.is_file())
    assert (out / ".gemma4u" / "complete.json").exists()
    assert sum(p["records"] for p in committed_parts(OutLayout(out))) == len(expected)


def test_rerun_does_nothing_and_engine_not_used(folder, tmp_path: Path) -> None:
    root, expected = folder
    out = tmp_path / "out"
    run_fake(cfg(root, out))
    before = sorted(p.name for p in out.iterdir())
    eng = FakeEngine()
    summary = run_fake(cfg(root, out), engine=eng)
    assert summary.already_complete and summary.skipped == len(expected) and summary.done == 0
    assert eng.added == 0
    assert sorted(p.name for p in out.iterdir()) == before


def test_guard_refuses_other_settings_unless_overwrite(folder, tmp_path: Path) -> None:
    root, _ = folder
    out = tmp_path / "out"
    run_fake(cfg(root, out))
    with pytest.raises(UsageError, match="different prompt"):
        run_fake(cfg(root, out, prompt="Other instruction"))
    with pytest.raises(UsageError, match="different sampling"):
        run_fake(cfg(root, out, sampling=SamplingConfig(temperature=0.7)))
    summary = run_fake(cfg(root, out, prompt="Other instruction", overwrite=True))
    recs = records(out)
    assert len(recs) == summary.done and {r["prompt"] for r in recs if r["error"] is None} == {"Other instruction"}


def test_retry_errors_redoes_only_errors(folder, tmp_path: Path) -> None:
    root, expected = folder
    out = tmp_path / "out"
    run_fake(cfg(root, out))
    eng = FakeEngine()
    summary = run_fake(cfg(root, out, retry_errors=True), engine=eng)
    n_err = sum(1 for k in expected.values() if k != "ok")
    assert summary.done == n_err and summary.skipped == len(expected) - n_err
    assert eng.added == 0  # the bad files are still bad: error records again, no engine work


def test_engine_rejection_is_a_record(folder, tmp_path: Path) -> None:
    root, _expected = folder
    eng = FakeEngine(fail_if=lambda r: "prompt too long" if "astronaut.jpg" in r.payload[0].decoded.item.id else None)
    run_fake(cfg(root, tmp_path / "out"), engine=eng)
    by_id = {r["id"]: r for r in records(tmp_path / "out")}
    assert by_id["astronaut.jpg"]["error_kind"] == "rejected"
    assert "prompt too long" in by_id["astronaut.jpg"]["error"]
    assert by_id["astro.webp"]["error"] is None


def test_keys_change_with_content_and_settings(folder, tmp_path: Path) -> None:
    root, _ = folder
    run_fake(cfg(root, tmp_path / "a"))
    run_fake(cfg(root, tmp_path / "b", sampling=SamplingConfig(max_tokens=7)))
    a = {r["id"]: r["key"] for r in records(tmp_path / "a")}
    b = {r["id"]: r["key"] for r in records(tmp_path / "b")}
    assert a.keys() == b.keys() and all(a[k] != b[k] for k in a)
    assert len(set(a.values())) == len(a)


def test_parquet_and_both_formats(folder, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    root, expected = folder
    out = tmp_path / "out"
    run_fake(cfg(root, out, format="both"))
    pqs = sorted(out.glob("*.parquet"))
    jsonls = sorted(out.glob("__jsonl__/*.jsonl"))  # beside the table: pyarrow/pandas read OUT as Parquet
    assert not list(out.glob("*.jsonl"))
    assert len(pqs) == len(jsonls) == 1  # many commits (commit_every=3), compacted at the end of the run
    table = pq.read_table(pqs)
    assert table.num_rows == len(expected)
    assert sorted(table.column("id").to_pylist()) == sorted(expected)
    meta = pq.read_schema(pqs[0]).metadata
    assert meta[b"gemma4u.model"] == b"fake-model"
    lines = [json.loads(line) for p in jsonls for line in p.read_text().splitlines()]
    assert sorted(r["id"] for r in lines) == sorted(table.column("id").to_pylist())


def test_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not found"):
        run_fake(cfg(tmp_path / "missing", tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no media files"):
        run_fake(cfg(tmp_path / "empty", tmp_path / "out"))


def test_fake_engine_keeps_bounded_in_flight(folder, tmp_path: Path) -> None:
    root, _ = folder
    peak = 0

    class Probe(FakeEngine):
        def add(self, request: EngineRequest):
            nonlocal peak
            res = super().add(request)
            peak = max(peak, len(self._inflight))
            return res

    run_fake(cfg(root, tmp_path / "out"), engine=Probe(max_in_flight=3))
    assert peak == 3


def test_engine_death_requeues_in_flight_and_is_bounded(folder, tmp_path: Path) -> None:
    from gemma4u_batch.errors import EngineFailure

    root, expected = folder
    eng = FakeEngine(die_at_steps=(2, 5))
    summary = run_fake(cfg(root, tmp_path / "out", engine_restarts=2), engine=eng)
    recs = records(tmp_path / "out")
    assert sorted(r["id"] for r in recs) == sorted(expected)  # nothing lost, nothing doubled
    assert summary.done == len(expected)
    # Dying more often than allowed: stops with a resumable state.
    with pytest.raises(EngineFailure, match="died 2 times"):
        run_fake(cfg(root, tmp_path / "out2", engine_restarts=1), engine=FakeEngine(die_at_steps=(2, 3)))
    partial = records(tmp_path / "out2")
    assert len({r["id"] for r in partial}) == len(partial)
    summary = run_fake(cfg(root, tmp_path / "out2"))
    assert sorted(r["id"] for r in records(tmp_path / "out2")) == sorted(expected)
