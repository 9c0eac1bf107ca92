"""`gemma4u run-batch` on FakeEngine: vLLM's own run-batch test batches, error lines, the
output validated by vLLM's BatchRequestOutput, media policy, resume after SIGKILL."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gemma4u_batch.batch.lines import MediaPolicy, conversation_of
from gemma4u_batch.batch.run import BatchRun, BatchSettings, state_dir
from gemma4u_batch.engine.fake import FakeEngine
from gemma4u_batch.errors import ItemError, UsageError

from .helpers import documented_code, gemma4u, photo, png_bytes

MODEL = "hmellor/tiny-random-LlamaForCausalLM"  # the name vLLM's test batches use


def chat(cid: str, system: str, model: str = MODEL, url: str = "/v1/chat/completions", **extra: Any) -> dict:
    return {
        "custom_id": cid,
        "method": "POST",
        "url": url,
        "body": {
            "model": model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": "Hello world!"}],
            "max_tokens": 1000,
            **extra,
        },
    }


# vLLM's tests/entrypoints/openai/test_run_batch.py: INPUT_BATCH and INVALID_INPUT_BATCH
INPUT_BATCH = [
    chat("request-1", "You are a helpful assistant."),
    chat("request-2", "You are an unhelpful assistant."),
    chat("request-3", "You are an unhelpful assistant.", model="NonExistModel"),
    chat("request-4", "You are an unhelpful assistant.", url="/bad_url"),
    chat("request-5", "You are an unhelpful assistant.", stream="True"),
]
INVALID_INPUT_BATCH = [
    {**{k: v for k, v in chat("x", "You are a helpful assistant.").items() if k != "custom_id"}, "invalid_field": "r1"},
    chat("request-2", "You are an unhelpful assistant."),
]


def write_lines(path: Path, lines: list[Any]) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def settings(tmp_path: Path, inp: Path, **kw: Any) -> BatchSettings:
    return BatchSettings(input=inp, output=tmp_path / "out.jsonl", model=MODEL, **kw)


def outputs(path: Path) -> list[dict[str, Any]]:
    from vllm.entrypoints.launchers.run_batch import BatchRequestOutput

    lines = path.read_text().splitlines()
    for line in lines:
        BatchRequestOutput.model_validate_json(line)  # vLLM's own schema
    return [json.loads(line) for line in lines]


def test_vllm_input_batch(tmp_path: Path) -> None:
    inp = write_lines(tmp_path / "in.jsonl", INPUT_BATCH)
    summary = BatchRun(settings(tmp_path, inp)).run(FakeEngine())
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


def test_invalid_lines_reported_rest_processed(tmp_path: Path) -> None:
    inp = write_lines(tmp_path / "in.jsonl", [*INVALID_INPUT_BATCH, "{not json", "[1, 2]"])
    summary = BatchRun(settings(tmp_path, inp)).run(FakeEngine())
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


def test_bad_bodies_and_endpoints(tmp_path: Path) -> None:
    lines = [
        {"custom_id": "no-messages", "method": "POST", "url": "/v1/chat/completions", "body": {"model": MODEL}},
        {"custom_id": "no-body", "method": "POST", "url": "/v1/chat/completions"},
        chat("embed", "s", url="/v1/embeddings"),
        chat("bad-temp", "s", temperature="hot"),
        chat("served", "s", model="alias"),
        chat("tools", "s", model="alias", tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}]),
    ]
    inp = write_lines(tmp_path / "in.jsonl", lines)
    BatchRun(settings(tmp_path, inp, served_model_names=["alias"])).run(FakeEngine())
    outs = {o["custom_id"]: o for o in outputs(tmp_path / "out.jsonl")}
    assert outs["no-messages"]["error"].startswith("invalid body: messages")
    assert "body" in outs["no-body"]["error"]
    assert outs["embed"]["error"] == "Model does not support endpoint: /v1/embeddings"
    assert outs["bad-temp"]["error"].startswith("invalid body: temperature")
    assert outs["served"]["error"] is None  # a --served-model-name is a valid alias...
    assert outs["served"]["response"]["body"]["model"] == "alias"
    assert outs["tools"]["error"] == "tools are not supported by gemma4u run-batch"


def test_conversation_media_and_policy(tmp_path: Path) -> None:
    img = png_bytes(photo().resize((96, 64)))
    uri = "data:image/png;base64," + base64.b64encode(img).decode()
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "p.png").write_bytes(img)
    policy = MediaPolicy(allowed_local_media_path=tmp_path / "media")
    msgs = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "What?"}, {"type": "image_url", "image_url": {"url": uri}}],
        },
        {"role": "assistant", "content": "A photo."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"file://{tmp_path}/media/p.png"}}]},
    ]
    conv = conversation_of(msgs, policy)
    assert conv.messages == [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "What?"}, {"type": "image"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A photo."}]},
        {"role": "user", "content": [{"type": "image"}]},
    ]
    assert len(conv.images) == 2 and conv.images[0].size == conv.images[1].size
    (tmp_path / "secret.png").write_bytes(img)
    for url, why in [
        (f"file://{tmp_path}/secret.png", "outside --allowed-local-media-path"),
        ("http://example.com/a.png", "--allow-network-media"),
        ("data:image/png;base64,@@@", "invalid base64"),
        ("ftp://x/a.png", "unsupported media URL scheme"),
    ]:
        part = {"type": "image_url", "image_url": {"url": url}}
        with pytest.raises(ItemError, match=why):
            conversation_of([{"role": "user", "content": [part]}], policy)
    with pytest.raises(ItemError, match=r"over 10 bytes"):
        MediaPolicy(max_bytes=10).fetch(uri)


def test_media_error_is_an_error_line(tmp_path: Path) -> None:
    line = chat("img", "s")
    line["body"]["messages"][1]["content"] = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    inp = write_lines(tmp_path / "in.jsonl", [line, chat("ok", "s")])
    BatchRun(settings(tmp_path, inp)).run(FakeEngine())
    outs = outputs(tmp_path / "out.jsonl")
    assert outs[0]["response"]["status_code"] == 400 and outs[0]["error"]["error"]["type"] == "BadRequestError"
    assert outs[1]["error"] is None


def test_rerun_does_nothing_and_changed_lines_resend(tmp_path: Path) -> None:
    inp = write_lines(tmp_path / "in.jsonl", [chat(f"r{i}", f"s{i}") for i in range(6)])
    BatchRun(settings(tmp_path, inp)).run(FakeEngine())
    out = tmp_path / "out.jsonl"
    before = (out.read_bytes(), out.stat().st_mtime_ns)
    again = FakeEngine()
    summary = BatchRun(settings(tmp_path, inp)).run(again)
    assert summary.already_complete and again.added == 0
    assert (out.read_bytes(), out.stat().st_mtime_ns) == before
    write_lines(inp, [chat(f"r{i}", f"s{i}" if i != 2 else "changed") for i in range(6)] + [chat("new", "n")])
    third = FakeEngine()
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

s = BatchSettings(input=Path(sys.argv[1]), output=Path(sys.argv[2]), model=sys.argv[3], commit_seconds=0.0)
BatchRun(s).run(FakeEngine(text_for=slow, max_in_flight=2))
"""


def test_sigkill_then_resume_exactly_once(tmp_path: Path) -> None:
    n = 80
    inp = write_lines(tmp_path / "in.jsonl", [chat(f"r{i}", f"s{i}") for i in range(n)])
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(inp), str(out), MODEL], env=env)
    done = state_dir(out) / "done.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not done.exists() or done.read_bytes().count(b"\n") < 10):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    checkpointed = done.read_bytes().count(b"\n")
    assert 10 <= checkpointed < n
    resumed = FakeEngine()
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


def test_template_bos_dropped_when_the_tokenizer_adds_its_own(tmp_path: Path) -> None:
    """vLLM tokenizes a rendered chat without special tokens; a text prompt given to the
    engine is tokenized with them: the prompt must not end up with two BOS tokens."""
    from types import SimpleNamespace

    from gemma4u_batch.config.job import EngineConfig
    from gemma4u_batch.engine.vllm_engine import VllmEngine

    for adds, expected in [(True, "<|turn>user\nhi"), (False, "<bos><|turn>user\nhi")]:
        tok = SimpleNamespace(
            bos_token="<bos>",
            bos_token_id=2,
            apply_chat_template=lambda *a, **k: "<bos><|turn>user\nhi",
            encode=lambda text, add_special_tokens, adds=adds: [2, 9] if adds and add_special_tokens else [9],
        )
        engine = VllmEngine(model="m", engine=EngineConfig(), _tokenizer=tok)
        assert engine.render_chat([{"role": "user", "content": "hi"}]) == expected
