"""`gemma4u run-batch`: an OpenAI Batch file through the engine, resumable.

    input lines → checks (run-batch's errors) → conversation + decoded media → engine → output lines

Finished lines are checkpointed beside the output, in `.<OUTPUT>.gemma4u/done.jsonl` (appended,
fsynced at least every `commit_seconds`; a torn last line after a kill is ignored), keyed by the
line's content and the run's settings. A rerun sends only what has no answer yet; the output
file is written once, atomically, in input order, when every line has its answer; a rerun with
the same input and settings then does nothing.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import write_atomic, write_json_atomic
from ..config.job import EngineConfig, SamplingConfig
from ..engine.protocol import Engine, EngineResult
from ..errors import ItemError, UsageError
from ..job.feed import FeedingLoop
from ..job.signals import StopSignal
from ..prompting.units import EngineRequest
from .lines import (
    BatchFile,
    BatchLine,
    Conversation,
    MediaPolicy,
    check_line,
    completion_output,
    conversation_of,
    error_output,
    error_response,
    media_error,
    read_batch,
)
from .responses import chat_completion

log = logging.getLogger(__name__)


@dataclass
class BatchSettings:
    input: Path
    output: Path
    model: str
    served_model_names: list[str] = field(default_factory=list)
    engine: EngineConfig = field(default_factory=EngineConfig)
    image_tokens: int = 280
    seed: int = 0
    limit_mm: dict[str, Any] = field(default_factory=lambda: {"image": 1, "audio": 1, "video": 1})
    media: MediaPolicy = field(default_factory=MediaPolicy)
    commit_seconds: float = 2.0
    engine_restarts: int = 2

    def names(self) -> list[str]:
        return self.served_model_names or [self.model]

    def guard(self) -> dict[str, Any]:
        """What an answer depends on besides its line (the engine options that change outputs
        by content: a LoRA adapter or tokenizer by its files' fingerprint)."""
        from ..prompting.keys import output_settings

        guard = {
            "model": self.model,
            "served_model_names": self.names(),
            "engine": self.engine.stable_dump(),
            "image_tokens": self.image_tokens,
            "seed": self.seed,
            "limit_mm_per_prompt": self.limit_mm,
        }
        outputs = output_settings(self.engine)
        if outputs:
            guard["engine_outputs"] = outputs
        return guard


@dataclass
class BatchSummary:
    lines: int = 0
    done: int = 0  # answered in this run (by the engine or by a check)
    reused: int = 0  # answers from the checkpoint
    errors: int = 0  # error lines in the output
    problems: list[str] = field(default_factory=list)  # unreadable input lines
    already_complete: bool = False
    interrupted: bool = False
    output: str = ""


def state_dir(output: Path) -> Path:
    return output.parent / f".{output.name}.gemma4u"


class Checkpoint:
    """Append-only answers of one output file, keyed by line key."""

    def __init__(self, output: Path) -> None:
        self.dir = state_dir(output)
        self.path = self.dir / "done.jsonl"
        self.complete = self.dir / "complete.json"
        self._fh: Any = None
        self._synced = time.monotonic()

    def load(self) -> dict[str, dict[str, Any]]:
        done: dict[str, dict[str, Any]] = {}
        if not self.path.exists():
            return done
        with open(self.path, "rb") as fh:
            for raw in fh:
                try:
                    rec = json.loads(raw)
                    done[rec["key"]] = rec["line"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # the torn tail of a killed run
        return done

    def add(self, key: str, line: dict[str, Any], commit_seconds: float) -> None:
        if self._fh is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "ab")
            if self._fh.tell():
                self._fh.write(b"\n")  # a torn tail must not swallow the next record
        self._fh.write(json.dumps({"key": key, "line": line}, separators=(",", ":")).encode() + b"\n")
        if time.monotonic() - self._synced >= commit_seconds:
            self.sync()

    def sync(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._synced = time.monotonic()

    def close(self) -> None:
        self.sync()
        if self._fh is not None:
            self._fh.close()
            self._fh = None


@dataclass
class _Pending:
    line: BatchLine
    key: str
    body: Any


class BatchRun:
    """One run of a batch file on a given engine (never shut down here)."""

    def __init__(self, settings: BatchSettings) -> None:
        self.s = settings
        self.batch: BatchFile = read_batch(settings.input)
        if settings.output.exists() and settings.output.is_dir():
            raise UsageError(f"output is a folder, not a file: {settings.output}")
        if settings.output.resolve() == settings.input.resolve():
            raise UsageError("the output file must not be the input file")
        self.checkpoint = Checkpoint(settings.output)
        self.guard = settings.guard()
        self.summary = BatchSummary(lines=len(self.batch.lines), problems=self.batch.problems)
        self.summary.output = str(settings.output)

    def marker(self) -> dict[str, Any]:
        return {"input_sha256": self.batch.sha256, "settings": self.guard}

    def complete(self) -> bool:
        """The output was written from this very input with these settings."""
        try:
            return self.s.output.exists() and json.loads(self.checkpoint.complete.read_text()) == json.loads(
                json.dumps(self.marker(), default=str)
            )
        except (OSError, json.JSONDecodeError):
            return False

    def todo(self) -> tuple[dict[str, dict[str, Any]], list[BatchLine]]:
        done = self.checkpoint.load()
        keys = {line.custom_id: line.key(self.guard) for line in self.batch.lines}
        self.keys = keys
        return done, [line for line in self.batch.lines if keys[line.custom_id] not in done]

    def run(self, engine: Engine | None) -> BatchSummary:
        """Answer every line without one; `engine` may be None only when nothing is left to send."""
        if self.complete():
            self.summary.already_complete = True
            return self._count(self.checkpoint.load())
        done, todo = self.todo()
        self.summary.reused = len(self.batch.lines) - len(todo)
        if todo:
            if engine is None:
                raise RuntimeError("run-batch has lines to send and no engine")
            work = _BatchWork(self, engine, deque(todo), done)
            stop = StopSignal()
            with stop:
                FeedingLoop(
                    engine, work, stop, restarts=self.s.engine_restarts, saved="finished lines are checkpointed"
                ).run()
            self.summary.interrupted = stop.requested
        self.checkpoint.close()
        if not self.summary.interrupted:
            self._write(done)
        return self._count(done)

    def _count(self, done: dict[str, dict[str, Any]]) -> BatchSummary:
        keys = {line.custom_id: line.key(self.guard) for line in self.batch.lines}
        outs = [done.get(keys[line.custom_id]) for line in self.batch.lines]
        self.summary.errors = sum(1 for o in outs if o is not None and o.get("error") is not None)
        return self.summary

    def _write(self, done: dict[str, dict[str, Any]]) -> None:
        payload = b"".join(
            json.dumps(done[self.keys[line.custom_id]], ensure_ascii=False).encode() + b"\n"
            for line in self.batch.lines
        )
        self.s.output.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.s.output, lambda fh: fh.write(payload))
        write_json_atomic(self.checkpoint.complete, self.marker())


class _BatchWork:
    """The feeding loop's `Work` for a batch file: each line prepared into one request (or
    answered at once by a check), each answer recorded in the checkpoint as it finishes."""

    def __init__(self, run: BatchRun, engine: Engine, todo: deque[BatchLine], done: dict[str, dict[str, Any]]) -> None:
        self.run, self.engine, self.todo, self.done = run, engine, todo, done
        self.seq = 0

    def pull(self, idle: bool) -> None:
        """The lines are all read up front."""

    def admit(self, queue: deque[EngineRequest]) -> bool:
        if not self.todo:
            return False
        req = self._prepare(self.todo.popleft())
        if req is not None:
            queue.append(req)
        return True

    def exhausted(self) -> bool:
        return not self.todo

    def rejected(self, result: EngineResult) -> None:
        p: _Pending = result.request.payload
        msg = result.error or "engine rejected the request"
        self._record(p.key, error_output(p.line.custom_id, error_response(msg, "BadRequestError", 400)))

    def finished(self, result: EngineResult) -> list[EngineRequest]:
        p: _Pending = result.request.payload
        if result.error is not None or not result.choices:
            err = error_response(result.error or "no output", "InternalServerError", 500)
            self._record(p.key, error_output(p.line.custom_id, err, 500))
            return []
        body = chat_completion(result, p.body, self.run.s.names()[0])
        self._record(p.key, completion_output(p.line.custom_id, body))
        return []

    def save(self) -> None:
        self.run.checkpoint.sync()

    def tick(self) -> None:
        """Answers are synced as they are added (`Checkpoint.add`)."""

    def _record(self, key: str, out: dict[str, Any]) -> None:
        self.done[key] = out
        self.run.checkpoint.add(key, out, self.run.s.commit_seconds)
        self.run.summary.done += 1

    def _prepare(self, line: BatchLine) -> EngineRequest | None:
        """The line's engine request, or None when a check answered it with an error line."""
        key = self.run.keys[line.custom_id]
        body, error = check_line(line, self.run.s.names())
        if error is not None or body is None:
            self._record(key, error or error_output(line.custom_id, "invalid batch line"))
            return None
        try:
            conv = conversation_of(body.messages, self.run.s.media)
            prompt = self.engine.render_chat(
                conv.messages,
                add_generation_prompt=body.add_generation_prompt,
                continue_final_message=body.continue_final_message,
                template_kwargs=body.chat_template_kwargs,
            )
            params = self._params(body, prompt, conv)
        except ItemError as exc:
            self._record(key, media_error(line.custom_id, exc))
            return None
        except ValueError as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self._record(key, error_output(line.custom_id, error_response(msg, "BadRequestError", 400)))
            return None
        self.seq += 1
        # the sampled tokens' log-probabilities are read back only when the line asks for them
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        sampling = SamplingConfig(max_tokens=max(1, params.max_tokens or 1), logprobs=logprobs)
        p = _Pending(line, key, body)
        return EngineRequest(f"b{self.seq}", prompt, conv.multi_modal_data(), sampling, payload=p, params=params)

    def _params(self, body: Any, prompt: str, conv: Conversation) -> Any:
        """vLLM's own translation of the body into SamplingParams, with the model's generation
        config as defaults and run-batch's default max_tokens (what is left of the context)."""
        limit = self.engine.max_model_len
        with warnings.catch_warnings():  # `max_tokens` is deprecated in the API, still honoured
            warnings.simplefilter("ignore", DeprecationWarning)
            asked = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        prompt_len = self.engine.count_tokens(prompt) + conv.mm_tokens
        if limit is not None and prompt_len >= limit:
            raise ValueError(f"Input length ({prompt_len}) exceeds model's maximum context length ({limit}).")
        room = (limit - prompt_len) if limit is not None else 4096
        max_tokens = min(asked, room) if asked is not None else room
        return body.to_sampling_params(max_tokens, self.engine.generation_defaults())
