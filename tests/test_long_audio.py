"""Long audio stays streamed: past `SPILL_SECONDS` the decoded waveform goes to a spill file,
not memory; windows, samples and segments are what the in-memory path gives; the spill file
never outlives its item (finished, failed, worker killed, pool killed); and memory stays
bounded by the window, not the file, in the worker and in the main process."""

from __future__ import annotations

import os
import resource
import signal
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from gemma4u_batch.decode import DecodeOptions, decode_item
from gemma4u_batch.decode.item import DecodedItem
from gemma4u_batch.decode.spill import SPILL_SECONDS, SpillDir, SpilledAudio
from gemma4u_batch.decode.workers import DecodePool
from gemma4u_batch.prompting.units import build_parts, engine_media
from gemma4u_batch.records import Modality, WorkItem
from gemma4u_batch.store.layout import OutLayout
from gemma4u_batch.store.writer import cleanup_orphans

from .helpers import AUDIO, SR, records, run_fake

pytestmark = pytest.mark.timeout(300)

LECTURE = AUDIO / "lecture_95s.flac"


def _item(path: Path, name: str | None = None) -> WorkItem:
    return WorkItem(id=name or path.name, source=str(path), path=path, modality=Modality.AUDIO)


@pytest.fixture(scope="module")
def one_hour(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 95-s lecture repeated for an hour (16 kHz mono FLAC, ~52 MB), written block by block."""
    path = tmp_path_factory.mktemp("long") / "lecture_1h.flac"
    lecture, sr = sf.read(LECTURE, dtype="float32")
    total = 3600 * sr
    with sf.SoundFile(path, "w", samplerate=sr, channels=1, format="FLAC") as fh:
        done = 0
        while done < total:
            block = lecture[: min(len(lecture), total - done)]
            fh.write(block)
            done += len(block)
    return path


def _drain(pool: DecodePool, n: int, budget: float = 240.0) -> list[DecodedItem]:
    got: list[DecodedItem] = []
    deadline = time.monotonic() + budget
    while len(got) < n:
        assert time.monotonic() < deadline, "pool did not finish in time"
        got += pool.poll(0.2)
    return got


def _spill_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*.f32")]


def test_spilled_audio_gives_the_same_windows_and_samples(tmp_path: Path) -> None:
    """The 95-s lecture spilled after 10 s: same samples, speech regions, windows, token
    counts and, read at request time, the same clip samples as decoding in memory."""
    item = _item(LECTURE)
    in_memory = decode_item(item, DecodeOptions(vad=True))
    spilled = decode_item(item, DecodeOptions(vad=True, spill_dir=str(tmp_path), spill_seconds=10))
    assert isinstance(spilled.audio, SpilledAudio) and isinstance(in_memory.audio, np.ndarray)
    assert len(_spill_files(tmp_path)) == 1
    assert np.array_equal(np.asarray(spilled.audio), in_memory.audio)
    assert spilled.info == in_memory.info and spilled.content_sha256 == in_memory.content_sha256
    # Decoded from the open file (as a file over stream_input_bytes is), not from its bytes: the same.
    streamed = decode_item(item, DecodeOptions(vad=True, spill_dir=str(tmp_path), stream_input_bytes=0))
    assert np.array_equal(np.asarray(streamed.audio), in_memory.audio) and streamed.info == in_memory.info
    assert (streamed.content_sha256, streamed.file_stat) == (in_memory.content_sha256, in_memory.file_stat)
    for windowed in (True, False):
        a = build_parts(in_memory, windowed_audio=windowed, opts=DecodeOptions())
        b = build_parts(spilled, windowed_audio=windowed, opts=DecodeOptions())
        assert [(p.start, p.end, p.mm_tokens) for p in a] == [(p.start, p.end, p.mm_tokens) for p in b]
        for pa, pb in zip(a, b, strict=True):
            media = engine_media(pb.mm)
            assert media is not None and isinstance(media["audio"][0], np.ndarray)
            assert np.array_equal(media["audio"][0], pa.mm["audio"][0])
    del in_memory.info["speech"], spilled.info["speech"]  # no VAD: the whole file cut at its quietest points
    a = build_parts(in_memory, windowed_audio=True, opts=DecodeOptions())
    b = build_parts(spilled, windowed_audio=True, opts=DecodeOptions())
    assert len(a) == 4 and [(p.start, p.end) for p in a] == [(p.start, p.end) for p in b]


def test_short_audio_stays_in_memory(tmp_path: Path) -> None:
    assert SPILL_SECONDS == 300.0
    d = decode_item(_item(LECTURE), DecodeOptions(spill_dir=str(tmp_path)))
    assert isinstance(d.audio, np.ndarray) and not _spill_files(tmp_path)


def fsize_limited_decode(item: WorkItem, opts: DecodeOptions) -> DecodedItem:
    """Real decoding in a worker whose files may not grow past 1 MB: the disk is 'full'."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return decode_item(item, opts)


def test_a_full_disk_is_a_clear_error_record_and_leaves_no_file(one_hour: Path) -> None:
    with DecodePool(
        iter([_item(one_hour)]), DecodeOptions(), workers=1, timeout=240, decode_fn=fsize_limited_decode
    ) as pool:
        (d,) = _drain(pool, 1)
        assert d.error_kind == "disk_full" and d.audio is None
        assert "no space to hold the decoded audio" in (d.error or "") and str(pool._spill.path) in (d.error or "")
        assert not _spill_files(pool._spill.path)


def test_a_worker_killed_mid_item_leaves_no_spill_file(one_hour: Path) -> None:
    """SIGKILL once the worker has spilled part of the hour: the item is an error record and
    its file is gone at once (not only when the pool closes); the next item still decodes."""
    items = iter([_item(one_hour, "victim"), _item(LECTURE)])
    with DecodePool(items, DecodeOptions(vad=True), workers=1, timeout=240) as pool:
        deadline = time.monotonic() + 120
        while not _spill_files(pool._spill.path):
            assert time.monotonic() < deadline, "the worker never spilled"
            assert not pool.poll(0.05)
        os.kill(pool._workers[0].process.pid, signal.SIGKILL)
        got = {d.item.id: d for d in _drain(pool, 2)}
        assert got["victim"].error_kind == "decoder_crashed" and got[LECTURE.name].error is None
        assert not _spill_files(pool._spill.path)
        folder = pool._spill.path
    assert not folder.exists()


def test_a_killed_pool_leaves_a_folder_the_next_run_removes(tmp_path: Path) -> None:
    """A pool's folder whose process is gone (its lock is free) is removed when OUT is next
    opened; a live pool's folder is not."""
    layout = OutLayout(tmp_path / "out")
    dead = layout.tmp / "spill-999999-dead"
    dead.mkdir(parents=True)
    (dead / ".lock").touch()
    (dead / "999999-0.f32").write_bytes(b"\0" * 64)
    live = SpillDir(layout.tmp)
    try:
        cleanup_orphans(layout)
        assert not dead.exists() and live.path.is_dir()
    finally:
        live.close()
    assert not live.path.exists()


def _pid_status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))


def test_memory_is_bounded_by_the_window_not_the_file(one_hour: Path) -> None:
    """An hour of speech (230 MB of 16 kHz float32, a 52 MB FLAC) through a real decode worker:
    the main process allocates under 24 MB while it receives the item, builds its 189 windows
    and reads each one's samples for the engine; the worker's peak grows by under 48 MB (it
    reads the file as it decodes, holds at most 5 min of samples and the VAD's blocks)."""
    items = iter([_item(LECTURE), _item(one_hour)])
    with DecodePool(items, DecodeOptions(vad=True), workers=1, timeout=240) as pool:
        assert _drain(pool, 1)[0].error is None  # the worker has run the VAD model once
        pid = pool._workers[0].process.pid
        worker_before = _pid_status_kb(pid, "VmHWM")
        tracemalloc.start()
        try:
            (d,) = _drain(pool, 1)
            assert d.error is None and isinstance(d.audio, SpilledAudio) and d.audio.size == 3600 * SR
            parts = build_parts(d, windowed_audio=True, opts=DecodeOptions())
            d.audio = None
            sent = 0
            for part in parts:
                media = engine_media(part.mm)
                assert media is not None
                sent += np.asarray(media["audio"][0]).size
            _, main_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        worker_growth = (_pid_status_kb(pid, "VmHWM") - worker_before) * 1024
    waveform = 3600 * SR * 4
    assert len(parts) > 150 and sent > 0.9 * 3600 * SR
    assert main_peak < 24 * 2**20, main_peak
    assert worker_growth < 48 * 2**20 < waveform / 4, worker_growth


def test_a_job_sends_each_window_as_samples_and_removes_the_spill_file(one_hour: Path, tmp_path: Path) -> None:
    """In-process decoding (`--workers 0`): the engine gets every window (and its language
    identification request) as a sample array read at request time, the record has one
    segment per window, and no spill file or folder is left in OUT."""
    from gemma4u_batch.engine.fake import FakeEngine
    from gemma4u_batch.prompting.units import EngineRequest

    seen: list[type] = []

    def note(req: EngineRequest) -> None:
        seen.append(type((req.multi_modal_data or {})["audio"][0]))

    out = tmp_path / "out"
    run_fake(one_hour.parent, out, engine=FakeEngine(fail_if=note), task="transcribe", decode_timeout=600)
    (rec,) = records(out)
    assert rec["error"] is None and len(rec["segments"]) == 189
    assert len(seen) == 2 * 189 and set(seen) == {np.ndarray}
    assert not _spill_files(out) and not list(OutLayout(out).tmp.glob("spill-*"))
