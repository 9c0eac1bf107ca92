"""A local stand-in of the Hugging Face Hub's upload API, for testing `gemma4u export
--push-to-hub` through the real `huggingface_hub` client (`HF_ENDPOINT` pointed at it; nothing
leaves 127.0.0.1).

It implements the requests `HfApi.create_repo`, `create_branch` and `upload_folder` make, as
the client sends them:

* `POST /api/repos/create` (409 with the repo's url when it exists; a new repo's `main` holds a
  `.gitattributes`, as on the Hub),
* `POST /api/{type}s/{repo}/branch/{branch}` (a copy of `main`; 409 when it exists),
* `POST /api/validate-yaml` (the card's YAML header must parse and be a mapping),
* `POST /api/{type}s/{repo}/preupload/{rev}`: `lfs` for binary samples, files of 10 MB or more
  and the Hub's default `.gitattributes` patterns (Parquet among them), `regular` otherwise,
* `POST /{type}s/{repo}.git/info/lfs/objects/batch` (basic transfer: an upload and a verify
  action per object it does not hold), `PUT` of the object (its sha256 and size are checked),
  the verify call,
* `GET /api/{type}s/{repo}/tree/{rev}?recursive=true` (one page; `upload_folder` lists the
  files its `delete_patterns` may remove),
* `POST /api/{type}s/{repo}/commit/{rev}`: the NDJSON commit (inline base64 files, LFS pointers
  to uploaded objects, deletions), applied to the branch in order,
* `GET /api/agent-harnesses` (the client's best-effort agent detection for its user agent,
public: an empty registry). Every other request must carry the token (`Authorization:
Bearer …`; the LFS object `PUT` goes to storage without it). Anything else is answered 404 and
kept in `unexpected`. The Xet transfer (`hf_xet`'s content-addressed storage) is not
implemented: run the client with `HF_HUB_DISABLE_XET=1` so it uses the LFS protocol above.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import yaml

LFS_SUFFIXES = (".parquet", ".arrow", ".bin", ".zip", ".gz", ".zst", ".png", ".jpg", ".jpeg", ".wav", ".mp4", ".pt")
LFS_MIN_SIZE = 10 * 1024**2
GITATTRIBUTES = b"".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n".encode() for s in LFS_SUFFIXES)


@dataclass
class Repo:
    repo_type: str
    visibility: str | None  # as the client asked: "private", "public" or not said (None)
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {".gitattributes": GITATTRIBUTES}})
    commits: list[dict[str, Any]] = field(default_factory=list)


class HubStandin:
    """`with HubStandin(token) as hub:` serves on `hub.endpoint` in a thread."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.repos: dict[str, Repo] = {}  # "datasets/me/x" → Repo
        self.objects: dict[str, bytes] = {}  # LFS objects by sha256
        self.lfs_uploads: list[str] = []  # oids PUT, in order
        self.validated: list[dict[str, Any]] = []  # YAML headers validated
        self.unexpected: list[str] = []
        self.unauthorized: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> HubStandin:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def files(self, repo: str, branch: str = "main", repo_type: str = "dataset") -> dict[str, bytes]:
        return dict(self.repos[f"{repo_type}s/{repo}"].branches[branch])

    # ---------------------------------------------------------------- routes

    def route(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        for pattern, meth, fn in self._routes():
            m = re.fullmatch(pattern, path)
            if m and meth == method:
                with self._lock:
                    return fn(body, *m.groups())
        self.unexpected.append(f"{method} {path}")
        return 404, {"error": f"the stand-in does not implement {method} {path}"}

    def _routes(self) -> list[tuple[str, str, Any]]:
        repo = r"(model|dataset|space)s/([^/]+/[^/]+?)"
        return [
            (r"/api/agent-harnesses", "GET", lambda body: (200, {"standardEnvVars": [], "harnesses": {}})),
            (r"/api/repos/create", "POST", self._create_repo),
            (rf"/api/{repo}/branch/([^/]+)", "POST", self._create_branch),
            (r"/api/validate-yaml", "POST", self._validate_yaml),
            (rf"/api/{repo}/preupload/([^/]+)", "POST", self._preupload),
            (rf"/{repo}\.git/info/lfs/objects/batch", "POST", self._lfs_batch),
            (r"/lfs-objects/([0-9a-f]{64})", "PUT", self._lfs_put),
            (r"/lfs-verify", "POST", self._lfs_verify),
            (rf"/api/{repo}/tree/([^/]+)", "GET", self._tree),
            (rf"/api/{repo}/commit/([^/]+)", "POST", self._commit),
        ]

    def _repo(self, repo_type: str, repo_id: str) -> Repo | None:
        return self.repos.get(f"{repo_type}s/{repo_id}")

    def _create_repo(self, body: bytes) -> tuple[int, Any]:
        p = json.loads(body)
        repo_type = p.get("type") or "model"
        repo_id = f"{p['organization']}/{p['name']}" if p.get("organization") else p["name"]
        key = f"{repo_type}s/{repo_id}"
        url = f"{self.endpoint}/{key if repo_type != 'model' else repo_id}"
        if key in self.repos:
            return 409, {"error": "You already created this repo", "url": url}
        self.repos[key] = Repo(repo_type, p.get("visibility"))
        return 200, {"url": url, "name": repo_id}

    def _create_branch(self, body: bytes, repo_type: str, repo_id: str, branch: str) -> tuple[int, Any]:
        repo = self._repo(repo_type, repo_id)
        if repo is None:
            return 404, {"error": "Repository not found"}
        if branch in repo.branches:
            return 409, {"error": f"Reference {branch} already exists"}
        start = (json.loads(body) if body else {}).get("startingPoint") or "main"
        repo.branches[branch] = dict(repo.branches[start])
        return 200, {}

    def _validate_yaml(self, body: bytes) -> tuple[int, Any]:
        content = json.loads(body)["content"]
        m = re.match(r"---\n(.*?)\n---\n", content, re.S)
        try:
            header = yaml.safe_load(m.group(1)) if m else None
        except yaml.YAMLError as exc:
            return 400, {"errors": [{"message": f"YAML: {exc}"}]}
        if not isinstance(header, dict):
            return 400, {"errors": [{"message": "no YAML mapping between --- lines"}]}
        self.validated.append(header)
        return 200, {"errors": [], "warnings": []}

    def _preupload(self, body: bytes, repo_type: str, repo_id: str, rev: str) -> tuple[int, Any]:
        if self._repo(repo_type, repo_id) is None:
            return 404, {"error": "Repository not found"}
        files = []
        for f in json.loads(body)["files"]:
            sample = base64.b64decode(f["sample"])
            binary = b"\x00" in sample or not _utf8(sample)
            lfs = binary or f["size"] >= LFS_MIN_SIZE or f["path"].lower().endswith(LFS_SUFFIXES)
            files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False})
        return 200, {"files": files}

    def _lfs_batch(self, body: bytes, repo_type: str, repo_id: str) -> tuple[int, Any]:
        p = json.loads(body)
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

    def _lfs_put(self, body: bytes, oid: str) -> tuple[int, Any]:
        if hashlib.sha256(body).hexdigest() != oid:
            return 400, {"message": "sha256 mismatch"}
        self.objects[oid] = body
        self.lfs_uploads.append(oid)
        return 200, {}

    def _lfs_verify(self, body: bytes) -> tuple[int, Any]:
        p = json.loads(body)
        ok = p["oid"] in self.objects and len(self.objects[p["oid"]]) == p["size"]
        return (200, {}) if ok else (404, {"message": "object not uploaded"})

    def _tree(self, body: bytes, repo_type: str, repo_id: str, rev: str) -> tuple[int, Any]:
        repo = self._repo(repo_type, repo_id)
        if repo is None or rev not in repo.branches:
            return 404, {"error": "Repository or revision not found"}
        tree = []
        for path, data in sorted(repo.branches[rev].items()):
            entry = {"type": "file", "path": path, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
            if path.lower().endswith(LFS_SUFFIXES):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            tree.append(entry)
        return 200, tree

    def _commit(self, body: bytes, repo_type: str, repo_id: str, rev: str) -> tuple[int, Any]:
        repo = self._repo(repo_type, repo_id)
        if repo is None or rev not in repo.branches:
            return 404, {"error": "Repository or revision not found"}
        files = dict(repo.branches[rev])
        header: dict[str, Any] = {}
        for line in body.decode().splitlines():
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
        repo.branches[rev] = files
        oid = hashlib.sha1(body).hexdigest()
        repo.commits.append({"oid": oid, "branch": rev, "summary": header.get("summary"), "paths": sorted(files)})
        return 200, {"commitUrl": f"{self.endpoint}/{repo_type}s/{repo_id}/commit/{oid}", "commitOid": oid}


def _utf8(sample: bytes) -> bool:
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _handler(hub: HubStandin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
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
            path = self.path.split("?", 1)[0]
            public = path.startswith("/lfs-objects/") or path == "/api/agent-harnesses"
            if not public and self.headers.get("Authorization") != f"Bearer {hub.token}":
                hub.unauthorized.append(f"{self.command} {path}")
                status, payload = 401, {"error": "Invalid credentials"}
            else:
                status, payload = hub.route(self.command, path, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

    return Handler
