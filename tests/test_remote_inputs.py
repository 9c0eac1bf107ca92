"""Jobs over remote inputs: a manifest on a web server (its rows resolve against its own URL and
stay inside the allowed roots), reruns that revalidate instead of downloading again, rows that
cannot reach private addresses, decode workers that fetch ahead in parallel, and usage errors
for URLs gemma4u cannot use. Every server is on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gemma4u_batch.decode import DecodeOptions, decode_item
from gemma4u_batch.decode import fetch as fetch_mod
from gemma4u_batch.decode.item import DecodedItem
from gemma4u_batch.decode.workers import DecodePool
from gemma4u_batch.engine.fake import FakeEngine
from gemma4u_batch.records import Modality, WorkItem

from .helpers import gemma4u, jpeg_bytes, photo, png_bytes, records_by_id, run_fake
from .http_servers import Reply, Seen, StubResolver, WebServer

pytestmark = pytest.mark.timeout(180)


class Site:
    """Files served by path with an ETag (their sha256); If-None-Match answers 304."""

    def __init__(self, web: WebServer, files: dict[str, bytes], delay: float = 0.0) -> None:
        self.web, self.files, self.delay = web, dict(files), delay
        self.bodies: list[str] = []  # paths answered with a body (200)
        self.active = self.most_active = 0
        self._lock = threading.Lock()
        for path in files:
            web.routes[path] = self._serve

    def put(self, path: str, body: bytes) -> None:
        self.files[path] = body
        self.web.routes[path] = self._serve

    def _serve(self, seen: Seen) -> Reply:
        with self._lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            time.sleep(self.delay)  # the requests that overlap meanwhile are counted in `most_active`
            body = self.files[seen.path]
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            if seen.headers.get("if-none-match") == etag:
                return Reply(304, headers={"ETag": etag})
            with self._lock:
                self.bodies.append(seen.path)
            return Reply(200, body, headers={"ETag": etag})
        finally:
            with self._lock:
                self.active -= 1


def _manifest(rows: list[dict[str, str]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture
def site() -> Iterator[Site]:
    photos = {
        "/m/a.jpg": jpeg_bytes(photo("astronaut").resize((96, 72))),
        "/m/sub/b.png": png_bytes(photo("coffee").resize((80, 60))),
        "/m/c.jpg": jpeg_bytes(photo("chelsea").resize((64, 48))),
        "/outside.jpg": jpeg_bytes(photo("rocket").resize((64, 48))),
    }
    with WebServer() as web:
        s = Site(web, photos)
        rows = [
            {"path": "a.jpg"},
            {"path": "sub/b.png"},
            {"path": web.url("/m/c.jpg")},  # a URL under the manifest's folder
            {"path": "../outside.jpg"},  # climbs out of it
            {"path": web.url("/outside.jpg")},  # same origin, another folder
        ]
        s.put("/m/manifest.jsonl", _manifest(rows))
        yield s


def test_an_http_manifest_resolves_rows_against_its_own_url(site: Site, tmp_path: Path) -> None:
    url = site.web.url("/m/manifest.jsonl")
    summary = run_fake(url, tmp_path / "out", workers=1)
    recs = records_by_id(tmp_path / "out")
    good = {"a.jpg": "/m/a.jpg", "sub/b.png": "/m/sub/b.png", site.web.url("/m/c.jpg"): "/m/c.jpg"}
    for rid, path in good.items():
        assert recs[rid]["error"] is None, recs[rid]
        assert recs[rid]["content_sha256"] == hashlib.sha256(site.files[path]).hexdigest()
    for rid in ("../outside.jpg", site.web.url("/outside.jpg")):
        assert "outside the allowed roots" in recs[rid]["error"] and "--allow-root" in recs[rid]["error"]
    assert "/outside.jpg" not in site.bodies  # refused rows are never fetched
    assert summary.done == 5 and summary.errors == 2  # done counts every record, errors among them


def test_http_rows_are_revalidated_not_downloaded_again(site: Site, tmp_path: Path) -> None:
    url, out = site.web.url("/m/manifest.jsonl"), tmp_path / "out"
    run_fake(url, out)
    first = sorted(site.bodies)
    assert first.count("/m/a.jpg") == 1
    site.bodies.clear()
    again = FakeEngine()
    run_fake(url, out, engine=again)
    assert again.added == 0
    media = [p for p in site.bodies if p != "/m/manifest.jsonl"]
    assert media == [], "an unchanged row's body was downloaded again"
    asked = site.web.requests("/m/a.jpg")[-1]
    assert asked.headers.get("if-none-match"), "the rerun did not ask conditionally"
    # One file changes: only it comes with a body and is generated again.
    site.put("/m/sub/b.png", png_bytes(photo("coffee").resize((81, 60))))
    site.bodies.clear()
    changed = FakeEngine()
    run_fake(url, out, engine=changed)
    assert changed.added == 1 and [p for p in site.bodies if p != "/m/manifest.jsonl"] == ["/m/sub/b.png"]
    # --trust-urls: a URL OUT holds is not asked about at all.
    before = len(site.web.seen)
    trusted = FakeEngine()
    run_fake(url, out, engine=trusted, trust_urls=True)
    assert trusted.added == 0
    assert {s.path for s in site.web.seen[before:]} == {"/m/manifest.jsonl"}  # the rows are read, no media


def test_a_row_cannot_reach_a_private_address(site: Site, tmp_path: Path) -> None:
    """A manifest's rows are not trusted beyond its own origin: a host that resolves to a
    link-local or private address is refused before any connection (stub resolver; inline
    decoding, so the resolver is this process's)."""
    rows = [
        {"id": "meta", "path": "http://metadata.test/latest/secret.jpg"},
        {"id": "lan", "path": "http://lan.test/x.jpg"},
    ]
    site.put("/m/evil.jsonl", _manifest(rows))
    resolver = StubResolver({"metadata.test": "169.254.169.254", "lan.test": "10.0.0.1"})
    fetch_mod.set_resolver(lambda: resolver)
    try:
        roots = [site.web.url("/m/"), "http://metadata.test/", "http://lan.test/"]
        run_fake(site.web.url("/m/evil.jsonl"), tmp_path / "out", allow_roots=roots)
    finally:
        fetch_mod.set_resolver(None)
    recs = records_by_id(tmp_path / "out")
    assert recs["meta"]["error_kind"] == "private_address" and recs["lan"]["error_kind"] == "private_address"
    assert set(resolver.asked) >= {"metadata.test", "lan.test"}


def test_a_worker_fetches_ahead_while_it_decodes(site: Site, tmp_path: Path) -> None:
    """Object stores and web servers are latency-bound: one worker has several fetches in flight."""
    site.delay = 0.2
    for i in range(10):
        site.put(f"/many/{i}.jpg", jpeg_bytes(photo("astronaut").resize((40 + i, 30))))
    items = [
        WorkItem(id=f"{i}.jpg", source=f"{i}.jpg", modality=Modality.IMAGE, url=site.web.url(f"/many/{i}.jpg"))
        for i in range(10)
    ]
    opts = DecodeOptions(fetch_ahead=8, trusted_origins=(site.web.origin,))
    got = _drain(DecodePool(iter(items), opts, workers=1, prefetch=2))
    assert sorted(got) == sorted(i.id for i in items) and all(d.error is None for d in got.values())
    assert site.most_active >= 4, f"at most {site.most_active} fetches were in flight"


def crash_on_c(item: WorkItem, opts: DecodeOptions) -> DecodedItem:
    """decode_item, but the decoder process dies on c.jpg (a native crash)."""
    if item.id == "c.jpg":
        os.kill(os.getpid(), signal.SIGKILL)
    return decode_item(item, opts)


def test_a_worker_dying_costs_only_the_item_it_decoded(site: Site) -> None:
    """Items fetched ahead when the worker dies go back to the queue, not to error records."""
    names = ["a.jpg", "c.jpg", "sub/b.png"]
    items = [WorkItem(id=n, source=n, modality=Modality.IMAGE, url=site.web.url(f"/m/{n}")) for n in names]
    opts = DecodeOptions(fetch_ahead=8, trusted_origins=(site.web.origin,))
    with DecodePool(iter(items), opts, workers=1, prefetch=2, decode_fn=crash_on_c) as pool:
        got = _drain(pool)
        assert pool.respawns == 1
    assert got["c.jpg"].error_kind == "decoder_crashed"
    assert got["a.jpg"].error is None and got["sub/b.png"].error is None
    assert got["sub/b.png"].content_sha256 == hashlib.sha256(site.files["/m/sub/b.png"]).hexdigest()


def _drain(pool: DecodePool, budget: float = 60.0) -> dict[str, DecodedItem]:
    out: dict[str, DecodedItem] = {}
    deadline = time.monotonic() + budget
    with pool:
        while not pool.done:
            assert time.monotonic() < deadline, "the pool did not finish in time"
            for d in pool.poll(timeout=0.2):
                assert d.item.id not in out, f"{d.item.id} came back twice"
                out[d.item.id] = d
    return out


def test_urls_gemma4u_cannot_use_are_one_line_before_any_work(tmp_path: Path) -> None:
    r = gemma4u("caption", "ftp://example.com/imgs", "-o", str(tmp_path / "out"), "--model", "fake-model")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "unsupported URL scheme ftp://" in r.stderr
    r = gemma4u("caption", str(tmp_path), "-o", "https://results/big", "--model", "fake-model", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "output must be a local folder or an object-store URL (s3://, gs://, az://), not https://" in r.stderr
    assert not (tmp_path / "https:").exists() and not (tmp_path / "out").exists()
