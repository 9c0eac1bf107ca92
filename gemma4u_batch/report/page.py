"""`gemma4u report OUT`: one self-contained HTML page to review a labeling run.

report_data.py reads OUT (index + one streaming pass), report_media.py shrinks the sampled
items' media, report_plots.py draws the SVG plots, report_html.py renders the escaped page;
this module puts them together and writes the file atomically.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from markupsafe import Markup

from .. import __version__
from ..atomic import write_atomic
from ..errors import OutputError
from ..store.layout import OutLayout
from .data import Group, ReportData, ReportOptions, read_report_data
from .media import MediaView, locate_media, media_view, preview_options
from .plots import bar_chart, cumulative_chart, histogram, segment_timeline
from .template import render_page

# Inside OUT, in a folder that table readers skip (pyarrow and pandas skip "_…", `datasets`
# skips "__…" folders but would try to read a loose file as data).
DEFAULT_PATH = ("__report__", "report.html")


@dataclass(frozen=True)
class ReportResult:
    path: Path | str  # a file, or the page's URL in an object-store OUT
    sampled: int
    matched: int
    records: int
    bytes: int
    seconds: float


def _when(ts: Any) -> str:
    if not isinstance(ts, int | float):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _settings(guard: dict[str, Any]) -> str:
    keys = (
        *("sampling", "image_tokens", "video_frames", "video_fps", "with_audio", "language", "translate_to"),
        *("json_schema", "choices", "retry_flagged", "system_prompt"),
    )
    return ", ".join(f"{k}={json.dumps(guard[k])}" for k in keys if guard.get(k) not in (None, False))


def run_facts(d: ReportData) -> list[tuple[str, str]]:
    """The header: what run.json, complete.json and the index say about the run."""
    man, st, agg, done = d.manifest, d.status, d.agg, d.finished
    guard, config = man.get("guard") or {}, man.get("config") or {}
    state = "running" if st.active else ("complete" if st.complete else "incomplete (rerun to resume)")
    tasks = ", ".join(f"{t} ({n})" for t, n in sorted(agg.tasks.items())) or str(guard.get("task") or "-")
    rate = f"{st.throughput:.2f} records/s over the run" if st.throughput else "-"
    if isinstance(done.get("items_per_s"), int | float):
        rate += f"; last run {done['items_per_s']:.2f} items/s"
    return [
        ("state", state),
        ("input", str(config.get("input") or config.get("dataset") or "-")),
        ("model", str(man.get("model") or "-")),
        ("fingerprint", str(man.get("model_fingerprint") or "-")),
        ("records by model", ", ".join(f"{fp}: {n}" for fp, n in st.records_by_model.items()) or "-"),
        ("run id", str(man.get("run_id") or "-")),
        ("task(s)", tasks),
        ("prompt", str(guard.get("prompt") or "the task's default (see each record)")),
        ("settings", _settings(guard) or "-"),
        ("versions", ", ".join(f"{k} {v}" for k, v in (man.get("versions") or {}).items()) or "-"),
        ("started", _when(man.get("started_at"))),
        ("finished", _when(done.get("finished_at")) if done else "not finished"),
        (
            "records",
            f"{st.records} current: {st.done} done ({st.reused} copied from the same content), "
            f"{st.errors} errors, {st.superseded} superseded",
        ),
        (
            "last run",
            f"{done.get('done', '-')} done ({done.get('reused', 0)} copied), {done.get('errors', '-')} errors, "
            f"{done.get('skipped', '-')} skipped",
        ),
        ("tokens", f"{agg.tokens_in} in, {agg.tokens_out} out"),
        ("throughput", rate),
    ]


def plots(d: ReportData) -> list[Markup]:
    kinds = sorted(d.agg.error_groups.values(), key=lambda g: -g.count)
    return [
        cumulative_chart(d.timeline, "records committed over time"),
        bar_chart(*histogram(d.agg.output_tokens), "output tokens per record"),
        bar_chart(*histogram(d.agg.text_chars), "caption length (characters)"),
        bar_chart([g.name for g in kinds], [g.count for g in kinds], "errors by kind"),
    ]


def _group_section(title: str, id: str, column: str, groups: dict[str, Group]) -> dict[str, Any]:
    ordered = sorted(groups.values(), key=lambda g: (-g.count, g.name))
    return {"title": title, "id": id, "column": column, "groups": ordered}


def card(rec: dict[str, Any], media: MediaView) -> dict[str, Any]:
    """One grid cell: the record's fields as the template shows them (all escaped there)."""
    segs = [
        {
            "start": round(float(s.get("start") or 0), 2),
            "end": round(float(s.get("end") or 0), 2),
            "text": s.get("text"),
        }
        for s in rec.get("segments") or ()
    ]
    data = rec.get("data")
    return {
        "id": str(rec.get("id")),
        "task": rec.get("task"),
        "modality": rec.get("modality") or "unknown",
        "source": str(rec.get("source") or rec.get("id")),
        "tokens": rec.get("num_output_tokens"),
        "flags": list(rec.get("flags") or ()),
        "error": rec.get("error"),
        "error_kind": rec.get("error_kind") or "error",
        "text": rec.get("text"),
        "data": None if data is None else json.dumps(data, indent=2, ensure_ascii=False),
        "segments": segs,
        "timeline": segment_timeline(segs) if segs else None,
        "media": media,
    }


def build_page(layout: OutLayout, opts: ReportOptions, started: float) -> tuple[str, ReportData]:
    d = read_report_data(layout, opts)
    found = locate_media(d.manifest, layout.root, [str(r.get("id")) for r in d.sample if r.get("error") is None])
    popts = preview_options(d.manifest.get("limits") or {})
    cards = [card(r, media_view(r, found.get(str(r.get("id"))), popts)) for r in d.sample]
    page = render_page(
        {
            "title": layout.where,
            "out": layout.where,
            "facts": run_facts(d),
            "plots": plots(d),
            "groups": [
                _group_section("Errors by kind", "errors", "error_kind", d.agg.error_groups),
                _group_section("Quality flags", "flags", "flag", d.agg.flag_groups),
            ],
            "cards": cards,
            "matched": d.matched,
            "filters": " and ".join(opts.filters),
            "seed": opts.seed,
            "version": __version__,
            "seconds": f"{time.monotonic() - started:.1f}",
        }
    )
    return page, d


def write_report(out: Path | str, dest: Path | None = None, opts: ReportOptions | None = None) -> ReportResult:
    """Write OUT's report page to `dest` (default OUT/__report__/report.html, in the bucket for
    an object-store OUT), atomically."""
    started = time.monotonic()
    layout = OutLayout(out)
    opts = opts or ReportOptions()
    page, d = build_page(layout, opts, started)
    payload = page.encode("utf-8")
    stats = (len(d.sample), d.matched, d.agg.records, len(payload))
    if dest is None and not layout.is_local:
        name = "/".join(DEFAULT_PATH)
        layout.files.put(name, payload)
        return ReportResult(f"{layout.where}/{name}", *stats, time.monotonic() - started)
    target = dest or layout.folder.joinpath(*DEFAULT_PATH)
    try:
        if dest is None:
            target.parent.mkdir(exist_ok=True)
        write_atomic(target, lambda fh: fh.write(payload))
    except OSError as exc:
        hint = "" if target.parent.exists() else " (its folder does not exist)"
        raise OutputError(
            f"cannot write the report to {target}: {exc.strerror or exc}{hint}; choose another -o FILE"
        ) from exc
    return ReportResult(target, *stats, time.monotonic() - started)
