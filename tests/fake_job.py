"""A gemma4u job on the FakeEngine in its own process, for the fast SIGKILL-at-random-points
test of the commit protocol (the real engine's resume is tested in test_e2e_resume.py).
Tests start it with `helpers.fake_job`.

It is not the CLI and maps no exit codes: exit codes, signals included, are tested by running the
real `gemma4u` (test_exit_codes.py). An exception here is a traceback and exit 1.

usage: python -m tests.fake_job IN OUT [--step-delay S] [--commit-every N] [--format F] [--model M]
                                [--on-model-change refuse|supersede]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tests.helpers import SlowFakeEngine, run_fake


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("input", type=Path)
    ap.add_argument("output", type=Path)
    ap.add_argument("--step-delay", type=float, default=0.02)
    ap.add_argument("--commit-every", type=int, default=4)
    ap.add_argument("--format", default="jsonl")
    ap.add_argument("--model", default="fake-model")  # a model folder gives the job its fingerprint
    ap.add_argument("--on-model-change", default="refuse")
    a = ap.parse_args()
    engine = SlowFakeEngine(a.step_delay)
    summary = run_fake(
        a.input,
        a.output,
        engine=engine,
        workers=1,
        commit_every=a.commit_every,
        format=a.format,
        model=a.model,
        on_model_change=a.on_model_change,
    )
    if summary.already_complete:
        print("Nothing to do", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
