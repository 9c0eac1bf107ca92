"""Voice activity detection for speech tasks: which stretches of a decoded waveform hold
speech, and how they are grouped into ≤30 s request windows.

The detector is Silero VAD (the `silero-vad` wheel ships its TorchScript model; it runs on
the installed torch, offline). It scores 32-ms frames with a small recurrent network whose
state carries from frame to frame; to analyse long files fast the signal is cut into up to
256 parallel streams run as one batch, each stream warmed up on the 0.5 s before its own
stretch so the state is settled when its frames count (a 2-hour file: seconds on one core,
see BENCHMARKS.md). Runs in the decode workers, inside the per-item decode time limit.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from .spill import Waveform

__all__ = ["FRAME", "load_model", "speech_probabilities", "speech_regions", "speech_windows"]

FRAME = 512  # samples per scored frame at 16 kHz (32 ms): the model's input size
_WARMUP_FRAMES = 16
_MAX_STREAMS = 256
_MIN_FRAMES_PER_STREAM = 64
_BLOCK_STEPS = 8  # frames each stream reads at a time: 256 streams × 8 × 2 KB = 4 MB

_model: Any = None
_lock = threading.Lock()


def load_model() -> Any:
    """The Silero model of this process (loaded once; a decode worker loads it at start)."""
    global _model
    if _model is None:
        import warnings

        from silero_vad import load_silero_vad

        with warnings.catch_warnings():  # its importlib.resources.path and torch.jit.load deprecations
            warnings.simplefilter("ignore", DeprecationWarning)
            _model = load_silero_vad(onnx=False)
    return _model


def speech_probabilities(x: Waveform, sr: int = 16_000) -> np.ndarray:
    """Speech probability of each 32-ms frame of a 16 kHz mono float32 signal (the last,
    partial frame zero-padded). Never reads the whole signal at once: every `_BLOCK_STEPS`
    steps each stream reads its next stretch (from memory, or from the spill file of long
    audio), so memory stays at streams × block whatever the length."""
    if sr != 16_000:
        raise ValueError("the VAD takes 16 kHz audio")
    import torch

    n = len(x)
    nf = -(-n // FRAME)
    if nf == 0:
        return np.zeros(0, dtype=np.float32)
    streams = max(1, min(_MAX_STREAMS, nf // _MIN_FRAMES_PER_STREAM))
    per = -(-nf // streams)
    warm = _WARMUP_FRAMES if streams > 1 else 0
    first = (np.arange(streams, dtype=np.int64) * per - warm) * FRAME  # each stream's first sample
    out = np.zeros((streams, per), dtype=np.float32)
    with _lock:
        model = load_model()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            model.reset_states()
            with torch.inference_mode():
                for step0 in range(0, per + warm, _BLOCK_STEPS):
                    steps = min(_BLOCK_STEPS, per + warm - step0)
                    block = _gather(x, first + step0 * FRAME, steps * FRAME)
                    for j in range(steps):
                        batch = np.ascontiguousarray(block[:, j * FRAME : (j + 1) * FRAME])
                        # The model keeps the previous frame's last samples as context itself.
                        prob = model(torch.from_numpy(batch), sr)
                        if step0 + j >= warm:
                            out[:, step0 + j - warm] = prob.numpy()[:, 0]
        finally:
            model.reset_states()
            torch.set_num_threads(threads)
    return out.reshape(-1)[:nf]


def _gather(x: Waveform, starts: np.ndarray, length: int) -> np.ndarray:
    """(streams, length) float32: x[s : s + length] for each start, zeros outside x."""
    n = len(x)
    block = np.zeros((len(starts), length), dtype=np.float32)
    for i, s in enumerate(starts.tolist()):
        lo, hi = max(s, 0), min(s + length, n)
        if lo < hi:
            block[i, lo - s : hi - s] = np.asarray(x[lo:hi], dtype=np.float32)
    return block


def _runs(flags: np.ndarray) -> np.ndarray:
    """(start, end) frame index pairs of the True runs."""
    d = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return np.stack([np.flatnonzero(d == 1), np.flatnonzero(d == -1)], axis=1)


def speech_regions(
    probs: np.ndarray,
    num_samples: int,
    *,
    onset: float = 0.5,
    offset: float = 0.35,
    min_speech: float = 0.25,
    min_silence: float = 0.3,
    pad: float = 0.2,
    sr: int = 16_000,
) -> list[tuple[int, int]]:
    """(start, end) sample ranges of speech: frames are speech from a probability ≥ onset
    until one < offset (hysteresis, as Silero's own helper); pauses shorter than
    min_silence are bridged, runs shorter than min_speech dropped, each region padded by
    `pad` seconds (clipped to the signal; regions that then touch are merged)."""
    if not len(probs):
        return []
    label = np.where(probs >= onset, 1, np.where(probs < offset, 0, -1))
    last = np.maximum.accumulate(np.where(label >= 0, np.arange(len(label)), -1))
    state = np.where(last >= 0, label[np.maximum(last, 0)], 0) == 1
    runs = _runs(state)
    if not len(runs):
        return []
    fs = FRAME / sr
    gap_ok = (runs[1:, 0] - runs[:-1, 1]) * fs >= min_silence
    keep_start = np.concatenate([[True], gap_ok])
    keep_end = np.concatenate([gap_ok, [True]])
    runs = np.stack([runs[keep_start, 0], runs[keep_end, 1]], axis=1)
    runs = runs[(runs[:, 1] - runs[:, 0]) * fs >= min_speech]
    regions: list[tuple[int, int]] = []
    p = int(round(pad * sr))
    for a, b in runs * FRAME:
        s, e = max(int(a) - p, 0), min(int(b) + p, num_samples)
        if regions and s <= regions[-1][1]:
            regions[-1] = (regions[-1][0], e)
        else:
            regions.append((s, e))
    return regions


def _bisect_at_pauses(regions: list[tuple[int, int]], max_len: int) -> list[list[tuple[int, int]]]:
    """Groups of consecutive regions spanning ≤ max_len (or one region alone), cutting a
    too-long group at its longest pause, again and again (no recursion: hours of speech)."""
    done: list[list[tuple[int, int]]] = []
    todo = [regions]
    while todo:
        group = todo.pop()
        if len(group) == 1 or group[-1][1] - group[0][0] <= max_len:
            done.append(group)
            continue
        gaps = [group[i + 1][0] - group[i][1] for i in range(len(group) - 1)]
        k = int(np.argmax(gaps)) + 1
        todo += [group[k:], group[:k]]  # left half popped first: time order
    return done


def speech_windows(
    x: Waveform,
    regions: list[tuple[int, int]],
    sr: int = 16_000,
    max_seconds: float = 30.0,
    join_gap: float = 2.0,
) -> list[tuple[int, int]]:
    """(start, end) sample ranges of ≤ max_seconds that cover every speech region and start
    and end on speech (plus its padding), so each is also a segment's time span.

    Regions apart by a pause of join_gap seconds or more are never in one window (a
    segment then spans one stretch of talk, not the silence or noise around it). Within a
    stretch, regions are grouped as WhisperX does: a group longer than the limit is split at
    its longest pause, then neighbouring groups are joined while they fit; a single region
    longer than the limit (continuous speech) is cut at its quietest points (`split_windows`)."""
    from .audio import split_windows

    gap = int(join_gap * sr)
    windows: list[tuple[int, int]] = []
    stretches: list[list[tuple[int, int]]] = []
    for r in regions:
        if stretches and r[0] - stretches[-1][-1][1] < gap:
            stretches[-1].append(r)
        else:
            stretches.append([r])
    for stretch in stretches:
        windows += _stretch_windows(x, stretch, sr, max_seconds, split_windows)
    return windows


def _stretch_windows(
    x: Waveform, stretch: list[tuple[int, int]], sr: int, max_seconds: float, split_windows: Any
) -> list[tuple[int, int]]:
    max_len = int(max_seconds * sr)
    windows: list[tuple[int, int]] = []
    for group in _bisect_at_pauses(stretch, max_len):
        s, e = group[0][0], group[-1][1]
        if windows and e - windows[-1][0] <= max_len:
            windows[-1] = (windows[-1][0], e)
        elif e - s > max_len:
            windows += [(s + a, s + b) for a, b in split_windows(x[s:e], sr, max_seconds=max_seconds)]
        else:
            windows.append((s, e))
    return windows
