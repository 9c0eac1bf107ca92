"""Where `gemma4u run-batch`'s files live: a local path, an http(s) URL (the input read by GET,
an output written by PUT, e.g. to a presigned URL, as `vllm run-batch` does) or an object-store
URL (s3://, gs://, az://: read and written through the project's own filesystems,
sources/locations.py and store/objects.py).

A URL is never turned into a local path. The checkpoint of a URL output lives in a local cache,
$XDG_CACHE_HOME/gemma4u/run-batch/<sha256 of the URL without query and credentials>/ (else
~/.cache/...): a rerun with a freshly signed URL for the same object resumes from it. Every
message names a URL redacted (no user:password, no signing query string).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import posixpath
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, TypeVar

from ..atomic import write_atomic
from ..config.urls import WRITABLE_STORES, is_url, scheme_of
from ..errors import OutputError, UsageError
from ..sources.locations import check_url, filesystem, redact

if TYPE_CHECKING:
    from ..store.objects import ObjectFiles

Location = Path | str
"""A local path, or a URL kept as text."""

HTTP = frozenset({"http", "https"})
ATTEMPTS = 5  # as vLLM's upload_data
BACKOFF = 1.0  # seconds before the second attempt, doubled for each next one
GET_TIMEOUT = 300.0  # seconds per socket operation (aiohttp's default total in vLLM's read_file)
PUT_TIMEOUT = 1000.0  # vLLM's upload timeout: large files take long
_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # as vLLM's aiohttp: no env proxy

T = TypeVar("T")


def location(text: str | Path) -> Location:
    """A flag's value as a location: a URL stays text (never a Path, which would drop a `/`)."""
    return text if isinstance(text, str) and is_url(text) else Path(text)


def shown(where: Location) -> str:
    """The location as messages, logs and the checkpoint show it."""
    return redact(where) if isinstance(where, str) else str(where)


def identity(where: Location) -> str:
    """What names the file whatever signs the request: a URL without user:password, query string
    and fragment (a rerun's presigned URL differs only there), or the absolute path."""
    if isinstance(where, Path):
        return str(where.resolve())
    parts = urllib.parse.urlsplit(where)
    scheme = parts.scheme.lower()
    # Azure's container@account is the address; elsewhere what precedes `@` is a credential
    host = parts.netloc if scheme in ("az", "abfs", "abfss") else parts.netloc.rsplit("@", 1)[-1]
    return urllib.parse.urlunsplit((scheme, host, parts.path, "", ""))


def state_dir(output: Location) -> Path:
    """Where the checkpoint of `output` lives: beside a local output (`.<OUTPUT>.gemma4u/`), in
    the local cache for a URL (keyed by its identity, so the cache never holds a secret)."""
    if isinstance(output, Path):
        return output.parent / f".{output.name}.gemma4u"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gemma4u" / "run-batch"
    return base / hashlib.sha256(identity(output).encode()).hexdigest()


def check_input(where: Location) -> None:
    """One clear line before any work for an input gemma4u cannot read."""
    if isinstance(where, str) and scheme_of(where) not in HTTP:
        check_url(where)


def check_output(where: Location, what: str = "output") -> None:
    """One clear line before any work for an output gemma4u cannot write (a scheme it cannot
    PUT to, a folder, a bucket that is not there); a refused PUT shows only at the end."""
    if isinstance(where, Path):
        if where.is_dir():
            raise UsageError(f"the {what} file is a folder: {where}")
        return
    scheme = scheme_of(where)
    if scheme in HTTP:
        return
    if scheme not in WRITABLE_STORES:
        raise UsageError(
            f"cannot write the {what} file to {redact(where)}: run-batch writes local paths, http(s):// (PUT), "
            "s3://, gs:// and az://"
        )
    check_url(where)
    files = _object_folder(where)[0]
    bucket = files.key("").split("/", 1)[0]
    try:
        files.fs.invalidate_cache(bucket)
        there = files.fs.exists(bucket)
    except OSError as exc:
        raise UsageError(f"cannot write the {what} file to {redact(where)}: {_reason(exc)}") from None
    if not there:
        raise UsageError(f"cannot write the {what} file to {redact(where)}: no bucket or container {bucket!r}")


# --------------------------------------------------------------------------- reading


def read_batch_bytes(where: Location, attempts: int = ATTEMPTS, backoff: float = BACKOFF) -> bytes:
    """The input file's bytes: a local file, an http(s) GET (transient failures retried), an
    object. Anything unreadable is a UsageError naming the location redacted."""
    check_input(where)
    what = f"cannot read the input file {shown(where)}"
    try:
        if isinstance(where, Path):
            return where.read_bytes()
        if scheme_of(where) in HTTP:
            return _retrying(lambda: _get(where), attempts, backoff)
        fs, path = filesystem(where)
        data: bytes = fs.cat_file(path)
        return data
    except FileNotFoundError:
        raise UsageError(f"{what}: no such file") from None
    except _HttpFailure as exc:
        raise UsageError(f"{what}: {exc}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise UsageError(f"{what}: {_reason(exc)}") from None


def _request(url: str, method: str, body: bytes | IO[bytes] | None = None, **headers: str) -> urllib.request.Request:
    """A request for `url`; its user:password, if any, sent as Basic authentication (as aiohttp,
    vLLM's client, does) rather than left in the host name."""
    parts = urllib.parse.urlsplit(url)
    headers["User-Agent"] = "gemma4u-batch"
    if "@" in parts.netloc:
        userinfo, host = parts.netloc.rsplit("@", 1)
        user, _, password = userinfo.partition(":")
        token = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(token).decode()
        url = urllib.parse.urlunsplit(parts._replace(netloc=host))
    return urllib.request.Request(url, data=body, method=method, headers=headers)


def _get(url: str) -> bytes:
    req = _request(url, "GET")
    try:
        with _opener.open(req, timeout=GET_TIMEOUT) as resp:
            data: bytes = resp.read()
            return data
    except urllib.error.HTTPError as exc:
        raise _HttpFailure(exc.code, exc.reason) from None


# --------------------------------------------------------------------------- writing


@dataclass
class Target:
    """An output file (`-o`, `--error-file`) written whole, once, at the end of a run: a local
    file atomically, an http(s) URL by PUT (transient failures retried with backoff, as vLLM's
    upload_data), an object by one put. `tmp_dir` (vLLM's --output-tmp-dir) stages a URL's
    payload in a file there before the upload."""

    where: Location
    tmp_dir: Path | None = None
    attempts: int = ATTEMPTS
    backoff: float = BACKOFF

    @property
    def shown(self) -> str:
        return shown(self.where)

    def exists(self) -> bool:
        """Whether the file is there now; an http(s) URL cannot be asked (a presigned URL signs
        only its PUT), so it counts as there once the checkpoint says it was uploaded."""
        if isinstance(self.where, Path):
            return self.where.is_file()
        if scheme_of(self.where) in HTTP:
            return True
        files, name = _object_folder(self.where)
        try:
            return files.exists(name)
        except OSError:
            return False

    def write(self, payload: bytes) -> None:
        """The whole file, or an OutputError naming the location redacted (the answers stay in
        the checkpoint: a rerun only writes again)."""
        what = f"cannot write the output file {self.shown}"
        try:
            if isinstance(self.where, Path):
                self.where.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(self.where, lambda fh: fh.write(payload))
            elif self.tmp_dir is not None:
                self._staged(payload)
            else:
                self._upload(lambda: payload)
        except _HttpFailure as exc:
            raise OutputError(f"{what}: {exc} (after {self.attempts} attempts)") from None
        except (OSError, http.client.HTTPException) as exc:
            raise OutputError(f"{what}: {_reason(exc)}") from None

    def _staged(self, payload: bytes) -> None:
        assert self.tmp_dir is not None
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=self.tmp_dir, prefix="tmp_batch_output_", suffix=".jsonl") as fh:
            fh.write(payload)
            fh.flush()

            def reread() -> IO[bytes]:
                fh.seek(0)
                return fh

            self._upload(reread)

    def _upload(self, body: Callable[[], bytes | IO[bytes]]) -> None:
        assert isinstance(self.where, str)
        url = self.where
        if scheme_of(url) in HTTP:
            _retrying(lambda: _put(url, body()), self.attempts, self.backoff)
            return
        files, name = _object_folder(url)
        data = body()
        files.put(name, data if isinstance(data, bytes) else data.read())


def _put(url: str, body: bytes | IO[bytes]) -> None:
    size = len(body) if isinstance(body, bytes) else os.fstat(body.fileno()).st_size
    req = _request(url, "PUT", body, **{"Content-Length": str(size), "Content-Type": "application/jsonl"})
    try:
        with _opener.open(req, timeout=PUT_TIMEOUT) as resp:
            resp.read()
    except urllib.error.HTTPError as exc:
        raise _HttpFailure(exc.code, exc.reason) from None


def _object_folder(url: str) -> tuple[ObjectFiles, str]:
    """(OUT-style files of the object's folder, the object's name in it)."""
    from ..store.objects import ObjectFiles

    parts = urllib.parse.urlsplit(url)
    folder, name = posixpath.split(parts.path)
    if not name:
        raise UsageError(f"{redact(url)} names a folder, not a file")
    base = urllib.parse.urlunsplit((parts.scheme, parts.netloc, folder, "", ""))
    return ObjectFiles(base), name


# --------------------------------------------------------------------------- retries


class _HttpFailure(Exception):
    """An HTTP status that is not success (its body is never shown: an S3 error names the
    signature it refused)."""

    def __init__(self, status: int, reason: object) -> None:
        super().__init__(f"HTTP {status} {reason}".rstrip())
        self.status = status

    @property
    def transient(self) -> bool:
        return self.status in _TRANSIENT_STATUS


def _retrying(attempt: Callable[[], T], attempts: int, backoff: float) -> T:
    """`attempt()`, again after a connection failure or a transient status (5xx, 408, 429),
    `attempts` times in all, waiting `backoff` seconds and twice as long each next time; a
    refusal (403, 404, …) at once."""
    for n in range(1, attempts + 1):
        try:
            return attempt()
        except _HttpFailure as exc:
            if not exc.transient or n == attempts:
                raise
        except (OSError, http.client.HTTPException):
            if n == attempts:
                raise
        time.sleep(backoff * 2 ** (n - 1))
    raise AssertionError("unreachable: the last attempt returns or raises")


def _reason(exc: BaseException) -> str:
    """An OS or network error in one line, without a URL (it could carry a signature)."""
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        return _reason(exc.reason) if isinstance(exc.reason, BaseException) else str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text if text and "://" not in text else type(exc).__name__
