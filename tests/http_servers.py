"""Servers on 127.0.0.1 for the fetch tests (tests/test_fetch.py) and run-batch's URL files
(tests/test_run_batch_files.py): a scripted web server that keeps every request it saw (so a
test counts attempts and reads the headers, and a PUT's body, sent), a port that
accepts connections and never answers (a hung object store), and a stub resolver that maps
made-up host names to addresses (private ones are never connected to: the fetch refuses them).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiohttp.abc import AbstractResolver, ResolveResult


@dataclass(frozen=True)
class Reply:
    """One scripted answer, sent after `delay` seconds. Content-Length: the body's, or
    `claimed_length`, or none with `no_length` (the body ends when the connection closes);
    `endless`: zeros after the body until the client goes away (no Content-Length)."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    no_length: bool = False
    claimed_length: int | None = None
    endless: bool = False


@dataclass(frozen=True)
class Seen:
    """A request as the server got it (header names lower-cased; the query string apart)."""

    path: str
    headers: dict[str, str]
    method: str = "GET"
    body: bytes = b""
    query: str = ""


Route = list[Reply] | Callable[[Seen], Reply]


class WebServer:
    """`with WebServer() as web:` serves `web.routes` (path → replies in order, the last one
    repeated, or a function of the request) on `web.origin`; unknown paths answer 404."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.seen: list[Seen] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> WebServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()  # ends delays and endless bodies at once
        self._server.shutdown()
        self._server.server_close()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str, userinfo: str = "") -> str:
        return f"http://{userinfo + '@' if userinfo else ''}127.0.0.1:{self.port}{path}"

    def count(self, path: str, method: str | None = None) -> int:
        return len(self.requests(path, method))

    def requests(self, path: str, method: str | None = None) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.path == path and method in (None, s.method)]

    def _reply(self, seen: Seen) -> Reply:
        with self._lock:
            self.seen.append(seen)
            n = sum(1 for s in self.seen if s.path == seen.path)
        route = self.routes.get(seen.path)
        if route is None:
            return Reply(404, b"no such page")
        if callable(route):
            return route(seen)
        return route[min(n, len(route)) - 1]


def _handler(web: WebServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection; a body without length ends at close

        def do_GET(self) -> None:
            self._answer(b"")

        def do_PUT(self) -> None:
            self._answer(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

        def _answer(self, body: bytes) -> None:
            path, _, query = self.path.partition("?")
            headers = {k.lower(): v for k, v in self.headers.items()}
            reply = web._reply(Seen(path, headers, self.command, body, query))
            if reply.delay and web.stopping.wait(reply.delay):
                return
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if not (reply.no_length or reply.endless):
                length = len(reply.body) if reply.claimed_length is None else reply.claimed_length
                self.send_header("Content-Length", str(length))
            self.end_headers()
            try:
                self.wfile.write(reply.body)
                while reply.endless and not web.stopping.is_set():
                    self.wfile.write(bytes(1 << 16))
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped reading: what an endless body is for

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@contextlib.contextmanager
def silent_port() -> Iterator[int]:
    """A port on 127.0.0.1 that accepts connections (the kernel's backlog) and never answers."""
    with socket.create_server(("127.0.0.1", 0), backlog=64) as sock:
        yield sock.getsockname()[1]


def closed_port() -> int:
    """A port nothing listens on (just released; connections to it are refused)."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return int(sock.getsockname()[1])


class StubResolver(AbstractResolver):
    """Made-up host names → addresses; any other name fails as an unknown host would."""

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        if host not in self.names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        address = self.names[host]
        fam = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [ResolveResult(hostname=host, host=address, port=port, family=fam, proto=0, flags=socket.AI_NUMERICHOST)]

    async def close(self) -> None:
        pass
