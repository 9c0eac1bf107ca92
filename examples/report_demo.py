"""The report shown in the README (docs/report.png): a run over the examples, plus two broken
files so the error groups have something to show, written by `gemma4u report` and
photographed with headless Chromium.

The run uses the FakeEngine (no model: each caption is a placeholder digest), so this takes
seconds; `gemma4u report` itself does not care which engine wrote OUT.

usage: python -m examples.report_demo [WORKDIR] [--png docs/report.png]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def make_input(root: Path) -> Path:
    """The examples' media and manifest, a truncated JPEG and a text file named .png."""
    for sub in ("images", "audio", "video"):
        shutil.copytree(HERE / sub, root / sub, dirs_exist_ok=True)
    rows = [json.loads(line) for line in (HERE / "manifest.jsonl").read_text().splitlines() if line.strip()]
    rows += [
        {"path": p, "id": Path(p).stem} for p in sorted(str(q.relative_to(root)) for q in (root / "images").iterdir())
    ]
    rows.append({"path": "audio/lecture_95s.flac", "id": "lecture", "task": "transcribe"})
    jpeg = (root / "images" / "sunset.jpg").read_bytes()
    (root / "broken").mkdir(exist_ok=True)
    (root / "broken" / "half.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "broken" / "notes.png").write_text("not an image\n")
    rows += [{"path": "broken/half.jpg", "id": "half"}, {"path": "broken/notes.png", "id": "notes"}]
    seen: set[str] = set()
    unique = [r for r in rows if not (r["id"] in seen or seen.add(r["id"]))]  # type: ignore[func-returns-value]
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in unique))
    return manifest


def main() -> int:
    from gemma4u_batch.config.job import JobConfig
    from gemma4u_batch.console import Reporter
    from gemma4u_batch.engine.fake import FakeEngine
    from gemma4u_batch.job.job import run_job
    from gemma4u_batch.report.page import ReportOptions, write_report

    ap = argparse.ArgumentParser()
    ap.add_argument("workdir", type=Path, nargs="?", default=None)
    ap.add_argument("--png", type=Path, default=HERE.parent / "docs" / "report.png")
    a = ap.parse_args()
    work = a.workdir or Path(tempfile.mkdtemp(prefix="gemma4u-report-demo-"))
    manifest = make_input(work / "in")
    out = work / "out"
    config = JobConfig(input=manifest, output=out, model="fake-model", workers=0, commit_every=3, overwrite=True)
    run_job(config, FakeEngine(), reporter=Reporter("quiet"))
    page = write_report(out, work / "report.html", ReportOptions(sample=50)).path
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,1700"]
    shot = ["chromium", *flags, f"--screenshot={a.png.resolve()}", page.resolve().as_uri()]
    subprocess.run(shot, check=True, capture_output=True)
    print(f"{page}\n{a.png} ({a.png.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
