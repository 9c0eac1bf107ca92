"""vLLM's LLMEngine driven request by request (add_request / step), behind the `Engine`
protocol: started in the background once an item surely needs it, restarted after a death,
stopped with a short grace. The feeding loop that drives it is job/feed.py."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..config.job import EngineConfig, JobConfig
from ..errors import EngineDied, EngineFailure, UsageError
from ..prompting.units import EngineRequest
from ..records import Generation
from .inputs import render, vllm_prompt
from .protocol import EngineResult

log = logging.getLogger(__name__)
_T = TypeVar("_T")

SHUTDOWN_GRACE_S = 0.3


def token_logprobs(completion: Any, n: int) -> list[dict[str, Any]]:
    """--logprobs N: each generated token, its log-probability and the N most likely tokens at
    that step (vLLM's raw log-probabilities: before temperature, top-k/p and penalties)."""
    out: list[dict[str, Any]] = []
    for token_id, step in zip(completion.token_ids, completion.logprobs or [], strict=False):
        chosen = step.get(token_id)
        top = sorted(step.values(), key=_rank)[:n]  # vLLM adds the sampled token when it is not in the top n
        out.append(
            {
                "token": chosen.decoded_token if chosen is not None else None,
                "logprob": chosen.logprob if chosen is not None else None,
                "top": [{"token": lp.decoded_token, "logprob": lp.logprob} for lp in top],
            }
        )
    return out


def sampling_params(request: EngineRequest) -> Any:
    """vLLM's SamplingParams for one of gemma4u's requests (run-batch brings its own)."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    from .plugin import logprob_sums

    s = request.sampling
    return SamplingParams(
        max_tokens=s.max_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        seed=s.seed,
        top_k=s.top_k,
        min_p=s.min_p,
        stop=list(s.stop) or None,
        presence_penalty=s.presence_penalty,
        frequency_penalty=s.frequency_penalty,
        repetition_penalty=s.repetition_penalty,
        # the sampled tokens' log-probabilities, always (mean_logprob; see BENCHMARKS.md for the cost),
        # their token texts only when --logprobs asks for the list
        logprobs=s.logprobs if s.logprobs is not None else 0,
        extra_args={logprob_sums.SUM_ONLY: True} if s.logprobs is None else None,
        structured_outputs=StructuredOutputsParams(**request.structured) if request.structured else None,
    )


def _generation(req: EngineRequest, out: Any, completion: Any) -> Generation:
    """One sampled sequence of a finished request, with the token list when the request asks."""
    n = req.sampling.logprobs
    return Generation(
        text=completion.text,
        finish_reason=completion.finish_reason,
        num_prompt_tokens=len(out.prompt_token_ids or []),
        num_output_tokens=len(completion.token_ids),
        cumulative_logprob=completion.cumulative_logprob,
        token_logprobs=token_logprobs(completion, n) if n is not None else None,
        stop_reason=completion.stop_reason,
        token_ids=tuple(completion.token_ids) if req.prompt_token_ids is not None else None,
    )


def _rank(lp: Any) -> int:
    return lp.rank if lp.rank is not None else 1 << 30


def _quiet_vllm() -> None:
    """Environment for vLLM and the libraries below it, before they are imported (the engine's
    processes inherit it). What reaches the terminal is decided by `messages.engine_output`."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # vLLM's default is stdout
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def _encoder_cudagraphs(compilation: Any) -> bool:
    """Whether vLLM captures the vision embedding in CUDA graphs (`cudagraph_mm_encoder`): its
    inputs then skip the model's input parsing, where gemma4u's pixel bytes are rescaled.
    `--engine-arg` gives a dict (JSON); EngineArgs may already hold vLLM's config object."""
    if isinstance(compilation, dict):
        return bool(compilation.get("cudagraph_mm_encoder"))
    return bool(getattr(compilation, "cudagraph_mm_encoder", False))


def _reason(exc: BaseException) -> str:
    """One line saying why vLLM refused its settings (a pydantic error's own message, not its header)."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            first = errors()[0]
        except (TypeError, IndexError):
            first = None
        if isinstance(first, dict) and first.get("msg"):
            return " ".join(str(first["msg"]).removeprefix("Value error, ").split())
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _engine_dead(exc: BaseException) -> bool:
    """vLLM's EngineDeadError, or the broken pipes of a core process that vanished."""
    name = type(exc).__name__
    return name in ("EngineDeadError", "ZMQError", "BrokenPipeError", "ConnectionResetError") or (
        exc.__cause__ is not None and type(exc.__cause__).__name__ == "EngineDeadError"
    )


def check_model_path(model: str) -> None:
    """A local model folder must exist and hold a config; ids are left to vLLM."""
    looks_local = model.startswith((".", "/", "~")) or (
        os.path.sep in model and os.path.exists(model.split(os.path.sep)[0])
    )
    if looks_local or os.path.exists(model):
        path = os.path.expanduser(model)
        if not os.path.isdir(path):
            raise UsageError(f"model folder not found: {model}")
        if not os.access(path, os.R_OK) or not os.path.isfile(os.path.join(path, "config.json")):
            raise UsageError(f"model folder is unreadable or has no config.json: {model}")


@dataclass
class VllmEngine:
    """vLLM's LLMEngine driven request by request (add_request / step)."""

    model: str
    engine: EngineConfig
    image_tokens: int = 280
    limit_mm: dict[str, int | dict[str, int]] = field(default_factory=lambda: {"image": 1, "audio": 1, "video": 1})
    seed: int = 0
    _llm: Any = None
    _tokenizer: Any = None
    _inflight: dict[str, EngineRequest] = field(default_factory=dict)
    restarts: int = 0
    startup_s: float = 0.0
    accepts_patches: bool = False  # images may come as decode.patches.ImagePatches (decided in start)
    patches_note: str = ""
    _starting: threading.Thread | None = None
    _start_error: BaseException | None = None
    _token_counts: dict[str, int] = field(default_factory=dict)
    _sockets: threading.RLock = field(default_factory=threading.RLock)
    _prompt_ids: dict[str, tuple[int, ...]] = field(default_factory=dict)
    _defaults: dict[str, Any] | None = None
    _frontend: tuple[Any, Any] | None = None

    @property
    def model_name(self) -> str:
        return self.model

    def start(self) -> VllmEngine:
        """Check the model folder now; the tokenizer and the engine load on first use, so a
        rerun with nothing to do pays for neither."""
        _quiet_vllm()
        check_model_path(self.model)
        from .inputs import patches_unsupported

        why_not = patches_unsupported(self.model, self.engine.revision)
        self.accepts_patches = why_not is None
        self.patches_note = why_not or "images are patchified in the decode workers"
        return self

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            t0 = time.monotonic()
            from transformers import AutoTokenizer

            try:
                tok = AutoTokenizer.from_pretrained(
                    self.engine.tokenizer or self.model,
                    revision=self.engine.revision if self.engine.tokenizer is None else None,
                )
            except (OSError, ValueError) as exc:
                name = self.engine.tokenizer or self.model
                raise UsageError(f"cannot load the tokenizer {name}: {str(exc).splitlines()[0]}") from exc
            if not getattr(tok, "chat_template", None):
                raise UsageError(f"model {self.model} has no chat template")
            self._tokenizer = tok
            self.startup_s += time.monotonic() - t0
        return self._tokenizer

    def prestart(self) -> None:
        """Begin starting the engine in the background: a job calls this when its first item
        needs generation, so the engine's processes start while the input is scanned and
        decoded. vLLM and the tokenizer are imported here first, in the calling thread
        (transformers' lazy imports are not safe from two threads at once)."""
        if self._llm is not None or self._starting is not None or self._start_error is not None:
            return
        try:
            args = self._engine_args()
            self.tokenizer  # noqa: B018 (loaded now, before the thread starts)
        except BaseException as exc:  # raised at the first add, as without prestart
            self._start_error = exc
            return

        def launch() -> None:
            try:
                self._launch(args)
            except BaseException as exc:  # handed to the first add, raised there
                self._start_error = exc

        self._starting = threading.Thread(target=launch, name="gemma4u-engine-start", daemon=True)
        self._starting.start()

    def _ensure_started(self) -> None:
        """The engine, started now or by `prestart` (whose failure is raised here)."""
        if self._starting is not None:
            self._starting.join()
            self._starting = None
            if self._start_error is None:
                self._started()
        if self._start_error is not None:
            exc, self._start_error = self._start_error, None
            raise exc
        if self._llm is None:
            self._start_engine()

    def _start_engine(self) -> None:
        self._launch(self._engine_args())
        self._started()

    def _engine_args(self) -> Any:
        """vLLM's EngineArgs for this engine; what must be refused is refused here, first."""
        t0 = time.monotonic()
        from vllm.platforms import current_platform

        on_cpu = current_platform.is_cpu()
        if self.engine.batch_invariant:
            if on_cpu:
                # vLLM 0.32 installs its batch-invariant kernels (Triton) on every platform; on
                # CPU they fail at the first request and the engine dies: refuse before starting.
                raise UsageError(
                    "--batch-invariant (engine.batch_invariant) needs a GPU: vLLM's batch-invariant "
                    "kernels do not run on CPU (the engine dies at the first request)"
                )
            # Read by vLLM (and its engine processes, which inherit it) when the engine starts.
            os.environ["VLLM_BATCH_INVARIANT"] = "1"
        from vllm import EngineArgs

        from ..console import say
        from .args import exactness_warnings

        for warning in exactness_warnings(self.engine, on_cpu):
            log.info("gemma4u: %s", warning)
            say(f"gemma4u: WARNING: {warning}")
        from .plugin import logprob_sums, processed

        logprob_sums.apply()  # this process turns the core's outputs into results
        if self.accepts_patches and not processed.register():  # this process renders the requests
            raise EngineFailure(
                f"gemma4u's image input path failed ({processed.reason()}); "
                f"set {processed.DISABLE_ENV}=1 to let vLLM preprocess images"
            )
        args = EngineArgs(**self._engine_kwargs(on_cpu))
        if self.accepts_patches:
            processed.send_bytes(not _encoder_cudagraphs(args.compilation_config))
        self.startup_s += time.monotonic() - t0
        return args

    def _launch(self, args: Any) -> None:
        """Start vLLM's engine (its processes): the part `prestart` runs in the background."""
        t0 = time.monotonic()
        from vllm.v1.engine.llm_engine import LLMEngine

        try:
            self._llm = LLMEngine.from_engine_args(args)
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot load model {self.model}: {_reason(exc)}") from exc
        except RuntimeError as exc:  # the engine's processes failed to start
            from .args import options_set

            if not (given := options_set(self.engine)):
                raise
            raise UsageError(
                f"the engine did not start with {given}: vLLM on this platform may not support it "
                "(the engine log says why)"
            ) from exc
        _shutdown_under(self._sockets, self._llm.engine_core)
        self.startup_s += time.monotonic() - t0

    def _prompt_token_ids(self, text: str) -> tuple[int, ...]:
        """The renderer's token ids for a prompt text, once per distinct prompt."""
        from .inputs import prompt_token_ids

        return _per_prompt(self._prompt_ids, text, lambda: prompt_token_ids(self._llm, text))

    def _started(self) -> None:
        """In the calling thread, once the engine is up."""
        if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") != "0":
            import torch

            torch.set_num_threads(1)  # the engine core has its own process; here torch only prepares requests
        self._warn_plugin()

    def _engine_kwargs(self, on_cpu: bool) -> dict[str, Any]:
        """EngineArgs: gemma4u's own settings, the dedicated flags, then --engine-arg extras
        (which never name a key set here: engineargs.check_engine_args refuses those)."""
        from vllm.config import StructuredOutputsConfig

        e = self.engine
        kw: dict[str, Any] = dict(
            model=self.model,
            dtype=e.dtype,
            max_model_len=e.max_model_len,
            max_num_seqs=e.max_num_seqs,
            gpu_memory_utilization=e.gpu_memory_utilization or (0.15 if on_cpu else 0.9),
            tensor_parallel_size=e.tensor_parallel_size,
            pipeline_parallel_size=e.pipeline_parallel_size,
            enforce_eager=e.enforce_eager,
            limit_mm_per_prompt=dict(self.limit_mm),
            mm_processor_kwargs={"max_soft_tokens": self.image_tokens},
            mm_processor_cache_gb=e.mm_cache_gb,
            disable_chunked_mm_input=True,
            # Compact JSON under guided decoding: a weak or sampled model cannot loop on
            # whitespace inside the object (engine-wide in vLLM 0.32; needs xgrammar/guidance).
            # run-batch keeps vLLM's default, so its answers are vLLM's.
            structured_outputs_config=(
                StructuredOutputsConfig(backend="xgrammar", disable_any_whitespace=True)
                if e.compact_json
                else StructuredOutputsConfig()
            ),
            seed=self.seed,
            disable_log_stats=True,
            quantization=e.quantization,
            kv_cache_dtype=e.kv_cache_dtype,
            revision=e.revision,
            tokenizer=e.tokenizer,
            download_dir=e.download_dir,
            enable_mm_embeds=self.accepts_patches,  # vLLM's switch for inputs that skip its processor
        )
        if e.lora:
            from ..config.engine_args import lora_rank
            from .args import vllm_lora_rank

            kw.update(enable_lora=True, max_loras=1, max_lora_rank=vllm_lora_rank(lora_rank(e.lora)))
        return {**kw, **e.engine_args}

    def _lora_request(self) -> Any:
        """The adapter every request runs with (--lora), or None."""
        if not self.engine.lora:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest("gemma4u-lora", 1, os.path.abspath(os.path.expanduser(self.engine.lora)))

    def _warn_plugin(self) -> None:
        """Say loudly when image attention on this backend does not match the model."""
        from ..console import say

        for problem in self.notes().get("bidi_plugin", {}).get("problems", []):
            log.info("gemma4u: %s", problem)
            say(f"gemma4u: WARNING: {problem}")

    def notes(self) -> dict[str, Any]:
        """Facts for the run manifest: what the bidirectional-attention plugin does here
        (known once the engine has started; asking earlier would import vLLM for nothing)."""
        if self._llm is None:
            return {"bidi_plugin": {"summary": "not checked: the engine had not started"}}
        from .plugin import describe, plugin_status

        status = plugin_status(self._llm)
        notes: dict[str, Any] = {
            "bidi_plugin": {**status, "summary": describe(status)},
            "image_input": self.patches_note,
        }
        if self.engine.batch_invariant:
            notes["batch_invariant"] = os.environ.get("VLLM_BATCH_INVARIANT") == "1"
        return notes

    def render_prompt(self, messages: list[dict[str, Any]]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def chat_frontend(self) -> tuple[Any, Any]:
        """vLLM's model config and renderer: the engine's once it is up; while it starts, ones
        built from the same engine arguments (a renderer needs the config, not the engine), so
        lines are rendered and their media decoded during the start."""
        if self._llm is not None and self._starting is None:
            return self._llm.model_config, self._llm.renderer
        if self._frontend is None:
            from vllm.renderers import renderer_from_config

            config = self._engine_args().create_engine_config()
            self._frontend = (config.model_config, renderer_from_config(config))
        return self._frontend

    def ready(self) -> bool:
        """Whether `add` can go ahead without waiting for a start `prestart` began."""
        return self._starting is None or not self._starting.is_alive()

    def generation_defaults(self) -> dict[str, Any]:
        """The model's generation config (vLLM's "diff" sampling parameters), read once the engine is up."""
        if self._defaults is None:
            self._ensure_started()
            self._defaults = dict(self._llm.model_config.get_diff_sampling_param())
        return self._defaults

    def count_tokens(self, text: str) -> int:
        """Tokens of a rendered prompt, counted once per distinct prompt (every item of a task
        usually shares one), not once per item."""
        return _per_prompt(self._token_counts, text, lambda: len(self.tokenizer.encode(text, add_special_tokens=False)))

    @property
    def max_model_len(self) -> int | None:
        return self.engine.max_model_len

    def capacity(self) -> int:
        limit = self.engine.max_in_flight or 2 * self.engine.max_num_seqs
        return max(0, limit - len(self._inflight))

    def add(self, request: EngineRequest) -> EngineResult | None:
        """Submit; a request the engine rejects comes back at once as an error result."""
        params = request.params or sampling_params(request)
        self._ensure_started()
        prompt = vllm_prompt(request.prompt, request.multi_modal_data, processed_audio=self.accepts_patches)
        try:
            if request.prompt_token_ids is not None:  # tokenized as vLLM's chat serving does
                prompt["prompt_token_ids"] = list(request.prompt_token_ids)
            elif "multi_modal_data" in prompt:  # (a text-only prompt may want vLLM's token offsets)
                prompt["prompt_token_ids"] = list(self._prompt_token_ids(request.prompt))
            engine_input = render(self._llm, prompt)
            with self._sockets:
                self._llm.add_request(request.request_id, engine_input, params, lora_request=self._lora_request())
        except Exception as exc:
            if _engine_dead(exc):
                raise EngineDied(str(exc)) from exc
            if not isinstance(exc, ValueError | TypeError | RuntimeError):
                raise
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return EngineResult(request, error=f"engine rejected the request: {msg}", error_kind="rejected")
        self._inflight[request.request_id] = request
        return None

    def step(self) -> list[EngineResult]:
        results: list[EngineResult] = []
        try:
            self._wait_for_output()
            with self._sockets:
                outputs = self._llm.step()
        except Exception as exc:
            if _engine_dead(exc):
                raise EngineDied(str(exc) or type(exc).__name__) from exc
            raise
        for out in outputs:
            if not out.finished:
                continue
            req = self._inflight.pop(out.request_id, None)
            if req is None:
                continue
            choices = [_generation(req, out, c) for c in sorted(out.outputs, key=lambda c: c.index)]
            results.append(EngineResult(req, choices[0], choices=choices))
        return results

    def _wait_for_output(self) -> None:
        """Block until the engine core has output, but notice if its process died.

        vLLM 0.32's synchronous client waits on its output queue forever when the core
        process is killed (its monitor marks the engine dead but does not wake the waiter).
        """
        core = getattr(self._llm, "engine_core", None)
        q = getattr(core, "outputs_queue", None)
        resources = getattr(core, "resources", None)
        if q is None or not hasattr(q, "not_empty"):
            return
        while True:
            with q.not_empty:
                if q.not_empty.wait_for(lambda: bool(q.queue), timeout=0.5):
                    return
            manager = getattr(resources, "engine_manager", None)
            procs = getattr(manager, "processes", None) or []
            dead = [p for p in procs if p.exitcode is not None]
            if getattr(resources, "engine_dead", False) or dead:
                code = dead[0].exitcode if dead else None
                raise EngineDied(f"engine core process exited (exit code {code})")

    def has_unfinished(self) -> bool:
        return bool(self._inflight)

    def take_inflight(self) -> list[EngineRequest]:
        """After a death: the requests that never finished; the next add restarts the engine."""
        reqs = list(self._inflight.values())
        self._inflight.clear()
        self.shutdown()
        self.restarts += 1
        return reqs

    def shutdown(self) -> None:
        """Stop the engine processes. Everything is committed before this runs, so the core gets
        SHUTDOWN_GRACE_S, not vLLM's 5 s (on CPU it never exits within them: every run waited
        the whole grace and was then killed)."""
        if self._starting is not None:  # a background start must finish before it can be stopped
            self._starting.join()
            self._starting = None
        if self._llm is not None:
            try:
                self._llm.engine_core.shutdown(timeout=SHUTDOWN_GRACE_S)
            except (RuntimeError, OSError) as exc:  # best effort at exit
                log.debug("engine shutdown: %s", exc)
            self._llm = None


PROMPTS_KEPT = 4096


def _per_prompt(cache: dict[str, _T], text: str, make: Callable[[], _T]) -> _T:
    """`make()` once per distinct prompt text: the items of a task usually share one prompt; a
    per-row template's prompts are kept up to PROMPTS_KEPT, then the cache starts over."""
    value = cache.get(text)
    if value is None:
        if len(cache) >= PROMPTS_KEPT:
            cache.clear()
        value = cache[text] = make()
    return value


def _shutdown_under(lock: threading.RLock, client: Any) -> None:
    """Make vLLM's client shut down only while `lock` is free. When the core process dies,
    vLLM 0.32's monitor thread closes the client's input socket from its own thread; if the
    feeding thread is sending a request on it at that moment, libzmq aborts the whole process
    ("Resource temporarily unavailable (src/session_base.cpp:233)": SIGABRT instead of exit
    75 and its message). The feeding thread holds `lock` around every call that uses the socket."""
    shutdown = client.shutdown

    def locked_shutdown(timeout: float | None = None) -> None:
        with lock:
            shutdown(timeout)

    client.shutdown = locked_shutdown


def build_engine(config: JobConfig) -> VllmEngine:
    """The vLLM engine a job's config asks for: tokenizer now, the engine on first use."""
    return prompt_renderer(config).start()


def prompt_renderer(config: JobConfig) -> VllmEngine:
    """The job's chat template and tokenizer alone, loaded on first use and never an engine:
    for keys and counts where nothing is generated (a plan, `status --count-pending`)."""
    return VllmEngine(
        model=config.model,
        engine=config.engine,
        image_tokens=config.image_tokens,
        seed=config.sampling.seed or 0,
    )


@contextmanager
def open_engine(config: JobConfig) -> Iterator[VllmEngine]:
    """An engine owned by the `with` block: shut down when the block ends, however it ends."""
    engine = build_engine(config)
    try:
        yield engine
    finally:
        engine.shutdown()
