"""Peak memory of a long audio file on its way to the engine, stage by stage, for a speech
task: decode (read + decode + resample to 16 kHz float32) with voice activity detection in the
real decode pool (one worker process, which loads the VAD model when it starts), the hand-over
to the main process, the request windows the request builder cuts from it, and what the main
process then holds: with the waveform, and (as the job keeps it) with the windows' clips only.

Reported: the worker's peak RSS (VmHWM), the main process's peak after receiving the item and
after cutting the windows, and its RSS now with and without the waveform. The input is the
95-s example lecture repeated to the requested length, written as 16 kHz mono FLAC.

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
    """The stages through the real decode pool (one worker process) and request builder."""
    from gemma4u_batch.config import JobConfig
    from gemma4u_batch.records import Modality, WorkItem
    from gemma4u_batch.units import build_parts
    from gemma4u_batch.workers import DecodePool

    config = JobConfig(input=path.parent, output=path.parent / "out", task="transcribe")
    item = WorkItem(id=path.name, source=str(path), path=path, modality=Modality.AUDIO)
    out: dict[str, float] = {"main_baseline_mb": vm_hwm_mb(), "file_mb": path.stat().st_size / 2**20}
    t0 = time.perf_counter()
    with DecodePool(iter([item]), config.decode_options(), workers=1, timeout=3600) as pool:
        got: list = []
        while not got:
            got = pool.poll(1.0)
        out["decode_and_vad_seconds"] = time.perf_counter() - t0
        out["worker_peak_mb"] = _pid_hwm_mb(pool._workers[0].process.pid)
    d = got[0]
    assert d.error is None and d.audio is not None, d.error
    out["waveform_mb"] = d.audio.nbytes / 2**20
    out["main_after_receiving_mb"] = vm_hwm_mb()
    parts = build_parts(d, windowed_audio=True, tokens_per_frame_of=None)
    out["windows"] = len(parts)
    out["main_after_windows_mb"] = vm_hwm_mb()
    out["main_held_with_waveform_mb"] = vm_hwm_mb("VmRSS")
    d.audio = None  # as the job does once the item's parts are built
    out["main_held_windows_only_mb"] = vm_hwm_mb("VmRSS")
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
