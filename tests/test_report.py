"""`gemma4u report`: the page a person reviews a run with, checked in a real headless browser.

OUT is made by the product itself: a FakeEngine run over real photos, bad files, an audio
file transcribed into segments and a video, with one caption that is an XSS probe and one
empty answer (a quality flag)."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from gemma4u_batch.engine.fake import FakeEngine
from gemma4u_batch.errors import UsageError
from gemma4u_batch.prompting.units import EngineRequest
from gemma4u_batch.report.page import ReportOptions, write_report

from .browser import Browser, chromium_or_skip
from .helpers import EXAMPLES, gemma4u, records, run_fake, write_image_folder

XSS = "<script>alert(1)</script>"


def _text_for(req: EngineRequest, text: str) -> str:
    if "XSS probe" in req.prompt:
        return f"{XSS} a caption with markup"
    if "Say nothing" in req.prompt:
        return ""
    return text


@pytest.fixture(scope="module")
def run_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished FakeEngine run over a manifest of real and bad media."""
    base = tmp_path_factory.mktemp("report")
    media = base / "in"
    expected = write_image_folder(media)
    shutil.copy(EXAMPLES / "audio" / "hello.wav", media / "hello.wav")
    shutil.copy(EXAMPLES / "video" / "moving_square.mp4", media / "square.mp4")
    rows = [{"path": p, "id": p} for p in sorted(expected)]
    for row in rows:
        if row["id"] == "astronaut.jpg":
            row["prompt"] = "XSS probe: describe."
        if row["id"] == "tiny.png":
            row["prompt"] = "Say nothing."
    rows += [{"path": "hello.wav", "id": "hello", "task": "transcribe"}, {"path": "square.mp4", "id": "square"}]
    rows.append({"path": "missing.jpg", "id": "missing"})
    manifest = media / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = base / "out"
    run_fake(manifest, out, engine=FakeEngine(text_for=_text_for), commit_every=4)
    (media / "wide.png").unlink()  # captioned, then gone: its card says so instead of a picture
    shutil.copy(media / "astronaut.jpg", media / "cmyk.jpg")  # changed since: not previewed either
    return out


@pytest.mark.timeout(180)  # a hung browser fails here, not at the suite's timeout
def test_page_in_a_real_browser(run_out: Path, tmp_path: Path) -> None:
    exe = chromium_or_skip()
    page = tmp_path / "report.html"
    res = gemma4u("report", str(run_out), "-o", str(page), "--sample", "50")
    assert res.returncode == 0, res.stderr
    recs = records(run_out)
    with Browser(exe) as b:
        b.open(page)
        b.eval("Promise.all([...document.images].map(i => i.decode().catch(() => null)))")
        imgs = b.eval("[...document.querySelectorAll('#grid img')].map(i => [i.className, i.naturalWidth])")
        cards = b.eval("[...document.querySelectorAll('#grid .card')].map(c => c.dataset.id)")
        captions = b.eval(
            "Object.fromEntries([...document.querySelectorAll('#grid .card')].map(c => "
            "[c.dataset.id, c.querySelector('.caption') ? c.querySelector('.caption').textContent : null]))"
        )
        scripts = b.eval("document.querySelectorAll('script').length")
        external = b.eval(
            "[...document.querySelectorAll('[src],[href]')].map(e => e.getAttribute('src') || "
            "e.getAttribute('href')).filter(u => !u.startsWith('data:'))"
        )
        groups = b.eval(
            "Object.fromEntries([...document.querySelectorAll('#errors tr.group')].map(r => "
            "[r.dataset.name, Number(r.querySelector('.count').textContent)]))"
        )
        flags = b.eval(
            "Object.fromEntries([...document.querySelectorAll('#flags tr.group')].map(r => "
            "[r.dataset.name, Number(r.querySelector('.count').textContent)]))"
        )
        segs = b.eval("document.querySelectorAll('.card[data-id=hello] svg.timeline rect.seg').length")
        notes = b.eval(
            "Object.fromEntries([...document.querySelectorAll('#grid .card')].map(c => "
            "[c.dataset.id, c.querySelector('.note') ? c.querySelector('.note').textContent : null]))"
        )
        dialogs = [e for e in b.events if e.get("method") == "Page.javascriptDialogOpening"]
    # Every record is in the grid (50 > records), every picture in it decoded.
    assert sorted(cards) == sorted(r["id"] for r in recs)
    assert imgs and all(w > 0 for _, w in imgs), imgs
    kinds = Counter(c for c, _ in imgs)
    ok_images = sum(1 for r in recs if r["modality"] == "image" and r["error"] is None)
    # wide.png is gone, cmyk.jpg changed; the video's poster is a thumb too
    assert kinds["thumb"] == ok_images - 2 + 1 and kinds["strip"] == 1 and kinds["wave"] == 1
    # Captions are present, as text: the markup in one shows literally and never became an element.
    for r in recs:
        if r["error"] is None and r["task"] == "caption":
            assert captions[r["id"]] == r["text"]
    assert captions["astronaut.jpg"].startswith(XSS)
    assert scripts == 0 and not dialogs and external == []  # nothing to run, nothing to fetch
    # Error groups and flags count what the records say.
    assert groups == dict(Counter(r["error_kind"] for r in recs if r["error"] is not None))
    assert {"empty", "not_an_image", "corrupt"} <= set(groups)
    assert flags == {"empty": 1}
    hello = next(r for r in recs if r["id"] == "hello")
    assert segs == len(hello["segments"]) >= 1
    assert "cannot read the media file" in notes["wide.png"] and captions["wide.png"]
    assert "changed since" in notes["cmyk.jpg"] and captions["cmyk.jpg"]
    assert notes["missing"] is None  # a failed record: its error says why there is no picture


def test_sample_is_seeded_and_filtered(run_out: Path, tmp_path: Path) -> None:
    def shown(**kw: object) -> list[str]:
        dest = tmp_path / "r.html"
        write_report(run_out, dest, ReportOptions(**kw))  # type: ignore[arg-type]
        html = dest.read_text()
        return [
            part.split('"', 1)[0] for part in html.split('class="card')[1:] for part in [part.split('data-id="', 1)[1]]
        ]

    recs = records(run_out)
    assert shown(sample=5, seed=1) == shown(sample=5, seed=1)
    assert len(shown(sample=5, seed=1)) == 5
    assert shown(sample=50, seed=1) != shown(sample=50, seed=2)
    assert sorted(shown(sample=50, filters=("error",))) == sorted(r["id"] for r in recs if r["error"] is not None)
    assert shown(sample=50, filters=("task=transcribe",)) == ["hello"]
    assert shown(sample=50, filters=("flag=empty",)) == ["tiny.png"]
    assert shown(sample=50, filters=("error=corrupt", "task=caption")) == ["truncated.jpg"]
    with pytest.raises(UsageError, match="--filter"):
        shown(filters=("colour=red",))


def test_bad_usage_is_one_line(tmp_path: Path) -> None:
    res = gemma4u("report", str(tmp_path))
    assert res.returncode != 0
    assert "not a gemma4u output folder" in res.stderr and "Traceback" not in res.stderr


def test_default_page_leaves_out_a_table(tmp_path: Path) -> None:
    """Written into OUT by default, in a folder the table readers skip."""
    import datasets
    import pandas

    root = tmp_path / "in"
    root.mkdir()
    shutil.copy(EXAMPLES / "images" / "sunset.jpg", root / "sunset.jpg")
    shutil.copy(EXAMPLES / "images" / "shapes.png", root / "shapes.png")
    out = tmp_path / "out"
    run_fake(root, out, format="parquet")
    res = write_report(out)
    assert res.path == out / "__report__" / "report.html" and res.sampled == 2
    assert "data:image/webp;base64," in res.path.read_text()  # a folder input's media, found by id
    assert len(pandas.read_parquet(out)) == 2
    assert datasets.load_dataset("parquet", data_dir=str(out), split="train").num_rows == 2


def test_structured_data_is_shown_escaped(tmp_path: Path) -> None:
    """`data` (here a --choices label carrying markup) is pretty-printed as text, never as HTML."""
    root = tmp_path / "in"
    root.mkdir()
    shutil.copy(EXAMPLES / "images" / "shapes.png", root / "shapes.png")
    out = tmp_path / "out"
    labels = ["<b>shapes</b>", "<img src=x onerror=alert(1)>"]
    run_fake(root, out, choices=labels)
    (rec,) = records(out)
    assert rec["data"] in labels
    html = write_report(out, tmp_path / "r.html").path.read_text()
    shown = html.split('class="data">', 1)[1].split("</pre>", 1)[0]
    assert shown.startswith("&#34;&lt;") and shown.endswith("&gt;&#34;")  # json.dumps of the label, escaped
    assert "<b>shapes" not in html and "<img src=x" not in html
