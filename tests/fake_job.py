"""A gemma4u job on the FakeEngine in its own process, for the fast SIGKILL-at-random-points
test of the commit protocol (the real engine's resume is tested in test_e2e_resume.py).

It is not the CLI and maps no exit codes: exit codes, signals included, are tested by running the
real `gemma4u` (test_exit_codes.py). An exception here is a traceback and exit 1.

usage: python -m tests.fake_job IN OUT [--step-delay S] [--commit-every N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from gemma4u_batch.config.job import JobConfig
from gemma4u_batch.console import Reporter
from gemma4u_batch.engine.fake import FakeEngine
from gemma4u_batch.job.job import run_job


class SlowFakeEngine(FakeEngine):
    def __init__(self, delay: float) -> None:
        super().__init__(max_in_flight=4, steps_to_finish=2)
        self.delay = delay

    def step(self):
        time.sleep(self.delay)
        return super().step()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("input", type=Path)
    ap.add_argument("output", type=Path)
    ap.add_argument("--step-delay", type=float, default=0.02)
    ap.add_argument("--commit-every", type=int, default=4)
    ap.add_argument("--format", default="jsonl")
    a = ap.parse_args()
    config = JobConfig(
        input=a.input, output=a.output, model="fake-model", workers=1, commit_every=a.commit_every, format=a.format
    )
    summary = run_job(config, SlowFakeEngine(a.step_delay), reporter=Reporter("quiet"))
    if summary.already_complete:
        print("Nothing to do", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
