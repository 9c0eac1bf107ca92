"""gemma4u's vLLM plugin: exact bidirectional image attention for Gemma 4 on vLLM's CPU backend.

Gemma 4 models with `use_bidirectional_attention="vision"` (the 12B) let image tokens see
the whole image on sliding-window layers: `(causal OR same image block) AND window`. vLLM's
GPU backends implement that; its CPU backend silently runs image tokens causally (vLLM
#40106). This plugin, registered as the `vllm.general_plugins` entry point `gemma4u_bidi`
(so vLLM loads it in the front end, engine core and every worker), patches the CPU backend
to honour the ranges vLLM already computes. It is written for vLLM 0.32.x: on any other
version, or a configuration it cannot honour, it does nothing and says so.

Front-end API: `plugin_status(engine_or_config)` -> dict for the run manifest; `problems`
lists everything worth a loud warning. Set GEMMA4U_DISABLE_BIDI_PLUGIN=1 to turn it off
(e.g. to see the bug), or leave `gemma4u_bidi` out of VLLM_PLUGINS.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from . import reports

PLUGIN_NAME = "gemma4u_bidi"
ENTRY_POINT = "gemma4u_batch.engine.plugin:register"
WRITTEN_FOR = (0, 32)
DISABLE_ENV = "GEMMA4U_DISABLE_BIDI_PLUGIN"
GPU_PLATFORMS = ("cuda", "rocm")

log = logging.getLogger("vllm.gemma4u_bidi")

_state: dict[str, Any] = {"registered": False, "patched": False, "reason": None, "platform": None}


def written_for() -> str:
    return f"{WRITTEN_FOR[0]}.{WRITTEN_FOR[1]}.x"


def _disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _vllm_version() -> str | None:
    try:
        import vllm
    except ImportError:
        return None
    return str(getattr(vllm, "__version__", "unknown"))


def version_supported(version: str | None) -> bool:
    if not version:
        return False
    try:
        from packaging.version import Version

        release = Version(version).release
    except (ImportError, ValueError):  # no packaging, or not a PEP 440 version: not one we know
        return False
    return tuple(release[:2]) == WRITTEN_FOR


def register() -> None:
    """vLLM general-plugin entry point. Idempotent, never raises: problems are reported."""
    try:
        _register()
    except Exception as exc:  # a plugin must not take the engine down
        _state["reason"] = f"patch failed: {exc!r}"
        log.error("gemma4u_bidi: could not patch vLLM's CPU attention backend: %r", exc)
    if version_supported(_vllm_version()):  # on every platform: the front end's work is the same on a GPU host
        from . import processed

        processed.register()


def _register() -> None:
    if _state["registered"]:
        return
    _state["registered"] = True
    if _disabled():
        _state["reason"] = f"disabled by {DISABLE_ENV}"
        log.warning("gemma4u_bidi: %s; Gemma 4 image tokens attend causally on CPU", _state["reason"])
        return
    # The platform first: on a GPU nothing is patched, whatever the vLLM version (a newer vLLM
    # there is no reason for a warning).
    platform = _platform()
    _state["platform"] = platform
    if platform in GPU_PLATFORMS:
        _state["reason"] = f"not needed on {platform}: vLLM's own attention kernels honour image blocks"
        return
    if platform != "cpu":
        _state["reason"] = f"not patched: platform {platform} is not covered"
        return
    version = _vllm_version()
    if not version_supported(version):
        _state["reason"] = f"written for vLLM {written_for()}, found {version}: not patched"
        log.warning(
            "gemma4u_bidi: %s. Bidirectional image attention on CPU is NOT honoured; captions may differ "
            "from the reference model.",
            _state["reason"],
        )
        return
    reports.ensure_report_dir()  # before the engine spawns its processes, so they inherit it
    from .cpu_bidi import apply_patch

    _state["patched"] = apply_patch(str(version))


def _platform() -> str:
    """vLLM's platform here: "cpu", "cuda", "rocm", ..."""
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        return "cpu"
    name = str(getattr(current_platform, "device_name", "") or "")
    return name or str(getattr(current_platform, "_enum", "unknown")).split(".")[-1].lower()


def _entry_point_installed() -> bool:
    from importlib.metadata import entry_points

    return any(ep.name == PLUGIN_NAME and ep.value == ENTRY_POINT for ep in entry_points(group="vllm.general_plugins"))


def _resolve_config(obj: Any) -> Any:
    """A VllmConfig, or anything holding one (LLMEngine, LLM, gemma4u's VllmEngine)."""
    for path in ((), ("vllm_config",), ("llm_engine", "vllm_config"), ("_llm", "vllm_config")):
        cur = obj
        for attr in path:
            cur = getattr(cur, attr, None)
            if cur is None:
                break
        if cur is not None and hasattr(cur, "model_config") and hasattr(cur, "scheduler_config"):
            return cur
    return None


def _loading_problems(status: dict[str, Any]) -> list[str]:
    """Why image attention may run causally because the patch is missing here or will
    not be loaded by vLLM's engine processes."""
    problems: list[str] = []
    needed = status["needed"] is not False
    on_gpu = _state["platform"] in GPU_PLATFORMS
    if not status["active"] and needed and not on_gpu:
        problems.append(
            f"bidirectional image attention is not honoured ({_state['reason'] or 'plugin not loaded'}): "
            "image tokens attend causally, so outputs differ from the reference model"
        )
    elif status["active"] and not on_gpu:
        if not _entry_point_installed():
            problems.append(
                f"the {PLUGIN_NAME} entry point is not installed, so vLLM's engine processes will not load it; "
                "reinstall gemma4u (pip install -e .)"
            )
        allowed = os.environ.get("VLLM_PLUGINS")
        if allowed is not None and PLUGIN_NAME not in allowed.split(","):
            problems.append(f"VLLM_PLUGINS={allowed!r} leaves out {PLUGIN_NAME}: engine processes will not load it")
    if _state["platform"] not in (None, "cpu", *GPU_PLATFORMS) and needed:
        problems.append(f"platform {_state['platform']}: bidirectional image attention is not verified here")
    return problems


def _config_problems(vllm_config: Any, status: dict[str, Any], image_blocks: bool) -> list[str]:
    """Engine settings under which the patch cannot be exact, and models it does not cover."""
    problems: list[str] = []
    if image_blocks:
        if _state["platform"] == "cpu" and status["active"]:
            if not vllm_config.scheduler_config.disable_chunked_mm_input:
                problems.append("disable_chunked_mm_input is off: an image may be split across prefill steps")
            kv_dtype = str(getattr(vllm_config.cache_config, "cache_dtype", "auto"))
            if kv_dtype.startswith("fp8"):
                problems.append(f"KV cache dtype {kv_dtype}: image rows cannot be recomputed exactly")
    elif vllm_config is not None and not status["needed"] and _state["platform"] == "cpu":
        model_config = vllm_config.model_config
        if getattr(model_config, "is_mm_prefix_lm", False):
            problems.append(
                "this model uses bidirectional multimodal attention that gemma4u_bidi does not implement "
                "(only Gemma 4 is covered): on CPU its image tokens attend causally"
            )
    return problems


def _worker_problems(workers: list[dict[str, Any]], expect_honour: bool) -> list[str]:
    """What the engine processes reported; the front end only sees the patch through them."""
    problems = [f"engine process {rep.get('pid')}: {msg}" for rep in workers for msg in rep.get("problems", [])]
    if expect_honour and not any(g.get("honour") for rep in workers for g in rep.get("groups", [])):
        problems.append(
            "no engine process reported honouring bidirectional attention (plugin not loaded there, "
            "or the engine was started before the plugin registered)"
        )
    return problems


def plugin_status(engine_or_config: Any = None) -> dict[str, Any]:
    """What the plugin does for this process (and, once an engine ran, its workers).

    Keys: plugin, active, vllm_version, written_for, platform, reason, needed, problems, workers.
    `problems` is empty when nothing needs a warning; otherwise each entry is one line to
    print loudly and record in the run manifest.
    """
    version = _vllm_version()
    status: dict[str, Any] = {
        "plugin": PLUGIN_NAME,
        "active": False,
        "vllm_version": version,
        "written_for": written_for(),
        "platform": None,
        "reason": None,
        "needed": None,
        "problems": [],
        "workers": [],
    }
    if version is None:
        status["reason"] = "vLLM is not installed"
        return status
    register()  # idempotent; vLLM calls it too when it builds an engine
    status["platform"] = _state["platform"]
    status["active"] = bool(_state["patched"])
    status["reason"] = _state["reason"]
    vllm_config = _resolve_config(engine_or_config) if engine_or_config is not None else None
    if vllm_config is not None:
        from .cpu_bidi import model_wants_bidirectional

        status["needed"] = model_wants_bidirectional(vllm_config)
    # (A Gemma 4 model served text-only has is_mm_prefix_lm False: no images, nothing to honour.)
    image_blocks = bool(
        vllm_config is not None and status["needed"] and getattr(vllm_config.model_config, "is_mm_prefix_lm", True)
    )
    problems: list[str] = status["problems"]
    problems.extend(_loading_problems(status))
    problems.extend(_config_problems(vllm_config, status, image_blocks))
    workers = reports.read_reports()
    status["workers"] = workers
    expect_honour = image_blocks and status["active"] and _state["platform"] == "cpu"
    problems.extend(_worker_problems(workers, expect_honour))
    if problems and not status["reason"]:
        status["reason"] = problems[0]
    return status


def describe(status: dict[str, Any]) -> str:
    """One line for logs and summaries."""
    if status.get("active") and not status.get("problems"):
        rows = sum(rep.get("corrected_rows", 0) for rep in status.get("workers", []))
        extra = f", at least {rows} image rows recomputed" if rows else ""
        return f"{PLUGIN_NAME} active on vLLM {status.get('vllm_version')} ({status.get('platform')}){extra}"
    if not status.get("problems"):
        return f"{PLUGIN_NAME} inactive: {status.get('reason')}"
    return f"{PLUGIN_NAME}: " + "; ".join(status["problems"])


__all__ = [
    "DISABLE_ENV",
    "PLUGIN_NAME",
    "WRITTEN_FOR",
    "describe",
    "plugin_status",
    "register",
    "version_supported",
]
