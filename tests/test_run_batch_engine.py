"""`gemma4u run-batch` against vLLM's own run_batch on the tiny checkpoint (float32): one batch
file with every chat content-part type vLLM accepts in a JSON line, system/developer/tool
messages, several media in one message, tools (auto, none, required, named) with vLLM's gemma4
tool parser, structured outputs (json_object, json_schema, regex, choice), n, logprobs, stop,
the errors vLLM answers (a media limit, embeddings, a prompt over the context, another model),
and transcription/translation lines (a ~3 s and a ~95 s speech file, every response format).

Each side runs once, as a whole process: `gemma4u run-batch` reads its input from a web server
on 127.0.0.1 and PUTs its output there (errors to --error-file), vLLM's run_batch reads and
writes local files. Every line vLLM answers must get the same status, greedy text, finish
reason, tool calls and usage from gemma4u; vLLM answers the speech lines "Model does not support
endpoint" with this model, gemma4u answers them with bodies vLLM's response models accept."""

from __future__ import annotations

import base64
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .helpers import (
    SR,
    TRANSLATE,
    audio_data_uri,
    gemma4u,
    long_speech,
    make_video,
    photo,
    png_bytes,
    short_speech,
    speech_line,
    wav_bytes,
)
from .http_servers import Reply, WebServer

pytestmark = pytest.mark.engine

# The engine settings both sides run with (gemma4u's own for the rest: eager, images prefilled
# whole, no processor cache); two images per line so a two-image line is answered.
COMMON = [
    "--dtype",
    "float32",
    "--max-model-len",
    "4096",
    "--max-num-seqs",
    "8",
    "--seed",
    "0",
    "--gpu-memory-utilization",
    "0.15",
    "--limit-mm-per-prompt",
    json.dumps({"image": 2, "audio": 1, "video": 1}),
    "--enable-auto-tool-choice",
    "--tool-call-parser",
    "gemma4",
]
VLLM_ONLY = [
    "--enforce-eager",
    "--mm-processor-kwargs",
    json.dumps({"max_soft_tokens": 280}),
    "--mm-processor-cache-gb",
    "0",
    "--disable-chunked-mm-input",
]
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
SPEECH = ["asr-json", "asr-text", "asr-srt", "asr-vtt", "asr-long", "translate"]


def _media(root: Path) -> Path:
    """Images at the processor's size (960×672 = 280 soft tokens: neither side resizes; their
    resamplers differ in the last bit), a 16 kHz tone, a 30-frame MP4."""
    media = root / "media"
    media.mkdir()
    (media / "a.png").write_bytes(png_bytes(photo().resize((960, 672))))
    (media / "b.png").write_bytes(png_bytes(photo("coffee").resize((960, 672))))
    t = np.arange(SR, dtype=np.float32) / SR
    (media / "tone.wav").write_bytes(wav_bytes((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)))
    make_video(media / "v.mp4", "mp4", "mpeg4")
    return media


def _lines(media: Path, model: str) -> list[dict[str, Any]]:
    def file(name: str) -> str:
        return f"file://{media}/{name}"

    def line(cid: str, messages: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
        body = {"model": model, "messages": messages, "max_tokens": 8, "temperature": 0.0, **kw}
        return {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body}

    def user(*parts: dict[str, Any]) -> dict[str, Any]:
        return {"role": "user", "content": list(parts)}

    def text(s: str) -> dict[str, Any]:
        return {"type": "text", "text": s}

    def image(name: str) -> dict[str, Any]:
        return {"type": "image_url", "image_url": {"url": file(name)}}

    ask = [{"role": "user", "content": "Weather in Paris?"}]
    hi = [{"role": "user", "content": "Hi"}]
    img_uri = "data:image/png;base64," + base64.b64encode((media / "a.png").read_bytes()).decode()
    tone = base64.b64encode((media / "tone.wav").read_bytes()).decode()
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    short = audio_data_uri(short_speech())
    return [
        line("text", [{"role": "user", "content": "Hello world!"}]),
        line(
            "system-multi-turn",
            [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hi."},
                {"role": "user", "content": "Again"},
            ],
        ),
        line("developer", [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]),
        line("image-file", [user(image("a.png"), text("Describe it."))]),
        line("image-data", [user({"type": "image_url", "image_url": {"url": img_uri}})]),
        line("input-image", [user({"type": "input_image", "image_url": file("b.png")}, text("What?"))]),
        line("two-images", [user(image("a.png"), image("b.png"), text("Compare."))]),
        line("three-images", [user(image("a.png"), image("b.png"), image("a.png"))]),
        line("input-audio", [user({"type": "input_audio", "input_audio": {"data": tone, "format": "wav"}})]),
        line("audio-url", [user({"type": "audio_url", "audio_url": {"url": file("tone.wav")}}, text("?"))]),
        line("video-url", [user({"type": "video_url", "video_url": {"url": file("v.mp4")}}, text("?"))]),
        line(
            "input-output-text",
            [
                {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
                {"role": "assistant", "content": [{"type": "output_text", "text": "Hello."}]},
                user(text("More")),
            ],
        ),
        line(
            "refusal",
            [
                {"role": "user", "content": "Do it"},
                {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't."}]},
                user(text("Please")),
            ],
        ),
        line(
            "thinking",
            [*hi, {"role": "assistant", "content": [{"type": "thinking", "thinking": "Hmm"}, text("Hello.")]}],
        ),
        line(
            "tool-history",
            [
                *ask,
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
            ],
            tools=[TOOL],
        ),
        line("tools-auto", ask, tools=[TOOL], tool_choice="auto"),
        line("tools-none", ask, tools=[TOOL], tool_choice="none"),
        line("tools-required", ask, tools=[TOOL], tool_choice="required"),
        line("tools-named", ask, tools=[TOOL], tool_choice={"type": "function", "function": {"name": "get_weather"}}),
        line("json-object", hi, response_format={"type": "json_object"}, max_tokens=24),
        line(
            "json-schema",
            hi,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}},
            max_tokens=24,
        ),
        line("regex", hi, structured_outputs={"regex": "[a-z]{3}"}),
        line("choice", hi, structured_outputs={"choice": ["yes", "no"]}),
        line("n2-seeded", hi, n=2, temperature=1.0, seed=7, max_tokens=4),
        line("logprobs", hi, logprobs=True, top_logprobs=2, max_completion_tokens=3),
        line("stop", hi, stop=["a", "e"], max_tokens=12),
        line("image-embeds", [user({"type": "image_embeds", "image_embeds": "AAAA"})]),
        line("too-long", [{"role": "user", "content": "word " * 5000}]),
        line("other-model", hi, model="NonExistModel"),
        speech_line("asr-json", short, model=model, max_completion_tokens=8),
        speech_line("asr-text", short, model=model, response_format="text", max_completion_tokens=8),
        speech_line("asr-srt", short, model=model, response_format="srt", max_completion_tokens=8),
        speech_line("asr-vtt", short, model=model, response_format="vtt", max_completion_tokens=8),
        speech_line(
            "asr-long",
            audio_data_uri(long_speech()[0]),
            model=model,
            response_format="verbose_json",
            language="en",
            max_completion_tokens=6,
        ),
        speech_line(
            "translate", short, url=TRANSLATE, model=model, response_format="verbose_json", max_completion_tokens=6
        ),
    ]


def _by_id(payload: bytes) -> dict[str, dict[str, Any]]:
    from vllm.entrypoints.launchers.run_batch import BatchRequestOutput

    out = {}
    for raw in payload.decode().splitlines():
        BatchRequestOutput.model_validate_json(raw)  # vLLM's own schema, each line
        line = json.loads(raw)
        out[line["custom_id"]] = line
    return out


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> dict[str, Any]:
    """Both runs of the same batch file: gemma4u's (output and error file) and vLLM's."""
    root = tmp_path_factory.mktemp("run-batch-vs-vllm")
    media = _media(root)
    lines = _lines(media, str(tiny_model))
    batch = "".join(json.dumps(x) + "\n" for x in lines).encode()
    (root / "in.jsonl").write_bytes(batch)
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING", "XDG_CACHE_HOME": str(root / "cache")}
    vllm = [sys.executable, "-m", "vllm.entrypoints.openai.run_batch", "-i", str(root / "in.jsonl")]
    vllm += ["-o", str(root / "vllm.jsonl"), "--model", str(tiny_model), *COMMON, *VLLM_ONLY]
    vllm += ["--allowed-local-media-path", str(media)]
    proc = subprocess.run(vllm, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with WebServer() as web:
        web.routes["/in.jsonl"] = [Reply(body=batch)]
        web.routes["/out.jsonl"] = lambda seen: Reply(200)
        args = ["run-batch", "-i", web.url("/in.jsonl"), "-o", web.url("/out.jsonl") + "?X-Amz-Signature=s3cr3t"]
        args += ["--error-file", str(root / "errors.jsonl"), "--model", str(tiny_model), *COMMON]
        args += ["--allowed-local-media-path", str(media)]
        ours = gemma4u(*args, timeout=900, env=env)
        assert ours.returncode == 0, ours.stderr[-4000:]
        (put,) = web.requests("/out.jsonl", "PUT")
    return {
        "lines": lines,
        "ours": _by_id(put.body),
        "errors": _by_id((root / "errors.jsonl").read_bytes()),
        "theirs": _by_id((root / "vllm.jsonl").read_bytes()),
        "stderr": ours.stderr,
    }


def _answer(line: dict[str, Any]) -> Any:
    """What must be equal: status, and per choice the text, finish reason and tool calls' names
    and arguments (their ids are random), and usage; or the error's message."""
    if line["error"] is not None:
        error = line["error"]
        return line["response"]["status_code"], error["error"]["message"] if isinstance(error, dict) else error
    body = line["response"]["body"]
    choices = [
        (
            c["message"]["content"],
            c["finish_reason"],
            [(t["function"]["name"], t["function"]["arguments"]) for t in c["message"].get("tool_calls") or []],
        )
        for c in body["choices"]
    ]
    return 200, choices, body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"]


def test_every_line_vllm_answers_is_answered_the_same(answers: dict[str, Any]) -> None:
    ours = {**answers["ours"], **answers["errors"]}
    theirs = answers["theirs"]
    chat = [x["custom_id"] for x in answers["lines"] if x["custom_id"] not in SPEECH]
    assert sorted(ours) == sorted(theirs) == sorted(x["custom_id"] for x in answers["lines"])
    for cid in chat:
        assert _answer(ours[cid]) == _answer(theirs[cid]), cid
    # the lines vLLM answers with an error (the same words from both): over the media limit,
    # embeddings, over the context, another model; and two parts vLLM's parser refuses in a chat
    # request as written here (Responses API shapes: input_image without `detail`, input_text)
    errors = {cid: _answer(theirs[cid])[0] for cid in chat if theirs[cid]["error"] is not None}
    assert errors == {
        "three-images": 400,
        "image-embeds": 400,
        "too-long": 400,
        "other-model": 404,
        "input-image": 400,
        "input-output-text": 400,
    }
    assert "--enable-mm-embeds" in _answer(ours["image-embeds"])[1]
    # what the lines exercise did happen: media counted, several choices, logprobs, JSON
    prompt = {cid: _answer(ours[cid])[2] for cid in chat if ours[cid]["error"] is None}
    assert prompt["two-images"] > 2 * 280 > prompt["image-file"] > 280
    assert prompt["video-url"] > 2000  # all 30 frames (vLLM's processor samples up to 32; caption 8)
    assert len(ours["n2-seeded"]["response"]["body"]["choices"]) == 2
    content = ours["logprobs"]["response"]["body"]["choices"][0]["logprobs"]["content"]
    assert content and all(len(t["top_logprobs"]) == 2 for t in content)
    assert ours["choice"]["response"]["body"]["choices"][0]["message"]["content"] in ("yes", "no")


def test_errors_in_the_error_file_successes_in_the_output(answers: dict[str, Any]) -> None:
    assert all(x["error"] is None for x in answers["ours"].values())
    assert answers["errors"] and all(x["error"] is not None for x in answers["errors"].values())
    order = [x["custom_id"] for x in answers["lines"]]
    for part in ("ours", "errors"):  # each file in input order
        ids = list(answers[part])
        assert ids == sorted(ids, key=order.index)
    assert "s3cr3t" not in answers["stderr"]


def test_speech_lines(answers: dict[str, Any]) -> None:
    """vLLM has no transcription for this model; gemma4u answers through its transcribe
    pipeline, with bodies vLLM's response models accept."""
    from vllm.entrypoints.speech_to_text.transcription.protocol import (
        TranscriptionResponse,
        TranscriptionResponseVerbose,
    )
    from vllm.entrypoints.speech_to_text.translation.protocol import TranslationResponseVerbose

    from gemma4u_batch.config.languages import DETECT_CODES

    theirs, ours = answers["theirs"], answers["ours"]
    for cid in SPEECH:
        assert theirs[cid]["error"].startswith("Model does not support endpoint: /v1/audio/")
        assert ours[cid]["response"]["status_code"] == 200, ours[cid]
    body = {cid: ours[cid]["response"]["body"] for cid in SPEECH}
    short = len(short_speech()) / SR
    plain = TranscriptionResponse.model_validate(body["asr-json"])
    assert plain.usage.type == "duration" and plain.usage.seconds == math.ceil(short)
    assert TranscriptionResponse.model_validate(body["asr-text"]).text == plain.text
    srt = TranscriptionResponse.model_validate(body["asr-srt"]).text
    vtt = TranscriptionResponse.model_validate(body["asr-vtt"]).text
    assert srt.startswith("1\n00:00:0") and " --> " in srt and vtt.startswith("WEBVTT\n\n00:00:0")

    x, truth = long_speech()
    verbose = TranscriptionResponseVerbose.model_validate(body["asr-long"])
    assert verbose.language == "en" and verbose.duration == pytest.approx(len(x) / SR)
    segs = verbose.segments or []
    assert len(segs) >= 4  # ~95 s: windows of at most 30 s, cut at the speech, stitched
    for a, b in itertools.pairwise(segs):
        assert a.end <= b.start
    for s in segs:
        assert 0 <= s.start < s.end <= verbose.duration and s.end - s.start <= 30.0 + 1e-6
        assert s.avg_logprob <= 0.0 and s.temperature == 0.0
    for t0, t1 in truth:  # the VAD's windows hold every utterance
        assert any(s.start <= t0 + 0.3 and t1 - 0.3 <= s.end for s in segs), (t0, t1)

    translated = TranslationResponseVerbose.model_validate(body["translate"])
    assert translated.segments and translated.duration == pytest.approx(short)
    assert translated.language in DETECT_CODES  # none given: identified per window
