"""Remote bytes for the decode workers: objects in S3, GCS, Azure Blob or on the Hub (through
their fsspec filesystems) and http(s) URLs (gemma4u's own client), each with a per-item
deadline, the byte limit of local files, and retries with backoff where a retry can help.

Every fetch runs as one coroutine under one deadline (`fetch_timeout`, retries and backoff
included): an async filesystem's on fsspec's loop, an http(s) one on this process's client loop
(a daemon thread: the worker's threads fetch ahead side by side on it). The caller's thread only
waits for the result; at the deadline the coroutine is cancelled, so no connection or thread
stays behind (a sync filesystem's call, the Hub's, is left to end by its library's own timeouts).

A row's http(s) URL must not reach a private address (cloud metadata, the intranet): the
resolver the connector connects through drops loopback, link-local, private, unspecified and
multicast addresses, redirects included, unless the URL's origin is trusted (`trusted_origins`:
the INPUT's own origin) or `allow_private_urls` is set.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import concurrent.futures
import email.utils
import errno
import functools
import ipaddress
import math
import os
import random
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ..errors import ItemError, UsageError
from ..records import Known, ObjectStat, WorkItem
from ..sources.locations import OBJECT_STORES, filesystem, scheme_of
from ..sources.locations import redact as _redact
from .options import DecodeOptions

if TYPE_CHECKING:
    import aiohttp
    from aiohttp.abc import AbstractResolver, ResolveResult
    from multidict import CIMultiDictProxy
    from yarl import URL

ERROR_KINDS = (
    "not_found",
    "forbidden",
    "fetch_timeout",
    "fetch_failed",
    "too_large",
    "private_address",
    "bad_redirect",
)
"""The error kinds a fetch ends in (besides a record's other kinds)."""

MAX_REDIRECTS = 5
BACKOFF_BASE = 0.5  # seconds before the first retry, doubled for each next one, jittered
BACKOFF_CAP = 8.0
CONNECT_TIMEOUT = 10.0  # a connection not made by then is retried (within the deadline)
CHUNK = 1 << 16
USER_AGENT = "gemma4u-batch"

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_VERSIONED = {
    "s3": "{path}?versionId={version}",
    "gs": "{path}#{version}",
    "gcs": "{path}#{version}",
    "az": "{path}?versionid={version}",
    "abfs": "{path}?versionid={version}",
    "abfss": "{path}?versionid={version}",
}
"""How a path names one version of an object, per scheme (the Hub pins revisions in the URL)."""

_CREDENTIALS = {
    "s3": "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE",
    "gs": "GOOGLE_APPLICATION_CREDENTIALS",
    "gcs": "GOOGLE_APPLICATION_CREDENTIALS",
    "az": "AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT_NAME/_KEY",
    "abfs": "AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT_NAME/_KEY",
    "abfss": "AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT_NAME/_KEY",
    "hf": "HF_TOKEN",
}
_TRANSIENT_ERRNOS = {
    errno.EBUSY,  # s3fs: SlowDown, 503
    errno.EAGAIN,
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.ECONNABORTED,
    errno.ETIMEDOUT,
    errno.EPIPE,
} | ({errno.EREMOTEIO} if hasattr(errno, "EREMOTEIO") else set())  # s3fs: InternalError, 500
_TRANSIENT_NAMES = re.compile(
    r"Timeout|Connection|Throttl|SlowDown|ServerBusy|ServiceUnavailable|ServiceRequest|ServiceResponse|"
    r"Temporar|IncompleteRead|ClientPayload|ServerDisconnected|ProxyError"
)
_TRANSIENT_TEXT = re.compile(r"SlowDown|ServerBusy|reduce your request rate|Please try again|rate limit", re.I)

_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")

T = TypeVar("T")


@dataclass(frozen=True)
class Fetched:
    """A fetch's outcome: the body, or `not_modified` (a conditional request answered 304), and
    what the server said of it (the next run's conditional request and quick check use it)."""

    body: bytes | None
    stat: ObjectStat
    not_modified: bool = False


def is_remote(item: WorkItem) -> bool:
    """An item whose bytes are fetched (a URL, not already read)."""
    return item.url is not None and item.data is None


def fetch(item: WorkItem, opts: DecodeOptions, limit: int | None = None) -> Fetched:
    """The bytes of `item.url`; ItemError(kind in ERROR_KINDS) when they cannot be had.

    `limit` (default opts.max_input_bytes): more bytes than this is `too_large`, found from the
    listing's size or Content-Length before any body is read where possible. `item.known` makes
    an http(s) fetch conditional; `item.stat.version` pins an object's version."""
    url = item.url
    if url is None:
        raise ItemError("fetch_failed", f"{item.source} has no URL to fetch")
    limit = opts.max_input_bytes if limit is None else limit
    listed = item.stat.size if item.stat is not None else None
    if listed is not None and listed > limit:
        raise _too_large(url, listed, limit, "as listed")
    policy = _Policy.of(url, opts)
    scheme = scheme_of(url)
    if scheme in ("http", "https"):
        client = _client()
        return _wait(
            client.loop, _retrying(functools.partial(_http_attempt, client, item, opts, limit), policy), policy
        )
    if scheme in OBJECT_STORES:
        return _fetch_object(item, url, limit, policy)
    raise ItemError("fetch_failed", f"cannot fetch {redact(url)}: not an object-store or http(s) URL")


# ---------------------------------------------------------------- deadline and retries


@dataclass
class _Policy:
    """One fetch's deadline and retry budget, and what its attempts have seen so far."""

    url: str
    timeout: float
    retries: int
    deadline: float
    attempts: int = 0
    last: str | None = None

    @classmethod
    def of(cls, url: str, opts: DecodeOptions) -> _Policy:
        timeout = float(getattr(opts, "fetch_timeout", 30.0))
        retries = max(0, int(getattr(opts, "fetch_retries", 3)))
        return cls(url=url, timeout=timeout, retries=retries, deadline=time.monotonic() + timeout)

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def timed_out(self) -> ItemError:
        last = f"; last try: {self.last}" if self.last else ""
        return ItemError(
            "fetch_timeout",
            f"fetch timed out: {redact(self.url)} was not fetched within the fetch_timeout of {self.timeout:g} s "
            f"(retries included{last}); raise fetch_timeout for slow servers",
        )


class _Transient(Exception):
    """A failure a retry may cure (timeouts, connection errors, 5xx, 429, throttling)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


async def _retrying(attempt: Callable[[], Awaitable[T]], policy: _Policy) -> T:
    """`attempt` until it succeeds or fails for good, at most `retries` more times after a
    transient failure, all of it within the deadline."""
    scope = asyncio.timeout(policy.remaining())
    try:
        async with scope:
            while True:
                policy.attempts += 1
                try:
                    return await attempt()
                except _Transient as exc:
                    policy.last = exc.message
                    if policy.attempts > policy.retries:
                        raise ItemError(
                            "fetch_failed", f"fetch failed: {exc.message} (gave up after {policy.attempts} attempts)"
                        ) from None
                    wait = _backoff(policy.attempts) if exc.retry_after is None else exc.retry_after
                    if wait >= policy.remaining():
                        raise _retry_after_too_late(policy, exc, wait) from None
                await asyncio.sleep(wait)
    except TimeoutError:
        if scope.expired():
            raise policy.timed_out() from None
        raise
    except Exception as exc:  # a bad input must end as an error on its item, never a crash
        if isinstance(exc, ItemError):
            raise
        raise ItemError("fetch_failed", f"fetch failed: {redact(policy.url)}{_detail(exc, policy.url)}") from None


def _backoff(attempts: int) -> float:
    """Exponential backoff with jitter, so many workers retrying do not come back together."""
    return min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempts - 1)) * random.uniform(0.5, 1.0)


def _retry_after_too_late(policy: _Policy, exc: _Transient, wait: float) -> ItemError:
    """The server (or the backoff) would have us wait past the deadline: fail now, not then."""
    asked = "the server asked to wait" if exc.retry_after is not None else "the next retry is due in"
    return ItemError(
        "fetch_timeout",
        f"fetch timed out: {exc.message}; {asked} {wait:.3g} s, after the fetch_timeout of {policy.timeout:g} s "
        "runs out (raise fetch_timeout or retry the item later)",
    )


def _wait(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T], policy: _Policy) -> T:
    """Run `coro` on `loop` (another thread's) and wait for it; the coroutine keeps its own
    deadline, the wait here is a backstop that cancels it should the loop be stuck."""
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        return future.result(timeout=policy.remaining() + 2.0)
    except concurrent.futures.TimeoutError:
        if not future.done():
            future.cancel()
            raise policy.timed_out() from None
        raise


# ---------------------------------------------------------------- object stores (fsspec)


def _fetch_object(item: WorkItem, url: str, limit: int, policy: _Policy) -> Fetched:
    """An object through its ecosystem's fsspec filesystem, its version pinned when listed."""
    try:
        fs, path = filesystem(url)
    except UsageError as exc:
        raise ItemError("fetch_failed", str(exc)) from None
    except Exception as exc:  # the filesystem's own configuration (credentials, endpoint)
        raise _final(_object_error(exc, url)) from None
    version = item.stat.version if item.stat is not None else None
    if version:
        fs, path = _pinned(fs, path, scheme_of(url) or "", version)
    attempt = functools.partial(_object_attempt, fs, path, url, limit, item.known)
    loop = fs.loop if getattr(fs, "async_impl", False) else _client().loop
    return _wait(loop, _retrying(attempt, policy), policy)


def _pinned(fs: Any, path: str, scheme: str, version: str) -> tuple[Any, str]:
    """The filesystem and path that read exactly `version` (s3fs, gcsfs and adlfs take a
    version only on a version-aware instance)."""
    form = _VERSIONED.get(scheme)
    if form is None:
        return fs, path
    if not getattr(fs, "version_aware", False):
        fs = type(fs)(**{**fs.storage_options, "version_aware": True})
    return fs, form.format(path=path, version=version)


async def _object_attempt(fs: Any, path: str, url: str, limit: int, known: Known | None) -> Fetched:
    """One try: the object's info (its size refuses a large one before any body is read; with
    `known`, an unchanged ETag answers like a 304, with no body read), then its bytes in one
    ranged read, at most one past the limit (should it have grown)."""
    try:
        info = await _call(fs, "info", path)
        size = info.get("size")
        seen = _object_stat(info, size if isinstance(size, int) else None)
        if known is not None and known.etag and seen.etag == known.etag:
            return Fetched(body=None, stat=seen, not_modified=True)
        if info.get("type") == "directory":
            raise ItemError("fetch_failed", f"fetch failed: {redact(url)} is a folder, not an object")
        if isinstance(size, int) and size > limit:
            raise _too_large(url, size, limit, "by its size")
        # An empty object has no byte to range over (S3 answers 416): its info says it all.
        body = b"" if size == 0 else await _call(fs, "cat_file", path, start=0, end=limit + 1)
    except ItemError:
        raise
    except Exception as exc:
        raise _object_error(exc, url) from None
    if len(body) > limit:
        raise _too_large(url, len(body), limit, "as read")
    return Fetched(body=bytes(body), stat=_object_stat(info, len(body)))


async def _call(fs: Any, name: str, *args: Any, **kwargs: Any) -> Any:
    """A filesystem call: an async filesystem's coroutine (cancelled at the deadline), or a
    sync one's method in a daemon thread (left to its library's timeouts at the deadline)."""
    if getattr(fs, "async_impl", False):
        return await getattr(fs, "_" + name)(*args, **kwargs)
    return await _in_thread(functools.partial(getattr(fs, name), *args, **kwargs))


async def _in_thread(fn: Callable[[], T]) -> T:
    """`fn()` in a daemon thread: unlike an executor's, it never holds up the process's exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, exc: BaseException | None) -> None:
        if future.done():
            return
        if exc is None:
            future.set_result(result)
        else:
            future.set_exception(exc)

    def work() -> None:
        try:
            result, exc = fn(), None
        except BaseException as e:
            result, exc = None, e
        try:
            loop.call_soon_threadsafe(settle, result, exc)
        except RuntimeError:  # the loop is gone: nobody waits any more
            pass

    threading.Thread(target=work, name="gemma4u-fetch-sync", daemon=True).start()
    return await future


def _object_stat(info: dict[str, Any], size: int | None) -> ObjectStat:
    """What the filesystem said of the object read (s3fs, gcsfs, adlfs and the Hub name it
    differently)."""
    etag = _first(info, "ETag", "etag", "blob_id")
    version = _first(info, "VersionId", "generation", "version_id")
    mtime = _first(info, "LastModified", "mtime", "last_modified", "updated")
    return ObjectStat(
        etag=str(etag) if etag is not None else None,
        version=str(version) if version is not None else None,
        size=size,
        mtime_ns=_time_ns(mtime),
    )


def _first(info: dict[str, Any], *keys: str) -> Any:
    """The first of `keys` the info has (each filesystem names the same thing its own way)."""
    return next((info[k] for k in keys if info.get(k) not in (None, "")), None)


def _time_ns(value: Any) -> int | None:
    """A listing's time (datetime, ISO text or epoch seconds) as ns since the epoch."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        whole = int(value.replace(microsecond=0).timestamp())
        return whole * 1_000_000_000 + value.microsecond * 1000
    if isinstance(value, int | float) and math.isfinite(value):
        return int(value * 1_000_000_000)
    return None


def _object_error(exc: BaseException, url: str) -> ItemError | _Transient:
    """A filesystem's exception as an error kind (or a failure worth a retry)."""
    shown, detail = redact(url), _detail(exc, url)
    if isinstance(exc, FileNotFoundError):
        return ItemError("not_found", f"not found: {shown}{detail}")
    if isinstance(exc, PermissionError) or (isinstance(exc, OSError) and str(exc).startswith("Forbidden")):
        return _forbidden(url, detail)  # gcsfs words a 403 as OSError("Forbidden: …")
    status = _status_of(exc)
    if status is not None:
        return _by_status(url, status, detail.strip(" ()") or f"HTTP {status}", None)
    if _transient(exc):
        return _Transient(f"{shown}{detail}")
    return ItemError("fetch_failed", f"fetch failed: {shown}{detail}")


def _forbidden(url: str, detail: str) -> ItemError:
    scheme = scheme_of(url) or ""
    where = f"the {_CREDENTIALS[scheme]} credentials" if scheme in _CREDENTIALS else "the credentials in the URL"
    return ItemError("forbidden", f"access denied: {redact(url)}{detail}; check {where} and the object's permissions")


def _status_of(exc: BaseException) -> int | None:
    """The HTTP status an exception (or its cause) carries, whichever attribute its library uses."""
    for candidate in (exc, exc.__cause__):
        if candidate is None:
            continue
        response = getattr(candidate, "response", None)
        values = [getattr(candidate, a, None) for a in ("status_code", "status", "code")]
        values.append(getattr(response, "status_code", None))
        if isinstance(response, dict):  # botocore's ClientError
            values.append(response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
        for value in values:
            if isinstance(value, str) and value.isdigit():
                value = int(value)
            if isinstance(value, int) and 100 <= value < 600:
                return value
    return None


def _transient(exc: BaseException) -> bool:
    """Timeouts, dropped connections and throttling, as each library words them."""
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    if any(_TRANSIENT_NAMES.search(cls.__name__) for cls in type(exc).__mro__):
        return True
    return bool(_TRANSIENT_TEXT.search(str(exc)))


# ---------------------------------------------------------------- http(s)


async def _http_attempt(client: _Client, item: WorkItem, opts: DecodeOptions, limit: int) -> Fetched:
    """One try: the request and each redirect (followed here, each hop checked), the answer read."""
    import aiohttp
    from yarl import URL

    assert item.url is not None
    original = URL(item.url)
    if not original.host:
        raise ItemError("fetch_failed", f"fetch failed: {redact(item.url)} names no host")
    url = original
    for _hop in range(MAX_REDIRECTS + 1):
        trusted = _trusted(url, opts)
        if not trusted:
            _refuse_private_literal(item.url, url)
        session = client.session(guarded=not trusted)
        try:
            async with session.get(
                url.with_user(None).with_fragment(None),
                headers=_conditional(item.known) | _auth(url, original),
                allow_redirects=False,
            ) as resp:
                if resp.status in _REDIRECTS:
                    url = _next_hop(item.url, url, resp.status, resp.headers.get("Location"))
                    continue
                return await _answer(item, str(url), resp, limit)
        except (aiohttp.ClientError, OSError) as exc:
            raise _connection_error(exc, item.url, str(url)) from None
    raise ItemError(
        "bad_redirect", f"too many redirects: {redact(item.url)} redirected more than {MAX_REDIRECTS} times"
    )


def _conditional(known: Known | None) -> dict[str, str]:
    """The request's headers: the validators of the last fetch make it conditional."""
    headers = {"Accept-Encoding": "identity"}  # Content-Length is then the body's size
    if known is not None and known.etag:
        headers["If-None-Match"] = known.etag
    if known is not None and known.last_modified:
        headers["If-Modified-Since"] = known.last_modified
    return headers


def _auth(url: URL, original: URL) -> dict[str, str]:
    """Basic auth from the URL's own user:password, or the original's on its own origin only
    (a redirect elsewhere never gets them)."""
    source = url if url.user is not None else original if url.origin() == original.origin() else None
    if source is None or source.user is None:
        return {}
    token = base64.b64encode(f"{source.user}:{source.password or ''}".encode()).decode("ascii")
    return {"Authorization": f"Basic {token}"}


def _next_hop(original: str, url: URL, status: int, location: str | None) -> URL:
    """Where a redirect leads, refused when it leaves the scheme (https→http would expose the
    request, http→https is a different origin the user never named)."""
    from yarl import URL

    if not location:
        raise ItemError("fetch_failed", f"fetch failed: {redact(original)} answered HTTP {status} without a Location")
    try:
        target = url.join(URL(location))
    except ValueError:
        raise ItemError("bad_redirect", f"bad redirect: {redact(original)} redirected to an invalid URL") from None
    if target.scheme != url.scheme or not target.host:
        raise ItemError(
            "bad_redirect",
            f"bad redirect: {redact(original)} redirected from {url.scheme}:// to {redact(str(target))}; "
            "redirects to another scheme are refused (give the final URL instead)",
        )
    return target


async def _answer(item: WorkItem, url: str, resp: aiohttp.ClientResponse, limit: int) -> Fetched:
    """The response as a fetch: a 304 to a conditional request, a body, or an error kind."""
    assert item.url is not None
    if resp.status == 304 and item.known is not None:
        return Fetched(body=None, stat=_http_stat(resp.headers, None, item.known), not_modified=True)
    if 200 <= resp.status < 300 and resp.status != 206:
        length = resp.content_length
        if length is not None and length > limit:
            raise _too_large(item.url, length, limit, "by its Content-Length")
        body = bytearray()
        while len(body) <= limit:
            chunk = await resp.content.read(min(CHUNK, limit + 1 - len(body)))
            if not chunk:
                break
            body += chunk
        if len(body) > limit:
            raise _too_large(item.url, len(body), limit, "as read (at least)")
        return Fetched(body=bytes(body), stat=_http_stat(resp.headers, len(body), None))
    hop = "" if url == item.url else f" (redirected to {redact(url)})"
    answered = f"HTTP {resp.status}{_reason(resp.reason)}{hop}"
    raise _by_status(item.url, resp.status, answered, _retry_after(resp.headers.get("Retry-After")))


def _http_stat(headers: CIMultiDictProxy[str], size: int | None, known: Known | None) -> ObjectStat:
    """The response's validators (a 304 may leave them out: the known ones still hold)."""
    etag = headers.get("ETag") or (known.etag if known is not None else None)
    last_modified = headers.get("Last-Modified") or (known.last_modified if known is not None else None)
    return ObjectStat(etag=etag, size=size, mtime_ns=_http_date_ns(last_modified), last_modified=last_modified)


def _http_date_ns(value: str | None) -> int | None:
    if not value:
        return None
    try:
        return _time_ns(email.utils.parsedate_to_datetime(value))
    except (TypeError, ValueError):
        return None


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (it may be a delay or an HTTP date)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = (when.replace(tzinfo=when.tzinfo or UTC) - datetime.now(UTC)).total_seconds()
    if math.isnan(seconds):
        return None
    return max(0.0, seconds)


def _by_status(url: str, status: int, answered: str, retry_after: float | None) -> ItemError | _Transient:
    """An HTTP status (a web server's or an object store's) as an error kind."""
    shown = redact(url)
    if status in (404, 410):
        return ItemError("not_found", f"not found: {shown} ({answered})")
    if status in (401, 403, 407):
        return _forbidden(url, f" ({answered})")
    if status in (408, 425, 429) or (status >= 500 and status not in (501, 505)):
        return _Transient(f"{shown} answered {answered}", retry_after)
    return ItemError("fetch_failed", f"fetch failed: {shown} answered {answered}")


def _connection_error(exc: BaseException, original: str, url: str) -> ItemError | _Transient:
    """aiohttp's exception as an error kind (or a failure worth a retry)."""
    import aiohttp

    if isinstance(exc, ItemError | _Transient):
        return exc
    refused = next((e for e in _chain(exc) if isinstance(e, _PrivateAddress)), None)
    if refused is not None:
        return _private(original, refused.host, refused.addresses)
    shown = redact(original) + ("" if url == original else f" (redirected to {redact(url)})")
    detail = _detail(exc, original)
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        gai = exc.os_error
        if isinstance(gai, socket.gaierror) and gai.errno == socket.EAI_AGAIN:
            return _Transient(f"{shown}: cannot resolve its host for now{detail}")
        return ItemError("fetch_failed", f"fetch failed: {shown}: cannot resolve its host{detail}")
    if isinstance(exc, aiohttp.ClientSSLError):
        return ItemError("fetch_failed", f"fetch failed: {shown}: TLS failed{detail}")
    if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError | TimeoutError | ConnectionError):
        return _Transient(f"{shown}: {type(exc).__name__}{detail}")
    if isinstance(exc, aiohttp.InvalidURL):
        return ItemError("fetch_failed", f"fetch failed: {shown} is not a valid URL")
    return ItemError("fetch_failed", f"fetch failed: {shown}: bad response{detail}")


def _chain(exc: BaseException) -> list[BaseException]:
    """An exception and its causes (aiohttp wraps the resolver's refusal in its own error)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    seen += [e for e in [getattr(exc, "os_error", None)] if isinstance(e, BaseException)]
    return seen


# ---------------------------------------------------------------- private addresses


def _public(address: str) -> bool:
    """An address a row's URL may reach: globally routable and not multicast (IPv4-mapped
    IPv6 addresses judged as the IPv4 address they are)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast and not ip.is_unspecified


def _trusted(url: URL, opts: DecodeOptions) -> bool:
    """Whether `url` may lead to private addresses: its origin is trusted (the INPUT's own,
    one the user typed), or `allow_private_urls`."""
    from yarl import URL

    if getattr(opts, "allow_private_urls", False):
        return True
    key = (url.scheme, url.host, url.port)
    for trusted in getattr(opts, "trusted_origins", ()):
        t = URL(trusted)
        if (t.scheme, t.host, t.port) == key:
            return True
    return False


def _refuse_private_literal(original: str, url: URL) -> None:
    """An address written in the URL is connected to without a lookup: check it here."""
    host = url.host or ""
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return
    if not _public(host):
        raise _private(original, host, [host])


def _private(original: str, host: str, addresses: list[str]) -> ItemError:
    where = host if addresses == [host] else f"{host} → {', '.join(addresses[:3])}"
    return ItemError(
        "private_address",
        f"refused: {redact(original)} leads to a private address ({where}); only the INPUT's own "
        "origin may name loopback, link-local or private addresses (allow_private_urls allows them all)",
    )


class _PrivateAddress(OSError):
    """A host name that resolved to private addresses only (raised in the resolver)."""

    def __init__(self, host: str, addresses: list[str]) -> None:
        super().__init__(errno.EACCES, f"{host} resolves to private addresses only")
        self.host = host
        self.addresses = addresses


class _GuardedResolver:
    """Resolves with `inner`, then drops every address a row's URL must not reach: what the
    connector connects to is what was checked (redirects and DNS rebinding included)."""

    def __init__(self, inner: AbstractResolver) -> None:
        self._inner = inner

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
        found: list[ResolveResult] = await self._inner.resolve(host, port, family)
        allowed = [r for r in found if _public(r["host"])]
        if found and not allowed:
            raise _PrivateAddress(host, [r["host"] for r in found])
        return allowed

    async def close(self) -> None:
        await self._inner.close()


# ---------------------------------------------------------------- the client


ResolverFactory = Callable[[], "AbstractResolver"]

_lookup: ResolverFactory | None = None
_current: _Client | None = None
_lock = threading.Lock()


def set_resolver(factory: ResolverFactory | None) -> None:
    """Name lookups through `factory()` from the next fetch on (None: aiohttp's own); tests map
    made-up host names with it. The private-address guard applies to what it returns."""
    global _lookup
    with _lock:
        _lookup = factory
    close_client()


class _Client:
    """This process's http(s) client: an event loop on a daemon thread, where the fetches of
    every thread run side by side, and two sessions: one whose resolver keeps rows off
    private addresses, one for trusted origins."""

    def __init__(self, lookup: ResolverFactory | None) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self._lookup = lookup
        self._sessions: dict[bool, aiohttp.ClientSession] = {}
        self._thread = threading.Thread(target=self.loop.run_forever, name="gemma4u-fetch", daemon=True)
        self._thread.start()

    def session(self, guarded: bool) -> aiohttp.ClientSession:
        """The session (made on first use, on the loop: no await, so no race)."""
        import aiohttp

        if guarded not in self._sessions:
            resolver = self._lookup() if self._lookup is not None else aiohttp.ThreadedResolver()
            if guarded:
                resolver = cast("AbstractResolver", _GuardedResolver(resolver))
            self._sessions[guarded] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=resolver),  # fetch_ahead bounds the concurrency
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT),
                headers={"User-Agent": USER_AGENT},
                cookie_jar=aiohttp.DummyCookieJar(),  # no cookie of one row's server goes to another's
                trust_env=False,  # a proxy would resolve names itself, past the private-address guard
            )
        return self._sessions[guarded]

    def close(self) -> None:
        if not self._thread.is_alive():
            return

        async def closing() -> None:
            for s in self._sessions.values():
                await s.close()

        try:
            asyncio.run_coroutine_threadsafe(closing(), self.loop).result(timeout=5)
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()


def _client() -> _Client:
    """The process's client (a forked worker makes its own: threads do not survive a fork)."""
    global _current
    with _lock:
        if _current is None or _current.pid != os.getpid():
            _current = _Client(_lookup)
        return _current


def close_client() -> None:
    """Close the sessions and stop the loop thread (at exit; the next fetch opens a new client)."""
    global _current
    with _lock:
        client, _current = _current, None
    if client is not None and client.pid == os.getpid():
        client.close()


def _forget_client() -> None:
    global _current, _lock
    _current, _lock = None, threading.Lock()


atexit.register(close_client)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_client)


# ---------------------------------------------------------------- messages


def _too_large(url: str, size: int, limit: int, how: str) -> ItemError:
    return ItemError(
        "too_large", f"too large: {redact(url)} is {size} bytes {how}, over the max_input_bytes limit of {limit}"
    )


def _final(error: ItemError | _Transient) -> ItemError:
    """An error outside the retry loop: a transient one is final there."""
    return error if isinstance(error, ItemError) else ItemError("fetch_failed", f"fetch failed: {error.message}")


def redact(url: str) -> str:
    """The URL as shown (sources.locations.redact), even one too malformed to parse: then its
    user:password and query string are cut out by hand."""
    try:
        return _redact(url)
    except ValueError:
        shown = _USERINFO.sub(r"\1***@", url)
        return shown.split("?", 1)[0] + ("?<redacted>" if "?" in shown else "")


def _reason(reason: str | None) -> str:
    text = " ".join((reason or "").split())[:60]
    return f" {text}" if text else ""


def _detail(exc: BaseException, url: str) -> str:
    """An exception's own words as ` (…)`: one line, short, every URL in it redacted and the
    item's password taken out; empty when they only repeat the URL."""
    text = _URL_IN_TEXT.sub(lambda m: redact(m.group(0)), " ".join(str(exc).split()))
    password = _password(url)
    if password:
        text = text.replace(password, "***")
    if text and (text in url or text in redact(url)):
        return ""
    return f" ({(text or type(exc).__name__)[:200]})"


def _password(url: str) -> str | None:
    from urllib.parse import unquote, urlsplit

    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return unquote(password) if password else None
