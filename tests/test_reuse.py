"""Reuse by content (#29): a moved, renamed or copied input costs no engine time; its record is
the record OUT holds for the same content key, under the new id."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from gemma4u_batch.engine.fake import FakeEngine
from gemma4u_batch.store.layout import OutLayout
from gemma4u_batch.store.ledger import current_records, read_status

from .helpers import EXAMPLES, aged, make_images, records_by_id, run_fake


def current_by_id(out: Path) -> dict[str, dict]:
    recs = list(current_records(OutLayout(out)))
    by_id = {r["id"]: r for r in recs}
    assert len(by_id) == len(recs), "an id has more than one current record"
    return by_id


def test_moved_and_copied_inputs_reuse_their_records_without_the_engine(tmp_path: Path, reads: list[str]) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 100)
    aged(inp)  # older than the filesystem's timestamp tick: their stat can be trusted
    first = run_fake(inp, out)
    assert first.done == 100 and first.reused == 0
    before = current_by_id(out)

    (inp / "moved").mkdir()
    moved = [f"img_{i:04d}.png" for i in range(40)]
    for name in moved:
        os.rename(inp / name, inp / "moved" / name)
    copied = [f"img_{i:04d}.png" for i in range(40, 70)]
    for name in copied:
        shutil.copy(inp / name, inp / f"copy_{name}")  # a new inode and mtime: hashed, never decoded nor generated
    # A moved file is known by its inode, size and mtime alone, never opened: rewrite one in place
    # with other bytes of the same size and put its times back (a read would see a new content key).
    victim = inp / "moved" / moved[0]
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    data[-20] ^= 0xFF
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))

    engine = FakeEngine()
    reads.clear()
    again = run_fake(inp, out, engine=engine)
    assert engine.added == 0 and engine.prestarts == 0, "the rerun asked for the engine"
    assert reads == [], "a moved file was read, or a copy decoded"
    assert (again.done, again.reused, again.errors) == (70, 70, 0)
    assert again.skipped == 60  # the files left where they were

    after = current_by_id(out)
    for name in moved:
        new, old = after[f"moved/{name}"], before[name]
        assert (new["key"], new["text"], new["reused_from"]) == (old["key"], old["text"], name)
        assert new["source"].endswith(f"moved/{name}") and new["decode_seconds"] is None
    for name in copied:
        new, old = after[f"copy_{name}"], before[name]
        assert (new["key"], new["text"], new["content_sha256"]) == (old["key"], old["text"], old["content_sha256"])
        assert new["reused_from"] == name
    assert all(after[name]["reused_from"] is None for name in before)  # the originals' records stay
    status = read_status(OutLayout(out))
    assert (status.records, status.reused) == (170, 70)

    third = run_fake(inp, out, engine=FakeEngine())
    assert (third.done, third.skipped) == (0, 130), "copies are done like any record"

    run_fake(inp, out, engine=FakeEngine(), prune=True)  # the ids moved away are retired
    status = read_status(OutLayout(out))
    assert (status.records, status.tombstones, status.reused, status.missing_inputs) == (130, 40, 70, 0)
    assert set(current_by_id(out)) == {str(p.relative_to(inp)) for p in inp.rglob("*.png")}


def test_byte_identical_items_in_one_run_are_generated_once(tmp_path: Path) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 3)
    for i in range(5):
        shutil.copy(inp / "img_0001.png", inp / f"dup_{i}.png")
    engine = FakeEngine(max_in_flight=2)
    summary = run_fake(inp, out, engine=engine, workers=2, commit_every=2)
    assert engine.added == 3, "each distinct content is generated once"
    assert (summary.done, summary.reused) == (8, 5)
    recs = records_by_id(out)
    group = [recs["img_0001.png"], *(recs[f"dup_{i}.png"] for i in range(5))]
    leaders = [r for r in group if r["reused_from"] is None]
    assert len(leaders) == 1
    assert all(
        r["reused_from"] == leaders[0]["id"] and r["text"] == leaders[0]["text"] for r in group if r is not leaders[0]
    )


def test_a_failed_leader_leaves_each_copy_to_be_generated_itself(tmp_path: Path) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 1)
    for i in range(3):
        shutil.copy(inp / "img_0000.png", inp / f"dup_{i}.png")
    engine = FakeEngine(
        max_in_flight=4, fail_if=lambda req: "refused" if req.payload[0].decoded.item.id == "dup_0.png" else None
    )
    run_fake(inp, out, engine=engine, workers=0)
    recs = records_by_id(out)
    assert recs["dup_0.png"]["error"] is not None
    assert all(r["error"] is None for i, r in recs.items() if i != "dup_0.png")
    assert engine.added >= 1 and all(r["reused_from"] != "dup_0.png" for r in recs.values())  # no error is copied


def test_manifest_rows_under_new_ids_reuse_by_content(tmp_path: Path) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 6)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        "".join(json.dumps({"id": f"a{i}", "path": str(inp / f"img_{i:04d}.png")}) + "\n" for i in range(6))
    )
    run_fake(manifest, out)
    manifest.write_text(
        "".join(json.dumps({"id": f"b{i}", "path": str(inp / f"img_{i:04d}.png")}) + "\n" for i in range(6))
    )
    engine = FakeEngine()
    summary = run_fake(manifest, out, engine=engine)
    assert engine.added == 0 and (summary.done, summary.reused) == (6, 6)
    recs = current_by_id(out)
    assert all(
        recs[f"b{i}"]["reused_from"] == f"a{i}" and recs[f"b{i}"]["key"] == recs[f"a{i}"]["key"] for i in range(6)
    )


def test_copies_under_shards_and_after_a_compaction(tmp_path: Path) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 12)
    run_fake(inp, out, commit_every=5)  # compacted at the end: sources are rows of one large file
    for i in range(12):
        shutil.copy(inp / f"img_{i:04d}.png", inp / f"copy_{i:04d}.png")
    engine = FakeEngine()
    done = [run_fake(inp, out, engine=engine, shard=f"{k}/2") for k in range(2)]
    assert engine.added == 0
    assert sum(s.reused for s in done) == 12 and all(s.reused for s in done)
    recs = current_by_id(out)
    assert all(recs[f"copy_{i:04d}.png"]["reused_from"] == f"img_{i:04d}.png" for i in range(12))


def test_a_copied_transcript_gets_its_own_subtitles(tmp_path: Path) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    shutil.copy(EXAMPLES / "audio" / "hello.wav", inp / "hello.wav")
    run_fake(inp, out, task="transcribe", subtitles=["srt"])
    shutil.copy(inp / "hello.wav", inp / "again.wav")
    engine = FakeEngine()
    summary = run_fake(inp, out, task="transcribe", subtitles=["srt"], engine=engine)
    assert engine.added == 0 and summary.reused == 1
    recs = current_by_id(out)
    assert recs["again.wav"]["segments"] == recs["hello.wav"]["segments"]
    srt = sorted(p.name for p in (out / "__transcripts__").iterdir())
    assert srt == ["again.wav.srt", "hello.wav.srt"]
    assert (out / "__transcripts__" / "again.wav.srt").read_text() == (
        out / "__transcripts__" / "hello.wav.srt"
    ).read_text()


def test_dataset_rows_with_the_same_bytes_reuse_without_decoding(tmp_path: Path) -> None:
    import datasets

    make_images(tmp_path / "png", 3)
    png = [(tmp_path / "png" / f"img_{i:04d}.png").read_bytes() for i in range(3)]

    def saved(ids: list[str], images: list[bytes], name: str) -> Path:
        ds = datasets.Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in images], "id": ids})
        ds.cast_column("image", datasets.Image()).save_to_disk(str(tmp_path / name))
        return tmp_path / name

    out = tmp_path / "out"
    run_fake(saved(["r0", "r1"], png[:2], "v1"), out)
    engine = FakeEngine()
    summary = run_fake(saved(["s1", "s0", "s2"], [png[1], png[0], png[2]], "v2"), out, engine=engine)
    assert engine.added == 1 and (summary.done, summary.reused) == (3, 2)
    recs = current_by_id(out)
    assert (recs["s0"]["reused_from"], recs["s1"]["reused_from"], recs["s2"]["reused_from"]) == ("r0", "r1", None)
    assert recs["s0"]["key"] == recs["r0"]["key"] and recs["s0"]["decode_seconds"] is None
