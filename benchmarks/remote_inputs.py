"""Remote inputs: what reading from an object store costs against local disk, and what a no-op
rerun over a large bucket asks of it.

usage: python -m benchmarks.remote_inputs WORKDIR [--images 300] [--objects 100000] [--reps 3]
                                            [--model DIR] [--skip-rerun]

Everything runs against moto's S3 server (a subprocess on 127.0.0.1) behind a small proxy of
this script's that counts every request by kind; nothing leaves the machine.

1. Decode stage, items/s: the same N small JPEGs (crops of scikit-image's photos, 320×240) read
   from a local folder and from `s3://bench/imgs/`, through the real DecodePool (2 workers; the
   remote items fetched ahead, 16 per worker), repetitions interleaved. The ratio s3/local is
   the figure; an object store on another machine adds its own latency, which fetching ahead
   hides as long as the store keeps up.
2. A no-op rerun over M zero-byte objects (`s3://bench/objs/`, 1,000 per prefix): the real CLI's
   first run (every object an error record: the engine never starts; straight to the store),
   then the same command again through the proxy: its wall time, and the store requests it made
   by kind (LIST, GET, HEAD), and the CPU time the gemma4u process used. The quick check knows
   every object from the listing alone, so the rerun should make no GET or HEAD. Last, the same
   keys listed by boto3 alone through the proxy: the store's own share of the rerun's wall time.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

GEMMA4U = str(Path(sys.executable).with_name("gemma4u"))
ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        """A client that hangs up mid-request (a fetch cancelled at its deadline) is not news."""


class CountingProxy:
    """Relays every request to the store and counts it: LIST, GET or HEAD of an object, other."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.server = _QuietServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def kind(self, method: str, path: str) -> str:
        parts = urllib.parse.urlsplit(path)
        query = urllib.parse.parse_qs(parts.query)
        key = parts.path.strip("/").partition("/")[2]
        if method == "GET" and ("list-type" in query or "prefix" in query or not key):
            return "LIST"
        return method if method in ("GET", "HEAD") and key else f"other {method}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _relay(self) -> None:
                with proxy.lock:
                    proxy.counts[proxy.kind(self.command, self.path)] += 1
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream, timeout=120)
                conn.request(self.command, self.path, body=body, headers=dict(self.headers))
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                head = self.command == "HEAD"  # its Content-Length is the object's: passed on as it is
                for name, value in resp.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection") and (
                        head or name.lower() != "content-length"
                    ):
                        self.send_header(name, value)
                if not head:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _relay

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


def start_moto() -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    moto = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    proc = subprocess.Popen(
        [moto, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("moto_server did not start")


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint)  # credentials from the environment, as set in main()


def make_images(folder: Path, n: int) -> dict[str, bytes]:
    from PIL import Image
    from skimage import data

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    out: dict[str, bytes] = {}
    for i in range(n):
        a = photos[i % 4]
        y, x = (i * 7) % (a.shape[0] // 3), (i * 13) % (a.shape[1] // 3)
        buf = io.BytesIO()
        Image.fromarray(a[y : y + 240, x : x + 320]).save(buf, format="JPEG", quality=85)
        out[f"p{i:05d}.jpg"] = buf.getvalue()
        (folder / f"p{i:05d}.jpg").write_bytes(out[f"p{i:05d}.jpg"])
    return out


def decode_rate(items: list, workers: int = 2) -> float:
    """Items/s through the real DecodePool, from the first result to the last."""
    from gemma4u_batch.decode.options import DecodeOptions
    from gemma4u_batch.decode.workers import DecodePool

    with DecodePool(iter(items), DecodeOptions(), workers=workers, prefetch=8) as pool:
        first: list = []
        while not first and not pool.done:
            first = pool.poll(timeout=0.05)
        assert all(d.error is None for d in first), first
        t0, n = time.monotonic(), 0
        while not pool.done:
            got = pool.poll(timeout=0.05)
            assert all(d.error is None for d in got), [d.error for d in got if d.error]
            n += len(got)
    return n / (time.monotonic() - t0)


def part_decode(work: Path, proxy: CountingProxy, n: int, reps: int) -> dict:
    from gemma4u_batch.sources.folder import FolderSource
    from gemma4u_batch.sources.remote import ObjectFolderSource

    folder = work / "imgs"
    folder.mkdir(parents=True, exist_ok=True)
    files = make_images(folder, n)
    client = s3_client(proxy.endpoint)
    client.create_bucket(Bucket="bench")
    with ThreadPoolExecutor(16) as ex:
        list(ex.map(lambda kv: client.put_object(Bucket="bench", Key=f"imgs/{kv[0]}", Body=kv[1]), files.items()))
    local = list(FolderSource(folder))
    remote = list(ObjectFolderSource("s3://bench/imgs/"))
    rates: dict[str, list[float]] = {"local": [], "s3": []}
    for _ in range(reps):
        rates["local"].append(decode_rate(local))
        rates["s3"].append(decode_rate(remote))
    med = {k: sorted(v)[len(v) // 2] for k, v in rates.items()}
    return {
        "images": n,
        "local_items_per_s": round(med["local"], 1),
        "s3_items_per_s": round(med["s3"], 1),
        "ratio_s3_over_local": round(med["s3"] / med["local"], 3),
        "runs": {k: [round(x, 1) for x in v] for k, v in rates.items()},
    }


def part_rerun(work: Path, proxy: CountingProxy, m: int, model: Path) -> dict:
    """The first run goes to the store directly (only the rerun's requests are the figure), the
    rerun through the counting proxy."""
    direct = f"http://127.0.0.1:{proxy.upstream}"
    client = s3_client(direct)
    try:
        client.create_bucket(Bucket="bench")
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    with ThreadPoolExecutor(32) as ex:
        list(
            ex.map(
                lambda i: client.put_object(Bucket="bench", Key=f"objs/d{i // 1000:04d}/f{i:07d}.png", Body=b""),
                range(m),
            )
        )
    out = work / "out-objs"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        GEMMA4U,
        "caption",
        "s3://bench/objs/",
        "-o",
        str(out),
        "--model",
        str(model),
        "--dtype",
        "float32",
        "--progress",
        "quiet",
    ]
    steps = {}
    for step, endpoint in (("first_run", direct), ("noop_rerun", proxy.endpoint)):
        env = {**os.environ, **ENV, "AWS_ENDPOINT_URL": endpoint}
        proxy.counts.clear()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.monotonic() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode not in (0,):
            raise SystemExit(f"{step} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        steps[step] = {"wall_s": round(wall, 2), "gemma4u_cpu_s": round(cpu, 2), "requests": dict(proxy.counts)}
    steps["bare_listing"] = bare_listing(proxy)
    return {"objects": m, **steps}


def bare_listing(proxy: CountingProxy) -> dict:
    """The store's own floor: the same keys listed with boto3 (one level at a time, as the
    rerun lists them), through the same proxy; no gemma4u code."""
    client = s3_client(proxy.endpoint)
    proxy.counts.clear()
    t0, keys = time.monotonic(), 0
    pages = client.get_paginator("list_objects_v2")
    for top in pages.paginate(Bucket="bench", Prefix="objs/", Delimiter="/"):
        for sub in top.get("CommonPrefixes", []):
            for page in pages.paginate(Bucket="bench", Prefix=sub["Prefix"], Delimiter="/"):
                keys += len(page.get("Contents", []))
    return {"wall_s": round(time.monotonic() - t0, 2), "keys": keys, "requests": dict(proxy.counts)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--objects", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--model", type=Path, default=None, help="a checkpoint folder (default: a tiny one built here)")
    ap.add_argument("--skip-rerun", action="store_true")
    a = ap.parse_args()
    work = a.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    moto, port = start_moto()
    proxy = CountingProxy(port)
    os.environ.update({**ENV, "AWS_ENDPOINT_URL": proxy.endpoint})
    try:
        result = {"decode": part_decode(work, proxy, a.images, a.reps)}
        print(json.dumps(result["decode"]), flush=True)
        if not a.skip_rerun:
            model = a.model
            if model is None:
                model = work / "tiny-model"
                if not (model / "config.json").exists():
                    subprocess.run([GEMMA4U, "model", "tiny", str(model)], check=True, capture_output=True)
            result["rerun"] = part_rerun(work, proxy, a.objects, model)
            print(json.dumps(result["rerun"]), flush=True)
    finally:
        moto.kill()
        proxy.server.shutdown()
    (work / "remote_inputs.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
