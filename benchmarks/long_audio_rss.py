"""Peak memory of a long audio file on its way to the engine, stage by stage, for a speech
task: decode (read + decode + resample to 16 kHz float32, spilled to a file past 5 min) with
voice activity detection in the real decode pool (one worker process, which loads the VAD model
when it starts), the hand-over to the main process, the request windows the request builder
cuts, what the main process holds while they wait, and each window read for the engine.

Reported: the worker's peak RSS (VmHWM), the main process's peak after receiving the item,
after cutting the windows and after reading every window's samples, and its RSS while the
windows wait. The input is the 95-s example lecture repeated to the requested length, written
as 16 kHz mono FLAC; spill files go next to it.

usage: python -m benchmarks.long_audio_rss [--hours 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gemma4u_batch.decode.options import decode_options

LECTURE = Path(__file__).resolve().parent.parent / "examples" / "audio" / "lecture_95s.flac"


def vm_hwm_mb(field: str = "VmHWM") -> float:
    """Peak RSS (VmHWM) or, with field="VmRSS", the RSS now."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def make(path: Path, hours: float) -> None:
    """The lecture repeated to `hours`, written block by block (never whole in memory)."""
    import numpy as np
    import soundfile as sf

    lecture, sr = sf.read(LECTURE, dtype="float32")
    total = int(hours * 3600 * sr)
    with sf.SoundFile(path, "w", samplerate=sr, channels=1, format="FLAC") as fh:
        done = 0
        while done < total:
            block = lecture[: min(len(lecture), total - done)]
            fh.write(np.asarray(block))
            done += len(block)


def _pid_hwm_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def measure(path: Path) -> dict[str, float]:
    """The stages through the real decode pool (one worker process) and request builder,
    then each window read for the engine one at a time (as the job sends them)."""
    import numpy as np

    from gemma4u_batch.config.job import JobConfig
    from gemma4u_batch.decode.workers import DecodePool
    from gemma4u_batch.prompting.units import build_parts, engine_media
    from gemma4u_batch.records import Modality, WorkItem

    config = JobConfig(input=path.parent, output=path.parent / "out", task="transcribe")
    items = [WorkItem(id=p.name, source=str(p), path=p, modality=Modality.AUDIO) for p in (LECTURE, path)]
    out: dict[str, float] = {"main_baseline_mb": vm_hwm_mb(), "file_mb": path.stat().st_size / 2**20}
    with DecodePool(iter(items), decode_options(config), workers=1, timeout=3600, spill_root=path.parent) as pool:
        got: list = []
        while not got:  # the 95-s lecture first: the worker's peak with the VAD model run once
            got = pool.poll(1.0)
        out["worker_peak_after_short_item_mb"] = _pid_hwm_mb(pool._workers[0].process.pid)
        t0 = time.perf_counter()
        got = []
        while not got:
            got = pool.poll(1.0)
        out["decode_and_vad_seconds"] = time.perf_counter() - t0
        out["worker_peak_mb"] = _pid_hwm_mb(pool._workers[0].process.pid)
        d = got[0]
        assert d.error is None and d.audio is not None, d.error
        out["waveform_mb"] = d.audio.size * 4 / 2**20
        out["waveform_in_main_mb"] = d.audio.nbytes / 2**20 if isinstance(d.audio, np.ndarray) else 0.0
        out["main_after_receiving_mb"] = vm_hwm_mb()
        parts = build_parts(d, windowed_audio=True, opts=decode_options(config))
        out["windows"] = len(parts)
        out["main_after_windows_mb"] = vm_hwm_mb()
        d.audio = None  # as the job does once the item's parts are built
        out["main_held_windows_pending_mb"] = vm_hwm_mb("VmRSS")
        for part in parts:  # each window's samples, read when its request goes to the engine
            mm = engine_media(part.mm)
            assert mm is not None and np.asarray(mm["audio"][0]).size == part.mm["audio"][0].size
        out["main_after_sending_mb"] = vm_hwm_mb()
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in out.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=2.0)
    ap.add_argument("--keep", type=Path, help="write the long file here (default: a temporary folder)")
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the fresh child process
    args = ap.parse_args()
    if args.measure is not None:
        print(json.dumps(measure(args.measure)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"lecture_{args.hours:g}h.flac"
        if not path.exists():
            make(path, args.hours)
        child = [sys.executable, "-m", "benchmarks.long_audio_rss", "--measure", str(path)]
        res = subprocess.run(child, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            print(res.stderr[-3000:], file=sys.stderr)
            return res.returncode
        result = {"audio_seconds": args.hours * 3600, **json.loads(res.stdout.strip().splitlines()[-1])}
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
