"""`gemma4u run --dry-run` and `--estimate N`: what a job will do, before it does it.

`plan(config)` never loads the model or starts the engine: it streams the source once
(counting items per modality, keeping a small deterministic sample of each), decodes
the sample with the real decode stage to measure media tokens per item, adds an
approximate instruction length, and extrapolates the job's prompt tokens. It also
reads OUT (if it exists) to say how much is already done and whether a run would be
refused because OUT was made with other settings.

`estimate(config, n)` is the one place here that starts the engine: it runs n sampled
items for real into a temporary OUT and projects the full job's time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ..config.job import JobConfig
from ..config.tasks import resolve_task
from ..decode.item import DecodedItem
from ..decode.options import decode_options
from ..decode.workers import worker_count
from ..job.job import Job
from ..job.model import read_manifest
from ..prompting.builder import RequestBuilder
from ..records import WorkItem
from ..sources.job_input import is_speech_job
from ..store.runs import shown_config
from .scan import InputScan, scan_input

TEMPLATE_TOKENS = 20
"""Approximate tokens the chat template adds around one request's instruction."""


# ----------------------------------------------------------------------------- data


@dataclass
class ModalityPlan:
    """Counts and token estimates for the items sent as one modality."""

    modality: str
    items: int = 0
    sampled: int = 0
    decoded: int = 0  # sampled items that decoded (errors become error records)
    sample_errors: int = 0
    requests: int = 0  # engine requests of the decoded sample (audio windows × tasks)
    media_tokens: int = 0
    text_tokens: int = 0
    over_limit: int = 0  # decoded sample items whose request would not fit max_model_len

    @property
    def tokens_per_item(self) -> float | None:
        return (self.media_tokens + self.text_tokens) / self.decoded if self.decoded else None

    @property
    def estimated_prompt_tokens(self) -> int:
        per = self.tokens_per_item
        return round(per * self.items) if per is not None else 0

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        per = self.tokens_per_item
        d["tokens_per_item"] = None if per is None else round(per, 1)
        d["requests_per_item"] = round(self.requests / self.decoded, 3) if self.decoded else None
        d["media_tokens_per_item"] = round(self.media_tokens / self.decoded, 1) if self.decoded else None
        d["estimated_prompt_tokens"] = self.estimated_prompt_tokens
        return d


@dataclass
class Plan:
    config: JobConfig
    source: str
    tasks: list[str]
    items: int = 0
    bad_rows: int = 0  # items the source could not use (malformed manifest rows): error records
    found: dict[str, int] = field(default_factory=dict)  # by the modality of the file
    modalities: dict[str, ModalityPlan] = field(default_factory=dict)  # by the modality sent
    sample: int = 16
    existing: dict[str, Any] | None = None  # OUT's status when it already holds results
    pending: int | None = None  # items a run would read (job/quickcheck.py); None: OUT holds no results
    refused: str | None = None  # why a real run would be refused (a usage error)
    notes: list[str] = field(default_factory=list)
    recipe: str | None = None

    @property
    def prompt_tokens(self) -> int:
        return sum(m.estimated_prompt_tokens for m in self.modalities.values())

    @property
    def formats(self) -> list[str]:
        return ["jsonl", "parquet"] if self.config.format == "both" else [self.config.format]

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "model": self.config.model,
            "tasks": self.tasks,
            "source": self.source,
            "items": self.items,
            "bad_rows": self.bad_rows,
            "found": self.found,
            "modalities": {k: v.to_dict() for k, v in self.modalities.items()},
            "estimated_prompt_tokens": self.prompt_tokens,
            "sample_per_modality": self.sample,
            "output": str(self.config.output),
            "formats": self.formats,
            "subtitles": list(self.config.subtitles),
            "existing": self.existing,
            "pending": self.pending,
            "refused": self.refused,
            "notes": self.notes,
            "config": shown_config(self.config),
        }


# -------------------------------------------------------------------------- helpers


class ApproxRenderer:
    """Prompt tokens without a tokenizer (a plan loads nothing): each message's text at four
    characters a token, 5 tokens around every message after the first, TEMPLATE_TOKENS around
    the request. The request builder counts with it exactly as a run counts with the engine."""

    SEP = "\x1f"  # between the messages of a rendered prompt

    def __init__(self, max_model_len: int | None) -> None:
        self.max_model_len = max_model_len

    def render_prompt(self, messages: list[dict[str, Any]]) -> str:
        texts = ("".join(c.get("text", "") for c in m["content"]) for m in messages)
        return self.SEP.join(texts)

    def count_tokens(self, text: str) -> int:
        parts = text.split(self.SEP)
        return sum(math.ceil(len(p) / 4) for p in parts) + 5 * (len(parts) - 1) + TEMPLATE_TOKENS


def _existing(job: Job) -> dict[str, Any] | None:
    """OUT's status when OUT already is a gemma4u folder."""
    from ..store.ledger import read_status

    if not job.layout.made():
        return None
    st = read_status(job.layout)
    keys = ("records", "done", "errors", "complete", "active", "last_update")
    return {k: getattr(st, k) for k in keys}


# ----------------------------------------------------------------------------- plan


def plan(config: JobConfig, sample: int = 16, recipe: str | None = None) -> Plan:
    """What the job will do, without loading the model: counts, token estimates, outputs."""
    from ..engine.vllm_engine import check_model_path

    check_model_path(config.model)
    job = Job(config)
    scan = scan_input(config, max(0, sample))
    p = Plan(config=config, source=scan.source, tasks=config.task_list(), sample=max(0, sample), recipe=recipe)
    p.items, p.bad_rows, p.found, p.pending = scan.items, scan.bad_rows, scan.found, scan.pending
    p.existing, p.refused = _existing(job), job.refusal()
    if p.existing is not None and not p.refused and not config.overwrite:
        before = (read_manifest(job.layout) or {}).get("model_fingerprint")
        if before and before != job.fingerprint:
            p.notes.append(
                f"model change ({before} → {job.fingerprint}, --on-model-change supersede): OUT's records stay "
                "current until each item's record from the new model replaces it"
            )
    for mod, n in sorted(scan.sent.items()):
        p.modalities[mod] = ModalityPlan(mod, items=n, sampled=len(scan.per_modality[mod].items))
    samples = [it for mod in sorted(scan.per_modality) for it in scan.per_modality[mod].ordered()]
    if samples:
        _measure(p, job, samples)
    _add_notes(p, scan)
    return p


def _measure(p: Plan, job: Job, samples: list[WorkItem]) -> None:
    """Decode the sample with the real decode stage and count its requests as a run would."""
    from ..decode.spill import SpilledAudio
    from ..decode.workers import DecodePool

    c = job.config
    builder = RequestBuilder(c, ApproxRenderer(c.engine.max_model_len), job.fingerprint)
    workers = min(worker_count(c), len(samples))
    opts = decode_options(c)
    with DecodePool(iter(samples), opts, workers=workers, prefetch=c.prefetch, timeout=c.decode_timeout) as pool:
        while not pool.done:
            for d in pool.poll(timeout=0.1):
                assert d.item.modality is not None
                row = p.modalities[d.item.modality.value]
                if d.error is not None:
                    row.sample_errors += 1
                    continue
                row.decoded += 1
                row.over_limit += _count_requests(row, builder, d)
                if isinstance(d.audio, SpilledAudio):  # long audio: its requests are counted
                    d.audio.file.unlink()


def _count_requests(row: ModalityPlan, builder: RequestBuilder, d: DecodedItem) -> bool:
    """Add one decoded item's requests to its row (the builder's count, as a run makes them);
    whether one would exceed max_model_len."""
    too_long = False
    for unit in builder.units(d):
        n = builder.count(unit)
        row.requests += n.requests
        row.media_tokens += n.media_tokens
        row.text_tokens += n.text_tokens
        too_long = too_long or n.too_long is not None
    return too_long


def _add_notes(p: Plan, scan: InputScan) -> None:
    c = p.config
    if is_speech_job(c) and scan.found.get("video"):
        p.notes.append(f"{scan.found['video']} video(s) are sent as their soundtrack (audio) for speech tasks")
    if (shard := c.shard_index()) is not None:
        p.notes.append(f"shard {shard[0]}/{shard[1]}: this run does about 1/{shard[1]} of the items counted here")
    if c.prompt is None:
        for task in p.tasks:
            t = resolve_task(task)
            for mod, n in sorted(scan.sent.items()):
                if t is not None and all(m.value != mod for m in t.instructions):
                    p.notes.append(
                        f"task '{task}' has no instruction for {mod}: the {n} {mod} item(s) become error records "
                        "(unsupported_modality) unless their manifest row gives a prompt"
                    )
    if p.bad_rows:
        p.notes.append(f"{p.bad_rows} input row(s) are unusable (bad manifest rows): each becomes an error record")
    for row in p.modalities.values():
        if row.sample_errors:
            p.notes.append(
                f"{row.sample_errors} of {row.sampled} sampled {row.modality} item(s) failed to decode: "
                "such items become error records (see `gemma4u inspect`)"
            )
        if row.over_limit:
            p.notes.append(
                f"{row.over_limit} of {row.decoded} sampled {row.modality} item(s) need more than "
                f"max_model_len={c.engine.max_model_len} tokens: they would become error records"
            )
    if any(r.sampled < r.items for r in p.modalities.values()):
        p.notes.append(f"token estimates extrapolate a deterministic sample of up to {p.sample} items per modality")
    p.notes.append(
        f"text tokens are approximate (instruction chars/4 + {TEMPLATE_TOKENS} for the chat template); "
        "media tokens are exact for the decoded sample"
    )
    if c.json_schema is not None or c.choices is not None:
        p.notes.append("structured output (json_schema/choices) constrains generation; it is not counted in prompts")
    if p.existing is not None:
        if c.overwrite:
            p.notes.append(f"overwrite: true — the {p.existing['records']} record(s) already in OUT will be deleted")
        elif p.pending is not None:
            p.notes.append(
                f"OUT already holds {p.existing['records']} record(s); {p.pending} item(s) are pending: new, "
                "changed, or not yet done with these settings"
            )
        if p.existing.get("active"):
            p.notes.append("another run is writing into OUT right now: a run now would be refused (lock held)")
    if p.refused:
        p.notes.append(f"a run would be refused: {p.refused}")


def _fmt_int(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def print_plan(p: Plan, console: Console) -> None:
    console.print(_job_table(p))
    console.print(_modality_table(p))
    console.print(
        "errors: sampled items that failed to decode; req/item: engine requests per item (audio windows × "
        "tasks); tokens/item: media + instruction tokens",
        style="dim",
        soft_wrap=True,
    )
    for note in p.notes:
        console.print(f"• {note}", soft_wrap=True)


def _job_table(p: Plan) -> Table:
    """What runs where: model, task, source, outputs, OUT's state."""
    c = p.config
    t = Table(title="gemma4u plan (dry run: nothing was generated)", show_header=False, title_justify="left")
    if p.recipe:
        t.add_row("recipe", p.recipe)
    t.add_row("model", c.model)
    t.add_row("task" if len(p.tasks) == 1 else "tasks", ", ".join(p.tasks) + (" (custom prompt)" if c.prompt else ""))
    if c.json_schema is not None:
        t.add_row("structured output", "JSON schema")
    elif c.choices is not None:
        t.add_row("structured output", "one of: " + ", ".join(c.choices))
    t.add_row("source", p.source)
    found = ", ".join(f"{k} {v:,}" for k, v in sorted(p.found.items())) or "-"
    t.add_row("items", f"{p.items:,} ({found}" + (f", unusable rows {p.bad_rows:,}" if p.bad_rows else "") + ")")
    t.add_row("estimated prompt tokens", f"≈ {p.prompt_tokens:,}")
    outs = ", ".join(p.formats) + (f"; subtitles {', '.join(c.subtitles)}" if c.subtitles else "")
    t.add_row("output", f"{c.output} ({outs})")
    if p.existing is None:
        t.add_row(
            "OUT now",
            "no results yet"
            if not isinstance(c.output, Path) or not c.output.exists()
            else "exists, no gemma4u results",
        )
    else:
        ex = p.existing
        state = "running" if ex["active"] else ("complete" if ex["complete"] else "incomplete")
        t.add_row("OUT now", f"{ex['records']:,} records ({ex['done']:,} done, {ex['errors']:,} errors), {state}")
        t.add_row("to process", f"{_fmt_int(p.items if c.overwrite else p.pending)} pending item(s)")
    _settings_rows(t, c)
    return t


def _settings_rows(t: Table, c: JobConfig) -> None:
    """Sampling, engine, media, resume and commit settings."""
    s = c.sampling
    t.add_row("sampling", f"max_tokens={s.max_tokens} temperature={s.temperature} top_p={s.top_p} seed={s.seed}")
    e = c.engine
    t.add_row("engine", f"dtype={e.dtype} max_model_len={e.max_model_len} max_num_seqs={e.max_num_seqs}")
    t.add_row(
        "media",
        f"image_tokens={c.image_tokens} video_frames={c.video_frames}"
        + (f" video_fps={c.video_fps}" if c.video_fps else "")
        + (" with_audio" if c.with_audio else ""),
    )
    t.add_row(
        "resume",
        "overwrite (start fresh)"
        if c.overwrite
        else "incremental (skip items already done)"
        + (", retry errors" if c.retry_errors else "")
        + (", prune records whose input is gone" if c.prune else ""),
    )
    commits = f"commit every {c.commit_every} records or {c.commit_seconds:g} s"
    t.add_row("workers", f"{worker_count(c)} decode worker(s) (--workers {c.workers}); {commits}")


def _modality_table(p: Plan) -> Table:
    m = Table(title="per modality (as sent to the model)", title_justify="left")
    for col in ("modality", "items", "sampled", "errors", "req/item", "media/item", "tokens/item", "est. tokens"):
        m.add_column(col, justify="left" if col == "modality" else "right")
    for row in p.modalities.values():
        d = row.to_dict()
        m.add_row(
            row.modality,
            f"{row.items:,}",
            str(row.sampled),
            str(row.sample_errors),
            "-" if d["requests_per_item"] is None else f"{d['requests_per_item']:g}",
            "-" if d["media_tokens_per_item"] is None else f"{d['media_tokens_per_item']:,.0f}",
            "-" if d["tokens_per_item"] is None else f"{d['tokens_per_item']:,.0f}",
            f"{row.estimated_prompt_tokens:,}",
        )
    return m


def print_resolved_config(config: JobConfig, console: Console) -> None:
    import yaml

    console.print("[bold]resolved config[/]")
    console.print(yaml.safe_dump(shown_config(config), sort_keys=False).rstrip(), markup=False)


# ------------------------------------------------------------------------- estimate


__all__ = ["ModalityPlan", "Plan", "plan", "print_plan"]
