"""`gemma4u run-batch -i IN.jsonl -o OUT.jsonl --model M`: a drop-in for `vllm run-batch`
(OpenAI Batch format, /v1/chat/completions), resumable. The work lives in batch/run.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import ExitCode
from .launch import engine_overrides, err
from .options import EngineFlags, Verbose, engine_options


@engine_options
def run_batch(
    input_file: Annotated[
        str,
        typer.Option(
            "--input-file",
            "-i",
            help="OpenAI batch input (JSONL: custom_id, method, url, body): a path, an http(s) URL (GET), "
            "s3://, gs:// or az://.",
        ),
    ],
    output_file: Annotated[
        str,
        typer.Option(
            "--output-file",
            "-o",
            help="Batch output (JSONL), written whole at the end: a path (atomically), an http(s) URL (PUT, "
            "e.g. presigned), s3://, gs:// or az://.",
        ),
    ],
    model: Annotated[str, typer.Option("--model", help="Model path or HF id.")],
    served_model_name: Annotated[
        list[str] | None,
        typer.Option("--served-model-name", help="Name(s) a line's body.model may use (default: --model). Repeatable."),
    ] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="auto, bfloat16, float16 or float32.")] = "auto",
    max_model_len: Annotated[int | None, typer.Option("--max-model-len", help="Context length.")] = 8192,
    max_num_seqs: Annotated[int, typer.Option("--max-num-seqs", help="Sequences per engine step.")] = 32,
    gpu_memory_utilization: Annotated[
        float | None, typer.Option("--gpu-memory-utilization", help="Share of (GPU or CPU KV) memory.")
    ] = None,
    tensor_parallel_size: Annotated[int, typer.Option("--tensor-parallel-size", "-tp", help="GPUs per engine.")] = 1,
    seed: Annotated[int, typer.Option("--seed", help="Engine seed (a line's body.seed wins for that line).")] = 0,
    allowed_local_media_path: Annotated[
        Path | None,
        typer.Option("--allowed-local-media-path", help="file:// media is read only under this folder."),
    ] = None,
    allow_network_media: Annotated[
        bool, typer.Option("--allow-network-media", help="Fetch http(s) media (off by default).")
    ] = False,
    media_timeout: Annotated[float, typer.Option(help="Seconds per http(s) media fetch.")] = 10.0,
    max_media_bytes: Annotated[int, typer.Option(help="Largest media item, in bytes.")] = 64 * 1024**2,
    image_tokens: Annotated[int, typer.Option(help="Soft tokens per image: 70, 140, 280, 560 or 1120.")] = 280,
    video_frames: Annotated[
        int, typer.Option(help="Frames sampled per video, uniformly (vLLM's processor: 32).", min=1, max=32)
    ] = 32,
    limit_mm_per_prompt: Annotated[
        str,
        typer.Option("--limit-mm-per-prompt", help="Media items per line, as JSON, e.g. '{\"image\": 4}'."),
    ] = '{"image": 1, "audio": 1, "video": 1}',
    allowed_media_domains: Annotated[
        list[str] | None,
        typer.Option("--allowed-media-domains", help="With --allow-network-media: only these hosts. Repeatable."),
    ] = None,
    chat_template: Annotated[
        Path | None, typer.Option("--chat-template", help="A chat template file instead of the model's.")
    ] = None,
    chat_template_content_format: Annotated[
        str, typer.Option("--chat-template-content-format", help="auto, string or openai (vLLM's).")
    ] = "auto",
    trust_request_chat_template: Annotated[
        bool, typer.Option("--trust-request-chat-template", help="Let a line bring its own chat template.")
    ] = False,
    default_chat_template_kwargs: Annotated[
        str | None,
        typer.Option("--default-chat-template-kwargs", help="JSON kwargs for every line's chat template."),
    ] = None,
    response_role: Annotated[str, typer.Option("--response-role", help="The answer's role.")] = "assistant",
    enable_auto_tool_choice: Annotated[
        bool, typer.Option("--enable-auto-tool-choice", help='Answer tool_choice "auto" (needs --tool-call-parser).')
    ] = False,
    tool_call_parser: Annotated[
        str | None, typer.Option("--tool-call-parser", help="vLLM's tool parser for the model's calls, e.g. gemma4.")
    ] = None,
    exclude_tools_when_tool_choice_none: Annotated[
        bool, typer.Option("--exclude-tools-when-tool-choice-none", help='Leave tools out when tool_choice is "none".')
    ] = False,
    reasoning_parser: Annotated[
        str | None, typer.Option("--reasoning-parser", help="vLLM's reasoning parser, e.g. gemma4.")
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Decode worker processes (default: the cores left).")
    ] = None,
    decode_timeout: Annotated[float, typer.Option(help="Seconds a media item may take to decode.")] = 60.0,
    error_file: Annotated[
        str | None,
        typer.Option(
            "--error-file",
            help="Error lines go here (a path or URL, like -o) and only successes to -o, as OpenAI's Batch "
            "API returns them (default: every line in -o, as vLLM).",
        ),
    ] = None,
    output_tmp_dir: Annotated[
        Path | None,
        typer.Option("--output-tmp-dir", help="Stage a URL output in a file here before the upload (as vLLM)."),
    ] = None,
    verbose: Verbose = False,
    *,
    engine_flags: EngineFlags,
) -> None:
    """Run an OpenAI batch file like `vllm run-batch` (same flags and lines), resumable: a rerun
    sends only lines without an answer."""
    from ..batch import files
    from ..batch.run import BatchRun
    from ..console import engine_output
    from ..engine.vllm_engine import VllmEngine

    settings = _settings(dict(locals()))
    run = BatchRun(settings)
    with engine_output(verbose=verbose):
        if not run.needs_engine():  # finished, empty, or only the files left to write
            summary = run.run(None)
        else:  # the tokenizer and the engine load only when a line is sent
            engine = VllmEngine(
                model=model, engine=settings.engine, image_tokens=image_tokens, limit_mm=settings.limit_mm, seed=seed
            ).start()
            try:
                summary = run.run(engine)
            finally:
                engine.shutdown()
    for problem in summary.problems:
        err.print(f"[bold red]error:[/] {problem}", soft_wrap=True, highlight=False)
    inp = files.shown(settings.input)
    if summary.already_complete:
        err.print(f"Nothing to do: {summary.output} already answers every line of {inp}.", highlight=False)
    else:
        where = f"{summary.error_file} and {summary.output}" if summary.error_file else summary.output
        err.print(
            f"{summary.lines} lines: {summary.done} answered now, {summary.reused} from the checkpoint, "
            f"{summary.errors} error lines → {where}",
            soft_wrap=True,
            highlight=False,
        )
    if summary.interrupted:
        raise typer.Exit(ExitCode.INTERRUPTED)
    if summary.problems:
        raise typer.Exit(ExitCode.ITEM_ERRORS)


def _settings(a: dict[str, Any]) -> Any:
    """run-batch's flags (its parameters, by name) → BatchSettings, checked before any engine starts."""
    from ..batch.chat import ChatOptions
    from ..batch.files import location
    from ..batch.media import MediaPolicy
    from ..batch.run import BatchSettings
    from ..config.job import EngineConfig
    from ..decode import DecodeOptions

    engine = EngineConfig(
        compact_json=False,  # structured output exactly as vLLM's server writes it
        dtype=a["dtype"],
        max_model_len=a["max_model_len"],
        max_num_seqs=a["max_num_seqs"],
        gpu_memory_utilization=a["gpu_memory_utilization"],
        tensor_parallel_size=a["tensor_parallel_size"],
    )
    settings = BatchSettings(
        input=location(a["input_file"]),
        output=location(a["output_file"]),
        error_file=location(a["error_file"]) if a["error_file"] is not None else None,
        output_tmp_dir=a["output_tmp_dir"],
        model=a["model"],
        served_model_names=list(a["served_model_name"] or []),
        engine=engine_overrides(engine, a["engine_flags"]),
        image_tokens=a["image_tokens"],
        seed=a["seed"],
        limit_mm=dict(_limits(a["limit_mm_per_prompt"])),
        media=MediaPolicy(
            allowed_local_media_path=a["allowed_local_media_path"],
            allow_network=a["allow_network_media"],
            allowed_domains=tuple(a["allowed_media_domains"] or ()),
            max_bytes=a["max_media_bytes"],
            decode=DecodeOptions(
                image_tokens=a["image_tokens"],
                video_frames=a["video_frames"],
                fetch_timeout=a["media_timeout"],
                max_input_bytes=a["max_media_bytes"],
            ),
        ),
        chat=ChatOptions(
            chat_template=_template(a["chat_template"]),
            content_format=a["chat_template_content_format"],
            trust_request_chat_template=a["trust_request_chat_template"],
            enable_auto_tool_choice=a["enable_auto_tool_choice"],
            tool_call_parser=a["tool_call_parser"],
            reasoning_parser=a["reasoning_parser"],
            exclude_tools_when_tool_choice_none=a["exclude_tools_when_tool_choice_none"],
            default_chat_template_kwargs=_json_object(
                a["default_chat_template_kwargs"], "--default-chat-template-kwargs"
            ),
            response_role=a["response_role"],
        ),
        workers=a["workers"],
        decode_timeout=a["decode_timeout"],
    )
    settings.chat.check()
    return settings


def _template(path: Path | None) -> str | None:
    from ..errors import UsageError

    if path is None:
        return None
    try:
        return path.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read --chat-template {path}: {exc.strerror or exc}") from None


def _json_object(text: str | None, flag: str) -> dict[str, Any]:
    import json

    from ..errors import UsageError

    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{flag} is not JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{flag} wants a JSON object")
    return value


def _limits(text: str) -> dict[str, int | dict[str, int]]:
    import json

    from ..errors import UsageError

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--limit-mm-per-prompt is not JSON: {exc.msg}") from None
    if not isinstance(value, dict) or not all(isinstance(v, int) and v >= 0 for v in value.values()):
        raise UsageError('--limit-mm-per-prompt wants a JSON object of counts, e.g. {"image": 2}')
    return {"image": 1, "audio": 1, "video": 1, **value}
