"""OUT's files as objects: one small interface over a local folder and an object store.

The commit protocol needs, besides reading, listing and deleting, three writes:
* `put`: the whole object appears at once or not at all (a local temp file renamed into place;
  a PUT is that already);
* `create`: exclusive, first writer wins (`If-None-Match: *` on S3 and Azure,
  `ifGenerationMatch=0` on GCS, a hard link locally): a commit marker, a lease's first write;
* `swap`: replace only if the object is still the version read (`If-Match` on the ETag,
  `ifGenerationMatch` on the generation, the inode and mtime under a flock locally): a lease's
  renewal or take-over.
No rename: an object store has none that is atomic. Names are relative to OUT, `/`-separated.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import posixpath
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from ..atomic import fsync_dir, write_atomic
from ..sources.locations import filesystem, redact


@dataclass(frozen=True)
class Tagged:
    """An object's bytes and the version they were read at (what `swap` compares)."""

    data: bytes
    tag: str


class OutFiles(Protocol):
    """OUT's files, wherever OUT is."""

    @property
    def where(self) -> str:
        """OUT as messages show it (a path, or the URL redacted)."""
        ...

    def read(self, name: str) -> bytes:
        """The object's bytes; FileNotFoundError when there is none."""
        ...

    def read_tagged(self, name: str) -> Tagged | None:
        """The object's bytes with their version, or None when there is none."""
        ...

    def open(self, name: str) -> BinaryIO:
        """A seekable reader (Parquet reads the footer first); FileNotFoundError when missing."""
        ...

    def put(self, name: str, data: bytes) -> None:
        """Write the whole object; readers see the old one or the new one, never a part."""
        ...

    def write(self, name: str, fill: Callable[[BinaryIO], object]) -> None:
        """`put` for an object too large to hold in memory: `fill` writes it to a stream; it
        appears whole when `fill` returns, and not at all when `fill` raises."""
        ...

    def size(self, name: str) -> int:
        """The object's size in bytes; FileNotFoundError when there is none."""
        ...

    def exists(self, name: str) -> bool:
        """Whether the object is there now."""
        ...

    def create(self, name: str, data: bytes) -> bool:
        """Write the object only if there is none: False when one exists (another writer won)."""
        ...

    def swap(self, name: str, data: bytes, tag: str) -> str | None:
        """Replace the object only if it is still at `tag`: its new tag, or None when it changed
        (or is gone) since."""
        ...

    def delete(self, name: str) -> None:
        """Remove the object; no error when it is already gone."""
        ...

    def list(self, folder: str) -> list[str]:
        """The names of the objects directly in `folder` (relative to OUT), sorted; [] when none."""
        ...


# --------------------------------------------------------------------------- a local folder


class LocalFiles:
    """OUT as a local folder: temp file, fsync, rename; exclusive create by hard link."""

    def __init__(self, root: Path, tmp: str = ".gemma4u/tmp") -> None:
        self.root = root
        self._tmp = tmp

    @property
    def where(self) -> str:
        return str(self.root)

    def path(self, name: str) -> Path:
        return self.root / name

    def read(self, name: str) -> bytes:
        return self.path(name).read_bytes()

    def read_tagged(self, name: str) -> Tagged | None:
        try:
            with open(self.path(name), "rb") as fh:
                return Tagged(fh.read(), _local_tag(os.fstat(fh.fileno())))
        except FileNotFoundError:
            return None

    def open(self, name: str) -> BinaryIO:
        return open(self.path(name), "rb")

    def put(self, name: str, data: bytes) -> None:
        self.write(name, lambda fh: fh.write(data))

    def write(self, name: str, fill: Callable[[BinaryIO], object]) -> None:
        write_atomic(self._parent_ready(name), fill, self._tmp_dir())

    def size(self, name: str) -> int:
        return self.path(name).stat().st_size

    def exists(self, name: str) -> bool:
        return self.path(name).is_file()

    def create(self, name: str, data: bytes) -> bool:
        dest = self._parent_ready(name)
        tmp = self._tmp_dir() / f"{dest.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.incomplete"
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, dest)  # atomic and exclusive: the whole object, or EEXIST
            except FileExistsError:
                return False
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(dest.parent)
        return True

    def swap(self, name: str, data: bytes, tag: str) -> str | None:
        dest = self._parent_ready(name)
        with self._guard(dest):
            try:
                if _local_tag(dest.stat()) != tag:
                    return None
            except FileNotFoundError:
                return None
            write_atomic(dest, lambda fh: fh.write(data), self._tmp_dir())
            return _local_tag(dest.stat())

    def delete(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)

    def list(self, folder: str) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(self.path(folder)) if e.is_file())
        except (FileNotFoundError, NotADirectoryError):
            return []

    def _parent_ready(self, name: str) -> Path:
        dest = self.path(name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        return dest

    def _tmp_dir(self) -> Path:
        tmp = self.root / self._tmp
        tmp.mkdir(parents=True, exist_ok=True)
        return tmp

    @contextlib.contextmanager
    def _guard(self, dest: Path) -> Iterator[None]:
        """Swaps of one object take turns (the compare and the rename are two steps locally)."""
        with open(self._tmp_dir() / f"{dest.name}.swap-lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def _local_tag(st: os.stat_result) -> str:
    """A new file is put in place at every write (a new inode), so inode and mtime name a version."""
    return f"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}"


# --------------------------------------------------------------------------- an object store


class ObjectFiles:
    """OUT under an object-store URL (s3://, gs://, az://), through fsspec for reads, lists
    and plain writes and through each store's own conditional requests for `create` and
    `swap`. Credentials and endpoints come from the store's standard configuration."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.fs, path = filesystem(self.url + "/")
        self._base = path.rstrip("/")
        self._store = _conditional_writes(self.fs)

    @property
    def where(self) -> str:
        return redact(self.url)

    def key(self, name: str) -> str:
        return f"{self._base}/{name}"

    def probe(self) -> None:
        """Raise the store's own error when OUT's bucket (container) is missing or cannot be
        listed with these credentials: checked before any work."""
        bucket = self._base.split("/", 1)[0]
        self.fs.invalidate_cache(bucket)
        if not self.fs.exists(bucket):
            raise FileNotFoundError(f"no bucket or container {bucket!r}")
        self.fs.ls(self._base, detail=False)

    def _fresh(self, name: str) -> str:
        """The object's key, with what the filesystem remembers of it and of its folder dropped:
        adlfs and gcsfs answer `info` (so `open`) from a cached listing of the folder, which
        would not show an object written since."""
        key = self.key(name)
        self.fs.invalidate_cache(key)
        self.fs.invalidate_cache(posixpath.dirname(key))
        return key

    def read(self, name: str) -> bytes:
        data: bytes = self.fs.cat_file(self._fresh(name))
        return data

    def read_tagged(self, name: str) -> Tagged | None:
        return self._store.read_tagged(self.key(name))

    def open(self, name: str) -> BinaryIO:
        fh: BinaryIO = self.fs.open(self._fresh(name), "rb")
        return fh

    def put(self, name: str, data: bytes) -> None:
        self.fs.pipe_file(self.key(name), data)

    def write(self, name: str, fill: Callable[[BinaryIO], object]) -> None:
        fh = self.fs.open(self.key(name), "wb")  # a multipart upload: the object appears on close
        try:
            fill(fh)
        except BaseException:
            fh.discard()  # abort the upload: nothing appears
            raise
        fh.close()

    def size(self, name: str) -> int:
        return int(self.fs.size(self._fresh(name)))

    def exists(self, name: str) -> bool:
        try:
            info = self.fs.info(self._fresh(name))
        except FileNotFoundError:
            return False
        return bool(info.get("type") != "directory")

    def create(self, name: str, data: bytes) -> bool:
        return self._store.create(self.key(name), data)

    def swap(self, name: str, data: bytes, tag: str) -> str | None:
        return self._store.swap(self.key(name), data, tag)

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.key(name))

    def list(self, folder: str) -> list[str]:
        path = self.key(folder).rstrip("/")
        self.fs.invalidate_cache(path)
        try:
            entries = self.fs.ls(path, detail=True)
        except FileNotFoundError:
            return []
        finally:
            self.fs.invalidate_cache(path)
        names = (posixpath.basename(e["name"].rstrip("/")) for e in entries if e.get("type") != "directory")
        return sorted(n for n in names if n)


class _ConditionalWrites(Protocol):
    def read_tagged(self, key: str) -> Tagged | None: ...
    def create(self, key: str, data: bytes) -> bool: ...
    def swap(self, key: str, data: bytes, tag: str) -> str | None: ...


def _conditional_writes(fs: Any) -> _ConditionalWrites:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("s3", "s3a"):
        return _S3(fs)
    if protocol in ("gs", "gcs"):
        return _GCS(fs)
    if protocol in ("az", "abfs", "abfss"):
        return _Azure(fs)
    raise ValueError(f"{protocol}:// has no conditional writes here")


class _S3:
    """S3 (and the S3-compatibles that honour them): `If-None-Match: *`, `If-Match: <ETag>`."""

    def __init__(self, fs: Any) -> None:
        self.fs = fs

    def _split(self, key: str) -> tuple[str, str]:
        bucket, path, _ = self.fs.split_path(key)
        return bucket, path

    def read_tagged(self, key: str) -> Tagged | None:
        """GET: the body and the ETag of one and the same version."""
        from fsspec.asyn import sync

        bucket, path = self._split(key)

        async def get() -> Tagged | None:
            try:
                resp = await self.fs._call_s3("get_object", Bucket=bucket, Key=path)
            except FileNotFoundError:
                return None
            async with resp["Body"] as stream:
                data: bytes = await stream.read()
            return Tagged(data, str(resp["ETag"]).strip('"'))

        result: Tagged | None = sync(self.fs.loop, get)
        return result

    def create(self, key: str, data: bytes) -> bool:
        bucket, path = self._split(key)
        try:
            self.fs.call_s3("put_object", Bucket=bucket, Key=path, Body=data, IfNoneMatch="*")
        except FileExistsError:
            return False
        except OSError as exc:
            if _precondition(exc):
                return False
            raise
        finally:
            self.fs.invalidate_cache(key)
        return True

    def swap(self, key: str, data: bytes, tag: str) -> str | None:
        bucket, path = self._split(key)
        try:
            resp = self.fs.call_s3("put_object", Bucket=bucket, Key=path, Body=data, IfMatch=f'"{tag}"')
        except (FileNotFoundError, FileExistsError):
            return None
        except OSError as exc:
            if _precondition(exc):
                return None
            raise
        finally:
            self.fs.invalidate_cache(key)
        return str(resp["ETag"]).strip('"')


def _precondition(exc: OSError) -> bool:
    """s3fs maps 412 Precondition Failed to EINVAL (If-None-Match failures to FileExistsError)."""
    return exc.errno == errno.EINVAL and "precondition" in str(exc).lower().replace("-", "")


class _GCS:
    """GCS: `ifGenerationMatch=0` to create, `ifGenerationMatch=<generation>` to swap."""

    def __init__(self, fs: Any) -> None:
        self.fs = fs

    def read_tagged(self, key: str) -> Tagged | None:
        try:
            info = self.fs.info(key)
        except FileNotFoundError:
            return None
        generation = str(info["generation"])
        try:
            data: bytes = self.fs.cat_file(f"{key}#{generation}" if self.fs.version_aware else key)
        except FileNotFoundError:
            return None
        again = self.fs.info(key)
        if str(again["generation"]) != generation:  # rewritten between the two reads: try again
            return self.read_tagged(key)
        return Tagged(data, generation)

    def _upload(self, key: str, data: bytes, generation: str) -> str | None:
        bucket, path, _ = self.fs.split_path(key)
        try:
            out = self.fs.call(
                "POST",
                f"{self.fs._location}/upload/storage/v1/b/{bucket}/o",
                uploadType="media",
                name=path,
                ifGenerationMatch=generation,
                data=data,
                json_out=True,
            )
        except FileExistsError:  # gcsfs: 412 Precondition Failed
            return None
        except FileNotFoundError:
            return None
        finally:
            self.fs.invalidate_cache(key)
        return str(out["generation"])

    def create(self, key: str, data: bytes) -> bool:
        return self._upload(key, data, "0") is not None

    def swap(self, key: str, data: bytes, tag: str) -> str | None:
        return self._upload(key, data, tag)


class _Azure:
    """Azure Blob: `If-None-Match: *` to create, `If-Match: <ETag>` to swap."""

    def __init__(self, fs: Any) -> None:
        self.fs = fs

    def _client(self, key: str) -> Any:
        container, path, _ = self.fs.split_path(key)
        return self.fs.service_client.get_blob_client(container, path)

    def _run(self, coro: Any) -> Any:
        from fsspec.asyn import sync

        return sync(self.fs.loop, lambda: coro)

    def read_tagged(self, key: str) -> Tagged | None:
        from azure.core.exceptions import ResourceNotFoundError

        async def read() -> Tagged | None:
            async with self._client(key) as blob:
                try:
                    stream = await blob.download_blob()
                except ResourceNotFoundError:
                    return None
                data = await stream.readall()
                return Tagged(data, str(stream.properties.etag).strip('"'))

        result: Tagged | None = self._run(read())
        return result

    def create(self, key: str, data: bytes) -> bool:
        from azure.core.exceptions import ResourceExistsError

        async def write() -> bool:
            async with self._client(key) as blob:
                try:
                    await blob.upload_blob(data, overwrite=False)
                except ResourceExistsError:
                    return False
                return True

        try:
            created: bool = self._run(write())
            return created
        finally:
            self.fs.invalidate_cache(key)

    def swap(self, key: str, data: bytes, tag: str) -> str | None:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        async def write() -> str | None:
            async with self._client(key) as blob:
                try:
                    out = await blob.upload_blob(
                        data, overwrite=True, etag=f'"{tag}"', match_condition=MatchConditions.IfNotModified
                    )
                except (ResourceModifiedError, ResourceNotFoundError):
                    return None
                return str(out["etag"]).strip('"')

        try:
            new: str | None = self._run(write())
            return new
        finally:
            self.fs.invalidate_cache(key)


def out_files(where: Path | str) -> OutFiles:
    """OUT's files for a local folder or an object-store URL."""
    if isinstance(where, Path):
        return LocalFiles(where)
    return ObjectFiles(where)
