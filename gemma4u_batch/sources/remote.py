"""An object-store prefix listed like a folder (s3://, gs://, az:// and abfs://, hf://), and what
a URL names there (one object, or a prefix).

`ObjectFolderSource` is `FolderSource`'s twin: the same ids (keys relative to the prefix), in the
same order (depth-first, each level sorted by name, files and folders interleaved by name, so
"a/b.jpg" comes before "a.jpg" although a flat listing sorts it after), hidden names and unknown
extensions skipped. It lists one "directory" level at a time (`fs.ls` with the store's delimiter)
and never reads an object: each item carries what the listing said of it (`ObjectStat`), enough
for the quick check to know it unchanged without a GET or a HEAD.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NoReturn

from ..errors import UsageError
from ..records import Modality, ObjectStat, WorkItem
from .folder import modality_for
from .locations import OBJECT_STORES, check_url, filesystem, redact

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def object_url_kind(url: str) -> Literal["object", "prefix"]:
    """Whether `url` names one existing object (a media file or a manifest) or a prefix that
    holds objects (listed like a folder). One UsageError when it names nothing: "input not
    found: <url>" (redacted), for a missing bucket, container or repository as for a prefix with
    no object under it. A URL typed with a trailing `/` is a prefix or nothing.

    The URL stays text throughout: a Path would collapse its `//`."""
    _check_object_store(url)
    fs, path = _filesystem(url)
    try:
        if url.endswith("/"):
            children = _children(fs, path)
        else:
            info = fs.info(path)
    except FileNotFoundError:
        _not_found(url)
    except Exception as exc:  # the store's own errors: permissions, endpoint, network
        raise _cannot_list(url, exc) from None
    if url.endswith("/"):
        return "prefix" if children is not None else _not_found(url)
    return "prefix" if info.get("type") == "directory" else "object"


class ObjectFolderSource:
    """Every media object under an object-store prefix, in FolderSource's order.

    `url` is the prefix as typed (with or without a trailing `/`; a bucket, container or
    repository root is a prefix too). Items have `id` = the key relative to the prefix, `url` =
    the object's URL (the prefix as typed, then the relative key), `source` = that URL redacted
    and `stat` = the listing's facts. A prefix that is not there is one UsageError when the
    iteration starts; a level that disappears while it is listed is skipped, as a folder
    removed during a walk is.
    """

    def __init__(self, url: str, modalities: frozenset[Modality] | None = None) -> None:
        _check_object_store(url)
        self.url = url
        self.root: str = url.rstrip("/") + "/"
        self.modalities = modalities

    def __iter__(self) -> Iterator[WorkItem]:
        fs, path = _filesystem(self.url)
        try:
            top = _children(fs, path)
        except Exception as exc:
            raise _cannot_list(self.url, exc) from None
        if top is None:
            _not_found(self.url)
        for rel, entry in self._walk(fs, top):
            modality = modality_for(rel)
            if modality is None:
                continue
            if self.modalities is not None and modality not in self.modalities:
                continue
            url = self.root + rel
            yield WorkItem(id=rel, source=redact(url), modality=modality, url=url, stat=object_stat(entry))

    def _walk(self, fs: Any, top: list[dict[str, Any]]) -> Iterator[tuple[str, Mapping[str, Any]]]:
        """Depth-first in name order, iteratively; only the levels on the current branch are held."""
        stack: list[Iterator[tuple[str, dict[str, Any]]]] = [_ordered(top, "")]
        while stack:
            rel_and_entry = next(stack[-1], None)
            if rel_and_entry is None:
                stack.pop()
                continue
            rel, entry = rel_and_entry
            if entry.get("type") != "directory":
                yield rel, entry
                continue
            try:
                children = _children(fs, entry["name"])
            except Exception as exc:
                raise _cannot_list(self.root + rel + "/", exc) from None
            if children:
                stack.append(_ordered(children, rel + "/"))


def object_stat(entry: Mapping[str, Any]) -> ObjectStat:
    """What one listing entry says of its object, the same fields whichever store listed it.

    * etag: S3's `ETag`, GCS's `etag` (else its `md5Hash`), Azure's `etag`, surrounding quotes
      removed; on the Hub the LFS object's sha256, else the git blob id (a Hub bucket's file: its
      Xet hash).
    * version: S3's `VersionId` (a versioned listing; "null" is none), GCS's `generation`,
      Azure's `version_id`; on the Hub the last commit's id when the listing was expanded.
    * size: in bytes.
    * mtime_ns: S3's `LastModified`, GCS's `updated`, Azure's `last_modified`, the Hub's last
      commit date (expanded listings) or a Hub bucket file's `mtime`; nanoseconds since the epoch
      (a time without a zone is taken as UTC).
    """
    lfs = entry.get("lfs")
    last_commit = entry.get("last_commit")
    etag = _first(entry, "ETag", "etag", "md5Hash")
    if etag is None:  # the Hub: the LFS object's sha256, else the git blob id (a bucket's: the Xet hash)
        etag = _field(lfs, "sha256") or _field(lfs, "oid") or entry.get("blob_id") or entry.get("xet_hash")
    version = _first(entry, "VersionId", "version_id", "generation")
    if version is None and last_commit is not None:
        version = _field(last_commit, "oid")
    mtime = _first(entry, "LastModified", "last_modified", "updated", "mtime", "uploaded_at")
    if mtime is None and last_commit is not None:
        mtime = _field(last_commit, "date")
    size = _first(entry, "size", "Size")
    return ObjectStat(
        etag=_unquote(str(etag)) if etag is not None else None,
        version=str(version) if version is not None and str(version) not in ("", "null") else None,
        size=int(size) if size is not None else None,
        mtime_ns=_ns(mtime),
    )


# --------------------------------------------------------------------------- helpers


def _check_object_store(url: str) -> None:
    scheme = check_url(url)
    if scheme not in OBJECT_STORES:
        raise UsageError(f"{scheme}:// is not an object store that can be listed: {redact(url)}")


def _filesystem(url: str) -> tuple[Any, str]:
    try:
        return filesystem(url)
    except UsageError:
        raise
    except Exception as exc:  # a malformed URL, or the store's client refusing its configuration
        raise _cannot_list(url, exc) from None


def _children(fs: Any, path: str) -> list[dict[str, Any]] | None:
    """The entries one level under `path` (never `path` itself), or None when nothing is there.

    The filesystem's listing cache is dropped before (a listing is always fresh) and after (a
    walk does not keep the bucket's listing in memory)."""
    path = path.rstrip("/")
    fs.invalidate_cache(path)
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return None
    finally:
        fs.invalidate_cache(path)
    children: list[dict[str, Any]] = []
    marker = an_object = False
    for entry in entries:
        name = entry.get("name", "")
        if _name(name) != path:
            children.append(entry)
        elif name.endswith("/") or entry.get("type") == "directory":
            marker = True  # a "folder" placeholder (a key ending in /): the prefix is there
        else:
            an_object = True
    if not children and an_object and not marker:
        return None  # `path` is an object, not a prefix
    return children


def _ordered(entries: list[dict[str, Any]], prefix: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(relative name, entry) by name, as FolderSource orders a folder; hidden names left out.
    An object and a prefix of the same name (possible in a store, not on a disk): the object first."""
    named = [(posixpath.basename(_name(e["name"])), e) for e in entries]
    named.sort(key=lambda ne: (ne[0], ne[1].get("type") == "directory"))
    for name, entry in named:
        if name and not name.startswith("."):
            yield prefix + name, entry


def _name(name: str) -> str:
    return name.rstrip("/")


def _not_found(url: str) -> NoReturn:
    raise UsageError(f"input not found: {redact(url)}")


def _cannot_list(url: str, exc: BaseException) -> UsageError:
    shown = redact(url)
    reason = " ".join(str(exc).split()) or type(exc).__name__
    reason = reason.replace(url, shown)
    if isinstance(exc, PermissionError):
        return UsageError(f"cannot list {shown}: permission denied ({reason})")
    return UsageError(f"cannot list {shown}: {type(exc).__name__}: {reason}")


def _first(entry: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        value = entry.get(key)
        if value is not None:
            return value
    return None


def _field(obj: Any, name: str) -> Any:
    """`obj[name]` or `obj.name` (the Hub's listing gives dataclasses or dicts, by version)."""
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _unquote(etag: str) -> str:
    return etag[1:-1] if len(etag) >= 2 and etag[0] == etag[-1] == '"' else etag


def _ns(value: Any) -> int | None:
    """A listing's time as integer nanoseconds since the epoch (exact to the microsecond)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value * 1_000_000_000  # POSIX seconds
    if isinstance(value, float):
        return round(value * 1_000_000) * 1000
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // timedelta(microseconds=1) * 1000
