"""Regenerate the bundled example media. Everything here is drawn by this script
(no third-party content), so the examples are license-clean (CC0)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).parent


def sunset(w: int = 640, h: int = 400) -> Image.Image:
    img = Image.new("RGB", (w, h))
    px = img.load()
    for y in range(h):
        for x in range(w):
            t = y / h
            px[x, y] = (int(250 - 80 * t), int(150 - 100 * t), int(60 + 120 * t))
    d = ImageDraw.Draw(img)
    d.ellipse((w // 2 - 60, h // 2 - 20, w // 2 + 60, h // 2 + 100), fill=(255, 220, 80))
    d.rectangle((0, int(h * 0.7), w, h), fill=(20, 40, 90))
    return img


def shapes(w: int = 480, h: int = 480) -> Image.Image:
    img = Image.new("RGB", (w, h), (245, 245, 240))
    d = ImageDraw.Draw(img)
    d.rectangle((40, 40, 200, 200), fill=(200, 30, 30))
    d.ellipse((240, 60, 440, 260), fill=(30, 90, 200))
    d.polygon([(80, 440), (240, 260), (400, 440)], fill=(40, 160, 60))
    d.text((180, 450), "gemma4u", fill=(0, 0, 0))
    return img


def main() -> None:
    out = HERE / "images"
    out.mkdir(exist_ok=True)
    sunset().save(out / "sunset.jpg", quality=85)
    shapes().save(out / "shapes.png")
    # A portrait photo stored sideways with EXIF orientation 6 (rotate 90° clockwise to view).
    exif = Image.Exif()
    exif[0x0112] = 6
    sunset(400, 300).rotate(90, expand=True).save(out / "rotated_exif.jpg", exif=exif, quality=85)
    # RGBA with transparency: composited on white before captioning.
    rgba = shapes(320, 320).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((320, 320)))
    rgba.save(out / "transparent.png")
    # A very wide banner.
    sunset(1600, 120).save(out / "banner.webp", quality=80)


# --- audio, video, manifest and dataset examples -------------------------------------
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Batch captioning turns a folder of media into labelled records.",
    "Every input gets exactly one record, errors included.",
    "Long recordings are cut into windows of at most thirty seconds.",
    "Each window is transcribed and the pieces are stitched back together.",
    "A crash never costs finished work and never produces duplicates.",
    "Rerunning the same command resumes where the last run stopped.",
    "The engine keeps a bounded number of requests in flight.",
    "Decoding happens in worker processes while the model generates.",
    "This recording was synthesised with espeak for the examples.",
]


def speak(text: str, rate: int = 16_000):
    """Speech from Debian's espeak-ng (only needed to regenerate the committed files)."""
    import io
    import subprocess

    import numpy as np
    import soundfile as sf
    import soxr

    wav = subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "--stdout", text], capture_output=True, check=True)
    x, sr = sf.read(io.BytesIO(wav.stdout), dtype="float32")
    return soxr.resample(x, sr, rate).astype(np.float32)


def make_audio() -> None:
    import numpy as np
    import soundfile as sf

    out = HERE / "audio"
    out.mkdir(exist_ok=True)
    sr = 16_000
    sf.write(out / "hello.wav", speak(SENTENCES[0]), sr)
    # ~95 s "lecture": sentences separated by pauses, so windows can cut in the gaps.
    pieces, total = [], 0
    i = 0
    while total < 95 * sr:
        s = speak(SENTENCES[i % len(SENTENCES)])
        pause = np.zeros(int(sr * (0.6 + 0.4 * (i % 3))), dtype=np.float32)
        pieces += [s, pause]
        total += s.size + pause.size
        i += 1
    lecture = np.concatenate(pieces)[: 95 * sr]
    sf.write(out / "lecture_95s.flac", lecture, sr)


def make_video() -> None:
    import av
    import numpy as np

    out = HERE / "video"
    out.mkdir(exist_ok=True)
    fps, seconds, w, h = 12, 6, 320, 192
    speech = speak(SENTENCES[1], rate=48_000)
    with av.open(str(out / "moving_square.mp4"), "w") as c:
        v = c.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        a = c.add_stream("aac", rate=48_000)
        a.layout = "mono"
        for i in range(fps * seconds):
            img = Image.new("RGB", (w, h), (30, 30, 60))
            d = ImageDraw.Draw(img)
            x = int((w - 60) * i / (fps * seconds))
            d.rectangle((x, 60, x + 60, 120), fill=(240, 200, 40))
            d.text((8, 8), f"t={i / fps:.1f}s", fill=(255, 255, 255))
            for p in v.encode(av.VideoFrame.from_image(img)):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        pcm = np.zeros(48_000 * seconds, dtype=np.float32)
        pcm[: min(speech.size, pcm.size)] = speech[: pcm.size]
        for start in range(0, pcm.size, 1024):
            chunk = pcm[start : start + 1024].reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            frame.sample_rate = 48_000
            for p in a.encode(frame):
                c.mux(p)
        for p in a.encode():
            c.mux(p)


def make_manifest_and_dataset() -> None:
    import json

    rows = [
        {"path": "images/sunset.jpg", "id": "sunset", "title": "Evening over the bay"},
        {"path": "images/shapes.png", "id": "shapes", "title": "Primary shapes", "prompt": "List the shapes you see."},
        {"path": "audio/hello.wav", "id": "hello", "title": "Pangram", "task": "transcribe"},
        {"path": "video/moving_square.mp4", "id": "square", "title": "A square crossing the frame"},
    ]
    (HERE / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    import datasets

    ds = datasets.Dataset.from_dict(
        {
            "image": [str(HERE / "images" / n) for n in ("sunset.jpg", "shapes.png", "banner.webp")],
            "id": ["sunset", "shapes", "banner"],
            "title": ["Evening over the bay", "Primary shapes", "A wide banner"],
        }
    ).cast_column("image", datasets.Image())
    ds = ds.map(lambda r: r)  # embed image bytes in the Arrow data
    ds.save_to_disk(str(HERE / "dataset"))


if __name__ == "__main__":
    main()
    make_audio()
    make_video()
    make_manifest_and_dataset()
