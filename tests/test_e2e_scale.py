"""Scale-out with the same exactly-once output: --shard runs and Ray replicas (real engines on
the tiny checkpoint; its text is meaningless but deterministic), and the Ray driver's refusals and
replacement bookkeeping without a cluster."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gemma4u_batch.config.job import JobConfig, SamplingConfig
from gemma4u_batch.console import Reporter
from gemma4u_batch.errors import ExitCode, UsageError
from gemma4u_batch.job.job import run_job
from gemma4u_batch.store.layout import OutLayout
from gemma4u_batch.store.ledger import read_status
from gemma4u_batch.store.writer import committed_parts

from .helpers import GEMMA4U, data_records, documented_code, make_images
from .ray_cluster import (
    LOOPBACK,
    RayCluster,
    command_line,
    dir_state,
    free_port,
    loopback_env,
    machine_state,
    ray_cluster,
    sandbox_home,
    used_home,
)

__all__ = ["machine_state", "ray_cluster", "used_home"]  # module-scoped fixtures from ray_cluster.py


def _texts(out: Path) -> dict[str, tuple[str, str]]:
    recs = data_records(out)
    assert len({r["id"] for r in recs}) == len(recs), "duplicate ids"
    return {r["id"]: (r["key"], r["text"]) for r in recs}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scale") / "in"
    make_images(root, 24)
    return root


@pytest.fixture(scope="module")
def reference(inputs: Path, tiny_model: Path, shared_engine, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("ref") / "out"
    config = JobConfig(input=inputs, output=out, model=str(tiny_model), sampling=SamplingConfig(max_tokens=12))
    run_job(config, shared_engine, reporter=Reporter("quiet"))
    return _texts(out)


@pytest.mark.engine
def test_three_shards_add_up_to_one_full_run(inputs: Path, tiny_model: Path, shared_engine, reference, tmp_path):
    out = tmp_path / "out"
    sizes = []
    for i in range(3):
        config = JobConfig(
            input=inputs, output=out, model=str(tiny_model), shard=f"{i}/3", sampling=SamplingConfig(max_tokens=12)
        )
        summary = run_job(config, shared_engine, reporter=Reporter("quiet"))
        sizes.append(summary.done)
        assert (out / ".gemma4u" / "complete.json").exists() == (i == 2)
    assert sum(sizes) == 24 and all(0 < s < 24 for s in sizes)
    assert _texts(out) == reference
    st = read_status(OutLayout(out))
    assert st.records == 24 and st.complete and len(st.writers) == 1  # the last shard compacted the three
    # A shard rerun finds nothing to do.
    again = run_job(
        JobConfig(input=inputs, output=out, model=str(tiny_model), shard="1/3", sampling=SamplingConfig(max_tokens=12)),
        shared_engine,
        reporter=Reporter("quiet"),
    )
    assert again.done == 0


def test_cluster_is_hermetic_and_on_loopback_after_an_auto_run(ray_cluster: RayCluster, used_home: Path) -> None:
    """Issue #20: a `gemma4u caption --ray auto` run (the `used_home` fixture ran the CLI
    before the cluster started, with the HOME the cluster is started from) left
    ~/.ray/auth_token with another token. The fixture's cluster, started on that machine,
    still takes drivers, wrote to no ~/.ray outside its sandbox, and every address Ray
    reports, and every socket it holds, is 127.0.0.1."""
    stale = (used_home / ".ray" / "auth_token").read_text().strip()
    assert stale and stale != ray_cluster.token
    info = ray_cluster.describe()
    assert info["gcs_address"] == ray_cluster.address
    assert info["driver_node_ip"] == info["driver_util_ip"] == info["worker_node_ip"] == LOOPBACK
    assert info["nodes"] and all(n["Alive"] and n["NodeManagerAddress"] == LOOPBACK for n in info["nodes"])
    # A driver whose HOME has the stale token still gets in: RAY_AUTH_TOKEN comes first.
    assert ray_cluster.describe(ray_cluster.driver_env(HOME=str(used_home)))["worker_node_ip"] == LOOPBACK
    port = int(ray_cluster.address.rsplit(":", 1)[1])
    assert any(s[3] == port for s in ray_cluster.sockets()), "the GCS socket is among those checked"
    assert ray_cluster.off_loopback() == []
    assert not (ray_cluster.home / ".ray" / "auth_token").exists()  # the token never went to a file
    for ray_dir, before in ray_cluster.outside.items():
        assert dir_state(ray_dir) == before, f"{ray_dir} changed"


def _caption_on_ray(inputs: Path, model: Path, out: Path, address: str, env: dict[str, str]):
    args = [GEMMA4U, "caption", str(inputs), "-o", str(out), "--model", str(model), "--ray", address]
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)


def _one_usage_line(run: subprocess.CompletedProcess[str]) -> str:
    """The usage exit code, no traceback, and one `error:` line, the last one printed."""
    assert run.returncode == ExitCode.USAGE, run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and run.stderr.rstrip().endswith(errors[0]), run.stderr[-3000:]
    return errors[0]


def test_cli_refused_by_the_cluster_is_one_usage_line(inputs, tiny_model, ray_cluster: RayCluster, used_home, tmp_path):
    """A wrong token, none sent (RAY_AUTH_MODE unset and a stale ~/.ray/auth_token: the
    issue's driver), or the stale file's token sent: the usage exit code and one line
    naming the cause and the fix."""
    fast = {"RAY_NUM_REDIS_GET_RETRIES": "2"}  # Ray retries a refused GCS connection 20 times by default
    wrong = ray_cluster.driver_env(RAY_AUTH_TOKEN="0" * 32, **fast)
    line = _one_usage_line(_caption_on_ray(inputs, tiny_model, tmp_path / "a", ray_cluster.address, wrong))
    assert f"Ray cluster at {ray_cluster.address} rejected the auth token from RAY_AUTH_TOKEN" in line
    assert "set RAY_AUTH_TOKEN to the cluster's token" in line and "ray get-auth-token" in line
    unset = ray_cluster.driver_env(RAY_AUTH_MODE=None, RAY_AUTH_TOKEN=None, HOME=str(used_home), **fast)
    line = _one_usage_line(_caption_on_ray(inputs, tiny_model, tmp_path / "b", ray_cluster.address, unset))
    assert f"Ray cluster at {ray_cluster.address} requires an auth token and this process sent none" in line
    assert "set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN" in line
    # Token auth on and no RAY_AUTH_TOKEN: Ray sends the stale ~/.ray/auth_token; the line names that file.
    stale = ray_cluster.driver_env(RAY_AUTH_TOKEN=None, HOME=str(used_home), **fast)
    line = _one_usage_line(_caption_on_ray(inputs, tiny_model, tmp_path / "d", ray_cluster.address, stale))
    assert f"rejected the auth token from {used_home}/.ray/auth_token (if an earlier local Ray run wrote it" in line
    assert "set RAY_AUTH_TOKEN to the cluster's token" in line and "or write it to that file" in line
    # --ray auto that finds this cluster (through RAY_ADDRESS) and is refused: the same, not a local fallback.
    found = ray_cluster.driver_env(RAY_AUTH_TOKEN="0" * 32, RAY_ADDRESS=ray_cluster.address, **fast)
    line = _one_usage_line(_caption_on_ray(inputs, tiny_model, tmp_path / "c", "auto", found))
    assert f"Ray cluster at {ray_cluster.address} rejected the auth token from RAY_AUTH_TOKEN" in line


def test_cli_on_a_cluster_of_another_ray_version_is_one_usage_line(inputs, tiny_model, ray_cluster, tmp_path):
    """Version mismatch through the real CLI: the cluster's GCS reports Ray 2.59.0, as a
    head started by Ray 2.59.0 would (its metadata rewritten for the test); the driver's
    own Ray check refuses the connection."""
    import ray

    py = ".".join(map(str, sys.version_info[:3]))
    with ray_cluster.reporting_versions(ray_version="2.59.0") as before:
        assert before["ray_version"] == ray.__version__ and before["python_version"] == py
        run = _caption_on_ray(inputs, tiny_model, tmp_path / "out", ray_cluster.address, ray_cluster.env)
    line = _one_usage_line(run)
    assert (
        f"the Ray cluster at {ray_cluster.address} runs Ray 2.59.0 on Python {py}, "
        f"this environment has Ray {ray.__version__} on Python {py}"
    ) in line
    assert "pip install 'ray==2.59.0'" in line
    assert not (tmp_path / "out").exists()  # refused before anything was written
    assert ray_cluster.describe()["worker_node_ip"] == LOOPBACK  # restored: drivers get in again


def test_cli_nothing_listening_is_one_usage_line(inputs, tiny_model, tmp_path):
    """No cluster at a loopback port: a usage error at once (Ray alone retries for minutes)."""
    port = free_port()
    env = loopback_env(dict(os.environ), sandbox_home(tmp_path / "home"), tmp_path)
    started = time.monotonic()
    line = _one_usage_line(_caption_on_ray(inputs, tiny_model, tmp_path / "out", f"{LOOPBACK}:{port}", env))
    assert f"no Ray cluster answers at {LOOPBACK}:{port}" in line and f"ray start --head --port {port}" in line
    assert time.monotonic() - started < 60


def test_refusal_messages_name_cause_and_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Ray's connection errors (their shapes in Ray 2.60) to one line each."""
    from ray._private.utils import check_version_info, compute_version_info

    from gemma4u_batch.scale.ray_runner import _refusal

    ray_me, py_me = compute_version_info()

    def mismatch(ray_version: str, python_version: str) -> RuntimeError:
        """What ray.init raises (Ray's own check) against a cluster of these versions."""
        meta = {"ray_version": ray_version, "python_version": python_version}
        with pytest.raises(RuntimeError) as caught:
            check_version_info(meta, "node 127.0.0.1", python_version_match_level="patch")
        return caught.value

    msg = str(_refusal(mismatch("2.59.0", py_me), "10.0.0.5:6379", generic=True))
    assert f"10.0.0.5:6379 runs Ray 2.59.0 on Python {py_me}, this environment has Ray {ray_me}" in msg
    assert "pip install 'ray==2.59.0'" in msg and "\n" not in msg
    other_patch = ".".join([*py_me.split(".")[:2], "0" if not py_me.endswith(".0") else "1"])
    msg = str(_refusal(mismatch(ray_me, other_patch), "h:1", generic=True))
    assert f"runs Ray {ray_me} on Python {other_patch}, this environment has Ray {ray_me} on Python {py_me}" in msg
    assert "RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL=minor" in msg
    other_minor = str(_refusal(mismatch(ray_me, "3.9.1"), "h:1", generic=True))
    assert "on Python 3.9.1" in other_minor and "MATCH_LEVEL" not in other_minor

    refused = ConnectionError("Failed to connect to Ray cluster at 192.0.2.2:6379")
    refused.__cause__ = RuntimeError(
        "Failed to connect to GCS. Last connection error: ...\nray.exceptions.AuthenticationError: RPC error: "
        "InvalidAuthToken: Authentication token is missing or incorrect. Ensure that the token ..."
    )
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    msg = str(_refusal(refused, "127.0.0.1:6379", generic=True))
    assert "127.0.0.1:6379 (dialed as 192.0.2.2:6379)" in msg
    assert f"rejected the auth token from {tmp_path}/.ray/auth_token" in msg
    assert "set RAY_AUTH_TOKEN to the cluster's token" in msg and "or write it to that file" in msg
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", "/etc/ray-token")
    assert "from RAY_AUTH_TOKEN_PATH=/etc/ray-token" in str(_refusal(refused, "h:1", generic=True))
    from ray.exceptions import AuthenticationError  # RAY_AUTH_MODE=token and no token anywhere

    missing = AuthenticationError("Token authentication is enabled but no authentication token was found")
    assert "no Ray auth token is set" in str(_refusal(missing, "h:1", generic=True))
    assert "invalid --ray address 'x'" in str(_refusal(ValueError("Invalid address format: x"), "x", generic=True))
    monkeypatch.setenv("RAY_ADDRESS", "nope")
    bad_env = _refusal(ValueError("Invalid address format: nope"), "auto", generic=False)
    assert isinstance(bad_env, UsageError) and "invalid RAY_ADDRESS 'nope'" in str(bad_env)
    # With --ray auto, what is not a refusal (no cluster running) falls back to a local cluster.
    assert _refusal(ConnectionError("Could not find any running Ray instance."), "auto", generic=False) is None


def test_ray_replicas_that_keep_dying_are_an_engine_failure() -> None:
    """Under --ray a replica whose process dies (OOM kill, node lost) is replaced and its shard
    requeued; past MAX_REPLACEMENTS the job stops with EngineFailure (exit 75), and a replica's
    own EngineFailure / OutputError / UsageError is re-raised as itself (not Ray's wrapper)."""
    from collections import deque

    from gemma4u_batch.cli.app import _exit_code
    from gemma4u_batch.errors import EngineFailure, OutputError
    from gemma4u_batch.scale.ray_runner import MAX_REPLACEMENTS, _Driver

    ray = pytest.importorskip("ray")

    class Cluster:  # the part of the `ray` module the driver's bookkeeping uses
        exceptions = ray.exceptions

        def __init__(self, error: BaseException) -> None:
            self.error = error

        def get(self, ref: object) -> dict:
            raise self.error

    def collect(error: BaseException, replacements: int = 0) -> tuple[_Driver, deque[int]]:
        driver = _Driver.__new__(_Driver)  # no cluster: only what _collect touches
        driver.ray, driver.replacements, driver.idle, driver.retried = Cluster(error), replacements, [], set()
        driver.running = {"ref": ("actor", 3)}
        driver._spawn = lambda: "fresh actor"  # type: ignore[method-assign]
        queue: deque[int] = deque([4])
        assert driver._collect("ref", queue) is None
        return driver, queue

    died = ray.exceptions.RayActorError()
    driver, queue = collect(died)
    assert list(queue) == [3, 4] and driver.idle == ["fresh actor"] and driver.replacements == 1
    assert driver.retried == {3}  # its next replica waits for the dead one's lease (an object-store OUT)
    with pytest.raises(EngineFailure, match=f"replicas died {MAX_REPLACEMENTS + 1} times") as info:
        collect(died, replacements=MAX_REPLACEMENTS)
    assert _exit_code(info.value) == ExitCode.ENGINE_FAILED
    for cause in (EngineFailure("the engine died 1 times"), OutputError("cannot write"), UsageError("bad")):
        wrapped = ray.exceptions.RayTaskError("run_shard", "Traceback ...", cause)
        with pytest.raises(type(cause)) as raised:
            collect(wrapped)
        assert raised.value is cause


def _ray_caption(
    inputs: Path, out: Path, model: Path, cluster: RayCluster, *, commit_every: int, progress: str, replicas: int = 2
) -> list[str]:
    """`gemma4u caption` of the fixture's images on Ray replicas (two by default) of the tiny model."""
    settings = "--dtype float32 --max-tokens 12 --max-model-len 4096 --max-num-seqs 8 --workers 0"
    job = [GEMMA4U, "caption", str(inputs), "-o", str(out), "--model", str(model), "--ray", cluster.address]
    return [
        *job,
        *settings.split(),
        "--replicas",
        str(replicas),
        "--commit-every",
        str(commit_every),
        "--progress",
        progress,
    ]


def _replica_pids(cluster: RayCluster) -> list[int]:
    return [p.pid for p in cluster.processes() if "ray::_Replica" in (command_line(p) or "")]


def _signal_all(pids: list[int], sig: signal.Signals) -> list[int]:
    """The pids that received `sig` (a process may have exited since it was listed)."""
    sent = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
            sent.append(pid)
    return sent


@pytest.mark.engine
@pytest.mark.timeout(1500)
def test_ray_two_replicas_one_killed_still_exactly_once(inputs, tiny_model, reference, ray_cluster, tmp_path):
    out = tmp_path / "out"
    args = _ray_caption(inputs, out, tiny_model, ray_cluster, commit_every=2, progress="json")
    # The fixture's HOME, token and loopback settings, for the CLI and (through the cluster) its replicas.
    # Replicas of earlier tests' jobs may still be winding down on the shared cluster: only this job's count.
    earlier = set(_replica_pids(ray_cluster))
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ray_cluster.env)
    killed = False
    off_loopback: list = []
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None and not killed:
        if committed_parts(OutLayout(out)):
            pids = [pid for pid in _replica_pids(ray_cluster) if pid not in earlier]
            # Freeze this job's replicas first: on a loaded machine the tiny model can finish the
            # remaining records between two polls, and a frozen job cannot.
            frozen = _signal_all(pids, signal.SIGSTOP)
            try:
                if frozen:
                    # Mid-run (driver, both replicas and their engines up): every socket on loopback.
                    off_loopback = ray_cluster.off_loopback(extra_pids=(proc.pid,))
                    killed = bool(_signal_all(frozen[:1], signal.SIGKILL))  # a replica dies mid-run
                earlier.update(set(pids) - set(frozen))  # exited between the listing and the signal
            finally:
                _signal_all(frozen, signal.SIGCONT)
        time.sleep(0.2)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert killed, "the job finished before a replica could be killed"
    assert off_loopback == []
    assert _texts(out) == reference  # exactly once, and equal to the single-process run
    run = json.loads((out / ".gemma4u" / "run.json").read_text())
    assert run["cluster"]["replicas"] == 2 and run["cluster"]["shards"] == 8
    st = read_status(OutLayout(out))
    assert st.complete and st.records == 24


def _ray_cli(args: list[str], cluster: RayCluster) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GEMMA4U, *args], capture_output=True, text=True, env=cluster.env, timeout=600)


def test_ray_lock_held_read_only_and_full_out_keep_their_exit_codes(inputs, tiny_model, ray_cluster, tmp_path):
    """Under --ray a replica's OutputLocked / OutputError reach the CLI as 73 / 74 and one
    line, as without Ray (no traceback, no exit 1): OUT locked by a plain run, OUT read-only
    (the driver finds it), OUT full (a replica finds it: the run manifest cannot be written)."""
    import fcntl

    from .mounts import fill_up, read_only, tmpfs

    out = tmp_path / "out"
    (out / ".gemma4u").mkdir(parents=True)
    common = ["--model", str(tiny_model), "--ray", ray_cluster.address, "--replicas", "1", "--progress", "quiet"]
    with open(out / ".gemma4u" / "run.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # a plain run is writing into OUT
        r = _ray_cli(["caption", str(inputs), "-o", str(out), *common], ray_cluster)
    assert r.returncode == documented_code("LOCKED"), r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "lock held" in r.stderr.strip().splitlines()[-1]
    with tmpfs(tmp_path / "ro", "1m") as mnt:
        read_only(mnt)
        r = _ray_cli(["caption", str(inputs), "-o", str(mnt / "out"), *common], ray_cluster)
    assert r.returncode == documented_code("OUTPUT_ERROR"), r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "cannot write" in r.stderr.strip().splitlines()[-1]
    with tmpfs(tmp_path / "full", "64k") as full:
        (full / "out").mkdir()
        fill_up(full)
        r = _ray_cli(["caption", str(inputs), "-o", str(full / "out"), *common], ray_cluster)
    assert r.returncode == documented_code("OUTPUT_ERROR"), r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert "Traceback" not in r.stderr and last.startswith("error: cannot write") and "No space left" in last


def _stop_mid_run(args: list[str], out: Path, cluster: RayCluster, sig: signal.Signals) -> tuple[int, str]:
    """Start a Ray run, wait until it committed a part of its own, then send `sig` to its process
    group (what a terminal's Ctrl-C and systemd do)."""
    before = len(committed_parts(OutLayout(out)))
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=cluster.env, start_new_session=True
    )
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None and len(committed_parts(OutLayout(out))) <= before:
        time.sleep(0.2)
    assert proc.poll() is None, f"the run ended before it could be stopped: {proc.communicate()[1][-3000:]}"
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=600)
    return proc.returncode, err


@pytest.mark.engine
@pytest.mark.timeout(1800)
def test_ray_driver_sigterm_and_sigint_commit_exit_130_and_resume_exactly_once(
    inputs, tiny_model, reference, ray_cluster, tmp_path
):
    """SIGTERM, then (on the rerun) SIGINT: each run commits what finished, starts no new shard
    and exits 130 without a traceback; the third run finishes, every id once."""

    out = tmp_path / "out"
    args = _ray_caption(inputs, out, tiny_model, ray_cluster, commit_every=1, progress="quiet")
    seen = 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        code, err = _stop_mid_run(args, out, ray_cluster, sig)
        assert code == documented_code("INTERRUPTED"), (sig, err[-3000:])
        assert "Traceback" not in err and "stopping — committing finished work" in err
        ids = [r["id"] for r in data_records(out)]
        assert len(ids) == len(set(ids)) and seen < len(ids) < 24  # more committed, not all: stopped
        seen = len(ids)
        assert not (out / ".gemma4u" / "stop").exists() and not (out / ".gemma4u" / "complete.json").exists()
    again = subprocess.run(args, capture_output=True, text=True, env=ray_cluster.env, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _texts(out) == reference  # every id once, greedy texts as in one process


@pytest.mark.engine
@pytest.mark.timeout(1500)
def test_ray_engine_dying_past_its_restarts_exits_75(inputs, tiny_model, ray_cluster, tmp_path):
    """A replica's engine core is SIGKILLed with --engine-restarts 0: the replica's EngineFailure
    is the job's, 75 and one line (no traceback, no exit 1), finished work committed once."""
    import psutil

    out = tmp_path / "out"
    args = _ray_caption(inputs, out, tiny_model, ray_cluster, commit_every=1, progress="quiet", replicas=1)
    earlier = set(_replica_pids(ray_cluster))
    proc = subprocess.Popen(
        [*args, "--engine-restarts", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=ray_cluster.env,
    )
    killed: list[int] = []
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None and not killed:
        if committed_parts(OutLayout(out)):  # the replica's engine is up and has answered
            for pid in set(_replica_pids(ray_cluster)) - earlier:
                with contextlib.suppress(psutil.Error):
                    for child in psutil.Process(pid).children(recursive=True):
                        if "EngineCor" in (command_line(child) or ""):
                            child.kill()
                            killed.append(child.pid)
        time.sleep(0.2)
    _, err = proc.communicate(timeout=600)
    assert killed, f"no engine core found under this job's replica: {err[-3000:]}"
    assert proc.returncode == documented_code("ENGINE_FAILED"), err[-3000:]
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith("error: the engine died"), err[-3000:]
    assert "rerun the same command to resume" in last
    ids = [r["id"] for r in data_records(out)]
    assert ids and len(ids) == len(set(ids)) and len(ids) < 24
    assert not (out / ".gemma4u" / "complete.json").exists()
