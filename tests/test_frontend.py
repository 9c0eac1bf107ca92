"""The feeding process's own behaviour (issue #18): when the engine starts, how many decode
workers `auto` means, and that patchified images flow through a whole job."""

from __future__ import annotations

from pathlib import Path

import pytest

from gemma4u_batch.config.job import JobConfig
from gemma4u_batch.decode.patches import ImagePatches
from gemma4u_batch.decode.workers import AUTO_MAX_WORKERS, auto_workers, worker_count
from gemma4u_batch.engine.fake import FakeEngine
from gemma4u_batch.prompting.units import EngineRequest

from .helpers import fake_config, run_fake, write_image_folder


class CountingEngine(FakeEngine):
    """Records when the job asked the engine to start and what media it was sent."""

    def __init__(self, accepts_patches: bool = False) -> None:
        super().__init__()
        self.accepts_patches = accepts_patches
        self.prestarts = 0
        self.adds_before_prestart = 0
        self.media: list[object] = []

    def prestart(self) -> None:
        self.prestarts += 1

    def add(self, request: EngineRequest):
        if not self.prestarts:
            self.adds_before_prestart += 1
        self.media.append((request.multi_modal_data or {}).get("image"))
        return super().add(request)


def _config(inp: Path, out: Path, workers: int | str = 1) -> JobConfig:
    return fake_config(inp, out, workers=workers, commit_every=3)


def test_engine_start_is_asked_before_the_first_request_and_never_on_a_finished_rerun(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "in", with_bad=False)
    first = CountingEngine()
    run_fake(_config(tmp_path / "in", tmp_path / "out"), engine=first)
    assert first.prestarts >= 1 and first.adds_before_prestart == 0 and first.added > 0
    rerun = CountingEngine()
    summary = run_fake(_config(tmp_path / "in", tmp_path / "out"), engine=rerun)
    assert summary.already_complete and rerun.prestarts == 0 and rerun.added == 0


def test_workers_send_patches_only_to_an_engine_that_takes_them(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "in", with_bad=False)
    takes = CountingEngine(accepts_patches=True)
    run_fake(_config(tmp_path / "in", tmp_path / "a"), engine=takes)
    assert takes.media and all(isinstance(m, ImagePatches) for m in takes.media)
    plain = CountingEngine(accepts_patches=False)
    run_fake(_config(tmp_path / "in", tmp_path / "b"), engine=plain)
    assert plain.media and not any(isinstance(m, ImagePatches) for m in plain.media)


def test_auto_workers_leave_cores_for_the_engine_and_the_feeder(monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil

    class Memory:
        available = 64 << 30

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Memory())
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert auto_workers(engine_processes=2) == 13  # 16 cores - this process - engine core - its worker
    assert auto_workers(engine_processes=5) == 10  # tensor parallel 4
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert auto_workers(engine_processes=2) == 1  # never fewer than one
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(256)), raising=False)
    assert auto_workers(engine_processes=2) == AUTO_MAX_WORKERS
    Memory.available = 3 << 30
    assert auto_workers(engine_processes=2) == 3  # one per GiB available


def test_workers_option_takes_a_number_or_auto(tmp_path: Path) -> None:
    assert worker_count(_config(tmp_path, tmp_path / "o", workers="3")) == 3
    assert _config(tmp_path, tmp_path / "o", workers="auto").workers == "auto"
    assert worker_count(_config(tmp_path, tmp_path / "o", workers="auto")) >= 1
    for bad in ("many", -1, "1.5"):
        with pytest.raises(ValueError, match="--workers takes a number"):
            _config(tmp_path, tmp_path / "o", workers=bad)


def test_a_speech_job_starts_the_engine_only_for_speech(tmp_path: Path) -> None:
    """Under speech tasks an audio item needs the engine only if voice activity detection finds
    speech in it: silence is recorded without ever starting the engine."""
    import numpy as np
    import soundfile as sf

    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "silence.wav", np.zeros(16000 * 3, dtype=np.float32), 16000)
    engine = CountingEngine()
    summary = run_fake(tmp_path / "in", tmp_path / "out", engine=engine, task="transcribe")
    assert summary.done == 1 and engine.prestarts == 0 and engine.added == 0
