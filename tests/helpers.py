"""What the tests share (fixtures are in conftest.py): paths, reading OUT's records, a job on the
FakeEngine, the real `gemma4u` and what its output is held to, and the test media.

Test media is real or made here: the bundled examples (drawn images, espeak-ng speech, a PyAV
video), scikit-image's public-domain photos, and images, tones and videos encoded with Pillow,
soundfile and PyAV. Heavy libraries are imported where they are used: `python -m tests.fake_job`
imports this module too.
"""

from __future__ import annotations

import inspect
import io
import json
import os
import re
import subprocess
import sys
import time
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from gemma4u_batch.config.job import JobConfig
from gemma4u_batch.console import Reporter
from gemma4u_batch.engine.fake import FakeEngine
from gemma4u_batch.job.job import JobSummary, run_job
from gemma4u_batch.store.layout import OutLayout
from gemma4u_batch.store.writer import iter_committed_records

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
GEMMA4U = str(Path(sys.executable).with_name("gemma4u"))


# ---------------------------------------------------------------------------- OUT's records


def records(out: Path) -> list[dict]:
    """OUT's records as its data files hold them (every committed record, in commit order); a
    finished run holds exactly one per (id, task), which this checks."""
    recs = list(iter_committed_records(OutLayout(out)))
    pairs = [(r["id"], r["task"]) for r in recs]
    assert len(set(pairs)) == len(pairs), "an (id, task) has two records in OUT"
    return recs


def records_by_id(out: Path) -> dict[str, dict]:
    """OUT's records by id (a job of one task per item)."""
    recs = records(out)
    by_id = {r["id"]: r for r in recs}
    assert len(by_id) == len(recs), "an id has more than one record"
    return by_id


def records_by_task(out: Path) -> dict[tuple[str, str], dict]:
    """OUT's records by (id, task)."""
    return {(r["id"], r["task"]): r for r in records(out)}


def data_records(out: Path) -> list[dict]:
    """Every record in every JSONL data file under OUT, committed or not (what a naive reader
    would load), read without gemma4u."""
    recs = []
    for p in sorted([*out.glob("part-*.jsonl"), *out.glob("__jsonl__/part-*.jsonl")]):
        recs += [json.loads(line) for line in p.read_text().splitlines()]
    return recs


# ------------------------------------------------------------------- a job on the FakeEngine


def fake_config(inp: Path, out: Path, **settings: Any) -> JobConfig:
    """A job for the FakeEngine: the model is a name only, decoding inline unless `workers` says."""
    return JobConfig(**{"input": inp, "output": out, "model": "fake-model", "workers": 0, **settings})


def run_fake(
    job: Path | JobConfig,
    out: Path | None = None,
    *,
    engine: FakeEngine | None = None,
    stop_file: Path | None = None,
    **settings: Any,
) -> JobSummary:
    """Run a job on the FakeEngine (a fresh one unless `engine` is given): `job` is a JobConfig,
    or the input with `out` and settings for `fake_config`."""
    if isinstance(job, JobConfig):
        assert out is None and not settings, "a JobConfig carries its own output and settings"
        config = job
    else:
        assert out is not None, "run_fake(inp, out, ...)"
        config = fake_config(job, out, **settings)
    return run_job(config, engine or FakeEngine(), reporter=Reporter("quiet"), stop_file=stop_file)


class SlowFakeEngine(FakeEngine):
    """A FakeEngine whose every step takes `delay` seconds: a run that can be stopped mid-way."""

    def __init__(self, delay: float) -> None:
        super().__init__(max_in_flight=4, steps_to_finish=2)
        self.delay = delay

    def step(self):
        time.sleep(self.delay)
        return super().step()


def fake_job(inp: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    """A FakeEngine job in its own process group (tests/fake_job.py), to be killed."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.fake_job", str(inp), str(out), *extra],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


HOUR_AGO = time.time() - 3600


def aged(root: Path) -> None:
    """Files last modified an hour ago: the quick check may trust their stat."""
    for p in root.rglob("*"):
        if p.is_file():
            os.utime(p, (HOUR_AGO, HOUR_AGO))


# ------------------------------------------------------------------------- the real gemma4u


def gemma4u(*args: str, timeout: float = 300, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run the installed `gemma4u` with these arguments, capturing its output as text."""
    return subprocess.run([GEMMA4U, *args], capture_output=True, text=True, timeout=timeout, **kw)


def tiny_args(model: Path, max_tokens: int = 24) -> list[str]:
    """The flags a CLI run on the tiny checkpoint takes: the shared engine's settings (float32,
    a 4096-token context) and a short answer."""
    return [
        "--model",
        str(model),
        "--dtype",
        "float32",
        "--max-tokens",
        str(max_tokens),
        "--max-model-len",
        "4096",
    ]


def job_flags(inp: Path, out: Path, **over: Any) -> dict[str, Any]:
    """`gemma4u caption`'s flags at their defaults (as Typer passes them to the command), with
    `over` applied: what `config_from_flags` takes."""
    from gemma4u_batch.cli.job_cmd import job_options

    flags = {n: p.default for n, p in inspect.signature(job_options).parameters.items()}
    flags.update(input=inp, output=out, **over)
    return flags


EXIT_CODES_MD = REPO / "docs" / "exit-codes.md"
_EXIT_ROW = re.compile(r"^\| (\d+) \| `([A-Z_]+)` \|", re.M)


@cache
def documented_codes() -> dict[str, int]:
    """{"LOCKED": 73, ...} from docs/exit-codes.md's table (its code and name columns). Tests of
    the real CLI compare exit statuses with these, so a code that changes in the docs or in the
    code fails a test."""
    return {name: int(code) for code, name in _EXIT_ROW.findall(EXIT_CODES_MD.read_text(encoding="utf-8"))}


def documented_code(name: str) -> int:
    """The exit code docs/exit-codes.md gives for an `ExitCode` name."""
    codes = documented_codes()
    assert name in codes, f"docs/exit-codes.md has no row for {name}"
    return codes[name]


ENGINE_NOISE = re.compile(
    r"vllm|torch|triton|cuda|numa|safetensors|EngineCore|\bINFO\b|\bWARNING\b(?!:)|(?-i:[a-z]Warning:)|\bit/s\]",
    re.IGNORECASE,
)
"""What vLLM, torch and Triton print (their log lines, warnings, tqdm bars); gemma4u's own
messages never look like this."""


def engine_noise(text: str) -> list[str]:
    """Lines of a CLI's output that came from the engine's libraries rather than from gemma4u."""
    return [line for line in text.splitlines() if ENGINE_NOISE.search(line)]


# --------------------------------------------------------------------------------- images


def photo(name: str = "astronaut") -> Image.Image:
    """A real public-domain photo shipped with scikit-image (CC0 / public domain)."""
    from skimage import data

    arr = getattr(data, name)()
    if arr.ndim == 2:
        return Image.fromarray(arr, mode="L").convert("RGB")
    return Image.fromarray(arr[..., :3])


def jpeg_bytes(img: Image.Image, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def png_bytes(img: Image.Image, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def gif_bytes(img: Image.Image) -> bytes:
    """A two-frame animated GIF (palette images) of `img`."""
    buf = io.BytesIO()
    frames = [img.convert("P", palette=Image.Palette.ADAPTIVE), img.rotate(10).convert("P")]
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def make_images(root: Path, n: int, start: int = 0) -> None:
    """n small distinct PNGs img_{start:04d}.png ... (cheap to decode: for many-item jobs)."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        Image.new("RGB", (32 + i % 7, 24), ((i * 37) % 255, (i * 91) % 255, 40)).save(root / f"img_{i:04d}.png")


def write_image_folder(root: Path, with_bad: bool = True) -> dict[str, str]:
    """Good images of the usual real-world forms plus bad files. Returns id → expected kind."""
    root.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str] = {}
    astro = photo("astronaut")
    (root / "astronaut.jpg").write_bytes(jpeg_bytes(astro))
    expected["astronaut.jpg"] = "ok"
    sub = root / "nested" / "deeper"
    sub.mkdir(parents=True)
    coffee = photo("coffee")
    exif = Image.Exif()
    exif[0x0112] = 6
    (sub / "coffee_rotated.jpg").write_bytes(jpeg_bytes(coffee.rotate(90, expand=True), exif=exif))
    expected["nested/deeper/coffee_rotated.jpg"] = "ok"
    chelsea = photo("chelsea").convert("RGBA")
    chelsea.putalpha(128)
    (root / "chelsea_rgba.png").write_bytes(png_bytes(chelsea))
    expected["chelsea_rgba.png"] = "ok"
    (root / "palette.gif").write_bytes(gif_bytes(photo("rocket")))
    expected["palette.gif"] = "ok"
    cam16 = (np.asarray(photo("camera").convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(cam16).save(root / "gray16.png")
    expected["gray16.png"] = "ok"
    photo("coins").convert("CMYK").save(root / "cmyk.jpg", format="JPEG")
    expected["cmyk.jpg"] = "ok"
    photo("astronaut").save(root / "astro.webp", format="WEBP")
    expected["astro.webp"] = "ok"
    Image.new("RGB", (3000, 20), (10, 200, 10)).save(root / "wide.png")
    expected["wide.png"] = "ok"
    Image.new("RGB", (2, 2), (200, 0, 0)).save(root / "tiny.png")
    expected["tiny.png"] = "ok"
    (root / ".hidden.png").write_bytes(png_bytes(Image.new("RGB", (8, 8))))
    (root / "notes.txt").write_text("not media, skipped")
    if with_bad:
        (root / "zero.jpg").write_bytes(b"")
        expected["zero.jpg"] = "empty"
        (root / "text.png").write_text("this is a text file named .png\n")
        expected["text.png"] = "not_an_image"
        data = jpeg_bytes(photo("astronaut"))
        (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
        expected["truncated.jpg"] = "corrupt"
    return expected


# ---------------------------------------------------------------------------------- audio

SR = 16_000
AUDIO = EXAMPLES / "audio"


def hello() -> np.ndarray:
    """examples/audio/hello.wav (espeak-ng speech, 16 kHz mono) as float32 samples."""
    import soundfile as sf

    x, sr = sf.read(AUDIO / "hello.wav", dtype="float32")
    assert sr == SR
    return x


def quiet(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Near-silence (-60 dBFS) at 16 kHz."""
    return (rng.standard_normal(int(seconds * SR)) * 0.001).astype(np.float32)


def tone(seconds: float, freq: float = 440.0, amp: float = 0.3, sr: int = SR) -> np.ndarray:
    """A steady sine (no speech in it)."""
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def three_utterances() -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Three short utterances (hello.wav) between near-silence and a steady tone, and where each
    utterance truly is (seconds)."""
    rng = np.random.default_rng(0)
    speech = hello()
    pieces = [quiet(4, rng), speech, quiet(5, rng), tone(6), speech, tone(5), quiet(3, rng), speech, quiet(4, rng)]
    truth, pos = [], 0
    for p in pieces:
        if p is speech:
            truth.append((pos / SR, (pos + len(p)) / SR))
        pos += len(p)
    return np.concatenate(pieces), truth


def wav_bytes(x: np.ndarray, sr: int = SR) -> bytes:
    """Samples as a WAV file's bytes."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, x, sr, format="WAV")
    return buf.getvalue()


# ---------------------------------------------------------------------------------- video

VIDEO_SIZE, VIDEO_FRAMES, VIDEO_FPS = (96, 64), 30, 25


def gray_level(i: int) -> int:
    """The flat gray level of `make_video`'s frame i, so a test can tell which frame it got."""
    return 30 + 7 * i


def make_video(
    path: Path,
    fmt: str,
    codec: str,
    n: int = VIDEO_FRAMES,
    w: int = VIDEO_SIZE[0],
    h: int = VIDEO_SIZE[1],
    rotation: float | None = None,
    audio: str | None = None,
    marker: bool = False,
    noise: bool = False,
    options: dict | None = None,
) -> bytes:
    """A real video file encoded with PyAV at VIDEO_FPS: frame i flat gray at `gray_level(i)`
    (with `marker`, a red block in the stored frame's top-left corner; with `noise`, texture so
    every frame costs about the same bytes), optionally a display rotation and a stereo 440 Hz
    soundtrack in `audio`'s codec. Returns the file's bytes."""
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w", format=fmt, options=options or {}) as c:
        s = c.add_stream(codec, rate=VIDEO_FPS)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.bit_rate = 4_000_000  # mpeg4's default is low enough to shift flat gray levels
        if rotation is not None:
            s.set_display_rotation(rotation)
        a = None
        if audio:
            a = c.add_stream(audio, rate=44100)
            a.layout = "stereo"
        for i in range(n):
            img = np.full((h, w, 3), gray_level(i) % 256, np.uint8)
            if noise:
                img = np.clip(img + rng.integers(-40, 41, img.shape), 0, 255).astype(np.uint8)
            if marker:
                img[: h // 4, : w // 4] = (255, 0, 0)
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
        if a is not None:
            t = np.arange(int(44100 * n / VIDEO_FPS)) / 44100
            x = (0.4 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for i in range(0, len(x), 1024):
                chunk = np.ascontiguousarray(np.stack([x[i : i + 1024]] * 2))
                fr = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
                fr.sample_rate, fr.pts = 44100, i
                for p in a.encode(fr):
                    c.mux(p)
            for p in a.encode(None):
                c.mux(p)
    return path.read_bytes()


# ------------------------------------------------------------------------------- run-batch

BATCH_MODEL = "hmellor/tiny-random-LlamaForCausalLM"  # the name vLLM's run-batch test batches use
CHAT_URL, TRANSCRIBE, TRANSLATE = "/v1/chat/completions", "/v1/audio/transcriptions", "/v1/audio/translations"


def batch_chat(cid: str, system: str, model: str = BATCH_MODEL, url: str = CHAT_URL, **extra: Any) -> dict:
    """A chat line as vLLM's run-batch tests write them: a system prompt, then "Hello world!"."""
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
VLLM_INPUT_BATCH = [
    batch_chat("request-1", "You are a helpful assistant."),
    batch_chat("request-2", "You are an unhelpful assistant."),
    batch_chat("request-3", "You are an unhelpful assistant.", model="NonExistModel"),
    batch_chat("request-4", "You are an unhelpful assistant.", url="/bad_url"),
    batch_chat("request-5", "You are an unhelpful assistant.", stream="True"),
]
VLLM_INVALID_INPUT_BATCH = [
    {
        **{k: v for k, v in batch_chat("x", "You are a helpful assistant.").items() if k != "custom_id"},
        "invalid_field": "r1",
    },
    batch_chat("request-2", "You are an unhelpful assistant."),
]


def speech_line(cid: str, file_url: str, url: str = TRANSCRIBE, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": cid,
        "method": "POST",
        "url": url,
        "body": {"model": "gemma-speech", "file_url": file_url, **body},
    }


def write_lines(path: Path, lines: list[Any]) -> Path:
    """A batch file: JSON lines (or raw strings, for unreadable lines)."""
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def batch_outputs(path: Path) -> list[dict[str, Any]]:
    """A run-batch output file's lines, each validated by vLLM's own BatchRequestOutput."""
    from vllm.entrypoints.launchers.run_batch import BatchRequestOutput

    lines = path.read_text().splitlines()
    for line in lines:
        BatchRequestOutput.model_validate_json(line)
    return [json.loads(line) for line in lines]


def audio_data_uri(x: np.ndarray) -> str:
    import base64

    return "data:audio/wav;base64," + base64.b64encode(wav_bytes(x)).decode()


def short_speech() -> np.ndarray:
    """~3 s: one espeak-ng utterance between short pauses."""
    rng = np.random.default_rng(1)
    speech = hello()
    pad = max(0.5, (3.0 - len(speech) / SR) / 2)
    return np.concatenate([quiet(pad, rng), speech, quiet(pad, rng)])


@cache
def long_speech() -> tuple[np.ndarray, list[tuple[float, float]]]:
    """~95 s of utterances with pauses between them, and where each utterance truly is."""
    rng = np.random.default_rng(2)
    speech = hello()
    pieces: list[np.ndarray] = []
    truth, pos, i = [], 0, 0
    while pos < 93 * SR:
        pause = quiet(1.0 + (i % 4) * 0.75, rng)
        pieces += [pause, speech]
        pos += len(pause)
        truth.append((pos / SR, (pos + len(speech)) / SR))
        pos += len(speech)
        i += 1
    tail = quiet(max(0.5, 95 - pos / SR), rng)
    return np.concatenate([*pieces, tail]), truth
