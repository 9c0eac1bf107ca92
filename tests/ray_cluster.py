"""A hermetic one-node Ray cluster for tests, on loopback only.

It has its own HOME, temp dir and auth token: nothing is read from or written to the
user's ~/.ray, and a token left there by an earlier local Ray run (any
`gemma4u caption --ray auto` that started a local cluster) cannot leak in. Every
process it starts, and every process given `cluster.env` (drivers, the `gemma4u` CLI),
uses the same settings. Found in Ray 2.60's source:

Loopback (without these Ray uses the machine's external interface address):
- RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: `ray._private.services.get_node_ip_address()`
  then returns `get_localhost_ip()` (127.0.0.1) instead of
  `node_ip_address_from_perspective()`. Ray resolves every loopback host through it
  (`resolve_ip_for_localhost`), both `ray start --node-ip-address 127.0.0.1` (the
  address the GCS, raylet, object manager and workers bind and register) and a driver's
  `ray.init(address="127.0.0.1:PORT")` (`canonicalize_bootstrap_address`); so it is
  set for the cluster and for every driver.
- `ray start --node-ip-address 127.0.0.1 --ray-client-server-port <free>
  --include-dashboard false` (the client server would take the fixed port 10001).
- VLLM_HOST_IP / VLLM_LOOPBACK_IP=127.0.0.1 for the engines inside the actors.

Auth token:
- RAY_AUTH_MODE=token: explicit, because Ray never enables token auth by itself for a
  driver given an explicit address, while `ray start` enables it whenever it finds a token.
- RAY_AUTH_TOKEN=<fresh random token>: Ray's token loader reads RAY_AUTH_TOKEN first,
  then the file RAY_AUTH_TOKEN_PATH (dropped here), then ~/.ray/auth_token.
- HOME=<sandbox>, RAY_TMPDIR=<sandbox> and `--temp-dir`: ~/.ray/auth_token, the
  ray_current_cluster file and the session dirs all live in the sandbox.

No traffic off the machine: RAY_USAGE_STATS_ENABLED=0 and --disable-usage-stats; the
head's dashboard process still runs UsageStatsHead, which asks cloud metadata servers
(169.254.169.254, metadata.google.internal) unless ~/ray_bootstrap_config.yaml exists
(one is written into the sandbox HOME) and posts a "disabled" report to
RAY_USAGE_STATS_REPORT_URL (pointed at a closed loopback port). http(s)_proxy point
at that port too, so any other HTTP client that honours them stays on loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

LOOPBACK = "127.0.0.1"
LOOPBACK_FORMS = {LOOPBACK, f"::ffff:{LOOPBACK}"}  # a dual-stack socket shows the IPv4-mapped form
DEAD_URL = f"http://{LOOPBACK}:9"  # nothing listens on the discard port here; stays on loopback
RAY_BIN = str(Path(sys.executable).with_name("ray"))
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def sandbox_home(path: Path) -> Path:
    """An empty HOME for Ray processes; ~/ray_bootstrap_config.yaml keeps the dashboard's
    usage module from probing cloud metadata servers."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "ray_bootstrap_config.yaml").write_text("# tests: no cloud provider to detect\n{}\n")
    return path


def loopback_env(base: dict[str, str], home: Path, temp_dir: Path) -> dict[str, str]:
    """`base` with HOME/temp dir moved into the sandbox, everything pinned to loopback,
    and no Ray auth or address settings inherited."""
    env = {k: v for k, v in base.items() if k not in (*AUTH_VARS, "RAY_ADDRESS")}
    env.update(
        {
            "HOME": str(home),
            "RAY_TMPDIR": str(temp_dir),
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_USAGE_STATS_REPORT_URL": DEAD_URL + "/",
            "http_proxy": DEAD_URL,
            "https_proxy": DEAD_URL,
            "HTTP_PROXY": DEAD_URL,
            "HTTPS_PROXY": DEAD_URL,
            "no_proxy": f"{LOOPBACK},localhost",
            "NO_PROXY": f"{LOOPBACK},localhost",
            "VLLM_HOST_IP": LOOPBACK,
            "VLLM_LOOPBACK_IP": LOOPBACK,
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    # The sandbox HOME would hide the user's Hugging Face cache (read only, never ~/.ray).
    env.setdefault("HF_HOME", str(Path(base.get("HOME", str(Path.home()))) / ".cache" / "huggingface"))
    return env


def dir_state(path: Path) -> dict[str, tuple[int, int]]:
    """Every file under `path` with its size and mtime (empty when it does not exist)."""
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*") if p.is_file()}


def marked_processes(temp_dir: Path) -> dict[int, Any]:
    """Live processes started with `temp_dir` (in their command line or as RAY_TMPDIR)."""
    import psutil

    found: dict[int, Any] = {}
    marker = str(temp_dir)
    for p in psutil.process_iter(["pid", "cmdline"]):
        if p.pid == os.getpid():
            continue
        try:
            if any(marker in a for a in p.info["cmdline"] or ()) or p.environ().get("RAY_TMPDIR") == marker:
                found[p.pid] = p
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def command_line(p: Any) -> str | None:
    """A process's command line, or None once it has exited (gone, or a zombie not yet reaped:
    an earlier test's replica winding down)."""
    import psutil

    try:
        return " ".join(p.cmdline() or [p.name()])
    except psutil.Error:
        return None


def machine_ray_state(*homes: Path) -> dict[Path, dict[str, tuple[int, int]]]:
    """~/.ray of each HOME and Ray's default temp dir (/tmp/ray: sessions and the
    ray_current_cluster file), as found now."""
    from ray._common.utils import get_default_ray_temp_dir

    dirs = [h / ".ray" for h in homes] + [Path(get_default_ray_temp_dir())]
    return {d: dir_state(d) for d in dirs}


def leave_local_ray_state(home: Path, model: Path, base: dict[str, str] | None = None) -> Path:
    """What `gemma4u caption --ray auto` leaves behind when it finds no cluster: it starts a
    local Ray (token auth on, a new token written to HOME/.ray/auth_token) and shuts it
    down at exit. The real CLI runs with `home` as HOME and its own temp dir, on an empty
    folder: the replica finds no media (exit 2) before any engine starts. RAY_ADDRESS=local
    is Ray's own value for "start a new local cluster"; without it `auto` attaches to any
    raylet in the machine's process table (another checkout's test cluster), which a test
    cannot rely on. Returns the token file."""
    import psutil

    from .helpers import GEMMA4U

    sandbox_home(home)
    with tempfile.TemporaryDirectory(prefix="g4ray-auto-") as tmp:
        env = {**loopback_env(dict(base or os.environ), home, Path(tmp)), "RAY_ADDRESS": "local"}
        (Path(tmp) / "in").mkdir()
        job = ["caption", f"{tmp}/in", "-o", f"{tmp}/out", "--model", str(model), "--ray", "auto", "--replicas", "1"]
        try:
            run = subprocess.run([GEMMA4U, *job], env=env, capture_output=True, text=True, timeout=600)
        finally:
            for p in marked_processes(Path(tmp)).values():  # none when the CLI's atexit shutdown worked
                with contextlib.suppress(psutil.Error):
                    p.kill()
    assert "Started a local Ray instance" in run.stderr, run.stderr[-3000:]
    assert run.returncode == 2 and "no media files found" in run.stderr, run.stderr[-3000:]
    return home / ".ray" / "auth_token"


@dataclass
class RayCluster:
    """A running head node; `env` is what every driver (and the CLI) must run with."""

    address: str
    home: Path
    temp_dir: Path
    token: str
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes]
    # ~/.ray of the machine's HOME and of the user running the tests, as found at start
    outside: dict[Path, dict[str, tuple[int, int]]] = field(default_factory=dict)
    _known: dict[int, Any] = field(default_factory=dict)

    def driver_env(self, **changes: str | None) -> dict[str, str]:
        """`env` with some variables changed (None removes one)."""
        env = dict(self.env)
        for k, v in changes.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        return env

    def processes(self) -> list[Any]:
        """The cluster's live processes: `ray start` and its descendants (GCS, raylet,
        workers, actors), and anything started with our temp dir (in its command line or
        as RAY_TMPDIR: drivers, the CLI, workers whose parent is gone)."""
        import psutil

        found: dict[int, Any] = {}
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(self.proc.pid)
            found.update((p.pid, p) for p in [root, *root.children(recursive=True)])
        found.update(marked_processes(self.temp_dir))
        self._known.update(found)
        return [p for p in found.values() if command_line(p) is not None]

    def describe(self, env: dict[str, str] | None = None) -> dict[str, Any]:
        """Connect a fresh driver (with `env`, default the cluster's) and report the
        addresses Ray uses: its GCS address, the driver's node IP, every node's
        addresses as `ray.nodes()` reports them and a worker's node IP."""
        code = textwrap.dedent("""
            import json, sys
            import ray
            ctx = ray.init(address=sys.argv[1], log_to_driver=False)

            @ray.remote(num_cpus=0)
            def where():
                return ray.util.get_node_ip_address()

            info = {
                "gcs_address": ctx.address_info["gcs_address"],
                "driver_node_ip": ctx.address_info["node_ip_address"],
                "driver_util_ip": ray.util.get_node_ip_address(),
                "worker_node_ip": ray.get(where.remote(), timeout=120),
                "nodes": [{k: n.get(k) for k in ("NodeManagerAddress", "NodeManagerPort", "ObjectManagerPort",
                                                  "Alive")} for n in ray.nodes()],
            }
            print("INFO " + json.dumps(info))
            ray.shutdown()
        """)
        run = subprocess.run(
            [sys.executable, "-c", code, self.address], env=env or self.env, capture_output=True, text=True, timeout=300
        )
        lines = [ln for ln in run.stdout.splitlines() if ln.startswith("INFO ")]
        assert run.returncode == 0 and lines, run.stderr[-3000:]
        return json.loads(lines[-1][5:])

    @contextlib.contextmanager
    def reporting_versions(self, **versions: str) -> Iterator[dict[str, Any]]:
        """For the `with` block the cluster's GCS reports other versions (`ray_version`,
        `python_version`) in the metadata every connecting driver checks its own against,
        as a head started by that Ray or Python would; restored afterwards. Yields the
        metadata as it was."""
        code = textwrap.dedent("""
            import json, sys
            from ray._common.usage.usage_constants import CLUSTER_METADATA_KEY as KEY
            from ray._private.ray_constants import KV_NAMESPACE_CLUSTER as NS
            from ray._raylet import GcsClient
            client = GcsClient(address=sys.argv[1])
            meta = json.loads(client.internal_kv_get(KEY, namespace=NS))
            print("META " + json.dumps(meta))
            client.internal_kv_put(KEY, json.dumps({**meta, **json.loads(sys.argv[2])}).encode(), True, NS)
        """)

        def put(changes: dict[str, Any]) -> dict[str, Any]:
            run = subprocess.run(
                [sys.executable, "-c", code, self.address, json.dumps(changes)],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            lines = [ln for ln in run.stdout.splitlines() if ln.startswith("META ")]
            assert run.returncode == 0 and lines, run.stderr[-3000:]
            return dict(json.loads(lines[-1][5:]))

        before = put(versions)
        try:
            yield before
        finally:
            put({k: before[k] for k in versions})

    def sockets(self, extra_pids: tuple[int, ...] = ()) -> list[tuple[int, str, str, int, str]]:
        """(pid, name, local ip, local port, remote ip) of every TCP/UDP socket the
        cluster's processes (and `extra_pids` with their children) hold."""
        import psutil

        procs = self.processes()
        for pid in extra_pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                root = psutil.Process(pid)
                procs += [root, *root.children(recursive=True)]
        out = []
        for p in procs:
            try:
                conns = p.net_connections(kind="inet")
                name = p.name()
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            for c in conns:
                lip, lport = (c.laddr.ip, c.laddr.port) if c.laddr else ("", 0)
                out.append((p.pid, name, lip, lport, c.raddr.ip if c.raddr else ""))
        return out

    def off_loopback(self, extra_pids: tuple[int, ...] = ()) -> list[tuple[int, str, str, int, str]]:
        """Sockets bound to, or connected to, anything but 127.0.0.1 (a socket not yet
        bound, port 0 and no peer, carries nothing)."""
        return [
            s
            for s in self.sockets(extra_pids)
            if (s[2] not in LOOPBACK_FORMS and not (s[3] == 0 and not s[4])) or (s[4] and s[4] not in LOOPBACK_FORMS)
        ]

    def stop(self) -> None:
        """SIGTERM `ray start --block` (it drains and stops what it started), then kill,
        by pid, whatever of ours is left; remove the temp dir."""
        import psutil

        self.processes()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        deadline = time.monotonic() + 15
        while True:
            self.processes()
            # is_running() also compares the start time: a pid reused since is not ours.
            left = [p for p in self._known.values() if p.is_running() and command_line(p) is not None]
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        for p in left:
            with contextlib.suppress(psutil.Error):
                p.kill()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def start_cluster(root: Path, base: dict[str, str] | None = None, num_cpus: int = 2) -> RayCluster:
    """Start a head node under `root` (HOME, log) on loopback with a fresh token.
    `base` is the environment of the machine it runs on (default: this process's)."""
    base = dict(base or os.environ)
    home = sandbox_home(root / "home")
    # Short: Ray puts unix sockets under it (107-byte limit).
    temp_dir = Path(tempfile.mkdtemp(prefix="g4ray-"))
    token = secrets.token_hex(16)
    env = loopback_env(base, home, temp_dir)
    env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})
    port = free_port()
    log = root / "ray-start.log"
    args = [
        RAY_BIN,
        "start",
        "--head",
        "--block",
        "--node-ip-address",
        LOOPBACK,
        "--port",
        str(port),
        "--ray-client-server-port",
        str(free_port()),
        "--num-cpus",
        str(num_cpus),
        "--include-dashboard",
        "false",
        "--temp-dir",
        str(temp_dir),
        "--disable-usage-stats",
    ]
    outside = {d / ".ray": dir_state(d / ".ray") for d in {Path(base.get("HOME", str(Path.home()))), Path.home()}}
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    cluster = RayCluster(
        address=f"{LOOPBACK}:{port}",
        home=home,
        temp_dir=temp_dir,
        token=token,
        env=env,
        log=log,
        proc=proc,
        outside=outside,
    )
    try:
        deadline = time.monotonic() + 180
        while "Ray runtime started." not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start failed (rc={proc.poll()}):\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@contextlib.contextmanager
def running_cluster(root: Path, base: dict[str, str] | None = None) -> Iterator[RayCluster]:
    """A cluster for the `with` block, stopped however the block ends."""
    cluster = start_cluster(root, base)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def machine_state() -> dict[Path, dict[str, tuple[int, int]]]:
    """The machine's own Ray state (the real HOME's ~/.ray, /tmp/ray) before the module's
    first Ray process starts."""
    pytest.importorskip("ray")
    return machine_ray_state(Path.home())


@pytest.fixture(scope="module")
def used_home(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, machine_state) -> Path:
    """Stands in for the HOME of a machine where `gemma4u caption --ray auto` ran before:
    its ~/.ray/auth_token holds the token of a local cluster long gone."""
    home = tmp_path_factory.mktemp("used-home")
    token_file = leave_local_ray_state(home, tiny_model)
    assert machine_ray_state(Path.home()) == machine_state, "the --ray auto run left its sandbox"
    assert token_file.is_file() and token_file.read_text().strip()
    return home


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory, used_home: Path, machine_state) -> Iterator[RayCluster]:
    """One hermetic loopback cluster per module, started on a machine whose HOME already
    has a stale token (`used_home`); stopped even when a test fails. At the end of the
    module (every test's drivers and CLI runs done, the cluster stopped) the machine's own
    ~/.ray and /tmp/ray are as they were before the module's first Ray process."""
    with running_cluster(tmp_path_factory.mktemp("ray"), {**os.environ, "HOME": str(used_home)}) as cluster:
        yield cluster
    changed = [str(d) for d, before in machine_state.items() if dir_state(d) != before]
    assert not changed, f"the Ray tests changed the machine's own Ray state: {changed}"
