"""One streamed pass over a job's input for plans and estimates: counts per modality,
deterministic samples, and how many items are pending (the quick check's rule, job/quickcheck.py).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..config.job import JobConfig
from ..errors import UsageError
from ..job.quickcheck import count_pending
from ..records import WorkItem
from ..sources.job_input import JobInput

SAMPLE_SEED = 0


class Reservoir:
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
class InputScan:
    source: str
    items: int = 0
    bad_rows: int = 0
    found: dict[str, int] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)
    per_modality: dict[str, Reservoir] = field(default_factory=dict)
    overall: Reservoir | None = None
    pending: int | None = None  # items a run would read (None: OUT holds no results)


def scan_input(config: JobConfig, per_modality: int, overall: int = 0) -> InputScan:
    """Stream the source once: counts, samples, and the items a run would read."""
    job_input = JobInput(config)
    source = job_input.open()
    scan = InputScan(job_input.label(source))
    if overall:
        scan.overall = Reservoir(overall, "all")

    def offered() -> Iterator[WorkItem]:
        for index, item in enumerate(source):
            scan.items += 1
            _offer(scan, job_input, index, item, per_modality)
            yield job_input.as_sent(item)

    scan.pending = count_pending(config, offered())
    if scan.items == 0:
        raise UsageError(f"no media files found in {config.dataset or config.input}")
    return scan


def _offer(scan: InputScan, job_input: JobInput, index: int, item: WorkItem, per_modality: int) -> None:
    """Count one input item and offer it to the samples."""
    if item.error is not None or item.modality is None:
        scan.bad_rows += 1
        return
    scan.found[item.modality.value] = scan.found.get(item.modality.value, 0) + 1
    sent = job_input.as_sent(item)
    assert sent.modality is not None
    mod = sent.modality.value
    scan.sent[mod] = scan.sent.get(mod, 0) + 1
    scan.per_modality.setdefault(mod, Reservoir(per_modality, mod)).offer(index, sent)
    if scan.overall is not None:
        scan.overall.offer(index, item)  # as found: the job maps speech items itself
