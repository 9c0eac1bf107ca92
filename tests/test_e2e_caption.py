"""End to end on the real vLLM engine with the tiny checkpoint (its text is meaningless)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gemma4u_batch.config.job import JobConfig, SamplingConfig
from gemma4u_batch.console import Reporter
from gemma4u_batch.job.job import run_job

from .helpers import documented_code, engine_noise, gemma4u, records_by_id, tiny_args, write_image_folder

pytestmark = pytest.mark.engine

REQUIRED = {
    "id",
    "source",
    "modality",
    "task",
    "prompt",
    "text",
    "finish_reason",
    "num_prompt_tokens",
    "num_output_tokens",
    "error",
    "model",
    "key",
}


def test_cli_caption_folder_with_bad_files(tmp_path: Path, tiny_model: Path) -> None:
    root = tmp_path / "images"
    expected = write_image_folder(root)
    out = tmp_path / "out"
    args = [
        "caption",
        str(root),
        "-o",
        str(out),
        *tiny_args(tiny_model, max_tokens=12),
        "--workers",
        "2",
        "--progress",
        "json",
    ]
    proc = gemma4u(*args, timeout=900)
    assert proc.returncode == documented_code("OK"), proc.stderr[-3000:]
    # By default only gemma4u's own output: no vLLM/torch/Triton lines, stdout left alone.
    assert proc.stdout == ""
    assert not engine_noise(proc.stderr), engine_noise(proc.stderr)
    files = sorted(p for p in out.iterdir() if p.is_file())
    assert files and all(p.name.startswith("part-") and p.suffix == ".jsonl" for p in files)
    recs = [json.loads(line) for p in files for line in p.read_text().splitlines()]
    assert sorted(r["id"] for r in recs) == sorted(expected)  # one record per input, ids = relative paths
    for r in recs:
        assert r.keys() >= REQUIRED
        assert r["model"] == str(tiny_model) and r["task"] == "caption" and r["modality"] == "image"
        if expected[r["id"]] == "ok":
            assert r["error"] is None and r["text"], r
            assert r["finish_reason"] in ("stop", "length")
            assert r["num_output_tokens"] >= 1 and r["num_prompt_tokens"] > 20
        else:
            assert r["text"] is None and r["error_kind"] == expected[r["id"]] and r["error"]
    progress = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith('{"event"')]
    assert progress and progress[-1]["done"] == len(expected)

    # The same command again: nothing to do, no engine start, nothing new written.
    again = gemma4u(*args, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Nothing to do" in again.stderr
    assert sorted(p for p in out.iterdir() if p.is_file()) == files


def _texts(out: Path) -> dict[str, str]:
    return {i: r["text"] for i, r in records_by_id(out).items()}


def test_same_seed_same_text(tmp_path: Path, tiny_model: Path, shared_engine) -> None:
    root = tmp_path / "images"
    write_image_folder(root, with_bad=False)

    def run(out: str, seed: int) -> dict[str, str]:
        config = JobConfig(
            input=root,
            output=tmp_path / out,
            model=str(tiny_model),
            workers=1,
            sampling=SamplingConfig(max_tokens=16, temperature=1.0, top_p=0.95, seed=seed),
        )
        run_job(config, shared_engine, reporter=Reporter("quiet"))
        return _texts(tmp_path / out)

    a, b, c = run("a", 7), run("b", 7), run("c", 8)
    assert a == b and all(a.values())
    assert a != c


def test_greedy_is_default_and_deterministic(tmp_path: Path, tiny_model: Path, shared_engine) -> None:
    root = tmp_path / "images"
    write_image_folder(root, with_bad=False)
    outs = []
    for name in ("g1", "g2"):
        config = JobConfig(
            input=root,
            output=tmp_path / name,
            model=str(tiny_model),
            workers=0,
            sampling=SamplingConfig(max_tokens=10, seed=None),
        )
        run_job(config, shared_engine, reporter=Reporter("quiet"))
        outs.append(_texts(tmp_path / name))
    assert outs[0] == outs[1] and len(outs[0]) == 9


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["caption", "/nonexistent/in", "-o", "OUT"], "input not found"),
        (["caption", "EMPTY", "-o", "OUT", "--model", "TINY"], "no media files"),
        (["caption", "IMAGES", "-o", "OUT", "--bogus-flag"], "No such option"),
        (["caption", "IMAGES", "-o", "OUT", "--model", "/nonexistent/model"], "model folder not found"),
        (["caption", "IMAGES", "-o", "OUT", "--model", "BADMODEL"], "no config.json"),
        (["caption", "IMAGES", "-o", "OUT", "--image-tokens", "100"], "image_tokens"),
        (["caption", "IMAGES", "-o", "OUT", "--temperature", "-1"], "temperature"),
    ],
)
def test_bad_usage_is_one_line(tmp_path: Path, tiny_model: Path, args: list[str], needle: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "badmodel").mkdir()
    images = tmp_path / "images"
    write_image_folder(images, with_bad=False)
    subst = {
        "EMPTY": tmp_path / "empty",
        "OUT": tmp_path / "out",
        "TINY": tiny_model,
        "IMAGES": images,
        "BADMODEL": tmp_path / "badmodel",
    }
    proc = gemma4u(*[str(subst.get(a, a)) for a in args], timeout=120)
    assert proc.returncode == documented_code("USAGE"), proc.stderr
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.strip()]) == 1, proc.stderr
