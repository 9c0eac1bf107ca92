"""Issue #17, "the failure contract, everywhere": what was wrong or missing, fast (FakeEngine,
no vLLM). The exit codes through the real CLI are in test_exit_codes.py."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from rich.console import Console

from gemma4u_batch.config.job import JobConfig
from gemma4u_batch.console import Reporter
from gemma4u_batch.decode.options import decode_options
from gemma4u_batch.engine.fake import FakeEngine
from gemma4u_batch.errors import UsageError
from gemma4u_batch.job.job import Job, JobSummary, run_job
from gemma4u_batch.prompting.keys import model_fingerprint
from gemma4u_batch.store.layout import OutLayout
from gemma4u_batch.store.writer import iter_committed_records

from .conftest import GEMMA4U, REPO

EXAMPLES = REPO / "examples"


def _records(out: Path) -> dict[tuple[str, str], dict]:
    return {(r["id"], r["task"]): r for r in iter_committed_records(OutLayout(out))}


def _run(config: JobConfig) -> JobSummary:
    return run_job(config, FakeEngine(), reporter=Reporter("quiet"))


def _cli(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GEMMA4U, *args], capture_output=True, text=True, timeout=timeout, **kw)


# ------------------------------------------------------------------ 1. wrong or missing


def test_estimate_projects_every_task_of_an_item(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With two tasks an item is two records: the projection counts both (it used to count one)."""
    from gemma4u_batch.plan import estimate as estimating

    def sample_run(config, items, engine, reporter):
        # every sampled item made one record per task; 10 s of work, no start-up
        return JobSummary(done=2 * len(items), elapsed_s=10.0), 0.0

    monkeypatch.setattr(estimating, "_run_sample", sample_run)
    config = JobConfig(
        input=EXAMPLES / "images", output=tmp_path / "out", model="fake-model", tasks=["caption", "tags"], workers=0
    )
    est = estimating.estimate(config, 2)
    assert est.records == 4 and est.records_per_item == 2
    assert est.per_record_s == pytest.approx(2.5)
    assert est.per_item_s == pytest.approx(5.0)  # 10 s for 2 items, whatever the number of records
    assert est.projected_s == pytest.approx(5.0 * est.total_items)
    console = Console(file=io.StringIO(), width=140)
    estimating.print_estimate(est, console)
    assert "2 records per item" in console.file.getvalue()  # type: ignore[attr-defined]


def _mixed_media(root: Path) -> Path:
    root.mkdir(parents=True)
    shutil.copy(EXAMPLES / "images" / "shapes.png", root / "shapes.png")
    shutil.copy(EXAMPLES / "audio" / "hello.wav", root / "hello.wav")
    return root


def test_task_without_an_instruction_for_the_modality_is_an_item_error(tmp_path: Path) -> None:
    """`--task ocr` on audio used to send the image instruction; now that item is an error
    record of its own kind and the rest of the job goes on."""
    inp = _mixed_media(tmp_path / "in")
    summary = _run(JobConfig(input=inp, output=tmp_path / "out", model="fake-model", task="ocr", workers=0))
    recs = _records(tmp_path / "out")
    audio, image = recs[("hello.wav", "ocr")], recs[("shapes.png", "ocr")]
    assert audio["error_kind"] == "unsupported_modality" and audio["text"] is None
    assert "task 'ocr' has no instruction for audio" in audio["error"]
    assert "image" not in (audio["prompt"] or "")  # nothing about reading text in an image was sent
    assert image["error"] is None and image["text"] and "visible in this image" in image["prompt"]
    assert summary.errors == 1 and summary.done == 2
    # A rerun skips it like any other record (same key); a prompt makes the task usable on audio.
    assert _run(
        JobConfig(input=inp, output=tmp_path / "out", model="fake-model", task="ocr", workers=0)
    ).already_complete
    _run(JobConfig(input=inp, output=tmp_path / "p", model="fake-model", task="ocr", prompt="Any words?", workers=0))
    assert _records(tmp_path / "p")[("hello.wav", "ocr")]["error"] is None


def test_plan_says_which_items_a_task_cannot_serve(tmp_path: Path) -> None:
    from gemma4u_batch.plan.plan import plan

    inp = _mixed_media(tmp_path / "in")
    p = plan(JobConfig(input=inp, output=tmp_path / "out", task="ocr", workers=0), sample=1)
    assert any("task 'ocr' has no instruction for audio" in n for n in p.notes), p.notes


def _tone(path: Path, seconds: float) -> None:
    t = np.arange(int(seconds * 16000)) / 16000
    sf.write(path, (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)


def test_captioning_long_audio_flags_the_truncation(tmp_path: Path) -> None:
    """Captioning sends the first 30 s of audio: the record says so (`audio_truncated`); speech
    tasks window the whole file's speech and short files are whole, so neither is flagged. A steady
    tone holds no speech: its transcription sends nothing and says so (`no_speech`)."""
    inp = tmp_path / "in"
    inp.mkdir()
    lecture, sr = sf.read(EXAMPLES / "audio" / "lecture_95s.flac", dtype="float32")
    sf.write(inp / "long.wav", lecture[: 35 * sr], sr)
    _tone(inp / "short.wav", 5.0)
    _run(JobConfig(input=inp, output=tmp_path / "cap", model="fake-model", tasks=["caption", "transcribe"], workers=0))
    recs = _records(tmp_path / "cap")
    assert "audio_truncated" in recs[("long.wav", "caption")]["flags"]
    assert "audio_truncated" not in recs[("long.wav", "transcribe")]["flags"]
    assert len(recs[("long.wav", "transcribe")]["segments"]) == 2
    assert "audio_truncated" not in recs[("short.wav", "caption")]["flags"]
    silent = recs[("short.wav", "transcribe")]
    assert (silent["text"], silent["segments"], silent["error"]) == ("", [], None)
    assert silent["flags"] == ["no_speech"]


def test_video_soundtrack_past_30s_is_flagged(tmp_path: Path) -> None:
    from gemma4u_batch.decode.item import DecodedItem, VideoFrames
    from gemma4u_batch.prompting.units import media_flags
    from gemma4u_batch.records import Modality, WorkItem

    item = WorkItem(id="v.mp4", source="v.mp4", modality=Modality.VIDEO)
    video = VideoFrames(frames=[], timestamps=[], indices=[], fps=1.0, duration=40.0, total_frames=40)
    cut = DecodedItem(item, video=video, audio=np.zeros(480000, np.float32), info={"audio": {"truncated": True}})
    whole = DecodedItem(item, video=video, audio=np.zeros(16000, np.float32), info={"audio": {"truncated": False}})
    assert media_flags(cut, windowed_audio=False) == ["audio_truncated"]
    assert media_flags(whole, windowed_audio=False) == []


def test_column_chooses_the_manifest_media_column(tmp_path: Path) -> None:
    from gemma4u_batch.sources import open_source

    shutil.copy(EXAMPLES / "images" / "shapes.png", tmp_path / "a.png")
    shutil.copy(EXAMPLES / "images" / "sunset.jpg", tmp_path / "b.jpg")
    man = tmp_path / "m.jsonl"
    # `image` would be picked by name; --column media says the media is elsewhere.
    man.write_text(json.dumps({"id": "x", "image": "a.png", "media": "b.jpg"}) + "\n")
    assert next(iter(open_source(man))).path.name == "a.png"
    assert next(iter(open_source(man, column="media"))).path.name == "b.jpg"
    csv = tmp_path / "m.csv"
    csv.write_text("id,image,media\nx,a.png,b.jpg\n")
    assert next(iter(open_source(csv, column="media"))).path.name == "b.jpg"
    with pytest.raises(UsageError, match=r"path column 'nope' not found .*--column"):
        open_source(csv, column="nope")
    bare = tmp_path / "bare.csv"
    bare.write_text("where\na.png\n")
    with pytest.raises(UsageError, match="name it with --column") as info:
        open_source(bare)
    assert "--path-column" not in str(info.value)
    _run(JobConfig(input=man, output=tmp_path / "out", model="fake-model", column="media", workers=0))
    rec = _records(tmp_path / "out")[("x", "caption")]
    assert rec["content_sha256"] == hashlib.sha256((tmp_path / "b.jpg").read_bytes()).hexdigest()
    assert rec["fields"] == {"image": "a.png"}  # the other column is just a field now


def test_limits_are_flags_of_the_job_commands(tmp_path: Path) -> None:
    import inspect

    from gemma4u_batch.cli.launch import config_from_flags
    from gemma4u_batch.cli.options import job_options
    from gemma4u_batch.cli.reference import command_options

    limits = {
        "decode_timeout": 5.0,
        "max_input_bytes": 1000,
        "max_image_pixels": 2000,
        "max_audio_seconds": 7.0,
        "max_video_seconds": 8.0,
        "max_decoded_frames": 90,
        "engine_restarts": 0,
    }
    for cmd in ("gemma4u caption", "gemma4u transcribe"):
        opts = command_options()[cmd]
        assert {"--" + k.replace("_", "-") for k in limits} <= opts, cmd
        assert {"--strict", "--verbose", "-v", "--log-file", "--verify-weights", "--batch-invariant"} <= opts
    assert {"--strict", "--verbose", "--log-file"} <= command_options()["gemma4u run"]
    flags = {n: p.default for n, p in inspect.signature(job_options).parameters.items()}
    flags.update(input=EXAMPLES, output=tmp_path / "out", **limits)
    config = config_from_flags(flags)
    assert {k: getattr(config, k) for k in limits} == limits
    assert decode_options(config).max_input_bytes == 1000
    with pytest.raises(UsageError, match="decode_timeout"):
        config_from_flags({**flags, "decode_timeout": 0})


def test_bad_progress_mode_is_refused_in_one_line(tmp_path: Path) -> None:
    """Every command with --progress (caption, transcribe, run) refuses a bad mode before it
    touches OUT."""
    from gemma4u_batch.cli.reference import command_options

    assert {c for c, opts in command_options().items() if "--progress" in opts} == {
        "gemma4u caption",
        "gemma4u transcribe",
        "gemma4u run",
    }
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"input: {EXAMPLES / 'images'}\noutput: {tmp_path / 'out'}\n")
    for args in (
        ["caption", str(EXAMPLES / "images"), "-o", str(tmp_path / "out")],
        ["transcribe", str(EXAMPLES / "audio"), "-o", str(tmp_path / "out")],
        ["run", str(recipe)],
    ):
        r = _cli(*args, "--progress", "jsno")
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().splitlines() == ["error: invalid --progress 'jsno': use rich, json or quiet"]
    assert not (tmp_path / "out").exists()


def test_messages_name_only_real_flags() -> None:
    """A flag named in any of gemma4u's messages or help texts is an option of some command
    (the manifest error once told users to pass --path-column, which never existed)."""
    import ast
    import re

    from gemma4u_batch.cli.reference import command_options

    real = set().union(*command_options().values())
    foreign = {"--address", "--head", "--port"}  # `ray start` / `ray status` flags named in Ray hints
    named: dict[str, list[str]] = {}
    for path in sorted((REPO / "gemma4u_batch").rglob("*.py")):
        if path.name in ("reference.py", "parity.py"):  # their own `python -m` command lines
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]+)", node.value):
                    named.setdefault(flag, []).append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert "--column" in named and len(named) > 20, sorted(named)  # the scan finds the messages' flags
    bad = {flag: where for flag, where in named.items() if flag not in real | foreign}
    assert not bad, f"messages name flags no command has: {bad}"


def test_ray_replicas_that_keep_dying_are_an_engine_failure() -> None:
    """Under --ray a replica whose process dies (OOM kill, node lost) is replaced and its shard
    requeued; past MAX_REPLACEMENTS the job stops with EngineFailure (exit 75), and a replica's
    own EngineFailure / OutputError / UsageError is re-raised as itself (not Ray's wrapper)."""
    from collections import deque

    from gemma4u_batch.cli.app import _exit_code
    from gemma4u_batch.errors import EngineFailure, ExitCode, OutputError
    from gemma4u_batch.scale.ray_runner import MAX_REPLACEMENTS, _Driver

    ray = pytest.importorskip("ray")

    class Cluster:  # the part of the `ray` module the driver's bookkeeping uses
        exceptions = ray.exceptions

        def __init__(self, error: BaseException) -> None:
            self.error = error

        def get(self, ref: object) -> dict:
            raise self.error

    def collect(error: BaseException, replacements: int = 0) -> tuple[_Driver, deque[int]]:
        driver = _Driver.__new__(_Driver)  # no cluster: only what _collect touches
        driver.ray, driver.replacements, driver.idle = Cluster(error), replacements, []
        driver.running = {"ref": ("actor", 3)}
        driver._spawn = lambda: "fresh actor"  # type: ignore[method-assign]
        queue: deque[int] = deque([4])
        assert driver._collect("ref", queue) is None
        return driver, queue

    died = ray.exceptions.RayActorError()
    driver, queue = collect(died)
    assert list(queue) == [3, 4] and driver.idle == ["fresh actor"] and driver.replacements == 1
    with pytest.raises(EngineFailure, match=f"replicas died {MAX_REPLACEMENTS + 1} times") as info:
        collect(died, replacements=MAX_REPLACEMENTS)
    assert _exit_code(info.value) == ExitCode.ENGINE_FAILED
    for cause in (EngineFailure("the engine died 1 times"), OutputError("cannot write"), UsageError("bad")):
        wrapped = ray.exceptions.RayTaskError("run_shard", "Traceback ...", cause)
        with pytest.raises(type(cause)) as raised:
            collect(wrapped)
        assert raised.value is cause


# --------------------------------------------------------------- 2. keys and revisions


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
    _run(config)
    assert _run(config).already_complete
    weights = model_copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(UsageError, match=r"different model \(model fingerprint model@\w+ → model@\w+") as info:
        _run(config)
    assert "--overwrite" in str(info.value)
    summary = _run(config.model_copy(update={"overwrite": True}))  # what the user does then
    assert summary.done == 1


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
    _run(JobConfig(input=inp, output=tmp_path / "out", model="org/not-cached-anywhere", workers=0))
    man = json.loads((tmp_path / "out" / ".gemma4u" / "run.json").read_text())
    assert man["model_fingerprint"] == "org/not-cached-anywhere"
    assert "bare id" in man["model_fingerprint_note"]


# ------------------------------------------------------------------ 3. what users see


def test_engine_output_goes_to_the_log_and_ours_to_the_terminal(tmp_path: Path, capfd) -> None:
    """Writes to fd 1/2 (C++ warnings, child processes, vLLM's handlers) land in the log file;
    gemma4u's own messages reach the real stderr."""
    import logging
    import sys

    from gemma4u_batch.console import engine_output, user_stderr

    log = tmp_path / "engine.log"
    with engine_output(log_file=log):
        os.write(2, b"W1130 torch/utils/cpp_extension.py:178] No CUDA runtime is found\n")
        os.write(1, b"(EngineCore pid=1) WARNING vllm noise on stdout\n")
        print("python-level warning", file=sys.__stderr__, flush=True)  # sys.stderr, outside pytest
        subprocess.run(["sh", "-c", "echo child-process-noise >&2"], check=True)
        assert os.environ["VLLM_LOGGING_STREAM"] == "ext://sys.stderr"
        assert os.environ["VLLM_LOGGING_LEVEL"] == "INFO" or "VLLM_LOGGING_LEVEL" in os.environ
        print("gemma4u: ours", file=user_stderr())
        logging.getLogger("gemma4u_batch.job").warning("engine died (x); restarting")
    out, err = capfd.readouterr()
    assert out == ""
    assert err.splitlines() == ["gemma4u: ours", "engine died (x); restarting"]
    text = log.read_text()
    for needle in ("No CUDA runtime", "vllm noise", "python-level warning", "child-process-noise"):
        assert needle in text
    print("after", file=sys.stderr)
    assert capfd.readouterr().err == "after\n"  # restored


def test_a_failed_run_shows_the_engine_log_tail(capfd) -> None:
    from gemma4u_batch.console import engine_output

    with pytest.raises(RuntimeError), engine_output():
        os.write(2, b"EngineCore failed: root cause here\n")
        raise RuntimeError("Engine core initialization failed. See root cause above.")
    err = capfd.readouterr().err
    assert "last lines of the engine log" in err and "root cause here" in err
    path = Path(err.split("(", 1)[1].split(")", 1)[0])
    assert path.exists()
    path.unlink()
    with engine_output():  # a run that succeeds leaves no temporary log behind
        os.write(2, b"noise\n")
    assert capfd.readouterr() == ("", "")


def test_verbose_leaves_engine_output_alone(capfd) -> None:
    import sys

    from gemma4u_batch.console import engine_output

    with engine_output(verbose=True):
        os.write(2, b"engine line\n")
        print("ours", file=sys.stderr)
        assert os.environ["VLLM_LOGGING_STREAM"] == "ext://sys.stderr"
    assert capfd.readouterr().err == "engine line\nours\n"


def test_messages_go_above_a_live_progress_bar(capfd) -> None:
    """While the rich bar is shown, gemma4u's messages print through its console (not under
    it), and the bar does not capture sys.stderr (the engine's writes stay diverted)."""
    import logging

    from gemma4u_batch.console import engine_output, say, set_live_console

    live = Console(file=io.StringIO(), width=200)
    set_live_console(live)
    try:
        with engine_output():
            say("gemma4u: stopping — committing finished work")
            logging.getLogger("gemma4u_batch.job").warning("engine died (x); restarting")
    finally:
        set_live_console(None)
    assert live.file.getvalue().splitlines() == [  # type: ignore[attr-defined]
        "gemma4u: stopping — committing finished work",
        "engine died (x); restarting",
    ]
    assert capfd.readouterr() == ("", "")


def test_the_rich_bar_leaves_sys_stderr_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from gemma4u_batch import console

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(console, "USER_STDERR", Tty())
    before = (sys.stdout, sys.stderr)
    reporter = console.Reporter("rich")
    reporter.start(3)
    try:
        assert reporter.mode == "rich" and console._live is not None
        assert (sys.stdout, sys.stderr) == before  # rich would otherwise print engine writes above the bar
    finally:
        reporter.stop()
    assert console._live is None


def test_version_and_completion() -> None:
    from gemma4u_batch import __version__

    r = _cli("--version")
    assert r.returncode == 0 and r.stdout.startswith(f"gemma4u {__version__}") and "vllm" in r.stdout
    r = _cli("--show-completion", "bash", env={**os.environ, "SHELL": "/bin/bash"})
    assert r.returncode == 0 and "_gemma4u_completion" in r.stdout, r.stderr


# ------------------------------------------------------------ 4. greedy identity claims


def test_batch_invariant_is_refused_on_cpu_before_the_engine_starts(tiny_model: Path) -> None:
    """vLLM 0.32's batch-invariant kernels crash the CPU engine at its first request (three
    engine deaths, exit 75); gemma4u says so up front instead."""
    from vllm.platforms import current_platform

    from gemma4u_batch.config.job import EngineConfig, SamplingConfig
    from gemma4u_batch.engine.vllm_engine import VllmEngine
    from gemma4u_batch.prompting.units import EngineRequest

    if not current_platform.is_cpu():
        pytest.skip("on a GPU the option is passed through to vLLM (not tested here)")
    eng = VllmEngine(model=str(tiny_model), engine=EngineConfig(batch_invariant=True)).start()
    with pytest.raises(UsageError, match="needs a GPU"):
        eng.add(EngineRequest("r1", "hi", None, SamplingConfig()))
    assert eng._llm is None and os.environ.get("VLLM_BATCH_INVARIANT") != "1"
