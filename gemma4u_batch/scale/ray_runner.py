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

import logging
import os
import time
from collections import deque
from typing import Any

from ..config.job import JobConfig
from ..console import Counters, Reporter
from ..errors import EngineFailure, OutputError, OutputLocked, UsageError
from ..job.job import JobSummary
from ..job.model import RunModel, resolve_model
from ..job.signals import StopSignal
from ..store.layout import STOP, OutLayout
from ..store.lease import LEASE_SECONDS, SKEW_SECONDS
from ..store.ledger import read_status
from ..store.runs import new_run_id

MAX_REPLACEMENTS = 8
log = logging.getLogger(__name__)


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

    def run_shard(
        self,
        index: int,
        total: int,
        manifest_extra: dict[str, Any],
        stop_file: str,
        retried: bool = False,
        model: RunModel | None = None,
    ) -> dict[str, Any]:
        """One shard. `retried`: its last replica died, and on an object store that replica's
        lease on the shard outlives it; wait for it to run out rather than refuse. `model`: the
        model the driver resolved (a hub id's commit), the same for every shard."""
        from ..engine.vllm_engine import build_engine
        from ..job.job import run_job

        config = self.config.model_copy(update={"shard": f"{index}/{total}", "ray": None, "quiet": True})
        if self.engine is None:  # the actor's: kept across shards, gone with the actor
            self.engine = build_engine(model.loading(config) if model is not None else config)
        summary = run_job(
            config,
            self.engine,
            reporter=Reporter("quiet"),
            manifest_extra=manifest_extra,
            stop_file=stop_file,
            lock_wait=LEASE_SECONDS + SKEW_SECONDS + 5.0 if retried else 0.0,
            model=model,
        )
        return {
            "shard": index,
            "done": summary.done,
            "errors": summary.errors,
            "skipped": summary.skipped,
            "reused": summary.reused,
            "errors_by_kind": summary.errors_by_kind,
            "elapsed_s": summary.elapsed_s,
            "interrupted": summary.interrupted,
        }


def _connect(ray: Any, address: str) -> str:
    """`auto`: an existing cluster if one is reachable, else a local one. A cluster that
    refuses this process (auth token, Ray/Python version) or an address where nothing
    answers is a UsageError: one line naming the cause and the fix, not a traceback."""
    if ray.is_initialized():
        return "existing"
    if address == "auto":
        try:
            ray.init(address="auto", log_to_driver=False)
            return "auto"
        except Exception as exc:
            # A cluster that was found but refuses us is the user's to fix; none running
            # (or a stale address of one that is gone) means a local one, as before.
            refused = _refusal(exc, address, generic=False)
            if refused is not None:
                raise refused from None
            if not isinstance(exc, ConnectionError | RuntimeError):
                raise
            ray.init(log_to_driver=False)
            return "local"
    if address != "local" and "://" not in address:
        _check_reachable(address)
    try:
        ray.init(address=address, log_to_driver=False)
    except Exception as exc:
        refused = _refusal(exc, address, generic=True)
        if refused is None:
            raise
        raise refused from None
    return address


_TOKEN_FIX = "`ray get-auth-token` on the cluster's head node prints its token"


def _ray_token_source() -> str:
    """Where Ray takes this process's auth token from, in Ray's order: RAY_AUTH_TOKEN,
    then the file RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return "RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return f"RAY_AUTH_TOKEN_PATH={os.environ['RAY_AUTH_TOKEN_PATH']}"
    return os.path.join(os.path.expanduser("~"), ".ray", "auth_token")


def _refusal(exc: BaseException, address: str, generic: bool) -> UsageError | None:
    """The one-line UsageError for a Ray connection failure (auth token, version, no
    answer); None when `exc` is none of these (and `generic` is off)."""
    import re

    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    text = "\n".join(str(x) for x in chain)
    dialed = re.search(r"Ray cluster at (\S+)", text)
    where = address if address != "auto" else "the cluster that --ray auto found"
    if dialed and dialed.group(1) != address:
        where = f"{dialed.group(1)}" if address == "auto" else f"{address} (dialed as {dialed.group(1)})"
    is_auth = any(c.__name__ == "AuthenticationError" for x in chain for c in type(x).__mro__)
    if is_auth or any(s in text for s in _AUTH_SIGNS):
        return _auth_refusal(where, no_token="no authentication token was found" in text)
    if "Version mismatch" in text:
        return _version_refusal(where, text)
    if isinstance(exc, ValueError) and "address" in str(exc).lower():
        if address == "auto" and os.environ.get("RAY_ADDRESS"):
            return UsageError(f"invalid RAY_ADDRESS {os.environ['RAY_ADDRESS']!r}: use HOST:PORT or unset it")
        return UsageError(f"invalid --ray address {address!r}: use HOST:PORT (the cluster's GCS address) or auto")
    if generic and isinstance(exc, ConnectionError | RuntimeError):
        reason = "its GCS did not answer in time" if "Timed out" in text else str(exc).splitlines()[0][:200]
        return UsageError(
            f"could not connect to the Ray cluster at {where}: {reason}; check the address and that "
            f"`ray status --address {address}` works from this machine"
        )
    return None


_AUTH_SIGNS = (
    "no authentication token was found",
    "InvalidAuthToken",
    "Authentication token is missing or incorrect",
)


def _auth_refusal(where: str, *, no_token: bool) -> UsageError:
    """Which token this process sent (or that it sent none), and how to send the right one."""
    if no_token:
        return UsageError(
            "RAY_AUTH_MODE=token but no Ray auth token is set: set RAY_AUTH_TOKEN to the cluster's token "
            f"({_TOKEN_FIX}), or RAY_AUTH_TOKEN_PATH to a file holding it"
        )
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return UsageError(
            f"the Ray cluster at {where} requires an auth token and this process sent none "
            "(RAY_AUTH_MODE is not 'token'): set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN to the cluster's "
            f"token ({_TOKEN_FIX}), or RAY_AUTH_TOKEN_PATH to a file holding it"
        )
    source = _ray_token_source()
    in_file = not source.startswith("RAY_AUTH_TOKEN")
    return UsageError(
        f"the Ray cluster at {where} rejected the auth token from {source}"
        f"{' (if an earlier local Ray run wrote it, it fits only that run)' if in_file else ''}: set "
        f"RAY_AUTH_TOKEN to the cluster's token ({_TOKEN_FIX}){' or write it to that file' if in_file else ''}"
    )


def _version_refusal(where: str, text: str) -> UsageError:
    """Both sides' Ray and Python versions, and the install that matches the cluster."""
    import re

    v = re.search(
        r"started with:\s*Ray: (\S+)\s*Python: (\S+).*?started with:\s*Ray: (\S+)\s*Python: (\S+)", text, re.S
    )
    if v is None:
        return UsageError(
            f"the Ray cluster at {where} runs another Ray or Python version than this environment: "
            "run gemma4u with the cluster's Ray and Python versions"
        )
    ray_c, py_c, ray_me, py_me = v.groups()
    hint = ""
    if ray_c == ray_me and py_c.split(".")[:2] == py_me.split(".")[:2]:
        hint = " (or allow a Python patch difference: RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL=minor)"
    return UsageError(
        f"the Ray cluster at {where} runs Ray {ray_c} on Python {py_c}, this environment has Ray {ray_me} "
        f"on Python {py_me}: run gemma4u from an environment with the cluster's versions "
        f"(pip install 'ray=={ray_c}' on Python {py_c}){hint}"
    )


def _check_reachable(address: str) -> None:
    """Fail fast when nothing listens where Ray will dial (Ray itself retries for minutes)."""
    import socket

    invalid = UsageError(f"invalid --ray address {address!r}: use HOST:PORT (the cluster's GCS address) or auto")
    try:
        from ray._private.services import canonicalize_bootstrap_address

        # What ray.init dials: Ray replaces a loopback host by this machine's address
        # unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0.
        dialed = canonicalize_bootstrap_address(address) or address
    except ValueError:
        raise invalid from None
    except Exception:
        dialed = address
    host, sep, port = dialed.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise invalid
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
            pass
    except OSError as exc:
        where = address if dialed == address else f"{address} (dialed as {dialed})"
        raise UsageError(
            f"no Ray cluster answers at {where}: {exc.strerror or exc}; start one there "
            f"(`ray start --head --port {port}`), or pass a running cluster's address as --ray HOST:PORT "
            "(or --ray auto)"
        ) from None


def run_on_ray(config: JobConfig, reporter: Reporter | None = None, shards: int | None = None) -> JobSummary:
    """Run the whole job on `config.replicas` Ray actors; returns the aggregate summary."""
    ray = _import_ray()
    started = time.monotonic()
    how = _connect(ray, config.ray or "auto")
    driver = _Driver(ray, config, shards or max(1, 4 * config.replicas), how)
    reporter = reporter or Reporter("quiet" if config.quiet else "rich")
    reporter.start(None)
    try:
        with StopSignal() as stop:
            results = driver.run(reporter, stop)
    finally:
        reporter.stop()
        driver.shutdown()
    _compact_when_free(OutLayout(config.output))
    summary = _summary(config, results, driver.replacements, started)
    summary.interrupted = stop.requested
    return summary


def _compact_when_free(layout: OutLayout) -> None:
    """Every shard is done and the replicas have let go of OUT: compact it."""
    from ..store.compaction import compact_out

    try:
        compact_out(layout)
    except (OutputLocked, OSError) as exc:
        log.warning("gemma4u: compaction skipped (%s); every record is committed, run `gemma4u compact`", exc)


class _Driver:
    """Hands shards to replicas as they free up; a dead replica's shard goes back to the
    queue and a fresh replica resumes it from what was committed."""

    def __init__(self, ray: Any, config: JobConfig, n_shards: int, how: str) -> None:
        self.ray = ray
        self.config = config
        self.n_shards = n_shards
        resources = ray.cluster_resources()
        self.gpus = float(config.engine.tensor_parallel_size) if resources.get("GPU", 0) else 0.0
        self.cpu_count = max(1, int(resources.get("CPU", 1)))
        self.actor_cls = ray.remote(num_cpus=1, num_gpus=self.gpus, max_restarts=0)(_Replica)
        self.config_json = config.model_dump_json()
        # resolved once (a hub id's pinned or adopted commit): every shard keys and loads the same
        self.model = resolve_model(config, OutLayout(config.output))
        self.spawned = 0
        self.replacements = 0
        self.retried: set[int] = set()  # shards whose replica died
        self.idle = [self._spawn() for _ in range(config.replicas)]
        self.running: dict[Any, tuple[Any, int]] = {}
        self.extra: dict[str, Any] = {
            "run_id": new_run_id(),  # one id for the whole job, whichever replica writes
            "cluster": {
                "address": how,
                "replicas": config.replicas,
                "shards": n_shards,
                "resources": {k: v for k, v in resources.items() if k in ("CPU", "GPU", "memory")},
                "nodes": [n.get("NodeManagerHostname") for n in ray.nodes() if n.get("Alive")],
            },
        }

    def _spawn(self) -> Any:
        bind = None if self.gpus else str(self.spawned % self.cpu_count)
        self.spawned += 1
        return self.actor_cls.remote(self.config_json, bind)

    def run(self, reporter: Reporter, stop: StopSignal) -> list[dict[str, Any]]:
        """Shards to replicas until all are done. On SIGINT/SIGTERM no new shard starts and
        the stop file asks the running ones to commit what finished and return."""
        queue: deque[int] = deque(range(self.n_shards))
        results: list[dict[str, Any]] = []
        layout = OutLayout(self.config.output)
        stop_file = STOP  # a name in OUT: replicas on any node see it
        try:
            layout.ensure()
            layout.files.delete(stop_file)
        except OSError as exc:
            raise OutputError(f"cannot write to output folder {layout.where}: {exc.strerror or exc}") from exc
        counters = Counters()
        while self.running or (queue and not stop.requested):
            if stop.requested and not layout.files.exists(stop_file):
                layout.files.put(stop_file, b"")
            while queue and self.idle and not stop.requested:
                actor = self.idle.pop()
                shard = queue.popleft()
                ref = actor.run_shard.remote(
                    shard, self.n_shards, self.extra, stop_file, shard in self.retried, self.model
                )
                self.running[ref] = (actor, shard)
            ready, _ = self.ray.wait(list(self.running), num_returns=1, timeout=2.0)
            for ref in ready:
                result = self._collect(ref, queue)
                if result is not None:
                    results.append(result)
            if layout.made():
                st = read_status(layout)
                counters.done, counters.errors = st.records, st.errors
                reporter.update(counters)
        layout.files.delete(stop_file)
        return results

    def _collect(self, ref: Any, queue: deque[int]) -> dict[str, Any] | None:
        """A finished shard's result; a dead replica's shard is requeued; a replica's
        usage, output or engine failure is the job's (one line and its exit code)."""
        actor, shard = self.running.pop(ref)
        x = self.ray.exceptions
        try:
            result: dict[str, Any] = self.ray.get(ref)
        except (x.RayActorError, x.OutOfMemoryError, x.WorkerCrashedError, x.NodeDiedError):
            # The replica's process (or node) is gone, an OOM kill included: its shard goes back.
            self.replacements += 1
            if self.replacements > MAX_REPLACEMENTS:
                raise EngineFailure(
                    f"Ray replicas died {self.replacements} times; giving up. Finished work is committed: "
                    "rerun the same command to resume"
                ) from None
            queue.appendleft(shard)
            self.retried.add(shard)
            self.idle.append(self._spawn())
            return None
        except self.ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, UsageError | OutputError | EngineFailure):
                raise cause from None
            raise
        self.idle.append(actor)
        return result

    def shutdown(self) -> None:
        for actor in self.idle + [a for a, _ in self.running.values()]:
            try:
                self.ray.kill(actor)
            except Exception as exc:  # already gone with its node: nothing left to stop
                log.debug("ray.kill: %s", exc)


def _summary(config: JobConfig, results: list[dict[str, Any]], replacements: int, started: float) -> JobSummary:
    summary = JobSummary(output=str(config.output), replacements=replacements)
    for r in results:
        summary.done += r["done"]
        summary.reused += r.get("reused", 0)
        summary.errors += r["errors"]
        for k, v in r["errors_by_kind"].items():
            summary.errors_by_kind[k] = summary.errors_by_kind.get(k, 0) + v
    # Items skipped as already done are counted once per shard that saw them; report
    # the committed total instead.
    summary.skipped = max(0, read_status(OutLayout(config.output)).records - summary.done)
    summary.already_complete = summary.done == 0 and summary.skipped > 0
    summary.elapsed_s = time.monotonic() - started
    return summary
