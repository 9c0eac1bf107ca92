"""`gemma4u run-batch`: an OpenAI Batch file through the engine, resumable.

    input lines → checks (run-batch's errors) → conversation + decoded media → engine → output lines

Finished lines are checkpointed beside the output, in `.<OUTPUT>.gemma4u/done.jsonl` (for a URL
output in the local cache: batch/files.py; appended,
fsynced at least every `commit_seconds`; a torn last line after a kill is ignored), keyed by the
line's content and the run's settings. A rerun sends only what has no answer yet; the output
file is written once, atomically, in input order, when every line has its answer (with
`--error-file`, the error lines go there instead); a rerun with the same input, settings and
files then does nothing, and one after a failed upload only writes the files again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import write_json_atomic
from ..config.job import EngineConfig, SamplingConfig
from ..decode.item import DecodedItem
from ..decode.spill import SpilledAudio
from ..decode.workers import DecodePool, auto_workers
from ..engine.protocol import Engine, EngineResult
from ..errors import ItemError, UsageError
from ..job.feed import FeedingLoop
from ..job.signals import StopSignal
from ..prompting.units import EngineRequest
from ..records import WorkItem
from . import files
from .chat import ChatFrontend, ChatOptions, RenderedChat
from .files import Location, Target
from .lines import (
    SPEECH_URLS,
    BatchFile,
    BatchLine,
    check_line,
    completion_output,
    error_output,
    error_response,
    media_error,
    parse_batch,
)
from .media import MediaPolicy, engine_item, multi_modal_data
from .speech import SpeechAnswer, SpeechBody, SpeechPart, speech_item

log = logging.getLogger(__name__)


@dataclass
class BatchSettings:
    input: Location  # a path, or a URL kept as text (batch/files.py)
    output: Location
    model: str
    served_model_names: list[str] = field(default_factory=list)
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(compact_json=False))  # vLLM's JSON
    image_tokens: int = 280
    seed: int = 0
    limit_mm: dict[str, Any] = field(default_factory=lambda: {"image": 1, "audio": 1, "video": 1})
    media: MediaPolicy = field(default_factory=MediaPolicy)
    chat: ChatOptions = field(default_factory=ChatOptions)
    workers: int | None = None  # decode worker processes; None: the cores left (decode/workers.py)
    decode_timeout: float = 60.0
    commit_seconds: float = 2.0
    engine_restarts: int = 2
    error_file: Location | None = None  # error lines go there, successes to `output` (OpenAI's two files)
    output_tmp_dir: Path | None = None  # vLLM's --output-tmp-dir: a URL's payload is staged there
    attempts: int = files.ATTEMPTS  # http(s) GET/PUT attempts on transient failures
    backoff: float = files.BACKOFF  # seconds before the second attempt, doubled after

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
        chat = self.chat.settings()
        if chat:
            guard["chat"] = chat
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
    output: str = ""  # as messages show it (a URL redacted)
    error_file: str = ""


def state_dir(output: Location) -> Path:
    """The checkpoint's folder: beside a local output, in the local cache for a URL."""
    return files.state_dir(output)


class Checkpoint:
    """Append-only answers of one output file, keyed by line key."""

    def __init__(self, output: Location) -> None:
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


class BatchRun:
    """One run of a batch file on a given engine (never shut down here)."""

    def __init__(self, settings: BatchSettings) -> None:
        self.s = settings
        names = {files.identity(settings.input): "input"}
        for what, where in (("output", settings.output), ("error", settings.error_file)):
            if where is None:
                continue
            files.check_output(where, what)
            if files.identity(where) in names:
                raise UsageError(f"the {what} file must not be the {names[files.identity(where)]} file")
            names[files.identity(where)] = what
        data = files.read_batch_bytes(settings.input, settings.attempts, settings.backoff)
        self.batch: BatchFile = parse_batch(data, files.shown(settings.input))
        self.target = self._target(settings.output)
        self.errors = self._target(settings.error_file) if settings.error_file is not None else None
        self.checkpoint = Checkpoint(settings.output)
        self.guard = settings.guard()
        # each line's checkpoint key, hashed once (todo, the count and the write all use them)
        self.keys = {line.custom_id: line.key(self.guard) for line in self.batch.lines}
        self.summary = BatchSummary(lines=len(self.batch.lines), problems=self.batch.problems)
        self.summary.output = self.target.shown
        self.summary.error_file = self.errors.shown if self.errors else ""

    def _target(self, where: Location) -> Target:
        return Target(where, self.s.output_tmp_dir, self.s.attempts, self.s.backoff)

    def marker(self) -> dict[str, Any]:
        """What the written files answer: the input, the settings, and where the error lines went
        (another --error-file rewrites the files from the checkpoint)."""
        marker: dict[str, Any] = {"input_sha256": self.batch.sha256, "settings": self.guard}
        if self.errors is not None:
            marker["error_file"] = files.identity(self.errors.where)
        return marker

    def complete(self) -> bool:
        """The files were written from this very input with these settings."""
        try:
            written = json.loads(self.checkpoint.complete.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        if written != json.loads(json.dumps(self.marker(), default=str)):
            return False
        return self.target.exists() and (self.errors is None or self.errors.exists())

    def needs_engine(self) -> bool:
        """Whether some line has no answer yet (a rerun after a failed upload only writes)."""
        return not self.complete() and bool(self.todo()[1])

    def todo(self) -> tuple[dict[str, dict[str, Any]], list[BatchLine]]:
        done = self.checkpoint.load()
        return done, [line for line in self.batch.lines if self.keys[line.custom_id] not in done]

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
            stop = StopSignal()
            with stop, _BatchWork(self, engine, deque(todo), done) as work:
                FeedingLoop(
                    engine, work, stop, restarts=self.s.engine_restarts, saved="finished lines are checkpointed"
                ).run()
            self.summary.interrupted = stop.requested
        self.checkpoint.close()
        if not self.summary.interrupted:
            self._write(done)
        return self._count(done)

    def _count(self, done: dict[str, dict[str, Any]]) -> BatchSummary:
        outs = [done.get(self.keys[line.custom_id]) for line in self.batch.lines]
        self.summary.errors = sum(1 for o in outs if o is not None and o.get("error") is not None)
        return self.summary

    def _write(self, done: dict[str, dict[str, Any]]) -> None:
        """The output (and error) file in input order, then the marker that they are complete."""
        outs = [done[self.keys[line.custom_id]] for line in self.batch.lines]
        if self.errors is not None:
            self.errors.write(_jsonl(o for o in outs if o.get("error") is not None))
            outs = [o for o in outs if o.get("error") is None]
        self.target.write(_jsonl(outs))
        self.checkpoint.dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.checkpoint.complete, self.marker())


@dataclass
class _ChatLine:
    """A chat line whose media are decoding: each medium's slot, filled as its item comes back."""

    line: BatchLine
    key: str
    rendered: RenderedChat
    slots: list[tuple[str, int]]  # (modality, index) of each media item, in the order they were fed
    decoded: dict[int, DecodedItem] = field(default_factory=dict)


@dataclass
class _SpeechLine:
    """A transcription or translation line whose audio is decoding."""

    line: BatchLine
    key: str
    body: SpeechBody


@dataclass
class _Pending:
    """What a chat line's engine request carries back to `finished`."""

    line: BatchLine
    key: str
    rendered: RenderedChat


def _jsonl(lines: Iterable[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line, ensure_ascii=False).encode() + b"\n" for line in lines)


class _BatchWork:
    """The feeding loop's `Work` for a batch file. Lines are prepared a few at a time (checked,
    then rendered by vLLM's chat serving code); their media go to the decode workers as
    `caption`'s files do; a line whose media are all decoded becomes its engine request. Each
    answer is recorded in the checkpoint as it finishes; a line a check or its media answer is
    recorded at once."""

    def __init__(self, run: BatchRun, engine: Engine, todo: deque[BatchLine], done: dict[str, dict[str, Any]]) -> None:
        self.run, self.engine, self.todo, self.done = run, engine, todo, done
        self.seq = 0
        self.ready: deque[EngineRequest] = deque()
        self.waiting: dict[int, _ChatLine | _SpeechLine] = {}  # by line number
        self.feed: deque[WorkItem] = deque()
        self._frontend: ChatFrontend | None = None
        s = run.s
        self.opts = dataclasses.replace(
            s.media.decode,
            patches=engine.accepts_patches,
            # speech lines' audio is cut at its speech (VAD windows), as `transcribe` cuts it
            vad=any(line.raw.get("url") in SPEECH_URLS for line in todo),
            max_input_bytes=min(s.media.decode.max_input_bytes, s.media.max_bytes),
        )
        workers = s.workers if s.workers is not None else auto_workers(1 + s.engine.tensor_parallel_size)
        self.pool = DecodePool(self._media(), self.opts, workers=workers, timeout=s.decode_timeout)
        # lines prepared ahead of the engine: enough to keep it full while their media decode
        self.ahead = max(8, 2 * (s.engine.max_in_flight or 2 * s.engine.max_num_seqs))
        engine.prestart()  # the engine starts in the background while the first lines decode

    def __enter__(self) -> _BatchWork:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.close()
        if self._frontend is not None:
            self._frontend.close()

    @property
    def frontend(self) -> ChatFrontend:
        if self._frontend is None:
            self._frontend = ChatFrontend(*self.engine.chat_frontend(), self.run.s.chat)
        return self._frontend

    def _media(self) -> Iterator[WorkItem | None]:
        """The decode pool's input: the media items of the lines prepared so far; None while
        none is waiting and more lines may come."""
        while self.feed or self.todo or self.waiting:
            yield self.feed.popleft() if self.feed else None

    def pull(self, idle: bool) -> None:
        while self.todo and len(self.ready) + len(self.waiting) < self.ahead:
            self._prepare(self.todo.popleft())
        if self.waiting:
            for d in self.pool.poll(timeout=0.05 if idle and not self.ready else 0.0):
                self._decoded(d)

    def admit(self, queue: deque[EngineRequest]) -> bool:
        if not self.ready or not self.engine.ready():  # while it starts, lines are prepared and decoded
            return False
        queue.append(self.ready.popleft())
        return True

    def exhausted(self) -> bool:
        return not self.todo and not self.waiting and not self.ready

    def rejected(self, result: EngineResult) -> None:
        if isinstance(part := result.request.payload, SpeechPart):
            if part.answer.finish(part.index, result, rejected=True):
                self._answered(part.answer)
            return
        p: _Pending = result.request.payload
        msg = result.error or "engine rejected the request"
        self._record(p.key, error_output(p.line.custom_id, error_response(msg, "BadRequestError", 400)))

    def finished(self, result: EngineResult) -> list[EngineRequest]:
        if isinstance(part := result.request.payload, SpeechPart):
            if part.answer.finish(part.index, result):
                self._answered(part.answer)
            return []
        p: _Pending = result.request.payload
        if result.error is not None or not result.choices:
            err = error_response(result.error or "no output", "InternalServerError", 500)
            self._record(p.key, error_output(p.line.custom_id, err, 500))
            return []
        body = self.frontend.completion(result, p.rendered, self.run.s.names()[0])
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

    def _answered(self, answer: SpeechAnswer) -> None:
        if answer.unit is not None:
            answer.unit.release()  # long audio's spill file goes with the line's last window
        self._record(self.run.keys[answer.line.custom_id], answer.output())

    def _prepare(self, line: BatchLine) -> None:
        """Check and render one line: answered at once (an error line), ready for the engine
        (no media), or waiting for its media, which join the decode workers' feed."""
        key = self.run.keys[line.custom_id]
        body, error = check_line(line, self.run.s.names())
        if error is not None or body is None:
            self._record(key, error or error_output(line.custom_id, "invalid batch line"))
            return
        if isinstance(body, SpeechBody):
            try:
                item = speech_item(body, self.run.s.media, f"{line.lineno}:0")
            except ItemError as exc:
                self._record(key, media_error(line.custom_id, exc))
                return
            self.waiting[line.lineno] = _SpeechLine(line, key, body)
            self.feed.append(item)
            return
        rendered = self.frontend.render(body)
        if not isinstance(rendered, RenderedChat):  # vLLM's ErrorResponse
            self._record(key, error_output(line.custom_id, rendered, rendered.error.code))
            return
        slots = [(m, i) for m, refs in rendered.media.items() for i in range(len(refs))]
        try:
            items = [
                self.run.s.media.item(rendered.media[m][i], f"{line.lineno}:{n}") for n, (m, i) in enumerate(slots)
            ]
        except ItemError as exc:
            self._record(key, media_error(line.custom_id, exc))
            return
        if not items:
            self._request(line, key, rendered, {}, 0)
            return
        self.waiting[line.lineno] = _ChatLine(line, key, rendered, slots)
        self.feed.extend(items)

    def _decoded(self, d: DecodedItem) -> None:
        """A media item is back; the line goes to the engine once all of its media are."""
        lineno, _, n = d.item.id.partition(":")
        waiting = self.waiting.get(int(lineno))
        if waiting is None:
            return
        if isinstance(waiting, _SpeechLine):
            del self.waiting[int(lineno)]
            self._speech(waiting, d)
            return
        waiting.decoded[int(n)] = d
        if len(waiting.decoded) < len(waiting.slots):
            return
        del self.waiting[int(lineno)]
        media: dict[str, list[Any]] = {m: [None] * len(refs) for m, refs in waiting.rendered.media.items()}
        tokens = 0
        try:
            for n_, (modality, i) in enumerate(waiting.slots):
                media[modality][i], cost = engine_item(waiting.decoded[n_], modality, self.opts)
                tokens += cost
        except ItemError as exc:
            self._record(waiting.key, media_error(waiting.line.custom_id, exc))
            return
        self._request(waiting.line, waiting.key, waiting.rendered, media, tokens)

    def _speech(self, waiting: _SpeechLine, d: DecodedItem) -> None:
        """A speech line's audio is back: its windows' requests (none: answered already)."""
        spill = d.audio.file if isinstance(d.audio, SpilledAudio) else None
        self.seq += 1
        answer = SpeechAnswer(waiting.line, waiting.body, d, self.engine, f"b{self.seq}")
        requests = answer.requests()
        if spill is not None:  # long audio: its spill file stays until the last window is answered
            spill.hold(1 if requests and answer.unit is not None else 0)
            if requests and answer.unit is not None:
                answer.unit.spill = spill
        if not requests:
            self._record(waiting.key, answer.output())
            return
        self.ready.extend(requests)

    def _request(
        self, line: BatchLine, key: str, rendered: RenderedChat, media: dict[str, list[Any]], media_tokens: int
    ) -> None:
        """The line's engine request with vLLM's sampling parameters, or its error line."""
        try:
            params = self.frontend.sampling_params(rendered, media_tokens, self.engine.generation_defaults())
        except ValueError as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self._record(key, error_output(line.custom_id, error_response(msg, "BadRequestError", 400)))
            return
        self.seq += 1
        body = rendered.request
        # the sampled tokens' log-probabilities are read back only when the line asks for them
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        sampling = SamplingConfig(max_tokens=max(1, params.max_tokens or 1), logprobs=logprobs)
        self.ready.append(
            EngineRequest(
                f"b{self.seq}",
                rendered.prompt,
                multi_modal_data(media),
                sampling,
                payload=_Pending(line, key, rendered),
                params=params,
                prompt_token_ids=tuple(rendered.prompt_token_ids),
            )
        )
