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
import random
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .config import JobConfig
from .errors import UsageError
from .inputs import JobInput, is_speech_job
from .job import Job, run_job
from .records import WorkItem
from .tasks import is_speech_task, resolve_task

TEMPLATE_TOKENS = 20
"""Approximate tokens the chat template adds around one request's instruction."""

SAMPLE_SEED = 0


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
    new_items: int | None = None  # items with no record in OUT yet (by id)
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
            "new_items": self.new_items,
            "refused": self.refused,
            "notes": self.notes,
            "config": self.config.model_dump(mode="json"),
        }


# -------------------------------------------------------------------------- helpers


def _approx_tokens(text: str | None) -> int:
    return math.ceil(len(text) / 4) if text else 0


def request_text_tokens(config: JobConfig, instruction: str) -> int:
    system = _approx_tokens(config.system_prompt) + (5 if config.system_prompt else 0)
    return _approx_tokens(instruction) + system + TEMPLATE_TOKENS


class _Reservoir:
    """A deterministic uniform sample of up to k items from a stream (algorithm R)."""

    def __init__(self, k: int, seed: str) -> None:
        self.k = k
        self.seen = 0
        self.items: list[tuple[int, WorkItem]] = []
        self._rng = random.Random(f"{SAMPLE_SEED}:{seed}")

    def offer(self, index: int, item: WorkItem) -> None:
        self.seen += 1
        if self.k <= 0:
            return
        if len(self.items) < self.k:
            self.items.append((index, item))
            return
        j = self._rng.randrange(self.seen)
        if j < self.k:
            self.items[j] = (index, item)

    def ordered(self) -> list[WorkItem]:
        return [it for _, it in sorted(self.items, key=lambda p: p[0])]


@dataclass
class _Scan:
    source: str
    items: int = 0
    bad_rows: int = 0
    found: dict[str, int] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)
    per_modality: dict[str, _Reservoir] = field(default_factory=dict)
    overall: _Reservoir | None = None
    new_items: int | None = None


@contextmanager
def _recorded(config: JobConfig) -> Iterator[Callable[[str], bool] | None]:
    """Whether an id has a current record, from OUT's index: one indexed lookup per item, so
    no data file is read and memory does not grow with OUT (None: no OUT to look in)."""
    from .index import OutIndex
    from .writer import OutLayout

    layout = OutLayout(config.output)
    if config.overwrite or not layout.meta.is_dir():
        yield None
        return
    with OutIndex(layout) as index:
        yield index.has_id


def _scan(config: JobConfig, per_modality: int, overall: int = 0) -> _Scan:
    """Stream the source once: counts, samples, and items not yet in OUT."""
    job_input = JobInput(config)
    source = job_input.open()
    scan = _Scan(job_input.label(source))
    if overall:
        scan.overall = _Reservoir(overall, "all")
    with _recorded(config) as recorded:
        if recorded is not None:
            scan.new_items = 0
        for index, item in enumerate(source):
            scan.items += 1
            if recorded is not None and not recorded(item.id):
                scan.new_items = (scan.new_items or 0) + 1
            _offer(scan, job_input, index, item, per_modality)
    if scan.items == 0:
        raise UsageError(f"no media files found in {config.dataset or config.input}")
    return scan


def _offer(scan: _Scan, job_input: JobInput, index: int, item: WorkItem, per_modality: int) -> None:
    """Count one input item and offer it to the samples."""
    if item.error is not None or item.modality is None:
        scan.bad_rows += 1
        return
    scan.found[item.modality.value] = scan.found.get(item.modality.value, 0) + 1
    sent = job_input.as_sent(item)
    assert sent.modality is not None
    mod = sent.modality.value
    scan.sent[mod] = scan.sent.get(mod, 0) + 1
    scan.per_modality.setdefault(mod, _Reservoir(per_modality, mod)).offer(index, sent)
    if scan.overall is not None:
        scan.overall.offer(index, item)  # as found: the job maps speech items itself


def _existing(job: Job) -> dict[str, Any] | None:
    """OUT's status when OUT already is a gemma4u folder."""
    from .ledger import read_status

    if not job.layout.meta.is_dir():
        return None
    st = read_status(job.layout)
    keys = ("records", "done", "errors", "complete", "active", "last_update")
    return {k: getattr(st, k) for k in keys}


# ----------------------------------------------------------------------------- plan


def plan(config: JobConfig, sample: int = 16, recipe: str | None = None) -> Plan:
    """What the job will do, without loading the model: counts, token estimates, outputs."""
    from .engine import check_model_path

    check_model_path(config.model)
    job = Job(config)
    scan = _scan(config, max(0, sample))
    p = Plan(config=config, source=scan.source, tasks=config.task_list(), sample=max(0, sample), recipe=recipe)
    p.items, p.bad_rows, p.found, p.new_items = scan.items, scan.bad_rows, scan.found, scan.new_items
    p.existing, p.refused = _existing(job), job.refusal()
    for mod, n in sorted(scan.sent.items()):
        p.modalities[mod] = ModalityPlan(mod, items=n, sampled=len(scan.per_modality[mod].items))
    samples = [it for mod in sorted(scan.per_modality) for it in scan.per_modality[mod].ordered()]
    if samples:
        _measure(p, job, samples)
    _add_notes(p, scan)
    return p


def _measure(p: Plan, job: Job, samples: list[WorkItem]) -> None:
    """Decode the sample with the real decode stage and count each request's tokens."""
    from .decode.spill import SpilledAudio
    from .workers import DecodePool

    c = job.config
    workers = min(c.worker_count(), len(samples))
    opts = c.decode_options()
    with DecodePool(iter(samples), opts, workers=workers, prefetch=c.prefetch, timeout=c.decode_timeout) as pool:
        while not pool.done:
            for d in pool.poll(timeout=0.1):
                assert d.item.modality is not None
                row = p.modalities[d.item.modality.value]
                if d.error is not None:
                    row.sample_errors += 1
                    continue
                row.decoded += 1
                row.over_limit += _count_requests(row, job, d)
                if isinstance(d.audio, SpilledAudio):  # long audio: its requests are counted
                    d.audio.file.unlink()


def _count_requests(row: ModalityPlan, job: Job, d: Any) -> bool:
    """Add one decoded item's requests to its row; whether one would exceed max_model_len."""
    from .inspection import view

    limit = job.config.engine.max_model_len
    too_long = False
    parts_by_window: dict[bool, list[Any]] = {}
    for task in job.config.tasks_of(d.item):
        windowed = is_speech_task(task)
        if windowed not in parts_by_window:
            parts_by_window[windowed] = view(d, windowed)[1]
        parts = parts_by_window[windowed]
        text = request_text_tokens(job.config, job.instruction(d.item, task))
        row.requests += len(parts)
        row.text_tokens += text * len(parts)
        for part in parts:
            row.media_tokens += part.mm_tokens
            too_long = too_long or bool(limit and text + part.mm_tokens >= limit)
        if job.config.identifies_language(task):  # --language auto: one identification request a window
            _count_identification(row, job.config, parts)
    return too_long


def _count_identification(row: ModalityPlan, config: JobConfig, parts: list[Any]) -> None:
    """The language-identification requests of a window list (requests.py): same audio, another question."""
    from .requests import LANGUAGE_INSTRUCTION
    from .units import language_parts

    identify = language_parts(parts)
    row.requests += len(identify)
    row.text_tokens += request_text_tokens(config, LANGUAGE_INSTRUCTION) * len(identify)
    row.media_tokens += sum(p.mm_tokens for p in identify)


def _add_notes(p: Plan, scan: _Scan) -> None:
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
        elif p.new_items is not None:
            p.notes.append(
                f"OUT already holds {p.existing['records']} record(s); {p.new_items} item(s) have none yet "
                "(items whose content or prompt changed are redone too)"
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
        t.add_row("OUT now", "no results yet" if not c.output.exists() else "exists, no gemma4u results")
    else:
        ex = p.existing
        state = "running" if ex["active"] else ("complete" if ex["complete"] else "incomplete")
        t.add_row("OUT now", f"{ex['records']:,} records ({ex['done']:,} done, {ex['errors']:,} errors), {state}")
        t.add_row("to process", f"{_fmt_int(p.items if c.overwrite else p.new_items)} new item(s) by id")
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
        else "incremental (skip items already done)" + (", retry errors" if c.retry_errors else ""),
    )
    commits = f"commit every {c.commit_every} records or {c.commit_seconds:g} s"
    t.add_row("workers", f"{c.worker_count()} decode worker(s) (--workers {c.workers}); {commits}")


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
    console.print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False).rstrip(), markup=False)


# ------------------------------------------------------------------------- estimate


@dataclass
class Estimate:
    sampled: int
    total_items: int
    pending_items: int | None
    records: int = 0
    errors: int = 0
    records_per_item: float = 1.0  # one record per task: tasks per sampled item
    startup_s: float = 0.0  # tokenizer + engine start (paid once per run)
    elapsed_s: float = 0.0  # the whole sample run, start-up included
    per_record_s: float = 0.0
    per_item_s: float = 0.0  # per record × records per item (all of an item's tasks)
    projected_s: float = 0.0  # start-up + per item × all items
    projected_pending_s: float | None = None  # start-up + per item × items not yet in OUT
    sample_modalities: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False
    assumptions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def estimate(config: JobConfig, n: int, engine: Any = None, console: Console | None = None) -> Estimate:
    """Run n deterministically sampled items for real (into a temporary OUT) and project
    the full job's time. Starts the engine unless one is given."""
    from .engine import check_model_path
    from .progress import Reporter

    if n < 1:
        raise UsageError("--estimate needs a number of items ≥ 1")
    check_model_path(config.model)
    scan = _scan(config, per_modality=0, overall=n)
    assert scan.overall is not None
    items = scan.overall.ordered()
    if not items:
        raise UsageError(f"no usable items in {config.dataset or config.input} to estimate with")
    est = Estimate(sampled=len(items), total_items=scan.items, pending_items=scan.new_items)
    est.records_per_item = sum(len(config.tasks_of(it)) for it in items) / len(items)
    job_input = JobInput(config)
    for it in items:
        mod = job_input.as_sent(it).modality
        assert mod is not None
        est.sample_modalities[mod.value] = est.sample_modalities.get(mod.value, 0) + 1
    with tempfile.TemporaryDirectory(prefix="gemma4u-estimate-") as tmp:
        sample_cfg = config.model_copy(
            update={
                "output": Path(tmp) / "out",
                "overwrite": True,
                "retry_errors": False,
                "quiet": True,
                "subtitles": [],
                "shard": None,
                "ray": None,
                "replicas": 1,
            }
        )
        if console is not None:
            console.print(f"Running {len(items)} sampled item(s) for real (engine start-up included)…")
        summary, startup_s = _run_sample(sample_cfg, items, engine, Reporter("quiet"))
    est.records, est.errors, est.interrupted = summary.done, summary.errors, summary.interrupted
    est.elapsed_s = summary.elapsed_s
    est.startup_s = startup_s
    # An item costs all its records (one per task): time per record × records per item.
    est.per_record_s = max(est.elapsed_s - est.startup_s, 0.0) / max(est.records, 1)
    est.per_item_s = est.per_record_s * est.records_per_item
    est.projected_s = est.startup_s + est.per_item_s * est.total_items
    if est.pending_items is not None and not config.overwrite:
        est.projected_pending_s = est.startup_s + est.per_item_s * est.pending_items
    _estimate_assumptions(est, config, scan)
    return est


def _run_sample(config: JobConfig, items: list[WorkItem], engine: Any, reporter: Any) -> tuple[Any, float]:
    """(summary, engine start-up seconds) of a run of `items` on the given or a new engine."""
    from .engine import open_engine

    if engine is not None:
        before = engine.startup_s
        return run_job(config, engine, items=items, reporter=reporter), engine.startup_s - before
    with open_engine(config) as owned:
        return run_job(config, owned, items=items, reporter=reporter), owned.startup_s


def _estimate_assumptions(est: Estimate, config: JobConfig, scan: _Scan) -> None:
    a = est.assumptions
    a.append(
        f"the {est.sampled} item(s) were drawn uniformly from the {est.total_items} (fixed seed, same sample every "
        "time); the job's mix of modalities and file sizes is assumed to match the sample's"
    )
    missing = sorted(set(scan.sent) - set(est.sample_modalities))
    if missing:
        a.append(f"no {', '.join(missing)} item was sampled: their cost is not in the projection (raise N)")
    a.append(f"engine start-up ({est.startup_s:.1f} s) is paid once per run and is not in the per-item time")
    if est.records_per_item != 1:
        a.append(
            f"each item is {est.records_per_item:g} records (one per task): the per-item time is the "
            "per-record time × that"
        )
    sample_requests = round(est.sampled * est.records_per_item)
    if sample_requests < config.engine.max_num_seqs:
        a.append(
            f"the sample kept at most {sample_requests} request(s) in flight; a full job keeps up to max_num_seqs="
            f"{config.engine.max_num_seqs} busy, so real throughput is usually higher: read this as an upper bound"
        )
    if est.errors:
        a.append(f"{est.errors} sampled item(s) ended as error records (counted like the others)")
    if est.pending_items is not None and not config.overwrite:
        a.append(f"a rerun into the same OUT skips items already done: {est.pending_items} have no record yet")


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def print_estimate(est: Estimate, console: Console) -> None:
    t = Table(title="gemma4u estimate", show_header=False, title_justify="left")
    mix = ", ".join(f"{k} {v}" for k, v in sorted(est.sample_modalities.items()))
    t.add_row("sample run for real", f"{est.sampled} item(s): {mix}")
    t.add_row("records (errors)", f"{est.records} ({est.errors})")
    t.add_row("engine start-up", _duration(est.startup_s))
    if est.records_per_item != 1:
        t.add_row("per record", f"{est.per_record_s:.2f} s ({est.records_per_item:g} records per item: one per task)")
    t.add_row("per item", f"{est.per_item_s:.2f} s")
    t.add_row("projected: whole job", f"{_duration(est.projected_s)} for {est.total_items:,} items")
    if est.projected_pending_s is not None:
        t.add_row("projected: pending only", f"{_duration(est.projected_pending_s)} for {est.pending_items:,} items")
    console.print(t)
    console.print("[bold]assumptions[/]")
    for line in est.assumptions:
        console.print(f"• {line}", soft_wrap=True)


__all__ = ["Estimate", "ModalityPlan", "Plan", "estimate", "plan", "print_estimate", "print_plan"]
