"""`gemma4u run-batch` on FakeEngine: vLLM's own run-batch test batches, error lines, the
output validated by vLLM's BatchRequestOutput, media policy, resume after SIGKILL."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gemma4u_batch.batch.chat import MediaRef
from gemma4u_batch.batch.media import MediaPolicy
from gemma4u_batch.batch.run import BatchRun, BatchSettings, state_dir
from gemma4u_batch.errors import ItemError, UsageError
from gemma4u_batch.records import Modality

from .helpers import (
    BATCH_MODEL,
    VLLM_INPUT_BATCH,
    VLLM_INVALID_INPUT_BATCH,
    batch_chat,
    batch_outputs,
    documented_code,
    gemma4u,
    photo,
    png_bytes,
    write_lines,
)

MODEL = BATCH_MODEL
chat = batch_chat
outputs = batch_outputs
INPUT_BATCH, INVALID_INPUT_BATCH = VLLM_INPUT_BATCH, VLLM_INVALID_INPUT_BATCH


def settings(tmp_path: Path, inp: Path, **kw: Any) -> BatchSettings:
    return BatchSettings(input=inp, output=tmp_path / "out.jsonl", model=MODEL, **kw)


def test_vllm_input_batch(tmp_path: Path, batch_engine) -> None:
    inp = write_lines(tmp_path / "in.jsonl", INPUT_BATCH)
    connector = os.environ.get("VLLM_MEDIA_CONNECTOR")
    summary = BatchRun(settings(tmp_path, inp)).run(batch_engine())
    # the media connector is switched only while a line renders: it does not leak into this
    # process's environment (a vLLM started later from it would look for gemma4u's connector)
    assert os.environ.get("VLLM_MEDIA_CONNECTOR") == connector
    outs = outputs(tmp_path / "out.jsonl")
    assert [o["custom_id"] for o in outs] == [f"request-{i}" for i in range(1, 6)]
    ok = outs[:2]
    for o in ok:
        assert o["error"] is None and o["response"]["status_code"] == 200
        body = o["response"]["body"]
        assert body["object"] == "chat.completion" and body["model"] == MODEL
        assert body["choices"][0]["message"]["role"] == "assistant" and body["choices"][0]["message"]["content"]
        assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    assert outs[2]["response"]["status_code"] == 404
    assert outs[2]["error"]["error"]["code"] == 404 and "NonExistModel" in outs[2]["error"]["error"]["message"]
    assert outs[3]["response"]["status_code"] == 400 and outs[3]["error"].startswith("URL /bad_url was used.")
    assert outs[4]["error"] == "Request must not be sent in stream mode"
    assert summary.errors == 3 and summary.problems == []


def test_invalid_lines_reported_rest_processed(tmp_path: Path, batch_engine) -> None:
    inp = write_lines(tmp_path / "in.jsonl", [*INVALID_INPUT_BATCH, "{not json", "[1, 2]"])
    summary = BatchRun(settings(tmp_path, inp)).run(batch_engine())
    assert [o["custom_id"] for o in outputs(tmp_path / "out.jsonl")] == ["request-2"]
    assert summary.problems == [
        f"{inp}:1: no custom_id (a non-empty string is required)",
        f"{inp}:3: not JSON (Expecting property name enclosed in double quotes at column 2)",
        f"{inp}:4: no custom_id (a non-empty string is required)",
    ]


def test_duplicate_custom_id_is_usage_error(tmp_path: Path) -> None:
    inp = write_lines(tmp_path / "in.jsonl", [chat("a", "s"), chat("b", "s"), chat("a", "t")])
    with pytest.raises(UsageError, match=r"in.jsonl:3: duplicate custom_id 'a' \(first on line 1\)"):
        BatchRun(settings(tmp_path, inp))
    assert not state_dir(tmp_path / "out.jsonl").exists()


def test_bad_bodies_and_endpoints(tmp_path: Path, batch_engine) -> None:
    lines = [
        {"custom_id": "no-messages", "method": "POST", "url": "/v1/chat/completions", "body": {"model": MODEL}},
        {"custom_id": "no-body", "method": "POST", "url": "/v1/chat/completions"},
        chat("embed", "s", url="/v1/embeddings"),
        chat("bad-temp", "s", temperature="hot"),
        chat("served", "s", model="alias"),
        chat("tools", "s", model="alias", tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}]),
        chat("prompt-logprobs", "s", model="alias", prompt_logprobs=1),
        chat("echo-logprobs", "s", model="alias", echo=True, logprobs=True),
    ]
    echo = chat("echo", "s", model="alias", echo=True, add_generation_prompt=False)
    echo["body"]["messages"].append({"role": "assistant", "content": "Once upon"})
    lines.append(echo)
    inp = write_lines(tmp_path / "in.jsonl", lines)
    BatchRun(settings(tmp_path, inp, served_model_names=["alias"])).run(batch_engine())
    outs = {o["custom_id"]: o for o in outputs(tmp_path / "out.jsonl")}
    assert outs["no-messages"]["error"].startswith("invalid body: messages")
    assert "body" in outs["no-body"]["error"]
    assert outs["embed"]["error"] == "Model does not support endpoint: /v1/embeddings"
    assert outs["bad-temp"]["error"].startswith("invalid body: temperature")
    assert outs["served"]["error"] is None  # a --served-model-name is a valid alias...
    assert outs["served"]["response"]["body"]["model"] == "alias"
    # vLLM's own answer for tools without the flags that let it answer them
    tools_error = outs["tools"]["error"]["error"]["message"]
    assert tools_error == '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
    # what vLLM answers and gemma4u does not: said, not silently dropped
    assert outs["prompt-logprobs"]["error"] == "prompt_logprobs is not supported by gemma4u run-batch"
    assert outs["echo-logprobs"]["error"].startswith("echo with logprobs")
    # echo: the assistant message being continued comes first in the answer, as in vLLM
    echoed = outs["echo"]["response"]["body"]["choices"][0]["message"]
    assert echoed["role"] == "assistant" and echoed["content"].startswith("Once upon") and len(echoed["content"]) > 9


def test_media_policy(tmp_path: Path) -> None:
    """Each media reference vLLM's parser found becomes a decode worker's item, or is refused
    with the reason; the workers read, fetch and decode."""
    img = png_bytes(photo().resize((96, 64)))
    uri = "data:image/png;base64," + base64.b64encode(img).decode()
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "p.png").write_bytes(img)
    policy = MediaPolicy(allowed_local_media_path=tmp_path / "media", allow_network=False)
    inline = policy.item(MediaRef("image", uri), "1:0")
    assert inline.data == img and inline.modality == Modality.IMAGE and inline.path is None
    local = policy.item(MediaRef("audio", f"file://{tmp_path}/media/p.png"), "1:1")
    assert local.path == str((tmp_path / "media" / "p.png").resolve()) and local.data is None
    (tmp_path / "secret.png").write_bytes(img)
    for url, why in [
        (f"file://{tmp_path}/secret.png", "outside --allowed-local-media-path"),
        ("http://example.com/a.png", "--allow-network-media"),
        ("data:image/png;base64,@@@", "invalid base64"),
        ("ftp://x/a.png", "unsupported media URL scheme"),
    ]:
        with pytest.raises(ItemError, match=why):
            policy.item(MediaRef("image", url), "2:0")
    with pytest.raises(ItemError, match=r"over 10 bytes"):
        MediaPolicy(max_bytes=10).item(MediaRef("image", uri), "3:0")
    web = MediaPolicy(allow_network=True, allowed_domains=("example.com",))
    assert (
        web.item(MediaRef("video", "https://example.com/v.mp4?sig=x"), "4:0").url == "https://example.com/v.mp4?sig=x"
    )
    with pytest.raises(ItemError, match="allowed domains"):
        web.item(MediaRef("image", "https://elsewhere.org/a.png"), "4:1")


def test_media_error_is_an_error_line(tmp_path: Path, batch_engine) -> None:
    line = chat("img", "s")
    line["body"]["messages"][1]["content"] = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    inp = write_lines(tmp_path / "in.jsonl", [line, chat("ok", "s")])
    BatchRun(settings(tmp_path, inp)).run(batch_engine())
    outs = outputs(tmp_path / "out.jsonl")
    assert outs[0]["response"]["status_code"] == 400 and outs[0]["error"]["error"]["type"] == "BadRequestError"
    assert outs[1]["error"] is None


def test_rerun_does_nothing_and_changed_lines_resend(tmp_path: Path, batch_engine) -> None:
    inp = write_lines(tmp_path / "in.jsonl", [chat(f"r{i}", f"s{i}") for i in range(6)])
    BatchRun(settings(tmp_path, inp)).run(batch_engine())
    out = tmp_path / "out.jsonl"
    before = (out.read_bytes(), out.stat().st_mtime_ns)
    again = batch_engine()
    summary = BatchRun(settings(tmp_path, inp)).run(again)
    assert summary.already_complete and again.added == 0
    assert (out.read_bytes(), out.stat().st_mtime_ns) == before
    write_lines(inp, [chat(f"r{i}", f"s{i}" if i != 2 else "changed") for i in range(6)] + [chat("new", "n")])
    third = batch_engine()
    summary = BatchRun(settings(tmp_path, inp)).run(third)
    assert third.added == 2 and summary.reused == 5
    assert [o["custom_id"] for o in outputs(out)] == [*(f"r{i}" for i in range(6)), "new"]


KILLED_RUN = """
import sys, time
from pathlib import Path
from gemma4u_batch.batch.run import BatchRun, BatchSettings
from gemma4u_batch.engine.fake import FakeEngine

def slow(req, text):
    time.sleep(0.05)
    return text

if __name__ == "__main__":
    s = BatchSettings(input=Path(sys.argv[1]), output=Path(sys.argv[2]), model=sys.argv[3], commit_seconds=0.0)
    BatchRun(s).run(FakeEngine(frontend_model=sys.argv[4], text_for=slow, max_in_flight=2))
"""


def test_sigkill_then_resume_exactly_once(tmp_path: Path, batch_engine, tiny_model: Path) -> None:
    n = 80
    inp = write_lines(tmp_path / "in.jsonl", [chat(f"r{i}", f"s{i}") for i in range(n)])
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    script = tmp_path / "killed_run.py"
    script.write_text(KILLED_RUN)
    proc = subprocess.Popen([sys.executable, str(script), str(inp), str(out), MODEL, str(tiny_model)], env=env)
    done = state_dir(out) / "done.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not done.exists() or done.read_bytes().count(b"\n") < 10):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    checkpointed = done.read_bytes().count(b"\n")
    assert 10 <= checkpointed < n
    resumed = batch_engine()
    summary = BatchRun(BatchSettings(input=inp, output=out, model=MODEL)).run(resumed)
    outs = outputs(out)
    assert [o["custom_id"] for o in outs] == [f"r{i}" for i in range(n)]
    assert resumed.added == n - summary.reused and summary.reused >= checkpointed - 1


def test_cli_reports_bad_lines_and_refuses_duplicates(tmp_path: Path, tiny_model: Path) -> None:
    """The real command (no line reaches the engine, so none starts): unreadable lines are
    reported as FILE:LINE and exit 3 after the others are answered; duplicates exit 2."""
    bad = {k: v for k, v in chat("x", "s").items() if k != "custom_id"}
    inp = write_lines(tmp_path / "in.jsonl", [bad, chat("m", "s", model="NonExistModel"), chat("u", "s", url="/x")])
    out = tmp_path / "out.jsonl"
    cmd = ["run-batch", "-i", str(inp), "-o", str(out), "--model", str(tiny_model)]
    proc = gemma4u(*cmd)
    assert proc.returncode == documented_code("ITEM_ERRORS"), proc.stderr
    assert f"{inp}:1: no custom_id" in " ".join(proc.stderr.split())
    assert [o["custom_id"] for o in outputs(out)] == ["m", "u"]
    write_lines(inp, [chat("a", "s"), chat("a", "t")])
    out.unlink()
    proc = gemma4u(*cmd)
    assert proc.returncode == documented_code("USAGE") and "duplicate custom_id 'a'" in proc.stderr
    assert not out.exists()
