"""A local stand-in of the Hugging Face Hub, for testing gemma4u against the real `huggingface_hub`
and `datasets` clients (`HF_ENDPOINT` pointed at it; nothing leaves 127.0.0.1): `gemma4u export
--push-to-hub` through its upload API, and Hub inputs (`--dataset ORG/NAME` streamed by
`datasets`, `hf://datasets/ORG/NAME/PATH` listed and read through `HfFileSystem`) through its
read API.

Repositories keep their history: every commit is a snapshot of the files, a branch points at its
latest commit, and any commit stays readable by its id (as a client pins a revision it resolved).
`seed()` commits files to a repository directly (creating it), for tests that read.

The upload API, as `HfApi.create_repo`, `create_branch` and `upload_folder` send it:

* `POST /api/repos/create` (409 with the repo's url when it exists; a new repo's `main` holds a
  `.gitattributes` in an initial commit, as on the Hub),
* `POST /api/{type}s/{repo}/branch/{branch}` (from `main` or the `startingPoint`; 409 when it
  exists),
* `POST /api/validate-yaml` (the card's YAML header must parse and be a mapping),
* `POST /api/{type}s/{repo}/preupload/{rev}`: `lfs` for binary samples, files of 10 MB or more
  and the Hub's default `.gitattributes` patterns (Parquet among them), `regular` otherwise,
* `POST /{type}s/{repo}.git/info/lfs/objects/batch` (basic transfer: an upload and a verify
  action per object it does not hold), `PUT` of the object (its sha256 and size are checked),
  the verify call,
* `POST /api/{type}s/{repo}/commit/{rev}`: the NDJSON commit (inline base64 files, LFS pointers
  to uploaded objects, deletions), applied to the branch in order.

The read API, as `hf_hub_download`, `HfApi.repo_info`, `HfFileSystem` and `datasets.load_dataset`
(streaming) send it:

* `GET /api/{type}s/{repo}` and `GET /api/{type}s/{repo}/revision/{rev}`: the repo's info at the
  revision (`sha`, `siblings`; with `blobs=true` each sibling's size, blob id and LFS facts),
* `GET /api/{type}s/{repo}/tree/{rev}[/{path}]?recursive=…&expand=…`: a folder's entries (a
  file's path lists the file), recursive or one level, in pages of `page_size` entries
  (`expand_page_size` with `expand=true`, as the Hub caps them at 1000 and 50) followed through
  the `Link: <…>; rel="next"` header and an opaque `cursor`. A file is `type`, `path`, `size`,
  `oid` (the git blob id, of the LFS pointer for an LFS file) and `lfs` {`oid` (sha256), `size`,
  `pointerSize`}; a folder is `type: directory`, `path`, `oid`; `expand=true` adds `lastCommit`
  {`id`, `title`, `date`} (the last commit that changed the path),
* `POST /api/{type}s/{repo}/paths-info/{rev}` (form or JSON `paths`, `expand`): those entries for
  the paths that exist,
* `GET /api/{type}s/{repo}/commits/{rev}`: the branch's history, newest first,
* `GET` and `HEAD /{datasets/|spaces/|}{repo}/resolve/{rev}/{path}`: the file's bytes, with a
  `Range` (206 and `Content-Range`; 416 past the end), `ETag` (the git blob id, or the LFS
  object's sha256, also as `X-Linked-Etag` and `X-Linked-Size`), `X-Repo-Commit`,
  `Accept-Ranges`; `If-None-Match` with the current ETag is 304.

Errors carry the Hub's `X-Error-Code` (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`) so
the client raises its typed errors. `GET /api/agent-harnesses` (the client's best-effort agent
detection for its user agent) is public: an empty registry.

Writes need the token (`Authorization: Bearer …`; the LFS object `PUT` goes to storage without
it). Reads of a repo that is not private need none, as on the Hub; a private one's are answered
as a missing repo without the token. A wrong token is 401 on any request, kept in
`unauthorized`. Every request is kept in `log` as (method, path), the path percent-decoded
without its query. Anything else is answered 404 and kept in `unexpected`. The Xet transfer
(`hf_xet`'s content-addressed storage) is not implemented: run the client with
`HF_HUB_DISABLE_XET=1` so it uses the LFS protocol above; no entry carries a `xetHash`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import yaml

LFS_SUFFIXES = (".parquet", ".arrow", ".bin", ".zip", ".gz", ".zst", ".png", ".jpg", ".jpeg", ".wav", ".mp4", ".pt")
LFS_MIN_SIZE = 10 * 1024**2
GITATTRIBUTES = b"".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n".encode() for s in LFS_SUFFIXES)
_REPO = r"(model|dataset|space)s/([^/]+/[^/]+?)"


# ------------------------------------------------------------------------------ repositories


def blob_oid(data: bytes) -> str:
    """git's blob id of `data`."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    """The git LFS pointer file that stands for `data` in the repo."""
    oid = hashlib.sha256(data).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n".encode()


def is_lfs(path: str, data: bytes) -> bool:
    """Stored through LFS: the Hub's default `.gitattributes` patterns, a binary sample or 10 MB
    and more (what `preupload` answers)."""
    return path.lower().endswith(LFS_SUFFIXES) or len(data) >= LFS_MIN_SIZE or not _text(data[:512])


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    date: str  # ISO 8601 with milliseconds, as the Hub writes it
    files: dict[str, bytes]


@dataclass
class Repo:
    repo_type: str
    visibility: str | None  # as the client asked: "private", "public" or not said (None)
    history: dict[str, Commit] = field(default_factory=dict)  # every commit by id
    heads: dict[str, str] = field(default_factory=dict)  # branch → its latest commit's id
    commits: list[dict[str, Any]] = field(default_factory=list)  # the commits made (API or seed), in order

    @property
    def private(self) -> bool:
        return self.visibility == "private"

    @property
    def branches(self) -> dict[str, dict[str, bytes]]:
        """Each branch's files now."""
        return {b: self.history[oid].files for b, oid in self.heads.items()}

    def at(self, rev: str) -> Commit | None:
        """The commit a revision names: a branch, or a commit id."""
        oid = self.heads.get(rev, rev)
        return self.history.get(oid)

    def log(self, oid: str) -> Iterable[Commit]:
        """`oid`'s commit and its ancestors, newest first."""
        commit: Commit | None = self.history[oid]
        while commit is not None:
            yield commit
            commit = self.history.get(commit.parent) if commit.parent else None


class HubStandin:
    """`with HubStandin(token) as hub:` serves on `hub.endpoint` in a thread."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.repos: dict[str, Repo] = {}  # "datasets/me/x" → Repo
        self.objects: dict[str, bytes] = {}  # LFS objects by sha256
        self.lfs_uploads: list[str] = []  # oids PUT, in order
        self.validated: list[dict[str, Any]] = []  # YAML headers validated
        self.log: list[tuple[str, str]] = []  # (method, path) of every request
        self.unexpected: list[str] = []
        self.unauthorized: list[str] = []
        self.page_size = 1000  # tree entries per page, as the Hub caps them
        self.expand_page_size = 50  # … with expand=true
        self._lock = threading.RLock()
        self._clock = datetime(2025, 1, 1, tzinfo=UTC)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> HubStandin:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ---------------------------------------------------------------- for tests

    def files(self, repo: str, branch: str = "main", repo_type: str = "dataset") -> dict[str, bytes]:
        return dict(self.repos[f"{repo_type}s/{repo}"].branches[branch])

    def seed(
        self,
        repo: str,
        files: Mapping[str, bytes | str] | None = None,
        *,
        delete: Iterable[str] = (),
        summary: str = "seed",
        branch: str = "main",
        repo_type: str = "dataset",
        private: bool = False,
    ) -> str:
        """Commit `files` (path → bytes or text) and deletions to `branch` of `repo`, creating the
        repo (its initial commit holds the `.gitattributes`) and the branch as needed; the
        commit's id."""
        with self._lock:
            key = f"{repo_type}s/{repo}"
            if key not in self.repos:
                self.repos[key] = self._new_repo(repo_type, "private" if private else None)
            r = self.repos[key]
            parent = r.at(r.heads.get(branch, "main"))
            assert parent is not None
            current = dict(parent.files)
            for path in delete:
                current = {p: b for p, b in current.items() if p != path and not p.startswith(path + "/")}
            for path, data in (files or {}).items():
                current[path] = data.encode() if isinstance(data, str) else data
            oid = self._commit_files(r, branch, current, summary, salt=repr(sorted(current)).encode())
            return oid

    def head(self, repo: str, branch: str = "main", repo_type: str = "dataset") -> str:
        """The id of `branch`'s latest commit."""
        return self.repos[f"{repo_type}s/{repo}"].heads[branch]

    def requests(self, method: str, prefix: str) -> list[str]:
        """Paths of the logged `method` requests that start with `prefix`."""
        return [p for m, p in self.log if m == method and p.startswith(prefix)]

    def _new_repo(self, repo_type: str, visibility: str | None) -> Repo:
        repo = Repo(repo_type, visibility)
        files = {".gitattributes": GITATTRIBUTES}
        first = Commit(self._oid(repo_type.encode()), None, "initial commit", self._now(), files)
        repo.history[first.oid] = first
        repo.heads["main"] = first.oid
        return repo

    def _commit_files(self, repo: Repo, branch: str, files: dict[str, bytes], title: str, salt: bytes) -> str:
        parent = repo.heads.get(branch) or repo.heads["main"]
        commit = Commit(self._oid(parent.encode() + salt), parent, title, self._now(), files)
        repo.history[commit.oid] = commit
        repo.heads[branch] = commit.oid
        repo.commits.append({"oid": commit.oid, "branch": branch, "summary": title, "paths": sorted(files)})
        return commit.oid

    def _oid(self, salt: bytes) -> str:
        return hashlib.sha1(salt + str(len(self.log)).encode() + self._now().encode()).hexdigest()

    def _now(self) -> str:
        """Commit dates: strictly increasing, a second apart (a commit's date is its files' mtime)."""
        self._clock += timedelta(seconds=1)
        return self._clock.strftime("%Y-%m-%dT%H:%M:%S.000Z")

    # ---------------------------------------------------------------- routes

    def route(self, req: Request) -> Reply:
        for pattern, methods, access, fn in self._routes():
            m = re.fullmatch(pattern, req.path)
            if m and req.method in methods:
                with self._lock:
                    if access == "token" and not req.authorized:
                        self.unauthorized.append(f"{req.method} {req.path}")
                        return _json(401, {"error": "Invalid credentials"})
                    if access == "read":
                        repo = self.repos.get(f"{m.group(1) or 'model'}s/{m.group(2)}")
                        if repo is None or (repo.private and not req.authorized):
                            return _error(404, "RepoNotFound", "Repository not found")
                    result = fn(req, *m.groups())
                    return result if isinstance(result, Reply) else _json(*result)
        self.unexpected.append(f"{req.method} {req.path}")
        return _json(404, {"error": f"the stand-in does not implement {req.method} {req.path}"})

    def _routes(self) -> list[tuple[str, tuple[str, ...], str, Callable[..., Any]]]:
        """(path pattern, methods, access, handler): access is "public", "read" (a repo's reads:
        its visibility decides) or "token"."""
        repo = _REPO
        resolve = r"/(?:(dataset|space)s/)?([^/]+/[^/]+?)/resolve/([^/]+)/(.+)"
        return [
            (r"/api/agent-harnesses", ("GET",), "public", lambda req: (200, {"standardEnvVars": [], "harnesses": {}})),
            (r"/api/repos/create", ("POST",), "token", self._create_repo),
            (rf"/api/{repo}/branch/([^/]+)", ("POST",), "token", self._create_branch),
            (r"/api/validate-yaml", ("POST",), "token", self._validate_yaml),
            (rf"/api/{repo}/preupload/([^/]+)", ("POST",), "token", self._preupload),
            (rf"/{repo}\.git/info/lfs/objects/batch", ("POST",), "token", self._lfs_batch),
            (r"/lfs-objects/([0-9a-f]{64})", ("PUT",), "public", self._lfs_put),
            (r"/lfs-verify", ("POST",), "token", self._lfs_verify),
            (rf"/api/{repo}/commit/([^/]+)", ("POST",), "token", self._commit),
            (r"/api/(model|dataset|space)s/([^/]+(?:/[^/]+?)?)(?:/revision/([^/]+))?", ("GET",), "read", self._info),
            (rf"/api/{repo}/tree/([^/]+)(?:/(.+))?", ("GET",), "read", self._tree),
            (rf"/api/{repo}/paths-info/([^/]+)", ("POST",), "read", self._paths_info),
            (rf"/api/{repo}/commits/([^/]+)", ("GET",), "read", self._commits),
            (resolve, ("GET", "HEAD"), "read", self._resolve),
        ]

    def _repo(self, repo_type: str, repo_id: str) -> Repo | None:
        return self.repos.get(f"{repo_type}s/{repo_id}")

    # ------------------------------------------------------------ the upload API

    def _create_repo(self, req: Request) -> tuple[int, Any]:
        p = json.loads(req.body)
        repo_type = p.get("type") or "model"
        repo_id = f"{p['organization']}/{p['name']}" if p.get("organization") else p["name"]
        key = f"{repo_type}s/{repo_id}"
        url = f"{self.endpoint}/{key if repo_type != 'model' else repo_id}"
        if key in self.repos:
            return 409, {"error": "You already created this repo", "url": url}
        self.repos[key] = self._new_repo(repo_type, p.get("visibility"))
        return 200, {"url": url, "name": repo_id}

    def _create_branch(self, req: Request, repo_type: str, repo_id: str, branch: str) -> tuple[int, Any]:
        repo = self._repo(repo_type, repo_id)
        branch = urllib.parse.unquote(branch)
        if repo is None:
            return 404, {"error": "Repository not found"}
        if branch in repo.heads:
            return 409, {"error": f"Reference {branch} already exists"}
        start = (json.loads(req.body) if req.body else {}).get("startingPoint") or "main"
        commit = repo.at(start)
        if commit is None:
            return 404, {"error": f"Invalid rev id: {start}"}
        repo.heads[branch] = commit.oid
        return 200, {}

    def _validate_yaml(self, req: Request) -> tuple[int, Any]:
        content = json.loads(req.body)["content"]
        m = re.match(r"---\n(.*?)\n---\n", content, re.S)
        try:
            header = yaml.safe_load(m.group(1)) if m else None
        except yaml.YAMLError as exc:
            return 400, {"errors": [{"message": f"YAML: {exc}"}]}
        if not isinstance(header, dict):
            return 400, {"errors": [{"message": "no YAML mapping between --- lines"}]}
        self.validated.append(header)
        return 200, {"errors": [], "warnings": []}

    def _preupload(self, req: Request, repo_type: str, repo_id: str, rev: str) -> tuple[int, Any]:
        if self._repo(repo_type, repo_id) is None:
            return 404, {"error": "Repository not found"}
        files = []
        for f in json.loads(req.body)["files"]:
            sample = base64.b64decode(f["sample"])
            lfs = not _text(sample) or f["size"] >= LFS_MIN_SIZE or f["path"].lower().endswith(LFS_SUFFIXES)
            files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False})
        return 200, {"files": files}

    def _lfs_batch(self, req: Request, repo_type: str, repo_id: str) -> tuple[int, Any]:
        p = json.loads(req.body)
        if p.get("operation") != "upload" or "basic" not in p.get("transfers", []):
            return 400, {"message": "upload with the basic transfer only"}
        objects = []
        for o in p["objects"]:
            entry: dict[str, Any] = {"oid": o["oid"], "size": o["size"], "authenticated": True}
            if o["oid"] not in self.objects:
                entry["actions"] = {
                    "upload": {"href": f"{self.endpoint}/lfs-objects/{o['oid']}", "header": {}},
                    "verify": {"href": f"{self.endpoint}/lfs-verify", "header": {}},
                }
            objects.append(entry)
        return 200, {"transfer": "basic", "objects": objects}

    def _lfs_put(self, req: Request, oid: str) -> tuple[int, Any]:
        if hashlib.sha256(req.body).hexdigest() != oid:
            return 400, {"message": "sha256 mismatch"}
        self.objects[oid] = req.body
        self.lfs_uploads.append(oid)
        return 200, {}

    def _lfs_verify(self, req: Request) -> tuple[int, Any]:
        p = json.loads(req.body)
        ok = p["oid"] in self.objects and len(self.objects[p["oid"]]) == p["size"]
        return (200, {}) if ok else (404, {"message": "object not uploaded"})

    def _commit(self, req: Request, repo_type: str, repo_id: str, rev: str) -> tuple[int, Any]:
        repo = self._repo(repo_type, repo_id)
        rev = urllib.parse.unquote(rev)
        if repo is None or rev not in repo.heads:
            return 404, {"error": "Repository or revision not found"}
        files = dict(repo.branches[rev])
        header: dict[str, Any] = {}
        for line in req.body.decode().splitlines():
            item = json.loads(line)
            key, v = item["key"], item["value"]
            if key == "header":
                header = v
            elif key == "file":
                files[v["path"]] = base64.b64decode(v["content"]) if v.get("encoding") == "base64" else v["content"]
            elif key == "lfsFile":
                data = self.objects.get(v["oid"])
                if data is None or len(data) != v["size"] or v.get("algo", "sha256") != "sha256":
                    return 400, {"error": f"LFS object {v['oid']} of {v['path']} was not uploaded"}
                files[v["path"]] = data
            elif key in ("deletedFile", "deletedFolder"):
                files = {k: b for k, b in files.items() if k != v["path"] and not k.startswith(v["path"] + "/")}
            else:
                return 400, {"error": f"unknown commit operation {key}"}
        oid = self._commit_files(repo, rev, files, header.get("summary") or "", salt=req.body)
        return 200, {"commitUrl": f"{self.endpoint}/{repo_type}s/{repo_id}/commit/{oid}", "commitOid": oid}

    # -------------------------------------------------------------- the read API

    def _at(self, repo_type: str, repo_id: str, rev: str | None) -> Commit | Reply:
        """The commit `rev` (percent-encoded, as sent) names in the repo, or the Hub's error."""
        repo = self._repo(repo_type, repo_id)
        assert repo is not None  # checked by route()
        name = urllib.parse.unquote(rev) if rev else "main"
        commit = repo.at(name)
        if commit is None:
            return _error(404, "RevisionNotFound", f"Invalid rev id: {name}")
        return commit

    def _info(self, req: Request, repo_type: str, repo_id: str, rev: str | None) -> Reply | tuple[int, Any]:
        commit = self._at(repo_type, repo_id, rev)
        if isinstance(commit, Reply):
            return commit
        repo = self._repo(repo_type, repo_id)
        assert repo is not None
        blobs = req.query.get("blobs", ["false"])[-1].lower() == "true"
        siblings = []
        for path, data in sorted(commit.files.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                entry = _file_entry(path, data)
                sibling.update(size=entry["size"], blobId=entry["oid"])
                if "lfs" in entry:
                    lfs = entry["lfs"]
                    sibling["lfs"] = {"sha256": lfs["oid"], "size": lfs["size"], "pointerSize": lfs["pointerSize"]}
            siblings.append(sibling)
        first = next(iter(reversed(list(repo.log(commit.oid)))))
        return 200, {
            "_id": hashlib.sha1(f"{repo_type}/{repo_id}".encode()).hexdigest()[:24],
            "id": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit.oid,
            "createdAt": first.date,
            "lastModified": commit.date,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
        }

    def _tree(self, req: Request, repo_type: str, repo_id: str, rev: str, path: str | None) -> Reply | tuple[int, Any]:
        commit = self._at(repo_type, repo_id, rev)
        if isinstance(commit, Reply):
            return commit
        folder = urllib.parse.unquote(path or "").strip("/")
        recursive = _flag(req.query, "recursive")
        expand = _flag(req.query, "expand")
        repo = self._repo(repo_type, repo_id)
        assert repo is not None
        if folder in commit.files:
            paths = [folder]  # a file's path lists the file
        else:
            paths = _below(commit.files, folder, recursive)
            if folder and not paths:
                return _error(404, "EntryNotFound", f"{folder} does not exist on {urllib.parse.unquote(rev)}")
        size = self.expand_page_size if expand else self.page_size
        start = int(req.query.get("cursor", ["0"])[-1] or 0)
        page = [_entry(repo, commit, p, expand) for p in paths[start : start + size]]
        headers = {}
        if start + size < len(paths):
            query = urllib.parse.urlencode({**{k: v[-1] for k, v in req.query.items()}, "cursor": start + size})
            headers["Link"] = f'<{self.endpoint}{req.raw_path}?{query}>; rel="next"'
        return _json(200, page, headers)

    def _paths_info(self, req: Request, repo_type: str, repo_id: str, rev: str) -> Reply | tuple[int, Any]:
        commit = self._at(repo_type, repo_id, rev)
        if isinstance(commit, Reply):
            return commit
        repo = self._repo(repo_type, repo_id)
        assert repo is not None
        if req.headers.get("Content-Type", "").startswith("application/json"):
            form = json.loads(req.body)
            paths, expand = form.get("paths", []), bool(form.get("expand"))
        else:
            form = urllib.parse.parse_qs(req.body.decode())
            paths, expand = form.get("paths", []), _flag(form, "expand")
        entries = []
        for p in paths if isinstance(paths, list) else [paths]:
            p = p.strip("/")
            if p in commit.files or _below(commit.files, p, recursive=False):
                entries.append(_entry(repo, commit, p, expand))
        return 200, entries

    def _commits(self, req: Request, repo_type: str, repo_id: str, rev: str) -> Reply | tuple[int, Any]:
        commit = self._at(repo_type, repo_id, rev)
        if isinstance(commit, Reply):
            return commit
        repo = self._repo(repo_type, repo_id)
        assert repo is not None
        return 200, [
            {"id": c.oid, "title": c.title, "message": "", "authors": [{"user": "standin"}], "date": c.date}
            for c in repo.log(commit.oid)
        ]

    def _resolve(self, req: Request, repo_type: str | None, repo_id: str, rev: str, path: str) -> Reply:
        commit = self._at(repo_type or "model", repo_id, rev)
        if isinstance(commit, Reply):
            return commit
        path = urllib.parse.unquote(path)
        data = commit.files.get(path)
        if data is None:
            return _error(404, "EntryNotFound", f"{path} does not exist on {urllib.parse.unquote(rev)}", commit.oid)
        entry = _file_entry(path, data)
        etag = f'"{entry["lfs"]["oid"] if "lfs" in entry else entry["oid"]}"'
        headers = {
            "ETag": etag,
            "X-Repo-Commit": commit.oid,
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if "lfs" in entry:
            headers.update({"X-Linked-Etag": etag, "X-Linked-Size": str(len(data))})
        if req.headers.get("If-None-Match") == etag:
            return Reply(304, b"", headers)
        span = _range(req.headers.get("Range"), len(data))
        if span is None:
            return Reply(200, data, headers)
        if span == (-1, -1):
            return Reply(416, b"", {**headers, "Content-Range": f"bytes */{len(data)}"})
        first, last = span
        return Reply(206, data[first : last + 1], {**headers, "Content-Range": f"bytes {first}-{last}/{len(data)}"})


# ------------------------------------------------------------------------------ entries


def _file_entry(path: str, data: bytes) -> dict[str, Any]:
    if not is_lfs(path, data):
        return {"type": "file", "path": path, "size": len(data), "oid": blob_oid(data)}
    pointer = lfs_pointer(data)
    lfs = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": len(pointer)}
    return {"type": "file", "path": path, "size": len(data), "oid": blob_oid(pointer), "lfs": lfs}


def _entry(repo: Repo, commit: Commit, path: str, expand: bool) -> dict[str, Any]:
    """A tree entry: the file, or the folder, at `path` in `commit`."""
    data = commit.files.get(path)
    if data is not None:
        entry = _file_entry(path, data)
    else:
        inside = sorted((p, blob_oid(b)) for p, b in commit.files.items() if p.startswith(path + "/"))
        entry = {"type": "directory", "path": path, "size": 0, "oid": hashlib.sha1(repr(inside).encode()).hexdigest()}
    if expand:
        last = _last_commit(repo, commit, path)
        entry["lastCommit"] = {"id": last.oid, "title": last.title, "date": last.date}
    return entry


def _snapshot(files: Mapping[str, bytes], path: str) -> dict[str, bytes]:
    return {p: b for p, b in files.items() if p == path or p.startswith(path + "/")}


def _last_commit(repo: Repo, commit: Commit, path: str) -> Commit:
    """The newest commit up to `commit` that changed `path` (a file, or anything in a folder)."""
    here = _snapshot(commit.files, path)
    last = commit
    for older in list(repo.log(commit.oid))[1:]:
        if _snapshot(older.files, path) != here:
            break
        last = older
    return last


def _below(files: Mapping[str, bytes], folder: str, recursive: bool) -> list[str]:
    """The paths in `folder` (the repo's root for ""): its files and folders, every level down or
    only the first, in path order."""
    prefix = folder + "/" if folder else ""
    out: set[str] = set()
    for p in files:
        if not p.startswith(prefix):
            continue
        parts = p[len(prefix) :].split("/")
        depth = len(parts) if recursive else 1
        for i in range(1, min(depth, len(parts)) + 1):
            out.add(prefix + "/".join(parts[:i]))
    return sorted(out)


def _flag(query: Mapping[str, list[str]], name: str) -> bool:
    return query.get(name, ["false"])[-1].lower() in ("1", "true")


def _range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a `Range: bytes=…` header (one range), (-1, -1) when it starts past
    the end, None for the whole body."""
    m = re.fullmatch(r"bytes=(\d*)-(\d*)", (header or "").strip())
    if m is None or m.groups() == ("", ""):
        return None
    first, last = m.groups()
    if first == "":
        n = int(last)
        return (max(size - n, 0), size - 1) if n else (-1, -1)
    start = int(first)
    if start >= size:
        return (-1, -1)
    return start, min(int(last), size - 1) if last else size - 1


def _text(sample: bytes) -> bool:
    if b"\x00" in sample:
        return False
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# ------------------------------------------------------------------------------ HTTP


@dataclass
class Request:
    method: str
    raw_path: str  # as sent, without the query
    path: str  # the same: routes match it percent-encoded (a path in the repo may be one segment)
    query: dict[str, list[str]]
    headers: Any  # the request's headers (an email.message.Message)
    body: bytes
    authorized: bool  # the token was sent


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})


def _error(status: int, code: str, message: str, commit: str | None = None) -> Reply:
    headers = {"X-Error-Code": code, "X-Error-Message": message}
    if commit:
        headers["X-Repo-Commit"] = commit
    return _json(status, {"error": message}, headers)


def _handler(hub: HubStandin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks: list[bytes] = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        self.rfile.readline()
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _serve(self) -> None:
            body = self._body()
            raw_path, _, query = self.path.partition("?")
            with hub._lock:
                hub.log.append((self.command, urllib.parse.unquote(raw_path)))
            auth = self.headers.get("Authorization")
            if auth is not None and auth != f"Bearer {hub.token}":
                hub.unauthorized.append(f"{self.command} {raw_path}")
                reply = _error(401, "", "Invalid credentials in Authorization header")
            else:
                req = Request(
                    method=self.command,
                    raw_path=raw_path,
                    path=raw_path,
                    query=urllib.parse.parse_qs(query, keep_blank_values=True),
                    headers=self.headers,
                    body=body,
                    authorized=auth is not None,
                )
                reply = hub.route(req)
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                if value:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(reply.body)

        do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _serve

    return Handler
