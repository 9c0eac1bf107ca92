"""Where inputs live: a local path, or a URL of an object store, the Hugging Face Hub or a web
server, read through fsspec and each ecosystem's own filesystem (s3fs, gcsfs, adlfs,
huggingface_hub's HfFileSystem) or, for http(s), gemma4u's own client (decode/fetch.py).

Credentials and endpoints come only from each ecosystem's standard configuration (AWS_* and
AWS_ENDPOINT_URL, GOOGLE_APPLICATION_CREDENTIALS and STORAGE_EMULATOR_HOST, AZURE_STORAGE_*,
HF_TOKEN and HF_ENDPOINT): gemma4u never takes, stores or prints a secret, and `redact` takes the
ones a URL may carry (user:password, a presigned query string) out of everything it shows.
"""

from __future__ import annotations

import posixpath
import re
import urllib.parse
from functools import cache
from typing import Any

from ..config.urls import is_url, scheme_of
from ..errors import UsageError

EXTRAS: dict[str, tuple[str, str]] = {
    "s3": ("s3", "s3fs"),
    "gs": ("gcs", "gcsfs"),
    "gcs": ("gcs", "gcsfs"),
    "az": ("azure", "adlfs"),
    "abfs": ("azure", "adlfs"),
    "abfss": ("azure", "adlfs"),
    "hf": ("hf", "huggingface_hub"),
    "http": ("http", "aiohttp"),
    "https": ("http", "aiohttp"),
}
"""The URL schemes gemma4u reads, each with its optional extra and the module that serves it."""

OBJECT_STORES = frozenset({"s3", "gs", "gcs", "az", "abfs", "abfss", "hf"})
"""Schemes listed and read through fsspec; http(s) goes through decode/fetch.py."""

_SIGNED_QUERY = re.compile(r"(?i)(x-amz-|x-goog-|signature|sig=|token|credential|key=|sv=|se=|sp=|sr=)")


def check_url(url: str) -> str:
    """The scheme of a URL gemma4u can read here; one clear line otherwise (an unknown scheme,
    or its extra not installed), before any work."""
    scheme = scheme_of(url)
    if scheme is None:
        raise UsageError(f"not a URL: {url}")
    if scheme not in EXTRAS:
        known = ", ".join(sorted({f"{s}://" for s in EXTRAS}))
        raise UsageError(f"unsupported URL scheme {scheme}:// in {redact(url)} (gemma4u reads {known} and local paths)")
    extra, module = EXTRAS[scheme]
    if not _importable(module):
        raise UsageError(
            f"{scheme}:// needs the {extra} extra: pip install 'gemma4u-batch[{extra}]' (it brings {module})"
        )
    return scheme


@cache
def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path in it) for an object-store URL, with the ecosystem's own
    configuration (fsspec caches the instance per protocol and options)."""
    import fsspec.core

    check_url(url)
    return fsspec.core.url_to_fs(url)


def redact(url: str) -> str:
    """The URL as gemma4u shows it (records' `source`, messages, logs): no user:password, and no
    query string that signs or authorises the request (presigned URLs, SAS tokens)."""
    scheme = scheme_of(url)
    if scheme is None:
        return url
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket: show none of it
        return f"{scheme}://<malformed URL>"
    netloc = parts.netloc
    if "@" in netloc and parts.scheme.lower() not in ("az", "abfs", "abfss"):  # Azure: container@account
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = "<redacted>" if parts.query and _SIGNED_QUERY.search(parts.query) else parts.query
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def parent(url: str) -> str:
    """The folder a URL's object is in, ending with '/' (a manifest's rows resolve from it)."""
    parts = urllib.parse.urlsplit(url)
    folder = posixpath.dirname(parts.path)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, folder.rstrip("/") + "/", "", ""))


def join(base: str, relative: str) -> str:
    """`relative` (a row's path) resolved against the folder URL `base`; `..` never climbs above
    the URL's root. A URL stays as it is."""
    if is_url(relative):
        return relative
    parts = urllib.parse.urlsplit(base)
    path = posixpath.normpath(posixpath.join(parts.path or "/", relative))
    if not path.startswith("/"):
        path = "/" + path
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def under(url: str, root: str) -> bool:
    """Whether `url` lies under the folder URL `root` (same scheme, host and path prefix)."""
    u, r = urllib.parse.urlsplit(url), urllib.parse.urlsplit(root)
    if _origin(u) != _origin(r):
        return False
    prefix = r.path if r.path.endswith("/") else r.path + "/"
    path = posixpath.normpath(u.path) if u.path else "/"
    return r.path in ("", "/") or path == r.path.rstrip("/") or path.startswith(prefix)


def _origin(parts: urllib.parse.SplitResult) -> tuple[str, str]:
    """(scheme, host[:port]) without credentials, lower-cased."""
    return parts.scheme.lower(), parts.netloc.rsplit("@", 1)[-1].lower()


def origin(url: str) -> str:
    """`scheme://host[:port]` of a URL (the manifest's own origin may name private addresses)."""
    scheme, host = _origin(urllib.parse.urlsplit(url))
    return f"{scheme}://{host}"
