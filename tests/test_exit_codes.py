"""Every exit code in docs/exit-codes.md, produced by running the real `gemma4u` (plain runner).

The expected code is read from the docs' table (`documented_code`), never from `ExitCode`, so a
code that changes in either place fails here. 0 and 2 are also checked in test_e2e_caption.py.
The --ray variants of 73, 74, 75 and 130 are in test_e2e_scale.py (a real Ray cluster);
`test_the_failure_codes_are_produced_under_ray_too` checks that each is there.

Only `test_engine_failure_then_sigterm_then_sigint` starts the engine (three CLI runs on the tiny
model, one OUT: 75, then 130 twice, each resuming what the previous one committed).
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from gemma4u_batch.errors import ExitCode
from gemma4u_batch.store.layout import OutLayout
from gemma4u_batch.store.writer import committed_parts

from .helpers import (
    GEMMA4U,
    REPO,
    data_records,
    documented_code,
    documented_codes,
    engine_noise,
    gemma4u,
    make_images,
    tiny_args,
    write_image_folder,
)
from .mounts import fill_up, read_only, tmpfs

NOT_PROVOKED = {"FAILED": "an unexpected crash is a bug: no test provokes one on purpose"}


# ------------------------------------------------------------------------ the table


def test_the_table_is_the_exit_code_class() -> None:
    names = {k: v for k, v in vars(ExitCode).items() if k.isupper() and isinstance(v, int)}
    assert documented_codes() == names


def test_every_documented_code_is_produced_by_a_real_cli_test() -> None:
    """Each row is the expectation of at least one test that runs `gemma4u` (or is excused)."""
    used: set[str] = set()
    for path in (REPO / "tests").glob("test_*.py"):
        used |= set(re.findall(r'documented_code\("([A-Z_]+)"\)', path.read_text(encoding="utf-8")))
    missing = set(documented_codes()) - used - set(NOT_PROVOKED)
    assert not missing, f"exit codes no real-CLI test checks: {sorted(missing)}"


RAY_TESTS = REPO / "tests" / "test_e2e_scale.py"
"""Where the same codes are produced by `gemma4u ... --ray` (a real Ray cluster)."""


def test_the_failure_codes_are_produced_under_ray_too() -> None:
    """73, 74, 75 and 130 are each checked on a --ray run of the real CLI as well."""
    used = set(re.findall(r'documented_code\("([A-Z_]+)"\)', RAY_TESTS.read_text(encoding="utf-8")))
    missing = {"LOCKED", "OUTPUT_ERROR", "ENGINE_FAILED", "INTERRUPTED"} - used
    assert not missing, f"exit codes no --ray test checks: {sorted(missing)}"


# ------------------------------------------------------------- no engine needed


def test_73_when_another_run_holds_the_lock(tmp_path: Path) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 2)
    (out / ".gemma4u").mkdir(parents=True)
    with open(out / ".gemma4u" / "run.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # what a running gemma4u holds
        r = gemma4u("caption", str(inp), "-o", str(out))
    assert r.returncode == documented_code("LOCKED"), r.stderr
    assert r.stderr.strip().splitlines() == [f"error: another gemma4u run is writing into {out} (lock held)"]


def test_74_when_out_is_read_only(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "1m") as mnt:
        inp = tmp_path / "in"
        make_images(inp, 2)
        (mnt / "out").mkdir()
        read_only(mnt)
        for out in (mnt / "out", mnt / "new"):  # an existing OUT, and one that cannot be made
            r = gemma4u("caption", str(inp), "-o", str(out))
            assert r.returncode == documented_code("OUTPUT_ERROR"), r.stderr
            assert "Read-only file system" in r.stderr and "Traceback" not in r.stderr
            assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_74_when_out_is_full_from_the_start(tmp_path: Path, tiny_model: Path) -> None:
    """A full disk before the first record (the run manifest cannot be written) is 74 and one
    line, like a disk that fills mid-run (test_resume.py), never a traceback and exit 1."""
    with tmpfs(tmp_path / "full", "64k") as mnt:
        inp = tmp_path / "in"
        make_images(inp, 2)
        (mnt / "out").mkdir()
        fill_up(mnt)
        r = gemma4u("caption", str(inp), "-o", str(mnt / "out"), "--model", str(tiny_model), "--progress", "quiet")
        assert r.returncode == documented_code("OUTPUT_ERROR"), r.stderr[-3000:]
        assert r.stderr.strip().splitlines() == [
            f"error: cannot write to {mnt / 'out'}: No space left on device; work committed before this point "
            "is safe, free space or fix permissions and rerun the same command to resume"
        ]


def test_3_with_strict_when_items_failed(tmp_path: Path, tiny_model: Path) -> None:
    """Only broken files: every item is an error record made before any engine start (the
    tokenizer renders the prompts for the keys). 0 without --strict; 3 with it, also on the
    rerun that skips them, until they are fixed."""
    inp, out = tmp_path / "in", tmp_path / "out"
    write_image_folder(inp, with_bad=True)
    for p in inp.rglob("*"):
        if p.is_file() and p.name not in ("zero.jpg", "text.png", "truncated.jpg"):
            p.unlink()
    args = ["caption", str(inp), "-o", str(out), "--model", str(tiny_model), "--progress", "quiet"]
    r = gemma4u(*args)
    assert r.returncode == documented_code("OK"), r.stderr
    assert not engine_noise(r.stdout + r.stderr), r.stderr  # the tokenizer's import of torch stays quiet
    r = gemma4u(*args, "--strict")
    assert r.returncode == documented_code("ITEM_ERRORS"), r.stderr
    assert "Nothing to do" in r.stderr and "3 item(s)" in r.stderr and "--strict exits 3" in r.stderr
    r = gemma4u(*args, "-o", str(tmp_path / "fresh"), "--strict")  # a run whose own items fail
    assert r.returncode == documented_code("ITEM_ERRORS"), r.stderr
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"input: {inp}\noutput: {out}\nmodel: {tiny_model}\nstrict: true\n")
    r = gemma4u("run", str(recipe), "--progress", "quiet")
    assert r.returncode == documented_code("ITEM_ERRORS"), r.stderr


def test_2_for_bad_usage() -> None:
    r = gemma4u("caption", str(REPO / "examples" / "images"), "-o", "/tmp/unused", "--progress", "jsno")
    assert r.returncode == documented_code("USAGE"), r.stderr


# ------------------------------------------------------------- the real engine


def _engine_core(pid: int) -> int | None:
    import psutil

    for child in psutil.Process(pid).children(recursive=True):
        try:
            if "EngineCor" in " ".join(child.cmdline() or [child.name()]):
                return child.pid
        except psutil.Error:
            continue
    return None


def _start_and_wait_for_a_commit(args: list[str], out: Path) -> subprocess.Popen[str]:
    """Start `gemma4u` and return once it committed a part of its own (so it is mid-run)."""
    before = len(committed_parts(OutLayout(out)))
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and len(committed_parts(OutLayout(out))) <= before:
        time.sleep(0.05)
    assert proc.poll() is None, f"gemma4u ended before it could be stopped: {proc.communicate()[1][-2000:]}"
    return proc


def _check_committed(out: Path, at_least: int) -> int:
    recs = data_records(out)
    ids = [r["id"] for r in recs]
    assert len(ids) == len(set(ids)) and len(ids) >= at_least
    assert all(r["error"] is None for r in recs), [r["error"] for r in recs if r["error"]]
    assert not (out / ".gemma4u" / "complete.json").exists()
    return len(ids)


@pytest.mark.engine
@pytest.mark.timeout(1800)
def test_engine_failure_then_sigterm_then_sigint(tmp_path: Path, tiny_model: Path) -> None:
    """75: the engine core is SIGKILLed with --engine-restarts 0. Then the same command resumes
    and is stopped with SIGTERM, then SIGINT, each sent to its whole process group (as systemd
    and a terminal's Ctrl-C do): 130, with what finished committed. The engine's own log lines
    stay off the terminal (--log-file collects them; -v shows them)."""
    inp, out, log = tmp_path / "in", tmp_path / "out", tmp_path / "engine.log"
    make_images(inp, 150)
    args = [
        GEMMA4U,
        "caption",
        str(inp),
        "-o",
        str(out),
        *tiny_args(tiny_model, max_tokens=24),
        "--commit-every",
        "2",
        "--max-num-seqs",
        "1",
        "--progress",
        "json",
    ]

    proc = _start_and_wait_for_a_commit([*args, "--engine-restarts", "0", "--log-file", str(log)], out)
    core = _engine_core(proc.pid)
    assert core is not None, "no EngineCore process under the CLI"
    os.kill(core, signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == documented_code("ENGINE_FAILED"), err[-3000:]
    assert "error: the engine died" in err and "rerun the same command to resume" in err
    ours, _, tail = err.partition("gemma4u: last lines of the engine log")
    assert tail, err[-3000:]  # a failed run shows where the engine's log is, and its last lines
    assert not engine_noise(ours), ours
    assert "EngineCore" in log.read_text()  # the engine's own lines went to --log-file
    n = _check_committed(out, 1)

    for sig, extra in ((signal.SIGTERM, []), (signal.SIGINT, ["-v"])):
        proc = _start_and_wait_for_a_commit([*args, *extra], out)
        os.killpg(proc.pid, sig)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == documented_code("INTERRUPTED"), (sig, err[-3000:])
        assert "stopping — committing finished work" in err and "interrupted — rerun" in err
        noise = engine_noise(err)
        assert bool(noise) == bool(extra), (sig, noise[:5])  # vLLM's lines only with -v
        n = _check_committed(out, n + 1)  # this run committed more, nothing twice
    assert n < 150
