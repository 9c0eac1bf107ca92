"""Content keys and the model fingerprint (prompting/keys.py): what makes a record's key, and
which model a local folder or a hub id is (its weight files, or the revision it resolves to)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from gemma4u_batch.config.job import JobConfig
from gemma4u_batch.errors import UsageError
from gemma4u_batch.job.job import Job
from gemma4u_batch.prompting.keys import KeyMaker, content_key, model_fingerprint

from .helpers import EXAMPLES, run_fake


def test_key_maker_gives_content_key_bytes() -> None:
    settings = {"task": "caption", "sampling": {"max_tokens": 5}, "json_schema": None, "tasks": ["a", "b"]}
    make = KeyMaker("tiny@abc", settings)
    for task in ("caption", "tags"):
        for content, prompt in (("x" * 64, '<p>\n\u00e9"q"'), ("unread:/a b", "")):
            want = content_key(
                content=content, prompt=prompt, model_fingerprint="tiny@abc", settings={**settings, "task": task}
            )
            assert make(content=content, prompt=prompt, task=task) == want


# ------------------------------------------------------------------ local checkpoints


@pytest.fixture
def model_copy(tiny_model: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny checkpoint (the session's is shared with engine tests)."""
    return Path(shutil.copytree(tiny_model, tmp_path / "model"))


def test_local_fingerprint_follows_the_weight_files(model_copy: Path) -> None:
    weights = model_copy / "model.safetensors"
    before = model_fingerprint(str(model_copy))
    assert before == model_fingerprint(str(model_copy))  # stable
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    touched = model_fingerprint(str(model_copy))
    assert touched != before  # a touch (or a retrained file of the same size) is another model
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, other content: a retrained checkpoint of the same shape
    weights.write_bytes(bytes(data))
    assert model_fingerprint(str(model_copy)) not in (before, touched)
    (model_copy / "generation_config.json").write_text('{"temperature": 0.5}')
    assert model_fingerprint(str(model_copy)) != touched


def test_verify_weights_fingerprints_content(model_copy: Path, tmp_path: Path) -> None:
    weights = model_copy / "model.safetensors"
    verified = model_fingerprint(str(model_copy), verify_weights=True)
    assert verified.startswith("model@sha256:") and verified != model_fingerprint(str(model_copy))
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert model_fingerprint(str(model_copy), verify_weights=True) == verified  # mtime alone: same content
    copy = Path(shutil.copytree(model_copy, tmp_path / "elsewhere" / "model"))  # no mtimes kept
    assert model_fingerprint(str(copy), verify_weights=True) == verified
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert model_fingerprint(str(model_copy), verify_weights=True) != verified
    config = JobConfig(input=tmp_path, output=tmp_path / "out", model=str(model_copy), verify_weights=True)
    assert Job(config).fingerprint == model_fingerprint(str(model_copy), verify_weights=True)  # the flag reaches keys
    assert not model_fingerprint(str(model_copy)).startswith("model@sha256:")


def test_rewritten_weights_make_a_rerun_into_out_refused(model_copy: Path, tmp_path: Path) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(EXAMPLES / "images" / "shapes.png", inp / "shapes.png")
    config = JobConfig(input=inp, output=tmp_path / "out", model=str(model_copy), workers=0)
    run_fake(config)
    assert run_fake(config).already_complete
    weights = model_copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(UsageError, match=r"different model \(model fingerprint model@\w+ → model@\w+") as info:
        run_fake(config)
    assert "--overwrite" in str(info.value)
    summary = run_fake(config.model_copy(update={"overwrite": True}))  # what the user does then
    assert summary.done == 1


# ------------------------------------------------------------------------- hub models


def _fake_hub_cache(root: Path, repo: str, commit: str) -> None:
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snap = folder / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")


def test_hub_model_is_fingerprinted_by_its_resolved_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    from gemma4u_batch.prompting import keys
    from gemma4u_batch.prompting.keys import fingerprint_note

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # no network in tests: the cache answers
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    keys._hub_commit.cache_clear()
    _fake_hub_cache(tmp_path / "hub", "org/model", "a" * 40)
    assert model_fingerprint("org/model") == "org/model@" + "a" * 40
    assert fingerprint_note("org/model") is None
    keys._hub_commit.cache_clear()
    _fake_hub_cache(tmp_path / "hub2", "org/model", "b" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub2"))
    assert model_fingerprint("org/model") == "org/model@" + "b" * 40  # a new revision: a new fingerprint
    # Not in the cache and offline: the bare id, with a note saying what that means.
    assert model_fingerprint("org/unknown") == "org/unknown"
    note = fingerprint_note("org/unknown")
    assert note is not None and "offline" in note and "bare id" in note
    keys._hub_commit.cache_clear()


def test_hub_fingerprint_honours_the_revision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--revision v2 is the commit refs/v2 names in the cache, not main's; the flag reaches the
    job's fingerprint (hence keys and OUT's guard)."""
    from huggingface_hub import constants

    from gemma4u_batch.prompting import keys

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    keys._hub_commit.cache_clear()
    _fake_hub_cache(tmp_path / "hub", "org/model", "a" * 40)
    folder = tmp_path / "hub" / "models--org--model"
    (folder / "refs" / "v2").write_text("c" * 40)
    (folder / "snapshots" / ("c" * 40)).mkdir()
    (folder / "snapshots" / ("c" * 40) / "config.json").write_text("{}")
    try:
        assert model_fingerprint("org/model") == "org/model@" + "a" * 40
        assert model_fingerprint("org/model", revision="v2") == "org/model@" + "c" * 40
        assert model_fingerprint("org/model", revision="c" * 40) == "org/model@" + "c" * 40
        config = JobConfig.model_validate(
            {
                "input": str(tmp_path),
                "output": str(tmp_path / "out"),
                "model": "org/model",
                "engine": {"revision": "v2"},
            }
        )
        assert Job(config).fingerprint == "org/model@" + "c" * 40
    finally:
        keys._hub_commit.cache_clear()


def test_run_manifest_records_an_unresolved_revision(tmp_path: Path) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(EXAMPLES / "images" / "shapes.png", inp / "shapes.png")
    run_fake(inp, tmp_path / "out", model="org/not-cached-anywhere")
    man = json.loads((tmp_path / "out" / ".gemma4u" / "run.json").read_text())
    assert man["model_fingerprint"] == "org/not-cached-anywhere"
    assert "bare id" in man["model_fingerprint_note"]
