"""What the plugin did inside vLLM's engine-core and worker processes, for the front end.

The process that loads the plugin first (the one building the engine) picks a report
folder and exports it in GEMMA4U_BIDI_REPORT_DIR; engine-core and worker processes inherit
it and each writes one small JSON file (on set-up, on problems, on the first corrected
attention call, then at most once per engine step). `read_reports` keeps only files
written by descendants of the calling process, so nested gemma4u runs do not see each
other's engines.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPORT_DIR_ENV = "GEMMA4U_BIDI_REPORT_DIR"

_lock = threading.Lock()
_report: dict[str, Any] | None = None
_dirty = False


def ensure_report_dir() -> Path:
    """The folder shared with child processes; created (and removed at exit) if unset."""
    existing = os.environ.get(REPORT_DIR_ENV)
    if existing:
        return Path(existing)
    path = Path(tempfile.mkdtemp(prefix="gemma4u-bidi-"))
    os.environ[REPORT_DIR_ENV] = str(path)
    creator = os.getpid()

    def _cleanup() -> None:
        if os.getpid() != creator:
            return
        for _ in range(5):  # an engine process shutting down may still write its last report
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                return
            time.sleep(0.2)

    atexit.register(_cleanup)
    return path


def _ancestors(limit: int = 6) -> list[int]:
    """Parent, grandparent, ... pids (Linux /proc; elsewhere just the parent)."""
    out = [os.getppid()]
    pid = out[0]
    for _ in range(limit - 1):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        # The command name (field 2) may contain spaces; ppid is the 2nd field after ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid <= 1:
            break
        out.append(ppid)
        pid = ppid
    return out


def _base() -> dict[str, Any]:
    global _report
    if _report is None:
        _report = {
            "pid": os.getpid(),
            "ancestors": _ancestors(),
            "groups": [],
            "corrected_calls": 0,
            "corrected_rows": 0,
            "resumed_spans": 0,
            "problems": [],
        }
    return _report


def _write() -> None:
    folder = os.environ.get(REPORT_DIR_ENV)
    if not folder or _report is None:
        return
    path = Path(folder) / f"worker-{os.getpid()}.json"
    tmp = path.with_suffix(".tmp")
    with contextlib.suppress(OSError):
        tmp.write_text(json.dumps(_report, sort_keys=True))
        os.replace(tmp, path)


def note_patched(vllm_version: str) -> None:
    """Recorded, not written: a process's file appears once it builds attention groups."""
    with _lock:
        rep = _base()
        rep["patched"] = True
        rep["vllm_version"] = vllm_version


def note_group(info: dict[str, Any]) -> None:
    with _lock:
        _base()["groups"].append(info)
        _write()


def note_problem(message: str) -> None:
    with _lock:
        rep = _base()
        if message not in rep["problems"]:
            rep["problems"].append(message)
            _write()


def note_correction(rows: int, resumed_spans: int = 0) -> None:
    """rows recomputed in one attention call; resumed_spans: image spans whose request had
    tokens from an earlier step or the prefix cache (keys read back from the KV cache).
    Written at once the first time, then by `flush` at the next step (one write per step)."""
    global _dirty
    with _lock:
        rep = _base()
        first = rep["corrected_calls"] == 0
        rep["corrected_calls"] += 1
        rep["corrected_rows"] += rows
        rep["resumed_spans"] += resumed_spans
        _dirty = True
        if first:
            _write()
            _dirty = False


def flush() -> None:
    """Write pending counters (called once per engine step, cheap when nothing changed)."""
    global _dirty
    if not _dirty:
        return
    with _lock:
        _write()
        _dirty = False


def read_reports(root_pid: int | None = None) -> list[dict[str, Any]]:
    """Reports from processes descending from root_pid (default: this process)."""
    folder = os.environ.get(REPORT_DIR_ENV)
    if not folder:
        return []
    root = os.getpid() if root_pid is None else root_pid
    reports = []
    for path in sorted(Path(folder).glob("worker-*.json")):
        try:
            rep = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if root in rep.get("ancestors", []) or rep.get("pid") == root:
            reports.append(rep)
    return reports
