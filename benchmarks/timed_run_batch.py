"""`python -m vllm.entrypoints.openai.run_batch`, with the moment its engine is ready
recorded (the module-level `run_batch` coroutine is entered only once the engine is up).

usage: python -m benchmarks.timed_run_batch STAMP.json <run_batch's own args>
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path


def main() -> None:
    stamp = Path(sys.argv[1])
    sys.argv = ["run_batch", *sys.argv[2:]]
    from vllm.entrypoints.launchers import run_batch as rb

    original = rb.run_batch

    async def timed(engine_client, args):  # type: ignore[no-untyped-def]
        ready = time.monotonic()
        await original(engine_client, args)
        stamp.write_text(json.dumps({"engine_ready": ready, "done": time.monotonic()}))

    rb.run_batch = timed
    args = rb.parse_args()
    asyncio.run(rb.main(args))


if __name__ == "__main__":
    main()
