"""Peak memory of a long audio file on its way to the engine, stage by stage, for a speech
task: decode (read + decode + resample to 16 kHz float32) with voice activity detection, as
a decode worker does; the hand-over to the main process (pickling, as the worker pool does);
and the request windows the request builder cuts from it.

Each stage's peak is the process's VmHWM (peak RSS) after it, in a fresh process that has
imported everything and loaded the VAD model first (the baseline). The input is the 95-s
example lecture repeated to the requested length, written as 16 kHz mono FLAC.

usage: python -m benchmarks.long_audio_rss [--hours 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LECTURE = Path(__file__).resolve().parent.parent / "examples" / "audio" / "lecture_95s.flac"


def vm_hwm_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
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


def measure(path: Path) -> dict[str, float]:
    """The stages in this (fresh) process; VmHWM after each."""
    from gemma4u_batch.config import JobConfig
    from gemma4u_batch.decode import decode_item
    from gemma4u_batch.decode.vad import load_model
    from gemma4u_batch.records import Modality, WorkItem
    from gemma4u_batch.units import build_parts

    config = JobConfig(input=path.parent, output=path.parent / "out", task="transcribe")
    opts = config.decode_options()
    load_model()
    out = {"baseline_mb": vm_hwm_mb(), "file_mb": path.stat().st_size / 2**20}
    t0 = time.perf_counter()
    d = decode_item(WorkItem(id=path.name, source=str(path), path=path, modality=Modality.AUDIO), opts)
    assert d.error is None, d.error
    out["decode_and_vad_seconds"] = round(time.perf_counter() - t0, 1)
    out["waveform_mb"] = d.audio.nbytes / 2**20 if d.audio is not None else 0.0
    out["after_decode_and_vad_mb"] = vm_hwm_mb()
    blob = pickle.dumps(d, protocol=pickle.HIGHEST_PROTOCOL)
    out["after_pickling_mb"] = vm_hwm_mb()
    del blob
    parts = build_parts(d, windowed_audio=True, tokens_per_frame_of=None)
    out["windows"] = len(parts)
    out["after_windows_mb"] = vm_hwm_mb()
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
