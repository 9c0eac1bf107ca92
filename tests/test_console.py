"""What a person sees (console.py): gemma4u's own messages on the terminal, the engine's log
kept off it (in a log file, its tail shown when a run fails), and the progress bar."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console


def test_engine_output_goes_to_the_log_and_ours_to_the_terminal(tmp_path: Path, capfd) -> None:
    """Writes to fd 1/2 (C++ warnings, child processes, vLLM's handlers) land in the log file;
    gemma4u's own messages reach the real stderr."""
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
    from gemma4u_batch.console import engine_output

    with engine_output(verbose=True):
        os.write(2, b"engine line\n")
        print("ours", file=sys.stderr)
        assert os.environ["VLLM_LOGGING_STREAM"] == "ext://sys.stderr"
    assert capfd.readouterr().err == "engine line\nours\n"


def test_messages_go_above_a_live_progress_bar(capfd) -> None:
    """While the rich bar is shown, gemma4u's messages print through its console (not under
    it), and the bar does not capture sys.stderr (the engine's writes stay diverted)."""
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
