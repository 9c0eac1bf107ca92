"""Summarize a cProfile of gemma4u's front-end process (see timed_cli's GEMMA4U_BENCH_PROFILE).

    GEMMA4U_BENCH_PROFILE=/tmp/fe.prof .venv/bin/python -m benchmarks.timed_cli /tmp/tl.json \\
        caption IMAGES -o OUT --model M --dtype float32 --progress quiet --overwrite
    .venv/bin/python -m benchmarks.profile_report /tmp/fe.prof [--items N]

Prints the cumulative time of the stages of the feed loop (what the main process does
between the engine being up and the end) and the top functions by own time.
"""

from __future__ import annotations

import argparse
import pstats

# (label, file suffix, function name): cumulative time of these frames.
STAGES = [
    ("feed loop (everything after engine start)", "gemma4u_batch/job.py", "_feed"),
    ("engine.add → vLLM add_request (front end)", "gemma4u_batch/engine.py", "add"),
    ("  vLLM InputProcessor.process_inputs", "vllm/v1/engine/input_processor.py", "process_inputs"),
    (
        "  HF processor call (_apply_hf_processor_main)",
        "vllm/multimodal/processing/processor.py",
        "_apply_hf_processor_main",
    ),
    ("    Gemma4UnifiedImageProcessor._preprocess", "image_processing_gemma4_unified.py", "_preprocess"),
    ("  multimodal hashing (_get_mm_hashes)", "vllm/multimodal/processing/processor.py", "_get_mm_hashes"),
    ("engine.step → LLMEngine.step (waits for the core)", "gemma4u_batch/engine.py", "step"),
    ("DecodePool.poll (receive decoded images)", "gemma4u_batch/workers.py", "poll"),
    ("RequestBuilder.units (prompt render, key)", "gemma4u_batch/requests.py", "units"),
    ("RequestBuilder.unsendable (tokenize prompt)", "gemma4u_batch/requests.py", "unsendable"),
    ("emit → record + writer.add", "gemma4u_batch/job.py", "_emit"),
    ("PartWriter.commit", "gemma4u_batch/writer.py", "commit"),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("profile")
    ap.add_argument("--items", type=int, default=0, help="items in the run, for ms/item")
    ap.add_argument("--top", type=int, default=20)
    a = ap.parse_args()
    st = pstats.Stats(a.profile)
    raw = st.stats  # type: ignore[attr-defined]
    print("| stage (main process) | cumulative s | ms / item |")
    print("|---|---|---|")
    for label, suffix, name in STAGES:
        cum = 0.0
        for (file, _line, func), (_cc, _nc, _tt, ct, _callers) in raw.items():
            if func == name and file.endswith(suffix):
                cum = max(cum, ct)  # recursive/duplicate entries: take the outermost
        per = f"{cum / a.items * 1000:.1f}" if a.items else "-"
        print(f"| {label} | {cum:.2f} | {per} |")
    print()
    st.sort_stats("tottime").print_stats(a.top)


if __name__ == "__main__":
    main()
