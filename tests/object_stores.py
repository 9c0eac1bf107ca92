"""Object stores on 127.0.0.1 for the remote-input tests, each reached through its ecosystem's own
client configured only by its standard environment variables (nothing leaves the loopback).

* S3: moto's server mode (`ThreadedMotoServer`); `AWS_ENDPOINT_URL` and dummy `AWS_*` keys.
* Google Cloud Storage: `gcp-storage-emulator` (in a thread); `STORAGE_EMULATOR_HOST`. The Google
  metadata server is kept out of reach (`NO_GCE_CHECK`, `GCE_METADATA_HOST`/`_IP` on a closed
  loopback port), so looking for credentials never leaves the machine.
* Azure Blob Storage: Azurite from npm (`./setup.sh test` installs it in .cache/azurite), a
  subprocess; `AZURE_STORAGE_CONNECTION_STRING` with Azurite's well-known development key.
* The Hugging Face Hub: `HubTreeStandin`, the two read-only API calls `HfFileSystem` lists with
  (repository info and one tree level); `HF_ENDPOINT`.

Each server sits behind a `CountingProxy`, so a test can read every request the clients made
(`store.requests()`: method, path, query) — e.g. that listing a prefix never GETs or HEADs an
object. Fixtures: `s3_server`, `gcs_server`, `azure_server`, `hub_server` (session-scoped: started
once, stopped at the end; skipped naming why when one cannot start) and `s3_store`, `gcs_store`,
`azure_store`, `hub_store`, `object_store` (parametrised over the three object stores): per test,
the standard variables set (monkeypatch), fsspec's cached filesystem instances cleared before and
after, and the request log emptied. A test module imports the fixtures it uses and names them in
`__all__`.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NoReturn

import pytest

from .helpers import REPO

LOOPBACK = "127.0.0.1"
AZURITE_BLOB = REPO / ".cache" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
"""Azurite's fixed development account and key (public, documented by Microsoft; no secret)."""
CLOSED_PORT = f"{LOOPBACK}:9"  # the discard port: nothing listens, a connection is refused at once

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "expect",
}
_names = itertools.count()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def unique_name(stem: str = "t") -> str:
    """A bucket/container name valid in every store (lower case, digits, hyphens; 3-63 chars)."""
    return f"{stem}-{os.getpid()}-{next(_names)}"


# --------------------------------------------------------------------------- the counting proxy


@dataclass(frozen=True)
class Request:
    """One request a client sent: `GET`, `/bucket/key` (as sent, percent-encoded), `a=1&b=2`."""

    method: str
    path: str
    query: str

    @property
    def params(self) -> dict[str, list[str]]:
        return urllib.parse.parse_qs(self.query, keep_blank_values=True)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class CountingProxy:
    """A reverse proxy on 127.0.0.1 in front of one server, recording each request it relays.

    HTTP/1.1 with keep-alive on both sides; request bodies are relayed as they came (a length or
    chunks, so signed requests stay valid), responses whole."""

    def __init__(self, upstream_port: int, upstream_host: str = LOOPBACK) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._log: list[Request] = []
        self._lock = threading.Lock()
        self._server = _QuietServer((LOOPBACK, 0), _proxy_handler(self))
        self.port = int(self._server.server_address[1])
        self.endpoint = f"http://{LOOPBACK}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="counting-proxy", daemon=True)

    def start(self) -> CountingProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def record(self, request: Request) -> None:
        with self._lock:
            self._log.append(request)

    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._log)

    def clear(self) -> None:
        with self._lock:
            self._log.clear()


def _proxy_handler(proxy: CountingProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        upstream: http.client.HTTPConnection | None = None

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def _body(self) -> tuple[bytes, bool]:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return b"".join(chunks), True
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0)), False

        def _forward(self, body: bytes, chunked: bool) -> tuple[http.client.HTTPResponse, bytes]:
            for attempt in (0, 1):
                conn = self.upstream or http.client.HTTPConnection(*proxy.upstream, timeout=120)
                try:
                    conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for key, value in self.headers.items():
                        if key.lower() not in _HOP_BY_HOP:
                            conn.putheader(key, value)
                    if chunked:
                        conn.putheader("Transfer-Encoding", "chunked")
                        conn.endheaders()
                        conn.send((f"{len(body):x}\r\n".encode() + body + b"\r\n" if body else b"") + b"0\r\n\r\n")
                    else:
                        conn.endheaders(body or None)
                    response = conn.getresponse()
                    data = response.read()
                except (http.client.RemoteDisconnected, ConnectionError):
                    conn.close()
                    self.upstream = None
                    if attempt:
                        raise
                    continue
                self.upstream = None if response.will_close else conn
                if response.will_close:
                    conn.close()
                return response, data
            raise AssertionError("unreachable")

        def _relay(self) -> None:
            body, chunked = self._body()
            split = urllib.parse.urlsplit(self.path)
            proxy.record(Request(self.command, split.path, split.query))
            response, data = self._forward(body, chunked)
            self.send_response_only(response.status, response.reason)
            length = None
            for key, value in response.getheaders():
                if key.lower() == "content-length":
                    length = value
                elif key.lower() not in _HOP_BY_HOP:
                    self.send_header(key, value)
            if self.command == "HEAD":
                if length is not None:
                    self.send_header("Content-Length", length)
            elif response.status not in (204, 304) and response.status >= 200:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = do_OPTIONS = _relay

    return Handler


# --------------------------------------------------------------------------- one store


@dataclass
class ObjectStore:
    """One object-store server as a test uses it.

    `scheme` is the URL scheme (s3, gs, az or hf), `env` the standard variables that point that
    ecosystem's client at the server (set for a test by the `*_store` fixtures; pass it to a
    subprocess), `unset` the variables removed so nothing else on the machine is picked up.
    `url(bucket, key)` makes a URL; `create_bucket`, `put` and `upload` fill the store through
    a filesystem of its own (never the cached instance the code under test gets)."""

    name: str
    scheme: str
    endpoint: str
    proxy: CountingProxy
    env: dict[str, str]
    unset: tuple[str, ...] = ()
    make_fs: Callable[[], Any] | None = None
    patches: list[tuple[str, str, Any]] = field(default_factory=list)  # (module, attribute, value) for a test
    _fs: Any = None

    def url(self, bucket: str, key: str = "") -> str:
        return f"{self.scheme}://{bucket}/{key}"

    def requests(self) -> list[Request]:
        """Every request the proxy relayed since the test started (or `clear_requests`)."""
        return self.proxy.requests()

    def clear_requests(self) -> None:
        self.proxy.clear()

    @property
    def fs(self) -> Any:
        if self._fs is None:
            assert self.make_fs is not None, f"{self.name} has no filesystem of its own"
            self._fs = self.make_fs()
        return self._fs

    def create_bucket(self, bucket: str | None = None) -> str:
        """Create a bucket (container) and return its name (a fresh unique one by default)."""
        bucket = bucket or unique_name()
        self.fs.mkdir(bucket)
        return bucket

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.fs.pipe_file(f"{bucket}/{key}", data)
        self.fs.invalidate_cache()

    def upload(self, root: Path, bucket: str, prefix: str = "") -> list[str]:
        """Every file under `root` (hidden ones too) as `prefix + relative path`; the keys put."""
        keys = []
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            key = prefix + path.relative_to(root).as_posix()
            self.fs.pipe_file(f"{bucket}/{key}", path.read_bytes())
            keys.append(key)
        self.fs.invalidate_cache()
        return keys

    def apply(self, monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
        """Point this process's clients at the store for the test: the variables set, the others
        removed, fsspec's instance cache cleared now and when the test ends."""
        for key in self.unset:
            monkeypatch.delenv(key, raising=False)
        for key, value in self.env.items():
            monkeypatch.setenv(key, value)
        for module, attribute, value in self.patches:
            if module in sys.modules:
                monkeypatch.setattr(sys.modules[module], attribute, value)
        clear_fsspec_instances()
        self.clear_requests()
        return self


def clear_fsspec_instances() -> None:
    """Forget fsspec's cached filesystem instances (they keep the endpoint and credentials they
    were made with) for every scheme these stores serve."""
    import fsspec

    for protocol in ("s3", "gs", "az", "hf"):
        try:
            fsspec.get_filesystem_class(protocol).clear_instance_cache()
        except (ImportError, ValueError):
            pass


def _start_proxy(port: int) -> CountingProxy:
    return CountingProxy(port).start()


def _skip(what: str, why: str) -> NoReturn:
    pytest.skip(f"{what} cannot start here: {why}")


# --------------------------------------------------------------------------- S3 (moto)


AWS_UNSET = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
)


@contextlib.contextmanager
def moto_s3(home: Path) -> Iterator[ObjectStore]:
    """moto's S3 in server mode on 127.0.0.1 (a free port), behind a counting proxy."""
    try:
        import logging

        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        _skip("moto's S3 server", f"moto[server] is not installed (the dev extra; ./setup.sh installs it): {exc}")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address=LOOPBACK, port=0, verbose=False)
    server.start()
    proxy = _start_proxy(server.get_host_and_port()[1])
    env = {
        "AWS_ENDPOINT_URL": proxy.endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(home / "aws-config"),  # none: a developer's profiles stay out
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "aws-credentials"),
    }

    def make_fs() -> Any:
        import s3fs

        return s3fs.S3FileSystem(
            key="testing",
            secret="testing-secret",
            endpoint_url=proxy.endpoint,
            skip_instance_cache=True,  # no region: s3fs would send us-east-1 as a LocationConstraint
        )

    try:
        yield ObjectStore("moto S3", "s3", proxy.endpoint, proxy, env, AWS_UNSET, make_fs)
    finally:
        proxy.stop()
        server.stop()


# --------------------------------------------------------------------------- GCS (gcp-storage-emulator)


GCS_UNSET = ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT", "GCE_METADATA_ROOT")
GCS_PATCHES = [
    # google-auth reads these when it is imported: a process that imported it already gets them here
    ("google.auth.compute_engine._metadata", "_NO_GCE_CHECK", True),
    ("google.auth.compute_engine._metadata", "_GCE_METADATA_HOST", CLOSED_PORT),
]


@contextlib.contextmanager
def gcs_emulator(home: Path) -> Iterator[ObjectStore]:
    """gcp-storage-emulator (in memory) in a thread on 127.0.0.1, behind a counting proxy."""
    try:
        from gcp_storage_emulator.server import create_server
    except ImportError as exc:
        _skip("gcp-storage-emulator", f"it is not installed (the dev extra; ./setup.sh installs it): {exc}")
    server = create_server(LOOPBACK, 0, in_memory=True)
    server.start()
    port = int(server._api._httpd.server_address[1])  # bound to port 0: the one the system gave
    proxy = _start_proxy(port)
    (home / "gcloud").mkdir(exist_ok=True)
    env = {
        "STORAGE_EMULATOR_HOST": proxy.endpoint,
        "NO_GCE_CHECK": "true",
        "GCE_METADATA_HOST": CLOSED_PORT,
        "GCE_METADATA_IP": CLOSED_PORT,
        "CLOUDSDK_CONFIG": str(home / "gcloud"),  # no gcloud credentials of a developer's
    }

    def make_fs() -> Any:
        # gcsfs's plain filesystem: its default (gcsfs.GCSFileSystem) may be the experimental one that
        # asks a gRPC control plane for the bucket's layout, which the emulator does not serve (with
        # anonymous credentials it retries for a minute per call before it falls back)
        from gcsfs.core import GCSFileSystem

        return GCSFileSystem(endpoint_url=proxy.endpoint, token="anon", skip_instance_cache=True)

    try:
        yield ObjectStore("gcp-storage-emulator", "gs", proxy.endpoint, proxy, env, GCS_UNSET, make_fs, GCS_PATCHES)
    finally:
        proxy.stop()
        server.stop()


# --------------------------------------------------------------------------- Azure Blob (Azurite)


AZURE_UNSET = (
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CLIENT_ID",
    "AZURE_STORAGE_CLIENT_SECRET",
    "AZURE_STORAGE_TENANT_ID",
    "AZURE_STORAGE_ANON",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_TENANT_ID",
)


def azurite_or_skip() -> list[str]:
    """The command that starts Azurite's blob service, or skip naming what is missing."""
    node = shutil.which("node")
    if node is None:
        _skip("Azurite", "no `node` on PATH (Node.js runs Azurite; Debian/Ubuntu: apt-get install nodejs npm)")
    if not AZURITE_BLOB.exists():
        _skip(
            "Azurite",
            f"it is not installed at {AZURITE_BLOB.relative_to(REPO)}: `./setup.sh test` installs it with npm "
            "(here npm was missing or failed)",
        )
    return [str(node), str(AZURITE_BLOB)]


def azure_connection_string(endpoint: str) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint={endpoint}/{AZURITE_ACCOUNT};"
    )


@contextlib.contextmanager
def azurite(location: Path, timeout: float = 60.0) -> Iterator[ObjectStore]:
    """Azurite's blob service (a Node.js subprocess, data in `location`) on 127.0.0.1, behind
    a counting proxy; stopped (terminated, then killed) when the block ends."""
    command = azurite_or_skip()
    location.mkdir(parents=True, exist_ok=True)
    log_path = location / "azurite.log"
    port = free_port()
    args = ["--blobHost", LOOPBACK, "--blobPort", str(port), "--location", str(location / "data")]
    # --disableTelemetry: Azurite otherwise reports usage to Microsoft, off this machine
    args += ["--silent", "--skipApiVersionCheck", "--disableProductStyleUrl", "--disableTelemetry"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*command, *args], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:].strip()
                _skip("Azurite", f"it exited with status {proc.returncode}: {tail or '(no output)'}")
            with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=1):
                break
            if time.monotonic() > deadline:
                _skip("Azurite", f"it did not listen on {LOOPBACK}:{port} within {timeout:.0f} s")
            time.sleep(0.1)
        proxy = _start_proxy(port)
        connection_string = azure_connection_string(proxy.endpoint)

        def make_fs() -> Any:
            import adlfs

            return adlfs.AzureBlobFileSystem(connection_string=connection_string, skip_instance_cache=True)

        env = {"AZURE_STORAGE_CONNECTION_STRING": connection_string}
        try:
            yield ObjectStore("Azurite", "az", proxy.endpoint, proxy, env, AZURE_UNSET, make_fs)
        finally:
            proxy.stop()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- the Hub (listing only)


@dataclass
class HubFile:
    data: bytes
    lfs: bool = False

    @property
    def blob_id(self) -> str:  # git's blob id
        return hashlib.sha1(b"blob %d\0" % len(self.data) + self.data).hexdigest()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


class HubTreeStandin:
    """What `HfFileSystem` reads to list a dataset repository, served from memory:

    * `GET /api/datasets/{repo}` and `GET /api/datasets/{repo}/revision/{rev}`: the repo's info
      (404 with `X-Error-Code: RepoNotFound` / `RevisionNotFound` otherwise),
    * `GET /api/datasets/{repo}/tree/{rev}[/{path}]`: one level (`recursive=false`), files with
      their blob id, size and LFS sha256; 404 `EntryNotFound` for a path that is not there,
    * `GET /api/agent-harnesses` (the client's agent detection for its user agent): none.

    `repos[repo_id][revision]` maps each file's path to a `HubFile`. No token is needed; nothing
    else is served (a request outside these is answered 404 and kept in `unexpected`)."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, dict[str, HubFile]]] = {}
        self.commits: dict[tuple[str, str], str] = {}
        self.unexpected: list[str] = []

    def add(self, repo_id: str, files: dict[str, HubFile], revision: str = "main") -> str:
        self.repos.setdefault(repo_id, {})[revision] = files
        sha = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
        self.commits[(repo_id, revision)] = sha
        return sha

    def route(self, method: str, path: str, query: dict[str, list[str]]) -> tuple[int, Any, str | None]:
        if path == "/api/agent-harnesses":  # the client's best-effort agent detection: an empty registry
            return 200, {"standardEnvVars": [], "harnesses": {}}, None
        parts = [urllib.parse.unquote(p) for p in path.split("/")]
        if method not in ("GET", "HEAD") or parts[:3] != ["", "api", "datasets"] or len(parts) < 5:
            self.unexpected.append(f"{method} {path}")
            return 404, {"error": "not served here"}, None
        repo_id = f"{parts[3]}/{parts[4]}"
        rest = parts[5:]
        revisions = self.repos.get(repo_id)
        if revisions is None:
            return 404, {"error": "Repository not found"}, "RepoNotFound"
        if not rest or rest[0] == "revision":
            revision = rest[1] if len(rest) > 1 else "main"
            if revision not in revisions:
                return 404, {"error": f"Invalid rev id: {revision}"}, "RevisionNotFound"
            return 200, {"id": repo_id, "sha": self.commits[(repo_id, revision)], "private": False}, None
        if rest[0] == "tree" and len(rest) >= 2:
            revision, folder = rest[1], "/".join(rest[2:]).strip("/")
            if revision not in revisions:
                return 404, {"error": f"Invalid rev id: {revision}"}, "RevisionNotFound"
            return self._tree(revisions[revision], folder)
        self.unexpected.append(f"{method} {path}")
        return 404, {"error": "not served here"}, None

    @staticmethod
    def _tree(files: dict[str, HubFile], folder: str) -> tuple[int, Any, str | None]:
        prefix = folder + "/" if folder else ""
        entries: dict[str, dict[str, Any]] = {}
        for path, file in sorted(files.items()):
            if not path.startswith(prefix):
                continue
            head, _, tail = path[len(prefix) :].partition("/")
            if tail:
                sub = prefix + head
                oid = hashlib.sha1(sub.encode()).hexdigest()
                entries.setdefault(sub, {"type": "directory", "oid": oid, "size": 0, "path": sub})
            else:
                entry: dict[str, Any] = {"type": "file", "oid": file.blob_id, "size": len(file.data), "path": path}
                if file.lfs:
                    entry["lfs"] = {"oid": file.sha256, "size": len(file.data), "pointerSize": 134}
                entries[path] = entry
        if not entries and folder:
            return 404, {"error": f"{folder} does not exist on this revision"}, "EntryNotFound"
        return 200, list(entries.values()), None


def _hub_handler(hub: HubTreeStandin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def _serve(self) -> None:
            split = urllib.parse.urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            status, payload, error_code = hub.route(self.command, split.path, urllib.parse.parse_qs(split.query))
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            if error_code:
                self.send_header("X-Error-Code", error_code)
                self.send_header("X-Error-Message", str(payload.get("error", "")))
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _serve

    return Handler


HF_UNSET = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH")


@contextlib.contextmanager
def hub_tree(home: Path) -> Iterator[tuple[ObjectStore, HubTreeStandin]]:
    """The Hub stand-in on 127.0.0.1 behind a counting proxy; `HF_ENDPOINT` points at it and
    offline mode is lifted for the test (huggingface_hub reads both when imported, so the store's
    patches set them in its `constants` too)."""
    hub = HubTreeStandin()
    server = _QuietServer((LOOPBACK, 0), _hub_handler(hub))
    thread = threading.Thread(target=server.serve_forever, name="hub-standin", daemon=True)
    thread.start()
    proxy = _start_proxy(int(server.server_address[1]))
    env = {
        "HF_ENDPOINT": proxy.endpoint,
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HOME": str(home / "hf-home"),
    }
    patches = [
        ("huggingface_hub.constants", "ENDPOINT", proxy.endpoint),
        ("huggingface_hub.constants", "HF_HUB_OFFLINE", False),
        ("huggingface_hub.constants", "HF_HUB_DISABLE_IMPLICIT_TOKEN", True),
        ("huggingface_hub.constants", "HF_TOKEN_PATH", str(home / "hf-home" / "token")),
    ]
    try:
        yield ObjectStore("Hub stand-in", "hf", proxy.endpoint, proxy, env, HF_UNSET, None, patches), hub
    finally:
        proxy.stop()
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStore]:
    with moto_s3(tmp_path_factory.mktemp("s3-home")) as store:
        yield store


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStore]:
    with gcs_emulator(tmp_path_factory.mktemp("gcs-home")) as store:
        yield store


@pytest.fixture(scope="session")
def azure_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStore]:
    with azurite(tmp_path_factory.mktemp("azurite")) as store:
        yield store


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ObjectStore, HubTreeStandin]]:
    with hub_tree(tmp_path_factory.mktemp("hub-home")) as served:
        yield served


@pytest.fixture
def s3_store(s3_server: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> Iterator[ObjectStore]:
    """moto's S3 for this test: AWS_ENDPOINT_URL and dummy AWS_* credentials set."""
    yield s3_server.apply(monkeypatch)
    clear_fsspec_instances()


@pytest.fixture
def gcs_store(gcs_server: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> Iterator[ObjectStore]:
    """gcp-storage-emulator for this test: STORAGE_EMULATOR_HOST set, no metadata server."""
    yield gcs_server.apply(monkeypatch)
    clear_fsspec_instances()


@pytest.fixture
def azure_store(azure_server: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> Iterator[ObjectStore]:
    """Azurite for this test: AZURE_STORAGE_CONNECTION_STRING set."""
    yield azure_server.apply(monkeypatch)
    clear_fsspec_instances()


@pytest.fixture
def hub_store(
    hub_server: tuple[ObjectStore, HubTreeStandin], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[ObjectStore, HubTreeStandin]]:
    """The Hub stand-in for this test: HF_ENDPOINT set, offline mode lifted."""
    store, hub = hub_server
    yield store.apply(monkeypatch), hub
    clear_fsspec_instances()


@pytest.fixture(params=["s3", "gs", "az"])
def object_store(request: pytest.FixtureRequest) -> ObjectStore:
    """Each of the three object stores in turn (the test runs once per store)."""
    name = {"s3": "s3_store", "gs": "gcs_store", "az": "azure_store"}[request.param]
    return request.getfixturevalue(name)
