"""One job across many engines on Ray, with the same exactly-once output.

Design (why not Ray Data): the job is split into S shards by content hash (S = 4 ×
replicas by default, more shards than replicas so a fast replica takes more of them).
Each replica is a Ray actor that owns one vLLM engine (kept across shards) and runs
`run_job` for one shard at a time: it decodes on its own node with the usual bounded
decode pool (decoded pixels never cross the network; backpressure is the pool's
prefetch bound) and commits into the shared OUT through the same commit protocol as a
single process. A replica that dies loses only its uncommitted items: the driver puts
its shard back in the queue and a fresh replica resumes it from what was committed.
Ray Data's streaming executor would add a second scheduler and move decoded arrays
between processes; shards keep the guarantees in one place (the commit protocol).
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .config import JobConfig
from .errors import UsageError
from .ledger import read_status
from .progress import Counters, Reporter
from .runner import JobSummary
from .writer import OutLayout

MAX_REPLACEMENTS = 8


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray: pip install 'gemma4u-batch[ray]' (or: pip install ray)") from None
    return ray


class _Replica:
    """Body of the Ray actor: one engine, many shards."""

    def __init__(self, config_json: str, cpu_bind: str | None) -> None:
        if cpu_bind is not None:
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_bind)
        self.config = JobConfig.model_validate_json(config_json)
        self.engine: Any = None

    def node(self) -> dict[str, Any]:
        import socket

        return {"host": socket.gethostname(), "pid": os.getpid()}

    def run_shard(self, index: int, total: int, manifest_extra: dict[str, Any]) -> dict[str, Any]:
        from .runner import default_engine_factory, run_job

        config = self.config.model_copy(update={"shard": f"{index}/{total}", "ray": None, "quiet": True})
        if self.engine is None:
            self.engine = default_engine_factory(config)
        engine = self.engine

        class _Borrowed:
            def __getattr__(self, name: str) -> Any:
                return getattr(engine, name)

            def shutdown(self) -> None:  # the actor keeps its engine across shards
                return None

        summary = run_job(config, engine_factory=lambda c: _Borrowed(), reporter=Reporter("quiet"),
                          manifest_extra=manifest_extra)  # fmt: skip
        return {"shard": index, "done": summary.done, "errors": summary.errors, "skipped": summary.skipped,
                "errors_by_kind": summary.errors_by_kind, "elapsed_s": summary.elapsed_s}  # fmt: skip


@dataclass
class RayPlan:
    replicas: int
    shards: int
    address: str
    nodes: list[dict[str, Any]] = field(default_factory=list)


def _connect(ray: Any, address: str) -> str:
    """`auto`: an existing cluster if one is reachable, else a local one."""
    if ray.is_initialized():
        return "existing"
    if address == "auto":
        try:
            ray.init(address="auto", log_to_driver=False)
            return "auto"
        except (ConnectionError, RuntimeError):
            ray.init(log_to_driver=False)
            return "local"
    ray.init(address=address, log_to_driver=False)
    return address


def run_on_ray(config: JobConfig, reporter: Reporter | None = None, shards: int | None = None) -> JobSummary:
    """Run the whole job on `config.replicas` Ray actors; returns the aggregate summary."""
    ray = _import_ray()
    started = time.monotonic()
    how = _connect(ray, config.ray or "auto")
    n_shards = shards or max(1, 4 * config.replicas)
    gpus = float(config.engine.tensor_parallel_size) if ray.cluster_resources().get("GPU", 0) else 0.0
    actor_cls = ray.remote(num_cpus=1, num_gpus=gpus, max_restarts=0)(_Replica)
    cpu_count = max(1, int(ray.cluster_resources().get("CPU", 1)))
    reporter = reporter or Reporter("quiet" if config.quiet else "rich")
    config_json = config.model_dump_json()

    def spawn(k: int) -> Any:
        bind = None if gpus else str(k % cpu_count)
        return actor_cls.remote(config_json, bind)

    actors = [spawn(k) for k in range(config.replicas)]
    layout_info = {
        "address": how,
        "replicas": config.replicas,
        "shards": n_shards,
        "resources": {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU", "memory")},
        "nodes": [n.get("NodeManagerHostname") for n in ray.nodes() if n.get("Alive")],
    }
    extra = {"cluster": layout_info}
    queue: deque[int] = deque(range(n_shards))
    running: dict[Any, tuple[Any, int]] = {}
    idle = list(actors)
    results: list[dict[str, Any]] = []
    replacements = 0
    layout = OutLayout(config.output)
    reporter.start(None)
    counters = Counters()
    try:
        while queue or running:
            while queue and idle:
                actor = idle.pop()
                shard = queue.popleft()
                running[actor.run_shard.remote(shard, n_shards, extra)] = (actor, shard)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=2.0)
            for ref in ready:
                actor, shard = running.pop(ref)
                try:
                    results.append(ray.get(ref))
                    idle.append(actor)
                except ray.exceptions.RayActorError:
                    # The replica (or its node) died: its shard goes back, resumed elsewhere.
                    replacements += 1
                    if replacements > MAX_REPLACEMENTS:
                        raise RuntimeError(f"Ray replicas died {replacements} times; giving up (resumable)") from None
                    queue.appendleft(shard)
                    idle.append(spawn(len(actors) + replacements))
                except ray.exceptions.RayTaskError as exc:
                    cause = exc.cause if isinstance(getattr(exc, "cause", None), Exception) else exc
                    if isinstance(cause, UsageError):
                        raise cause from None
                    raise
            if layout.commits.exists():
                st = read_status(layout)
                counters.done, counters.errors = st.records, st.errors
                reporter.update(counters)
    finally:
        reporter.stop()
        for actor in idle + [a for a, _ in running.values()]:
            try:
                ray.kill(actor)
            except Exception:
                pass
    summary = JobSummary(output=str(config.output))
    for r in results:
        summary.done += r["done"]
        summary.errors += r["errors"]
        for k, v in r["errors_by_kind"].items():
            summary.errors_by_kind[k] = summary.errors_by_kind.get(k, 0) + v
    # Items skipped as already done are counted once per shard that saw them; report
    # the committed total instead.
    summary.skipped = max(0, read_status(layout).records - summary.done)
    summary.already_complete = summary.done == 0 and summary.skipped > 0
    summary.elapsed_s = time.monotonic() - started
    summary.replacements = replacements  # type: ignore[attr-defined]
    return summary
