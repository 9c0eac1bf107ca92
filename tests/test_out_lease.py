"""The lease lock (store/lease.py) on a local folder, moto's S3 and Azurite: a second run is
refused at once while the holder lives, takes the lock over once a SIGKILLed holder's lease has
run out, and a holder that stalled past its lease learns it lost the lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gemma4u_batch.errors import OutputLocked
from gemma4u_batch.store import lease as lease_module
from gemma4u_batch.store.lease import Lease, lease_holder
from gemma4u_batch.store.objects import LocalFiles, ObjectFiles, OutFiles

from .object_stores import ObjectStore, azure_server, azure_store, s3_server, s3_store

__all__ = ["azure_server", "azure_store", "s3_server", "s3_store"]

pytestmark = pytest.mark.timeout(120)

NAME = ".gemma4u/locks/run.json"


@pytest.fixture(params=["local", "s3", "az"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """OUT as a path or a URL: a local folder, then each store that enforces preconditions."""
    if request.param == "local":
        return str(tmp_path / "out")
    store: ObjectStore = request.getfixturevalue({"s3": "s3_store", "az": "azure_store"}[request.param])
    return store.url(store.create_bucket(), "out")


def _files(where: str) -> OutFiles:
    return LocalFiles(Path(where)) if "://" not in where else ObjectFiles(where)


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from gemma4u_batch.store.lease import Lease
    from gemma4u_batch.store.objects import LocalFiles, ObjectFiles
    where, seconds = sys.argv[1], float(sys.argv[2])
    files = LocalFiles(Path(where)) if "://" not in where else ObjectFiles(where)
    lease = Lease(files, sys.argv[3], what="gemma4u run", seconds=seconds)
    lease.acquire()
    print("held", flush=True)
    while not lease.lost.wait(0.1):
        pass
    print("lost", flush=True)
    """
)


@pytest.fixture
def holder_process() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGCONT)
            p.kill()
        p.wait()


def _hold(where: str, seconds: float, procs: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, where, str(seconds), NAME], stdout=subprocess.PIPE, text=True
    )
    procs.append(proc)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_is_refused_at_once_and_may_go_after_release(where: str) -> None:
    first = Lease(_files(where), NAME, what="gemma4u run", seconds=30)
    with first:
        t0 = time.monotonic()
        with pytest.raises(OutputLocked, match=r"another gemma4u run is writing into .* \(lease held by"):
            Lease(_files(where), NAME, what="gemma4u run", seconds=30).acquire()
        assert time.monotonic() - t0 < 5
        holder = lease_holder(_files(where), NAME)
        assert holder is not None and holder.holder == first.holder
    assert lease_holder(_files(where), NAME) is None  # released: the object is gone
    with Lease(_files(where), NAME, what="gemma4u run", seconds=30) as second:
        assert not second.lost.is_set()


def test_the_holder_renews_while_it_lives(where: str) -> None:
    with Lease(_files(where), NAME, what="gemma4u run", seconds=1.5) as lease:
        first = lease_holder(_files(where), NAME)
        time.sleep(3.5)  # more than two leases: only renewals keep it
        later = lease_holder(_files(where), NAME)
        assert first is not None and later is not None and later.expires_at > first.expires_at
        with pytest.raises(OutputLocked):
            Lease(_files(where), NAME, what="gemma4u run", seconds=1.5).acquire()
        assert not lease.lost.is_set()


def test_a_killed_holders_lease_runs_out(
    where: str, holder_process: list[subprocess.Popen[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lease_module, "SKEW_SECONDS", 0.5)
    proc = _hold(where, 2.0, holder_process)
    proc.kill()  # SIGKILL: no release, the object stays
    proc.wait()
    with pytest.raises(OutputLocked):
        Lease(_files(where), NAME, what="gemma4u run", seconds=2.0).acquire()
    time.sleep(3.0)  # the lease (2 s) and the skew allowance (0.5 s) have run out
    with Lease(_files(where), NAME, what="gemma4u run", seconds=30) as taker:
        holder = lease_holder(_files(where), NAME)
        assert holder is not None and holder.holder == taker.holder


def test_a_stalled_holder_learns_it_lost_the_lease(
    where: str, holder_process: list[subprocess.Popen[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lease_module, "SKEW_SECONDS", 0.5)
    proc = _hold(where, 1.5, holder_process)
    os.kill(proc.pid, signal.SIGSTOP)  # stalled past its lease (a long GC pause, a frozen VM)
    time.sleep(2.5)
    with Lease(_files(where), NAME, what="gemma4u run", seconds=30) as taker:
        os.kill(proc.pid, signal.SIGCONT)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "lost"
        holder = lease_holder(_files(where), NAME)
        assert holder is not None and holder.holder == taker.holder  # the stalled one did not write over it
