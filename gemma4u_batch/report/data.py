"""What `gemma4u report` shows, read from OUT in one streaming pass.

Counts and commit times come from the index; the current records are streamed once
(`ledger.current_records`: one part file at a time) into fixed-size aggregates and a
seeded sample kept in a bounded heap, so memory stays flat however large OUT is and the
same seed always picks the same items.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError
from ..store.index import OutIndex
from ..store.layout import COMPLETE, RUN_MANIFEST, OutLayout
from ..store.ledger import Status, current_records, read_status

EXAMPLES_PER_GROUP = 5
FILTER_HELP = "error, error=KIND, flag, flag=NAME, task=NAME or modality=NAME"

Record = dict[str, Any]


@dataclass(frozen=True)
class ReportOptions:
    sample: int = 200
    seed: int = 0
    filters: tuple[str, ...] = ()


@dataclass
class Group:
    """An error kind or a quality flag: how many records, and the first few of them."""

    name: str
    count: int = 0
    examples: list[tuple[str, str]] = field(default_factory=list)  # (source, message)

    def add(self, source: str, message: str) -> None:
        self.count += 1
        if len(self.examples) < EXAMPLES_PER_GROUP:
            self.examples.append((source, message))


@dataclass
class Aggregates:
    """Whole-run figures gathered while streaming (bounded: counters keyed by small ints)."""

    records: int = 0
    errors: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    output_tokens: Counter[int] = field(default_factory=Counter)
    text_chars: Counter[int] = field(default_factory=Counter)
    tasks: Counter[str] = field(default_factory=Counter)
    modalities: Counter[str] = field(default_factory=Counter)
    error_groups: dict[str, Group] = field(default_factory=dict)
    flag_groups: dict[str, Group] = field(default_factory=dict)

    def add(self, rec: Record) -> None:
        self.records += 1
        self.tokens_in += rec.get("num_prompt_tokens") or 0
        self.tasks[rec.get("task") or "?"] += 1
        self.modalities[rec.get("modality") or "unknown"] += 1
        source = str(rec.get("source") or rec.get("id"))
        if rec.get("error") is not None:
            self.errors += 1
            kind = rec.get("error_kind") or "error"
            self.error_groups.setdefault(kind, Group(kind)).add(source, str(rec["error"]))
            return
        out = rec.get("num_output_tokens") or 0
        self.tokens_out += out
        self.output_tokens[out] += 1
        self.text_chars[len(rec.get("text") or "")] += 1
        for flag in rec.get("flags") or ():
            self.flag_groups.setdefault(flag, Group(flag)).add(source, (rec.get("text") or "")[:120])


@dataclass
class ReportData:
    manifest: dict[str, Any]
    finished: dict[str, Any]
    status: Status
    timeline: list[tuple[float, int]]  # (committed_at, records in that part), in commit order
    agg: Aggregates
    sample: list[Record]  # in sample order (seeded hash)
    matched: int  # records the filters let through (the sample is drawn from these)


def parse_filter(text: str) -> Callable[[Record], bool]:
    """One --filter term as a predicate on a record; a usage error when it is not one."""
    name, _, value = text.partition("=")
    name = name.strip()
    if name == "error" and not value:
        return lambda r: r.get("error") is not None
    if name in ("error", "error_kind") and value:
        return lambda r: r.get("error") is not None and (r.get("error_kind") or "error") == value
    if name == "flag" and not value:
        return lambda r: bool(r.get("flags"))
    if name == "flag":
        return lambda r: value in (r.get("flags") or ())
    if name in ("task", "modality") and value:
        return lambda r: r.get(name) == value
    raise UsageError(f"--filter {text!r}: expected {FILTER_HELP}")


def sample_rank(seed: int, rec: Record) -> int:
    """A record's place in the seeded sample: a hash, so it needs no other record."""
    h = hashlib.blake2b(f"{seed}\0{rec.get('id')}\0{rec.get('task')}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "big")


class Sampler:
    """The `n` records of lowest rank seen so far (a max-heap of size n)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed
        self._heap: list[tuple[int, int, Record]] = []
        self._seen = 0

    def offer(self, rec: Record) -> None:
        if self.n <= 0:
            return
        rank = sample_rank(self.seed, rec)
        self._seen += 1
        entry = (-rank, self._seen, rec)
        if len(self._heap) < self.n:
            heapq.heappush(self._heap, entry)
        elif -rank > self._heap[0][0]:
            heapq.heapreplace(self._heap, entry)

    def records(self) -> list[Record]:
        return [e[2] for e in sorted(self._heap, key=lambda e: -e[0])]


def _read_json(path: Any) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def read_report_data(layout: OutLayout, opts: ReportOptions) -> ReportData:
    """Everything the page needs: the run's facts, whole-run aggregates and the sample."""
    if not layout.made():
        raise UsageError(f"{layout.where} is not a gemma4u output folder")
    preds = [parse_filter(f) for f in opts.filters]
    status = read_status(layout)
    with OutIndex(layout) as index:
        timeline = index.commit_times()
    agg, sampler, matched = Aggregates(), Sampler(opts.sample, opts.seed), 0
    for rec in current_records(layout):
        agg.add(rec)
        if all(p(rec) for p in preds):
            matched += 1
            sampler.offer(rec)
    return ReportData(
        manifest=layout.read_json(RUN_MANIFEST) or {},
        finished=layout.read_json(COMPLETE) or {},
        status=status,
        timeline=timeline,
        agg=agg,
        sample=sampler.records(),
        matched=matched,
    )
