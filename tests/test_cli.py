"""The command line itself (cli/): flags resolve into the job config, bad flags are refused in one
line before anything runs, messages name only flags that exist, --version and completion. Exit
codes are in test_exit_codes.py, docs/cli.md against the commands in test_docs.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gemma4u_batch.cli.launch import config_from_flags
from gemma4u_batch.cli.reference import command_options
from gemma4u_batch.decode.options import decode_options
from gemma4u_batch.errors import UsageError

from .helpers import EXAMPLES, REPO, gemma4u, job_flags


def test_limits_are_flags_of_the_job_commands(tmp_path: Path) -> None:
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
    flags = job_flags(EXAMPLES, tmp_path / "out", **limits)
    config = config_from_flags(flags)
    assert {k: getattr(config, k) for k in limits} == limits
    assert decode_options(config).max_input_bytes == 1000
    with pytest.raises(UsageError, match="decode_timeout"):
        config_from_flags({**flags, "decode_timeout": 0})


def test_bad_progress_mode_is_refused_in_one_line(tmp_path: Path) -> None:
    """Every command with --progress (caption, transcribe, run) refuses a bad mode before it
    touches OUT."""
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
        r = gemma4u(*args, "--progress", "jsno", timeout=120)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().splitlines() == ["error: invalid --progress 'jsno': use rich, json or quiet"]
    assert not (tmp_path / "out").exists()


def test_messages_name_only_real_flags() -> None:
    """A flag named in any of gemma4u's messages or help texts is an option of some command
    (the manifest error once told users to pass --path-column, which never existed)."""
    import ast
    import re

    real = set().union(*command_options().values())
    foreign = {"--address", "--head", "--port"}  # `ray start` / `ray status` flags named in Ray hints
    # vLLM's own words in run-batch's error lines, where vLLM's server answers them so (the line's
    # answer must equal vLLM's); gemma4u run-batch has no such flag and the docs say so
    foreign |= {"--enable-mm-embeds"}
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


def test_version_and_completion() -> None:
    from gemma4u_batch import __version__

    r = gemma4u("--version", timeout=120)
    assert r.returncode == 0 and r.stdout.startswith(f"gemma4u {__version__}") and "vllm" in r.stdout
    # the shell named on the command line (typer detects the calling shell otherwise, and the test
    # runner's process tree may hold none)
    env = {**os.environ, "SHELL": "/bin/bash", "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    r = gemma4u("--show-completion", "bash", timeout=120, env=env)
    assert r.returncode == 0 and "_gemma4u_completion" in r.stdout, r.stderr
