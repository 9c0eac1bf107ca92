"""The benchmark's own helpers (benchmarks/): inputs, the idle-share arithmetic, the batch
JSONL for run_batch, the ratio table. No engine, no timing assertions."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from benchmarks.batch_jsonl import read_batch_output, write_batch_jsonl
from benchmarks.bench import Run, pair_ratios
from benchmarks.inputs import PHONE_SIZE, make_tiny_pngs, phone_photo_bytes, small_image_bytes
from benchmarks.timeline import Timeline, idle_share, last_add, summarize, work_window


@pytest.mark.parametrize(("index", "orientation"), [(0, 1), (3, 6)])
def test_phone_photo_is_a_4032x3024_jpeg_with_exif(index: int, orientation: int) -> None:
    data = phone_photo_bytes(index)
    img = Image.open(io.BytesIO(data))
    assert img.format == "JPEG" and img.size == PHONE_SIZE and img.mode == "RGB"
    exif = img.getexif()
    assert exif.get(0x0112) == orientation  # every fourth one is a portrait shot stored landscape
    assert exif.get(0x010F) == "BenchPhone"
    assert len(data) > 1_000_000  # noise keeps the JPEG at a phone's size, not a flat image's
    assert phone_photo_bytes(index) == data  # deterministic: the same files every run


def test_small_image_and_tiny_pngs(tmp_path: Path) -> None:
    img = Image.open(io.BytesIO(small_image_bytes(1)))
    assert img.format == "JPEG" and img.size == (320, 240)
    paths = make_tiny_pngs(tmp_path / "pngs", 5)
    assert [p.name for p in paths] == [f"img_{i:06d}.png" for i in range(5)]
    assert len({p.read_bytes() for p in paths}) == 5  # distinct files (distinct content keys)
    (tmp_path / "pngs" / "stray.txt").write_text("x")
    make_tiny_pngs(tmp_path / "pngs", 3)  # a set folder holds exactly its items
    assert sorted(p.name for p in (tmp_path / "pngs").iterdir()) == [f"img_{i:06d}.png" for i in range(3)]


def test_gemma4u_decodes_phone_photo_upright_at_target_size() -> None:
    from gemma4u_batch.decode import DecodeOptions
    from gemma4u_batch.decode.image import decode_image, target_size

    opts = DecodeOptions(image_tokens=280)
    img, info = decode_image(phone_photo_bytes(3), opts)  # EXIF orientation 6: portrait
    assert info["source_size"] == [4032, 3024]
    assert img.size == target_size(3024, 4032, opts) and img.size[1] > img.size[0]


def test_idle_share_on_a_synthetic_timeline() -> None:
    # in flight: 1 on [0,2), 0 on [2,3), 2 on [3,6), 0 after 6
    events = [(0.0, 1), (2.0, 0), (3.0, 2), (6.0, 0)]
    assert idle_share(events, 0.0, 6.0) == pytest.approx(1 / 6)
    assert idle_share(events, 0.0, 6.0, below=2) == pytest.approx(3 / 6)  # under-filled: fewer than 2
    assert idle_share(events, 1.0, 4.0) == pytest.approx(1 / 3)  # clipped window
    assert idle_share(events, 2.5, 2.9) == pytest.approx(1.0)
    assert idle_share(events, 0.0, 8.0) == pytest.approx(3 / 8)  # empty after the last event
    assert idle_share([], 0.0, 1.0) == pytest.approx(1.0)  # nothing ever sent
    assert idle_share(events, 5.0, 5.0) == 0.0
    assert work_window(events) == (0.0, 6.0)
    assert work_window([(1.0, 0)]) is None


def test_timeline_round_trip_and_summary(tmp_path: Path) -> None:
    tl = Timeline(engine_start_begin=10.0, engine_start_end=40.0, max_num_seqs=4)
    for t, n in [(41.0, 1), (42.0, 4), (44.0, 0), (45.0, 2), (49.0, 0)]:
        tl.record(n, t)
    tl.save(tmp_path / "tl.json")
    back = Timeline.load(tmp_path / "tl.json")
    assert back.events == tl.events
    s = summarize(back)
    assert s["engine_start_s"] == pytest.approx(30.0)
    assert s["work_window_s"] == pytest.approx(8.0)
    assert s["idle_share"] == pytest.approx(1 / 8)
    assert s["underfilled_share"] == pytest.approx((1 + 1 + 4) / 8)  # below 4 except [42, 44)
    # input exhausted at the last add (45.0): the drain after it is not starvation
    assert last_add(back.events) == 45.0
    assert s["feeding_window_s"] == pytest.approx(4.0)
    assert s["idle_while_feeding_share"] == pytest.approx(1 / 4)
    assert s["underfilled_while_feeding_share"] == pytest.approx(2 / 4)


def test_batch_jsonl_lines_are_openai_chat_requests(tmp_path: Path) -> None:
    imgs = [tmp_path / "a b.jpg", tmp_path / "c.jpg"]
    out = write_batch_jsonl(imgs, tmp_path / "batch.jsonl", "/m", 12, "Caption it.")
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [x["custom_id"] for x in lines] == ["a b.jpg", "c.jpg"]
    body = lines[0]["body"]
    assert lines[0]["url"] == "/v1/chat/completions" and body["temperature"] == 0.0
    assert body["max_completion_tokens"] == 12
    url = body["messages"][0]["content"][0]["image_url"]["url"]
    assert url.startswith("file:///") and url.endswith("a%20b.jpg")
    result = tmp_path / "out.jsonl"
    result.write_text(
        json.dumps(
            {
                "custom_id": "c.jpg",
                "response": {
                    "status_code": 200,
                    "body": {
                        "choices": [{"message": {"content": "hi"}}],
                        "usage": {"completion_tokens": 3, "prompt_tokens": 300},
                    },
                },
                "error": None,
            }
        )
        + "\n"
    )
    assert read_batch_output(result) == [
        {"id": "c.jpg", "text": "hi", "num_output_tokens": 3, "num_prompt_tokens": 300, "error": None}
    ]


def test_ratios_pair_runs_of_the_same_repetition() -> None:
    def run(system: str, rep: int, e2e: float, items: int = 10, set_: str = "phone") -> Run:
        return Run(system=system, model="tiny", set=set_, rep=rep, items=items, e2e_s=e2e, after_start_s=e2e / 2)

    runs = [
        run("gemma4u", 0, 40.0),
        run("a", 0, 100.0),
        run("gemma4u", 1, 80.0),
        run("a", 1, 100.0),
        run("b", 0, 100.0),
        run("c", 1, 30.0),
        run("a", 2, 1.0),
    ]
    rows = {r["baseline"]: r for r in pair_ratios(runs)}
    assert rows["a"]["reps"] == 2  # rep 2 has no gemma4u run: not paired
    assert rows["a"]["time_ratio"] == pytest.approx(0.6)  # median of 0.4 and 0.8
    assert rows["a"]["met"] is True and rows["a"]["target"] == "time ratio ≤ 0.8"
    assert rows["b"]["speedup"] == pytest.approx(2.5) and rows["b"]["met"] is True
    assert rows["c"]["speedup"] == pytest.approx(30 / 80) and rows["c"]["met"] is False
    small = pair_ratios([run("gemma4u", 0, 95.0, set_="small"), run("a", 0, 100.0, set_="small")])
    assert small[0]["target"] == "time ratio ≤ 1.0" and small[0]["met"] is True
