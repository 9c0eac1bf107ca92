"""Deleted inputs (#29): `status` counts the current records whose input is gone, `--prune` (and
`prune: true`) retires them with tombstones, which the table, export and report leave out; a
file that comes back is redone. And `status`'s figures stay true after a rerun that did nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pyarrow.dataset as pads
from typer.testing import CliRunner

from gemma4u_batch.cli.app import app
from gemma4u_batch.job.job import JobSummary
from gemma4u_batch.store.layout import OutLayout
from gemma4u_batch.store.ledger import current_records
from gemma4u_batch.store.writer import iter_committed_records

from .helpers import aged, make_images, run_fake

IDS = [f"img_{i:04d}.png" for i in range(10)]
GONE = IDS[2:5]


def status(out: Path, *extra: str) -> dict:
    """`gemma4u status OUT --json`, from the command in this process."""
    r = CliRunner().invoke(app, ["status", str(out), "--json", *extra])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def run(inp: Path, out: Path, **settings) -> JobSummary:
    return run_fake(inp, out, commit_every=4, format="parquet", **settings)


def committed(out: Path) -> list[dict]:
    return list(iter_committed_records(OutLayout(out)))


def test_status_after_a_rerun_that_did_nothing_is_true(tmp_path: Path) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 10)
    aged(inp)
    t0 = time.time()
    first = run(inp, out)
    wall = time.time() - t0
    assert first.done == 10
    before = status(out)
    assert before["complete"] and before["throughput"] is not None
    assert 0 < before["throughput"] <= 10 / (before["finished_at"] - before["started_at"]) + 1e-9
    assert before["throughput"] >= 10 / wall * 0.5  # the run's own span, not some other

    again = run(inp, out)
    assert again.done == 0 and again.already_complete
    st = status(out)
    assert st["complete"] and not st["active"]
    assert st["records"] == st["done"] == 10 and st["errors"] == 0 and st["tombstones"] == 0
    assert st["started_at"] > before["started_at"] and st["finished_at"] >= st["started_at"]
    assert st["last_update"] <= st["started_at"], "nothing was committed by the rerun"
    # The rerun committed nothing: no rate (it was 1.5e9 records/s here), and why.
    assert st["throughput"] is None and "no record" in st["throughput_note"]
    assert st["pending"] is None and st["missing_inputs"] == 0
    shown = CliRunner().invoke(app, ["status", str(out)])
    assert shown.exit_code == 0 and "committed no record" in shown.stdout


def test_deleted_inputs_counted_pruned_and_redone(tmp_path: Path) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 10)
    aged(inp)
    run(inp, out)
    kept_bytes = (inp / GONE[0]).read_bytes()
    for name in GONE:
        (inp / name).unlink()

    # A rerun counts the records whose input is gone; they stay as they are.
    n_before = len(committed(out))
    summary = run(inp, out)
    assert summary.done == 0 and summary.missing_inputs == 3 and summary.pruned == 0
    assert len(committed(out)) == n_before
    st = status(out)
    assert st["missing_inputs"] == 3 and st["records"] == 10 and st["tombstones"] == 0
    assert status(out, "--count-pending")["missing_inputs"] == 3  # counted afresh by walking
    human = CliRunner().invoke(app, ["status", str(out)]).stdout
    assert "3 records have no input any more" in human and "--prune" in human

    # --prune: a tombstone each, committed; the results and the table leave them out.
    pruned = run(inp, out, prune=True)
    assert pruned.pruned == 3 and pruned.done == 0 and not pruned.already_complete
    st = status(out)
    assert (st["records"], st["done"], st["tombstones"], st["missing_inputs"]) == (7, 7, 3, 0)
    tombs = [r for r in current_records(OutLayout(out), tombstones=True) if r["tombstone"]]
    assert sorted(r["id"] for r in tombs) == GONE
    for r in tombs:
        assert r["text"] is None and r["data"] is None and r["error"] is None and r["segments"] is None
        assert r["supersedes"] == r["key"] and r["run_id"] and r["created_at"] and r["model_fingerprint"]
        assert r["source"] and r["modality"] == "image" and r["task"] == "caption"
    assert sorted(r["id"] for r in current_records(OutLayout(out))) == sorted(set(IDS) - set(GONE))
    table = pd.read_parquet(out)
    assert sorted(table["id"]) == sorted(set(IDS) - set(GONE)) and not table["tombstone"].any()
    ds = pads.dataset(out).to_table()
    assert ds.num_rows == 7
    assert list((out / "__tombstones__").glob("part-*.jsonl")), "tombstones live under __tombstones__/"
    assert not list(out.glob("*.jsonl"))

    # Export leaves them out unless asked.
    r = CliRunner().invoke(app, ["export", str(out), "--to", str(tmp_path / "x.jsonl")])
    assert r.exit_code == 0, r.output
    exported = [json.loads(line) for line in (tmp_path / "x.jsonl").read_text().splitlines()]
    assert sorted(e["id"] for e in exported) == sorted(set(IDS) - set(GONE))
    assert not any(e["tombstone"] for e in exported)
    r = CliRunner().invoke(app, ["export", str(out), "--to", str(tmp_path / "y.jsonl"), "--include-tombstones"])
    assert r.exit_code == 0, r.output
    with_tombs = [json.loads(line) for line in (tmp_path / "y.jsonl").read_text().splitlines()]
    assert sorted(e["id"] for e in with_tombs if e["tombstone"]) == GONE and len(with_tombs) == 10

    # Pruning again: nothing new.
    n_before = len(committed(out))
    again = run(inp, out, prune=True)
    assert again.pruned == 0 and again.done == 0 and len(committed(out)) == n_before
    assert status(out)["tombstones"] == 3

    # A file that comes back is redone: its record supersedes the tombstone.
    (inp / GONE[0]).write_bytes(kept_bytes)
    back = run(inp, out, prune=True)
    assert back.done == 1 and back.pruned == 0
    cur = {r["id"]: r for r in current_records(OutLayout(out), tombstones=True)}
    assert cur[GONE[0]]["tombstone"] is False and cur[GONE[0]]["text"]
    assert cur[GONE[0]]["supersedes"] == cur[GONE[0]]["key"], "the same bytes: it supersedes its tombstone's key"
    st = status(out)
    assert (st["records"], st["tombstones"], st["missing_inputs"]) == (8, 2, 0)
    assert sorted(pd.read_parquet(out)["id"]) == sorted(set(IDS) - set(GONE[1:]))
    lines = [json.loads(x) for f in (out / "__tombstones__").glob("*.jsonl") for x in f.read_text().splitlines()]
    assert sorted(r["id"] for r in lines) == GONE[1:], "compaction dropped the superseded tombstone"


def test_prune_only_after_a_walk_of_the_whole_input(tmp_path: Path) -> None:
    """A shard other than 0 counts but does not prune; shard 0 prunes; a given sample neither."""
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 6)
    aged(inp)
    for i in range(2):
        run_fake(inp, out, shard=f"{i}/2")
    (inp / "img_0000.png").unlink()
    one = run_fake(inp, out, shard="1/2", prune=True)
    assert one.pruned == 0 and one.missing_inputs == 1
    zero = run_fake(inp, out, shard="0/2", prune=True)
    assert zero.pruned == 1 and zero.missing_inputs == 0
    st = status(out)
    assert (st["records"], st["tombstones"], st["missing_inputs"]) == (5, 1, 0)


def test_recipe_prune_key(tmp_path: Path) -> None:
    from gemma4u_batch.plan.recipes import load_recipe

    make_images(tmp_path / "in", 3)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("input: in\noutput: out\nmodel: fake-model\nprune: true\n")
    config = load_recipe(recipe, [], None)
    assert config.prune is True
    run_fake(config.model_copy(update={"workers": 0}))
    (tmp_path / "in" / "img_0001.png").unlink()
    assert run_fake(config.model_copy(update={"workers": 0})).pruned == 1


def test_walk_counts_over_many_chunks(tmp_path: Path) -> None:
    """The walk's ids go into the index a chunk at a time: over many chunks (some ids repeated,
    as a manifest may), the one record whose id was never met is the one counted missing."""
    from gemma4u_batch.job.prune import InputWalk
    from gemma4u_batch.records import Modality, WorkItem
    from gemma4u_batch.sources.chunks import chunked
    from gemma4u_batch.store.index import OutIndex

    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 2)
    run_fake(inp, out)
    ids = [f"dir/{i:08d}.png" for i in range(5000)] + ["img_0001.png", "dir/00000007.png"]
    items = [WorkItem(id=i, source="x", modality=Modality.IMAGE) for i in ids]
    with OutIndex(OutLayout(out)) as index:
        walk = InputWalk(index)
        assert sum(len(chunk) for chunk in walk.track(chunked(items))) == len(items)
        assert walk.missing() == 1  # img_0000.png
        walk.end()
