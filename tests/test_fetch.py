"""decode/fetch.py against real servers on 127.0.0.1, never mocked calls: a scripted web server
(tests/http_servers.py) for http(s) URLs, moto's S3 server for s3:// ones. Made-up host names
go through a stub resolver; the private addresses they map to are refused, never connected to."""

from __future__ import annotations

import base64
import hashlib
import importlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gemma4u_batch.decode.fetch import ERROR_KINDS, Fetched, fetch, is_remote
from gemma4u_batch.decode.options import DecodeOptions
from gemma4u_batch.errors import ItemError
from gemma4u_batch.records import Known, Modality, ObjectStat, WorkItem
from gemma4u_batch.sources.locations import redact

from .http_servers import Reply, Seen, StubResolver, WebServer, closed_port, silent_port

pytestmark = pytest.mark.timeout(60)

fetch_mod = importlib.import_module("gemma4u_batch.decode.fetch")  # the package re-exports the function as `fetch`

LAST_MODIFIED = "Wed, 21 Oct 2015 07:28:00 GMT"


@pytest.fixture
def web() -> Iterator[WebServer]:
    with WebServer() as server:
        yield server


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries come back after tens of milliseconds, not half a second (Retry-After still holds)."""
    monkeypatch.setattr(fetch_mod, "BACKOFF_BASE", 0.05)


@pytest.fixture
def names() -> Iterator[StubResolver]:
    """Made-up host names for every fetch of the test (none reaches a real resolver)."""
    stub = StubResolver(
        {
            "metadata.test": "169.254.169.254",
            "intranet.test": "10.0.0.1",
            "loop6.test": "::1",
            "mapped.test": "::ffff:10.0.0.1",
            "private.test": "127.0.0.1",
        }
    )
    fetch_mod.set_resolver(lambda: stub)
    yield stub
    fetch_mod.set_resolver(None)


def opts_for(*servers: WebServer, **kw: Any) -> DecodeOptions:
    """Options that trust the test servers' origins (the INPUT's own, as a typed URL would be)."""
    kw.setdefault("fetch_timeout", 10.0)
    return DecodeOptions(trusted_origins=tuple(s.origin for s in servers), **kw)


def item_for(url: str, **kw: Any) -> WorkItem:
    return WorkItem(id="x", source=redact(url), modality=Modality.IMAGE, url=url, **kw)


def failure(call: Callable[[], Fetched]) -> ItemError:
    with pytest.raises(ItemError) as caught:
        call()
    assert caught.value.kind in ERROR_KINDS
    assert "\n" not in caught.value.message
    return caught.value


# ---------------------------------------------------------------- http(s)


def test_body_and_what_the_server_said(web: WebServer) -> None:
    web.routes["/a.jpg"] = [Reply(200, b"hello", headers={"ETag": '"v1"', "Last-Modified": LAST_MODIFIED})]
    item = item_for(web.url("/a.jpg"))
    assert is_remote(item)
    got = fetch(item, opts_for(web))
    assert got.body == b"hello" and not got.not_modified
    assert got.stat == ObjectStat(etag='"v1"', size=5, mtime_ns=1445412480 * 10**9, last_modified=LAST_MODIFIED)


def test_slow_server_hits_the_deadline(web: WebServer) -> None:
    web.routes["/slow"] = [Reply(200, b"late", delay=30)]
    started = time.monotonic()
    err = failure(lambda: fetch(item_for(web.url("/slow")), opts_for(web, fetch_timeout=0.5)))
    assert err.kind == "fetch_timeout" and "0.5 s" in err.message
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize(("status", "kind"), [(404, "not_found"), (410, "not_found"), (403, "forbidden")])
def test_client_errors_name_their_kind(web: WebServer, status: int, kind: str) -> None:
    web.routes["/x"] = [Reply(status)]
    err = failure(lambda: fetch(item_for(web.url("/x")), opts_for(web)))
    assert err.kind == kind and web.url("/x") in err.message
    assert web.count("/x") == 1  # never retried


def test_other_4xx_is_not_retried(web: WebServer) -> None:
    web.routes["/bad"] = [Reply(400), Reply(200, b"never")]
    err = failure(lambda: fetch(item_for(web.url("/bad")), opts_for(web)))
    assert err.kind == "fetch_failed" and "HTTP 400" in err.message
    assert web.count("/bad") == 1


def test_a_retry_after_500_succeeds(web: WebServer) -> None:
    web.routes["/flaky"] = [Reply(500), Reply(200, b"second time")]
    assert fetch(item_for(web.url("/flaky")), opts_for(web)).body == b"second time"
    assert web.count("/flaky") == 2


def test_retries_are_at_most_fetch_retries(web: WebServer) -> None:
    web.routes["/down"] = [Reply(503)]
    err = failure(lambda: fetch(item_for(web.url("/down")), opts_for(web, fetch_retries=2)))
    assert err.kind == "fetch_failed" and "HTTP 503" in err.message and "3 attempts" in err.message
    assert web.count("/down") == 3


def test_the_deadline_holds_across_retries(web: WebServer) -> None:
    web.routes["/down"] = [Reply(503)]
    started = time.monotonic()
    err = failure(lambda: fetch(item_for(web.url("/down")), opts_for(web, fetch_timeout=1.0, fetch_retries=1000)))
    assert err.kind == "fetch_timeout" and "HTTP 503" in err.message  # the last try's answer
    assert time.monotonic() - started < 1.5  # a retry that would be due after the deadline is not waited for
    assert web.count("/down") > 2


def test_429_waits_for_retry_after(web: WebServer) -> None:
    web.routes["/busy"] = [Reply(429, headers={"Retry-After": "1"}), Reply(200, b"ok")]
    started = time.monotonic()
    assert fetch(item_for(web.url("/busy")), opts_for(web)).body == b"ok"
    assert time.monotonic() - started >= 0.95
    assert web.count("/busy") == 2


def test_retry_after_past_the_deadline_fails_at_once(web: WebServer) -> None:
    web.routes["/later"] = [Reply(429, headers={"Retry-After": "120"})]
    started = time.monotonic()
    err = failure(lambda: fetch(item_for(web.url("/later")), opts_for(web, fetch_timeout=2.0)))
    assert err.kind == "fetch_timeout" and "HTTP 429" in err.message
    assert time.monotonic() - started < 1.5
    assert web.count("/later") == 1


def test_connection_refused_is_retried_then_fails() -> None:
    url = f"http://127.0.0.1:{closed_port()}/x"
    opts = DecodeOptions(trusted_origins=(url.rsplit("/", 1)[0],), fetch_retries=1)
    err = failure(lambda: fetch(item_for(url), opts))
    assert err.kind == "fetch_failed" and "2 attempts" in err.message


def _redirect_chain(web: WebServer, hops: int) -> None:
    web.routes["/r0"] = [Reply(200, b"the end")]
    for i in range(1, hops + 1):
        web.routes[f"/r{i}"] = [Reply(302, headers={"Location": f"/r{i - 1}"})]


def test_five_redirects_are_followed(web: WebServer) -> None:
    _redirect_chain(web, 6)
    assert fetch(item_for(web.url("/r5")), opts_for(web)).body == b"the end"
    assert [web.count(f"/r{i}") for i in range(6)] == [1] * 6


def test_a_sixth_redirect_is_refused(web: WebServer) -> None:
    _redirect_chain(web, 6)
    err = failure(lambda: fetch(item_for(web.url("/r6")), opts_for(web)))
    assert err.kind == "bad_redirect"
    assert web.count("/r0") == 0


def test_a_redirect_to_another_scheme_is_refused(web: WebServer) -> None:
    web.routes["/up"] = [Reply(301, headers={"Location": f"https://127.0.0.1:{web.port}/secure"})]
    err = failure(lambda: fetch(item_for(web.url("/up")), opts_for(web)))
    assert err.kind == "bad_redirect" and "https://" in err.message
    assert web.count("/secure") == 0


def test_too_large_from_content_length_reads_no_body(web: WebServer) -> None:
    # The server claims 10 MB and sends 100 bytes: reading the body would end in an error, not too_large.
    web.routes["/big"] = [Reply(200, b"x" * 100, claimed_length=10_000_000)]
    err = failure(lambda: fetch(item_for(web.url("/big")), opts_for(web), limit=1000))
    assert err.kind == "too_large" and "Content-Length" in err.message and "10000000" in err.message


def test_too_large_without_content_length_stops_reading(web: WebServer) -> None:
    # An endless body: only stopping one byte past the limit ends this fetch before its deadline.
    web.routes["/endless"] = [Reply(200, endless=True)]
    err = failure(lambda: fetch(item_for(web.url("/endless")), opts_for(web, fetch_timeout=5.0), limit=300_000))
    assert err.kind == "too_large" and "300001" in err.message


def test_a_body_of_exactly_the_limit_is_read(web: WebServer) -> None:
    web.routes["/exact"] = [Reply(200, b"y" * 5000, no_length=True)]
    assert fetch(item_for(web.url("/exact")), opts_for(web), limit=5000).body == b"y" * 5000


def test_too_large_from_the_listing_asks_nothing(web: WebServer) -> None:
    item = item_for(web.url("/listed"), stat=ObjectStat(size=2000))
    assert failure(lambda: fetch(item, opts_for(web), limit=1000)).kind == "too_large"
    assert web.count("/listed") == 0


def _validated(seen: Seen) -> Reply:
    if seen.headers.get("if-none-match") == '"v1"':
        return Reply(304, headers={"ETag": '"v1"'})
    return Reply(200, b"new bytes", headers={"ETag": '"v2"', "Last-Modified": LAST_MODIFIED})


def test_a_conditional_get_answered_304(web: WebServer) -> None:
    web.routes["/c"] = _validated
    known = Known(sha256="0" * 64, etag='"v1"', last_modified="Tue, 20 Oct 2015 07:28:00 GMT")
    got = fetch(item_for(web.url("/c"), known=known), opts_for(web))
    assert got.not_modified and got.body is None
    assert got.stat.etag == '"v1"' and got.stat.last_modified == known.last_modified
    (seen,) = web.requests("/c")
    assert seen.headers["if-none-match"] == '"v1"' and seen.headers["if-modified-since"] == known.last_modified


def test_a_conditional_get_answered_200_with_a_new_etag(web: WebServer) -> None:
    web.routes["/c"] = _validated
    got = fetch(item_for(web.url("/c"), known=Known(sha256="0" * 64, etag='"v0"')), opts_for(web))
    assert not got.not_modified and got.body == b"new bytes"
    assert got.stat.etag == '"v2"' and got.stat.last_modified == LAST_MODIFIED
    assert "if-modified-since" not in web.requests("/c")[0].headers


def _basic(seen: Seen) -> Reply:
    expected = "Basic " + base64.b64encode(b"alice:s3cr3t").decode()
    if seen.headers.get("authorization") == expected:
        return Reply(200, b"members only")
    return Reply(401, headers={"WWW-Authenticate": 'Basic realm="test"'})


def test_credentials_in_the_url_reach_the_server(web: WebServer) -> None:
    web.routes["/private"] = _basic
    assert fetch(item_for(web.url("/private", "alice:s3cr3t")), opts_for(web)).body == b"members only"


def test_messages_never_show_the_password(web: WebServer) -> None:
    web.routes["/private"] = _basic
    err = failure(lambda: fetch(item_for(web.url("/private", "alice:wr0ngpass")), opts_for(web)))
    assert err.kind == "forbidden" and "wr0ngpass" not in err.message and "***@127.0.0.1" in err.message
    err = failure(lambda: fetch(item_for(web.url("/gone?X-Amz-Signature=abc123", "alice:s3cr3t")), opts_for(web)))
    assert err.kind == "not_found" and "s3cr3t" not in err.message and "abc123" not in err.message


def test_credentials_do_not_follow_a_redirect_to_another_origin(web: WebServer) -> None:
    with WebServer() as other:
        other.routes["/land"] = [Reply(200, b"landed")]
        web.routes["/hop"] = [Reply(302, headers={"Location": other.url("/land")})]
        web.routes["/private"] = _basic
        assert fetch(item_for(web.url("/hop", "alice:s3cr3t")), opts_for(web, other)).body == b"landed"
        assert web.requests("/hop")[0].headers["authorization"].startswith("Basic ")
        assert "authorization" not in other.requests("/land")[0].headers


def test_fetches_from_many_threads_are_in_flight_together(web: WebServer) -> None:
    web.routes["/wait"] = [Reply(200, b"done", delay=0.4)]
    results: list[bytes | None] = []
    threads = [
        threading.Thread(target=lambda: results.append(fetch(item_for(web.url("/wait")), opts_for(web)).body))
        for _ in range(8)
    ]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [b"done"] * 8
    assert time.monotonic() - started < 8 * 0.4 / 2


# ---------------------------------------------------------------- private addresses


@pytest.mark.parametrize("host", ["metadata.test", "intranet.test", "loop6.test", "mapped.test"])
def test_a_row_url_to_a_private_address_is_refused(names: StubResolver, host: str) -> None:
    err = failure(lambda: fetch(item_for(f"http://{host}/latest/meta-data/"), DecodeOptions()))
    assert err.kind == "private_address" and names.names[host] in err.message
    assert host in names.asked


def test_a_private_address_written_in_the_url_is_refused(web: WebServer) -> None:
    web.routes["/a"] = [Reply(200, b"inside")]
    err = failure(lambda: fetch(item_for(web.url("/a")), DecodeOptions()))  # its origin not trusted
    assert err.kind == "private_address"
    assert web.count("/a") == 0


def test_a_redirect_from_a_trusted_origin_to_a_private_address_is_refused(web: WebServer, names: StubResolver) -> None:
    web.routes["/go"] = [Reply(302, headers={"Location": "http://intranet.test/admin"})]
    err = failure(lambda: fetch(item_for(web.url("/go")), opts_for(web)))
    assert err.kind == "private_address" and "10.0.0.1" in err.message
    assert web.count("/go") == 1 and "intranet.test" in names.asked


def test_allow_private_urls_lets_them_through(web: WebServer, names: StubResolver) -> None:
    web.routes["/a"] = [Reply(200, b"inside")]
    url = f"http://private.test:{web.port}/a"
    assert failure(lambda: fetch(item_for(url), DecodeOptions())).kind == "private_address"
    assert web.count("/a") == 0
    assert fetch(item_for(url), DecodeOptions(allow_private_urls=True)).body == b"inside"
    assert fetch(item_for(url), DecodeOptions(trusted_origins=(f"http://private.test:{web.port}",))).body == b"inside"


def test_an_unknown_host_fails(names: StubResolver) -> None:
    err = failure(lambda: fetch(item_for("http://nowhere.test/a.jpg"), DecodeOptions(fetch_retries=0)))
    assert err.kind == "fetch_failed" and "resolve" in err.message


# ---------------------------------------------------------------- S3 (moto's server)


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Points S3 at an endpoint with dummy credentials, only through the environment (as a user
    would); nothing asks the EC2 metadata service or reads ~/.aws."""
    s3fs = pytest.importorskip("s3fs")

    def use(endpoint: str) -> None:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
            monkeypatch.delenv(name, raising=False)
        env = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        s3fs.S3FileSystem.clear_instance_cache()  # fsspec caches instances: a new endpoint needs a new one

    yield use
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def s3(moto_endpoint: str, aws_env: Callable[[str], None]) -> tuple[Any, str]:
    """A boto3 client on moto's server and a fresh bucket in it."""
    import boto3

    aws_env(moto_endpoint)
    client = boto3.client("s3", endpoint_url=moto_endpoint)
    bucket = f"gemma4u-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return client, bucket


def test_s3_object_is_fetched_whole(s3: tuple[Any, str]) -> None:
    client, bucket = s3
    data = os.urandom(300_000)
    etag = client.put_object(Bucket=bucket, Key="media/a.jpg", Body=data)["ETag"]
    got = fetch(item_for(f"s3://{bucket}/media/a.jpg"), DecodeOptions())
    assert got.body == data
    assert hashlib.sha256(got.body).hexdigest() == hashlib.sha256(data).hexdigest()
    assert got.stat.etag == etag and got.stat.size == len(data) and got.stat.mtime_ns
    client.put_object(Bucket=bucket, Key="empty.jpg", Body=b"")
    assert fetch(item_for(f"s3://{bucket}/empty.jpg"), DecodeOptions()).body == b""


def test_s3_missing_key_or_bucket_is_not_found(s3: tuple[Any, str]) -> None:
    _, bucket = s3
    err = failure(lambda: fetch(item_for(f"s3://{bucket}/missing.jpg"), DecodeOptions()))
    assert err.kind == "not_found" and f"s3://{bucket}/missing.jpg" in err.message
    assert failure(lambda: fetch(item_for("s3://no-such-bucket-here/a.jpg"), DecodeOptions())).kind == "not_found"


def test_s3_pinned_version_is_read(s3: tuple[Any, str]) -> None:
    client, bucket = s3
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    first = client.put_object(Bucket=bucket, Key="a.wav", Body=b"first take")["VersionId"]
    client.put_object(Bucket=bucket, Key="a.wav", Body=b"second take")
    url = f"s3://{bucket}/a.wav"
    old = fetch(item_for(url, stat=ObjectStat(version=first)), DecodeOptions())
    assert old.body == b"first take" and old.stat.version == first
    latest = fetch(item_for(url), DecodeOptions())
    assert latest.body == b"second take" and latest.stat.version not in (None, first)


def test_s3_too_large_is_refused_before_reading(s3: tuple[Any, str]) -> None:
    client, bucket = s3
    # No such key: refused from the listing's size alone (a request would have said not_found).
    listed = item_for(f"s3://{bucket}/absent.mp4", stat=ObjectStat(size=10_000))
    assert failure(lambda: fetch(listed, DecodeOptions(), limit=1000)).kind == "too_large"
    client.put_object(Bucket=bucket, Key="big.mp4", Body=bytes(5000))
    err = failure(lambda: fetch(item_for(f"s3://{bucket}/big.mp4"), DecodeOptions(), limit=1000))
    assert err.kind == "too_large" and "5000 bytes" in err.message


def test_s3_that_never_answers_hits_the_deadline(aws_env: Callable[[str], None]) -> None:
    with silent_port() as port:
        aws_env(f"http://127.0.0.1:{port}")
        started = time.monotonic()
        err = failure(lambda: fetch(item_for("s3://hung-bucket/a.jpg"), DecodeOptions(fetch_timeout=1.0)))
        assert err.kind == "fetch_timeout"
        assert time.monotonic() - started < 3.0
