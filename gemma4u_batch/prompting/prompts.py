"""Prompt templates: a custom prompt may use per-row fields, rendered in a Jinja sandbox."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from ..config.job import JobConfig
from ..config.languages import language_name
from ..config.tasks import instruction_for, resolve_task
from ..errors import ItemError, UsageError
from ..records import Modality, WorkItem


@lru_cache(maxsize=64)
def _compile(template: str) -> Any:
    from jinja2 import StrictUndefined, TemplateSyntaxError
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)
    try:
        return env.from_string(template)
    except TemplateSyntaxError as exc:
        raise UsageError(f"prompt: invalid template at line {exc.lineno}: {exc.message}") from None


def is_template(text: str) -> bool:
    return "{{" in text or "{%" in text


def check_template(text: str) -> None:
    """Fail fast (usage error) on a template that does not even parse."""
    if is_template(text):
        _compile(text)


def render_prompt_template(template: str, context: dict[str, Any]) -> str:
    """Render over the row's fields (plus id, modality, source); an undefined field is an
    error for this item only."""
    if not is_template(template):
        return template
    from jinja2 import TemplateError
    from jinja2.exceptions import SecurityError

    try:
        return _compile(template).render(**context).strip()
    except SecurityError as exc:
        raise ItemError("bad_prompt", f"prompt template refused by the sandbox: {exc}") from exc
    except TemplateError as exc:
        raise ItemError("bad_prompt", f"prompt template: {exc}") from exc


def item_instruction(config: JobConfig, item: WorkItem, task: str) -> str:
    """The instruction sent for this item and task: the row's or the job's prompt template
    rendered over the row's fields, else the task's built-in instruction. ItemError when
    the template fails for this row."""
    custom = item.prompt or config.prompt
    if custom:
        modality = item.modality.value if item.modality else None
        context = {**item.fields, "id": item.id, "source": item.source, "modality": modality, "task": task}
        return render_prompt_template(custom, context)
    if resolve_task(task) is None:
        task = config.task
    if resolve_task(task) is None:
        raise UsageError(f"unknown task '{task}'")
    modality = item.modality or Modality.IMAGE
    language = language_name(config.language) if config.language else None
    return instruction_for(task, modality, language=language, target=config.translate_to)


def sent_instruction(config: JobConfig, item: WorkItem, task: str) -> tuple[str, ItemError | None]:
    """(the instruction as sent, the row's template error): a template that fails for this
    row is sent as written, and its item becomes an error record."""
    try:
        return item_instruction(config, item, task), None
    except ItemError as exc:
        return item.prompt or config.prompt or "", exc
