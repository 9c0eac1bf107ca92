"""A job whose model changes (docs/outputs.md#when-the-model-changes): refused by default;
with --on-model-change supersede OUT's records stay current until each item's record from
the new model replaces it, a kill part-way leaves a consistent mix and a rerun finishes the
changeover; a hub id's commit is pinned in OUT (tested against tests/hub_standin.py on
127.0.0.1: a newer upstream commit is reported and adopted only when asked, an offline rerun
asks nothing)."""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gemma4u_batch.cli.app import app
from gemma4u_batch.config.job import JobConfig
from gemma4u_batch.console import Reporter
from gemma4u_batch.engine.fake import FakeEngine
from gemma4u_batch.errors import UsageError
from gemma4u_batch.job.job import Job, run_job
from gemma4u_batch.prompting import keys
from gemma4u_batch.prompting.keys import model_fingerprint
from gemma4u_batch.store.layout import OutLayout
from gemma4u_batch.store.ledger import current_records
from gemma4u_batch.store.writer import committed_parts

from .helpers import fake_config, fake_job, gemma4u, make_images, records_by_id, run_fake
from .hub_standin import HubStandin

# ------------------------------------------------------------------- local model folders


def _model(root: Path, name: str, layers: int) -> Path:
    """A model folder as the fingerprint sees one (its config.json; the FakeEngine loads nothing)."""
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model_type": name, "num_hidden_layers": layers}))
    return root


def _manifest(out: Path) -> dict:
    return json.loads((out / ".gemma4u" / "run.json").read_text())


def _status(out: Path) -> dict:
    r = CliRunner().invoke(app, ["status", str(out), "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _snapshot(out: Path) -> dict[str, tuple[int, int]]:
    """OUT's files (the index cache aside) with their size and mtime."""
    return {
        str(p.relative_to(out)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(out.rglob("*"))
        if p.is_file() and "index" not in p.name
    }


def test_model_change_is_refused_by_default_and_names_the_choices(tmp_path: Path) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 4)
    a, b = _model(tmp_path / "a", "a", 1), _model(tmp_path / "b", "b", 2)
    run_fake(inp, out, model=str(a))
    before = _snapshot(out)
    with pytest.raises(UsageError) as info:
        run_fake(inp, out, model=str(b))
    message = str(info.value)
    assert "\n" not in message
    assert "different model" in message and "--overwrite" in message and "--on-model-change supersede" in message
    # the CLI: exit 2, one line naming the flag, no engine started, OUT untouched
    r = gemma4u("caption", str(inp), "-o", str(out), "--model", str(b), "--workers", "0", timeout=120)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--on-model-change supersede" in lines[0], r.stderr
    assert _snapshot(out) == before
    # another setting as well as the model: supersede does not help, and is not offered
    with pytest.raises(UsageError) as other:
        run_fake(inp, out, model=str(b), on_model_change="supersede", image_tokens=560)
    assert "image_tokens" in str(other.value) and "--on-model-change" not in str(other.value)
    assert _snapshot(out) == before


def test_gradual_model_change_killed_part_way_and_resumed(tmp_path: Path) -> None:
    """A: the whole job. B with supersede, SIGKILLed part-way: every id has one current record,
    from A or B, and status's counts per model add up. A rerun with B (no flag) finishes: every
    record from B, each superseding A's, run.json naming both."""
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 60)
    a, b = _model(tmp_path / "a", "a", 1), _model(tmp_path / "b", "b", 2)
    fa, fb = model_fingerprint(str(a)), model_fingerprint(str(b))
    run_fake(inp, out, model=str(a), commit_every=8)
    first = records_by_id(out)
    assert {r["model_fingerprint"] for r in first.values()} == {fa}

    before = len(committed_parts(OutLayout(out)))
    proc = fake_job(inp, out, "--model", str(b), "--on-model-change", "supersede", "--step-delay", "0.05")
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None and len(committed_parts(OutLayout(out))) <= before:
        time.sleep(0.01)
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    mix = list(current_records(OutLayout(out)))
    ids = [r["id"] for r in mix]
    assert sorted(ids) == sorted(first) and len(set(ids)) == len(ids)  # every id once
    by_model = {fp: sum(r["model_fingerprint"] == fp for r in mix) for fp in (fa, fb)}
    assert by_model[fa] > 0 and by_model[fb] > 0 and by_model[fa] + by_model[fb] == len(first)
    st = _status(out)
    assert st["records_by_model"] == by_model and sum(st["records_by_model"].values()) == st["records"]
    man = _manifest(out)
    assert man["model_fingerprint"] == fb and man["previous_model_fingerprints"] == [fa]
    human = CliRunner().invoke(app, ["status", str(out)])
    assert f"from model {fa}" in human.stdout and f"from model {fb}" in human.stdout

    # a rerun with B (without the flag: OUT's model is B now) finishes the changeover
    summary = run_fake(inp, out, model=str(b), commit_every=8)
    assert summary.done == by_model[fa]
    final = records_by_id_current(out)
    assert sorted(final) == sorted(first)
    assert {r["model_fingerprint"] for r in final.values()} == {fb}
    assert all(r["supersedes"] == first[i]["key"] for i, r in final.items())
    assert _status(out)["records_by_model"] == {fb: len(first)}
    man = _manifest(out)
    assert man["model_fingerprint"] == fb and man["previous_model_fingerprints"] == [fa]
    assert run_fake(inp, out, model=str(b)).already_complete
    # back to A is itself a model change: refused without the flag
    with pytest.raises(UsageError, match="--on-model-change supersede"):
        run_fake(inp, out, model=str(a))


def records_by_id_current(out: Path) -> dict[str, dict]:
    recs = list(current_records(OutLayout(out)))
    by_id = {r["id"]: r for r in recs}
    assert len(by_id) == len(recs)
    return by_id


def _tiny_variant(tiny_model: Path, root: Path, extra: int) -> Path:
    """The tiny checkpoint (its tokenizer renders the new model's prompts) under another
    fingerprint: its files linked, its config.json copied with one more key."""
    root.mkdir()
    for f in tiny_model.iterdir():
        if f.name != "config.json":
            (root / f.name).symlink_to(f)
    config = json.loads((tiny_model / "config.json").read_text())
    (root / "config.json").write_text(json.dumps({**config, "gemma4u_test_variant": extra}))
    return root


def test_dry_run_and_count_pending_accept_what_a_run_accepts(tmp_path: Path, tiny_model: Path) -> None:
    from gemma4u_batch.job.quickcheck import count_pending
    from gemma4u_batch.plan.plan import plan
    from gemma4u_batch.sources.job_input import JobInput

    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 5)
    a, b = _tiny_variant(tiny_model, tmp_path / "a", 1), _tiny_variant(tiny_model, tmp_path / "b", 2)
    run_fake(inp, out, model=str(a))
    refused = fake_config(inp, out, model=str(b))
    assert count_pending(refused, JobInput(refused).items()) is None
    assert plan(refused, sample=0).refused is not None
    gradual = fake_config(inp, out, model=str(b), on_model_change="supersede")
    assert count_pending(gradual, JobInput(gradual).items()) == 5
    p = plan(gradual, sample=0)
    assert p.refused is None and p.pending == 5
    assert any("model change" in n for n in p.notes)
    # status --count-pending after a changeover stopped part-way: what a rerun would generate
    some = list(JobInput(gradual).items())[:2]
    run_job(gradual, FakeEngine(), items=some, reporter=Reporter("quiet"))
    r = CliRunner().invoke(app, ["status", str(out), "--count-pending", "--json"])
    assert r.exit_code == 0, r.output
    st = json.loads(r.stdout)
    assert st["pending"] == 3 and st["records_by_model"] == {model_fingerprint(str(a)): 3, model_fingerprint(str(b)): 2}


def test_a_shard_that_changes_the_model_records_it_in_run_json(tmp_path: Path) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 6)
    a, b = _model(tmp_path / "a", "a", 1), _model(tmp_path / "b", "b", 2)
    run_fake(inp, out, model=str(a))
    for i in range(2):
        run_fake(inp, out, model=str(b), on_model_change="supersede", shard=f"{i}/2")
    man = _manifest(out)
    assert man["model_fingerprint"] == model_fingerprint(str(b))
    assert man["previous_model_fingerprints"] == [model_fingerprint(str(a))]
    assert run_fake(inp, out, model=str(b)).already_complete  # no flag needed any more


# ------------------------------------------------------------------------- a hub id's pin

TOKEN = "hf_standin_token"
REPO = "org/model"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubStandin]:
    """The stand-in, online, with a temporary HF_HOME (nothing of the machine's caches)."""
    import huggingface_hub.constants

    with HubStandin(TOKEN) as standin:
        try:
            with pytest.MonkeyPatch.context() as mp:
                env = {
                    "HF_ENDPOINT": standin.endpoint,
                    "HF_HOME": str(tmp_path / "hf-home"),
                    "HF_HUB_OFFLINE": "0",
                    "HF_HUB_DISABLE_TELEMETRY": "1",
                }
                for name, value in env.items():
                    mp.setenv(name, value)
                for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN", "HF_TOKEN_PATH"):
                    mp.delenv(name, raising=False)
                importlib.reload(huggingface_hub.constants)
                _forget_lookups()
                yield standin
        finally:
            importlib.reload(huggingface_hub.constants)
            _forget_lookups()
    assert not standin.unexpected, standin.unexpected


def _forget_lookups() -> None:
    """Each CLI run is a new process: so is each run here, as far as the hub lookups go."""
    keys._hub_commit.cache_clear()
    keys.upstream_commit.cache_clear()


def _asked(hub: HubStandin) -> int:
    return len(hub.requests("GET", f"/api/models/{REPO}"))


def test_a_hub_id_is_pinned_to_the_commit_of_the_first_run(
    hub: HubStandin, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub
    import huggingface_hub.constants

    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 3)
    commit_a = hub.seed(REPO, {"config.json": "{}"}, repo_type="model")
    run_fake(inp, out, model=REPO)
    assert _manifest(out)["model_commit"] == commit_a
    first = records_by_id(out)
    assert {r["model_fingerprint"] for r in first.values()} == {f"{REPO}@{commit_a}"}

    commit_b = hub.seed(REPO, {"config.json": '{"v": 2}'}, repo_type="model")
    _forget_lookups()
    asked = _asked(hub)
    with caplog.at_level(logging.WARNING, logger="gemma4u_batch"):
        assert run_fake(inp, out, model=REPO).already_complete  # nothing redone
    assert _asked(hub) == asked + 1  # one request: whether upstream moved
    newer = [r.getMessage() for r in caplog.records if "newer commit" in r.getMessage()]
    assert len(newer) == 1 and commit_b in newer[0] and commit_a in newer[0] and "--revision" in newer[0]
    assert _manifest(out)["model_commit"] == commit_a
    config = fake_config(inp, out, model=REPO)
    job = Job(config)
    assert job.fingerprint == f"{REPO}@{commit_a}"
    assert job.model.loading(job.config).engine.revision == commit_a  # what the engine loads
    assert job.config.engine.revision is None  # keys and the guard: as at the first run

    # --revision B: a model change, refused without the flag (one line naming it)
    _forget_lookups()
    with pytest.raises(UsageError) as info:
        run_fake(fake_config(inp, out, model=REPO, engine={"revision": commit_b}))
    assert "\n" not in str(info.value) and "--on-model-change supersede" in str(info.value)
    # --revision A (the pin by its commit id): nothing changes
    _forget_lookups()
    assert run_fake(fake_config(inp, out, model=REPO, engine={"revision": commit_a})).already_complete

    # gradual mode without --revision: the hub's newer commit is adopted, the records redone
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    _forget_lookups()
    summary = run_fake(inp, moved, model=REPO, on_model_change="supersede")
    assert summary.done == 3
    man = _manifest(moved)
    assert man["model_commit"] == commit_b and man["model_fingerprint"] == f"{REPO}@{commit_b}"
    assert man["previous_model_fingerprints"] == [f"{REPO}@{commit_a}"]
    assert {r["model_fingerprint"] for r in current_records(OutLayout(moved))} == {f"{REPO}@{commit_b}"}

    # HF_HUB_OFFLINE=1 and the stand-in stopped: the pins hold and nothing is asked of the hub
    asked = _asked(hub)
    hub.__exit__(None, None, None)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    calls: list[str] = []
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda self, repo, **kw: calls.append(repo))
    _forget_lookups()
    assert run_fake(inp, out, model=REPO).already_complete
    assert run_fake(inp, moved, model=REPO).already_complete
    assert Job(fake_config(inp, out, model=REPO)).fingerprint == f"{REPO}@{commit_a}"
    assert Job(fake_config(inp, moved, model=REPO)).fingerprint == f"{REPO}@{commit_b}"
    assert calls == [] and _asked(hub) == asked


def test_a_hub_id_supersede_with_its_revision(hub: HubStandin, tmp_path: Path) -> None:
    """--revision B with --on-model-change supersede adopts B; a later rerun without either
    keeps B (OUT's --revision), asking the hub once."""
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 2)
    commit_a = hub.seed(REPO, {"config.json": "{}"}, repo_type="model")
    run_fake(inp, out, model=REPO)
    commit_b = hub.seed(REPO, {"config.json": '{"v": 2}'}, repo_type="model")
    _forget_lookups()
    summary = run_fake(fake_config(inp, out, model=REPO, engine={"revision": commit_b}, on_model_change="supersede"))
    assert summary.done == 2
    man = _manifest(out)
    assert man["model_commit"] == commit_b and man["previous_model_fingerprints"] == [f"{REPO}@{commit_a}"]
    _forget_lookups()
    assert run_fake(inp, out, model=REPO).already_complete
    assert JobConfig.model_validate(man["config"]).engine.revision == commit_b


def test_records_without_a_fingerprint_are_counted_under_the_first_model() -> None:
    """Records indexed before records kept their fingerprint: the model OUT was first made with
    (run.json's oldest previous fingerprint, else its current one), else "unknown"."""
    from gemma4u_batch.store.ledger import records_by_model

    counts: dict[str | None, int] = {None: 3, "b@2": 2}
    assert records_by_model(counts, {"model_fingerprint": "b@2", "previous_model_fingerprints": ["a@1"]}) == {
        "a@1": 3,
        "b@2": 2,
    }
    assert records_by_model({None: 3}, {"model_fingerprint": "a@1"}) == {"a@1": 3}
    assert records_by_model(counts, None) == {"b@2": 2, "unknown": 3}


def test_the_recipe_key_and_its_check(tmp_path: Path) -> None:
    from gemma4u_batch.plan.recipes import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"input: {tmp_path}\noutput: {tmp_path / 'out'}\non_model_change: supersede\n")
    assert load_recipe(recipe, [], None).on_model_change == "supersede"
    assert load_recipe(recipe, ["on_model_change=refuse"], None).on_model_change == "refuse"
    recipe.write_text(f"input: {tmp_path}\noutput: {tmp_path / 'out'}\non_model_change: replace\n")
    with pytest.raises(UsageError, match="on_model_change"):
        load_recipe(recipe, [], None)
