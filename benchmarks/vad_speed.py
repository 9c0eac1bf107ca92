"""Voice activity detection speed on one core: how long the decode workers' VAD (Silero,
batched streams; gemma4u_batch/decode/vad.py) takes on a long file, and its peak memory
beyond the waveform itself.

The signal is the 95-s example lecture (espeak-ng speech with pauses) repeated to the
requested length, so the figure includes real speech/pause transitions.

usage: python -m benchmarks.vad_speed [--hours 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc
from pathlib import Path

import numpy as np
import soundfile as sf

from gemma4u_batch.decode.vad import speech_probabilities, speech_regions, speech_windows

LECTURE = Path(__file__).resolve().parent.parent / "examples" / "audio" / "lecture_95s.flac"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads outside the VAD (it uses one)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    lecture, sr = sf.read(LECTURE, dtype="float32")
    n = int(args.hours * 3600 * sr)
    x = np.resize(lecture, n).astype(np.float32)
    speech_probabilities(lecture[: 10 * sr])  # load the model once, as a worker does for its first item
    tracemalloc.start()
    t0 = time.perf_counter()
    probs = speech_probabilities(x)
    t1 = time.perf_counter()
    regions = speech_regions(probs, len(x))
    windows = speech_windows(x, regions)
    t2 = time.perf_counter()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    result = {
        "audio_seconds": n / sr,
        "vad_seconds": round(t1 - t0, 2),
        "regions_and_windows_seconds": round(t2 - t1, 3),
        "realtime_factor": round((n / sr) / (t2 - t0)),
        "regions": len(regions),
        "windows": len(windows),
        "numpy_peak_mb_beyond_waveform": round(peak / 2**20, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
