"""DecodePool isolation: a hanging or dying decoder costs one item, the pool goes on.

The decode functions below run inside spawned workers (so they are top-level); they
stand in for a stalled read or a segfaulting native decoder, keyed on a marker in the
test item's id. Production decoding never takes a function from the data.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from gemma4u_batch.decode import DecodeOptions
from gemma4u_batch.decode.item import DecodedItem
from gemma4u_batch.decode.workers import DecodePool
from gemma4u_batch.records import Modality, WorkItem

pytestmark = pytest.mark.timeout(120)

OPTS = DecodeOptions()


def hostile_decode(item: WorkItem, opts: DecodeOptions) -> DecodedItem:
    if "HANG" in item.id:
        time.sleep(1000)
    if "KILL" in item.id:
        os.kill(os.getpid(), signal.SIGKILL)
    if "ABORT" in item.id:
        os.abort()
    if "RAISE" in item.id:
        raise RuntimeError("decoder bug")
    if "SLOW" in item.id:
        time.sleep(30)
    if "NAP" in item.id:
        time.sleep(0.05)
    return DecodedItem(item=item, info={"pid": os.getpid()})


def unpicklable_decode(item: WorkItem, opts: DecodeOptions) -> DecodedItem:
    return DecodedItem(item=item, info={"f": lambda: None})


def items(*ids: str) -> Iterator[WorkItem]:
    for i in ids:
        yield WorkItem(id=i, source=f"test:{i}", modality=Modality.IMAGE, data=b"x")


def drain(pool: DecodePool, budget: float = 60.0) -> dict[str, DecodedItem]:
    out: dict[str, DecodedItem] = {}
    deadline = time.monotonic() + budget
    while not pool.done:
        assert time.monotonic() < deadline, "pool did not finish in time"
        for d in pool.poll(timeout=0.2):
            assert d.item.id not in out
            out[d.item.id] = d
    return out


def test_hanging_decode_times_out_and_worker_is_replaced() -> None:
    ids = ["a", "b", "HANG", "c", "d", "e", "f"]
    started = time.monotonic()
    with DecodePool(items(*ids), OPTS, workers=2, prefetch=2, timeout=2.0, decode_fn=hostile_decode) as pool:
        got = drain(pool)
        respawns = pool.respawns
    elapsed = time.monotonic() - started
    assert sorted(got) == sorted(ids)
    hung = got["HANG"]
    assert hung.error_kind == "timeout"
    assert "decode_timeout" in hung.error and "2 s" in hung.error
    assert hung.decode_seconds >= 2.0
    assert all(got[i].error is None for i in ids if i != "HANG")
    assert respawns == 1
    assert elapsed < 60, elapsed  # ~4 s idle: 2 s timeout + one respawn


@pytest.mark.parametrize(("marker", "signum"), [("KILL", signal.SIGKILL), ("ABORT", signal.SIGABRT)])
def test_decoder_that_dies_costs_only_its_item(marker: str, signum: int) -> None:
    ids = ["a", marker, "b", "c", f"{marker}2", "d"]
    with DecodePool(items(*ids), OPTS, workers=2, prefetch=1, timeout=30.0, decode_fn=hostile_decode) as pool:
        got = drain(pool)
        respawns = pool.respawns
    assert sorted(got) == sorted(ids)
    for dead in (marker, f"{marker}2"):
        assert got[dead].error_kind == "decoder_crashed"
        assert f"signal {int(signum)}" in got[dead].error
    assert all(got[i].error is None for i in ("a", "b", "c", "d"))
    assert respawns == 2


def test_worker_killed_from_outside_mid_item() -> None:
    """An OOM kill or an operator's SIGKILL while a worker holds an item."""
    with DecodePool(
        items("a", "SLOW", "b", "c"), OPTS, workers=2, prefetch=1, timeout=60.0, decode_fn=hostile_decode
    ) as pool:
        got: dict[str, DecodedItem] = {}
        deadline = time.monotonic() + 30
        victim = None
        while victim is None:
            assert time.monotonic() < deadline
            for d in pool.poll(timeout=0.1):
                got[d.item.id] = d
            victim = next((w for w in pool._workers if w.item is not None and w.item.id == "SLOW"), None)
        time.sleep(0.3)  # let it get into the decode
        os.kill(victim.process.pid, signal.SIGKILL)
        got.update(drain(pool))
        assert pool.respawns == 1
    assert got["SLOW"].error_kind == "decoder_crashed" and "signal 9" in got["SLOW"].error
    assert all(got[i].error is None for i in ("a", "b", "c"))


def test_worker_death_while_starting_costs_nothing() -> None:
    with DecodePool(items("a", "b", "c"), OPTS, workers=1, prefetch=1, timeout=30.0, decode_fn=hostile_decode) as pool:
        assert pool.poll(0.0) == [] and len(pool._workers) == 1  # the first item starts the workers
        pool._workers[0].process.kill()
        pool._workers[0].process.join(5)
        got = drain(pool)
        assert pool.respawns == 1
    assert sorted(got) == ["a", "b", "c"] and all(d.error is None for d in got.values())


def test_worker_death_while_idle_costs_nothing() -> None:
    pool: DecodePool

    def source() -> Iterator[WorkItem]:
        yield from items("a")
        # The pool asks for the next item for a ready, idle worker: that worker dies now.
        proc = pool._workers[0].process
        proc.kill()
        proc.join(5)
        yield from items("b", "c")

    with DecodePool(source(), OPTS, workers=1, prefetch=1, timeout=30.0, decode_fn=hostile_decode) as pool:
        got = drain(pool)
        assert pool.respawns == 1
    assert sorted(got) == ["a", "b", "c"] and all(d.error is None for d in got.values())


def test_timeout_clock_starts_after_worker_start_up() -> None:
    """Spawning and importing the decoders can take seconds on a loaded machine; that must
    not count against the first item's decode_timeout."""
    with DecodePool(items("NAP1", "NAP2"), OPTS, workers=1, timeout=1.0, decode_fn=hostile_decode) as pool:
        time.sleep(1.5)  # the worker has been alive longer than the timeout before any item
        got = drain(pool)
    assert all(d.error is None for d in got.values()), got


def test_workers_that_never_start_fail_loudly() -> None:
    with (
        DecodePool(items("a"), OPTS, workers=1, timeout=30.0, start_timeout=0.01) as pool,
        pytest.raises(RuntimeError, match="fail to start"),
    ):
        drain(pool, budget=60)


def test_decoder_exception_and_unpicklable_result_are_records() -> None:
    with DecodePool(items("a", "RAISE", "b"), OPTS, workers=1, timeout=30.0, decode_fn=hostile_decode) as pool:
        got = drain(pool)
        assert pool.respawns == 0
    assert got["RAISE"].error_kind == "decode_error" and "decoder bug" in got["RAISE"].error
    assert got["a"].error is None and got["b"].error is None
    with DecodePool(items("x"), OPTS, workers=1, timeout=30.0, decode_fn=unpicklable_decode) as pool:
        got = drain(pool)
    assert got["x"].error_kind == "decode_error"


@pytest.mark.parametrize("workers", [0, 2])
def test_pool_holds_at_most_workers_plus_prefetch_items(workers: int) -> None:
    yielded = 0
    n = 40

    def source() -> Iterator[WorkItem]:
        nonlocal yielded
        nonlocal peak
        for i in range(n):
            yielded += 1
            peak = max(peak, yielded - returned)  # items out of the source, not yet back
            yield WorkItem(id=f"NAP{i}", source="t", modality=Modality.IMAGE, data=b"x")

    prefetch = 3
    returned = 0
    peak = 0
    with DecodePool(source(), OPTS, workers=workers, prefetch=prefetch, timeout=30.0, decode_fn=hostile_decode) as pool:
        deadline = time.monotonic() + 60
        while not pool.done:
            assert time.monotonic() < deadline
            returned += len(pool.poll(timeout=0.05))
            assert pool.held == yielded - returned
            time.sleep(0.01)  # a slow consumer: the pool must not run ahead
    assert returned == n
    assert 1 <= peak <= workers + prefetch


def test_close_kills_a_stuck_worker_quickly() -> None:
    pool = DecodePool(items("HANG"), OPTS, workers=1, timeout=600.0, decode_fn=hostile_decode).__enter__()
    pool.poll(timeout=0.5)
    proc = pool._workers[0].process
    started = time.monotonic()
    pool.close()
    assert time.monotonic() - started < 10
    assert not proc.is_alive()


def test_a_long_waveform_comes_back_whole_and_exact(tmp_path) -> None:
    """A waveform over 16 MB travels from the worker as raw bytes after a small pickled header
    (pickle's out-of-band buffers): the main process gets exactly what decoding inline gives,
    and the item's other fields with it."""
    import numpy as np
    import soundfile as sf

    from gemma4u_batch.decode import decode_item

    rng = np.random.default_rng(5)
    path = tmp_path / "long.flac"
    sf.write(path, (rng.standard_normal(16_000 * 300) * 0.1).astype(np.float32), 16_000)  # 5 min: 19 MB
    items = [WorkItem(id=f"{i}.flac", source=str(path), path=path, modality=Modality.AUDIO) for i in range(2)]
    got: list[DecodedItem] = []
    with DecodePool(iter(items), OPTS, workers=1, timeout=120) as pool:
        deadline = time.monotonic() + 120
        while len(got) < 2 and time.monotonic() < deadline:
            got += pool.poll(0.5)
    inline = decode_item(items[0], OPTS)
    assert [d.item.id for d in got] == ["0.flac", "1.flac"]
    for d in got:
        assert d.error is None and d.audio is not None and d.audio.nbytes > 16 * 2**20
        assert np.array_equal(d.audio, inline.audio) and d.content_sha256 == inline.content_sha256
        assert d.info == inline.info


def test_image_patches_come_back_exact_through_the_framed_pipe(tmp_path) -> None:
    """Images as the model's patches (1.9 MB per 280-token image) travel framed too: what the
    feeding process gets equals decoding inline, arrays and fields, for several images in a row
    on one worker (each result's raw bytes end where the next message starts)."""
    import numpy as np

    from gemma4u_batch.decode import decode_item

    from .helpers import jpeg_bytes, photo

    opts = DecodeOptions(patches=True)
    items = []
    for i, (w, h) in enumerate(((640, 480), (333, 97), (97, 333), (1, 1))):
        path = tmp_path / f"{i}.jpg"
        path.write_bytes(jpeg_bytes(photo().resize((w, h))))
        items.append(WorkItem(id=path.name, source=str(path), path=path, modality=Modality.IMAGE))
    got: dict[str, DecodedItem] = {}
    with DecodePool(iter(items), opts, workers=1, timeout=120) as pool:
        deadline = time.monotonic() + 120
        while len(got) < len(items) and time.monotonic() < deadline:
            got |= {d.item.id: d for d in pool.poll(0.5)}
    assert sorted(got) == sorted(i.id for i in items)
    for item in items:
        d, inline = got[item.id], decode_item(item, opts)
        assert d.error is None and d.image is not None and d.info == inline.info
        assert np.array_equal(d.image.patches, inline.image.patches) and d.image.patches.dtype == np.uint8
        assert np.array_equal(d.image.positions, inline.image.positions)
        assert (d.image.uuid, d.image.num_tokens) == (inline.image.uuid, inline.image.num_tokens)
