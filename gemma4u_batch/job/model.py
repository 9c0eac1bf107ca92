"""The run's model: its fingerprint, and for a hub id the commit OUT is pinned to.

A hub id's commit is resolved once, at the run that makes OUT, and kept in run.json
(`model_commit`). Later runs use it without asking the hub (so an offline node gets the same
fingerprint and the engine loads the same commit); when the hub can be asked, one request
says whether upstream moved, and a newer commit is reported, not adopted. It is adopted with
an explicit `--revision` that resolves elsewhere, or with `--on-model-change supersede`
(docs/outputs.md#when-the-model-changes).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from ..config.job import JobConfig
from ..prompting.keys import hub_commit, is_hub_id, model_fingerprint, upstream_commit
from ..store.layout import RUN_MANIFEST, OutLayout

log = logging.getLogger(__name__)

_reported: set[tuple[str, str, str]] = set()  # (model, newer, pinned) already warned of in this process


@dataclass(frozen=True)
class RunModel:
    """What a run uses for its model. `revision` is the keyed one (the `--revision` OUT's keys
    and guard hold); `commit` the hub commit the engine loads and OUT keeps (None for a folder
    or an id whose commit is unknown)."""

    fingerprint: str
    revision: str | None = None
    commit: str | None = None

    def keyed(self, config: JobConfig) -> JobConfig:
        """`config` with the revision OUT keys by (a rerun without --revision keeps OUT's)."""
        if config.engine.revision == self.revision:
            return config
        return config.model_copy(update={"engine": config.engine.model_copy(update={"revision": self.revision})})

    def loading(self, config: JobConfig) -> JobConfig:
        """`config` as the engine is built from: the pinned commit as its revision."""
        if self.commit is None or config.engine.revision == self.commit:
            return config
        return config.model_copy(update={"engine": config.engine.model_copy(update={"revision": self.commit})})


def read_manifest(layout: OutLayout) -> dict[str, Any] | None:
    """OUT's run.json, or None when there is none (or it cannot be read)."""
    try:
        data = json.loads(layout.files.read(RUN_MANIFEST))
    except (OSError, ValueError):  # none yet, or unreadable: nothing to carry over
        return None
    return data if isinstance(data, dict) else None


def resolve_model(config: JobConfig, layout: OutLayout | None = None) -> RunModel:
    """The model a run into OUT uses (see the module docstring). Costs no hub request when
    offline and OUT holds a pin; one when online."""
    model, wanted = config.model, config.engine.revision
    if not is_hub_id(model):
        return RunModel(model_fingerprint(model, verify_weights=config.verify_weights, revision=wanted), wanted)
    old = None if config.overwrite or layout is None else read_manifest(layout)
    pin = old.get("model_commit") if old is not None and old.get("model") == model else None
    if not isinstance(pin, str) or not pin:
        return _fresh(model, wanted)
    pinned_rev = ((old or {}).get("guard", {}).get("engine") or {}).get("revision")
    if wanted is not None and wanted != pinned_rev:  # an explicit other revision: resolve it
        commit = hub_commit(model, wanted)
        if commit == pin:  # the pinned commit by another name: nothing changes
            return RunModel(f"{model}@{pin}", pinned_rev, pin)
        return _fresh(model, wanted)
    head = upstream_commit(model, pinned_rev)
    if head is not None and head != pin:
        if config.on_model_change == "supersede":
            log.warning("gemma4u: %s moves from commit %s to the hub's newer %s", model, pin, head)
            return RunModel(f"{model}@{head}", pinned_rev, head)
        if (model, head, pin) not in _reported:
            _reported.add((model, head, pin))
            log.warning(
                "gemma4u: %s has a newer commit %s (OUT is pinned to %s); use --revision %s or "
                "--on-model-change supersede to move to it",
                model,
                head,
                pin,
                head,
            )
    return RunModel(f"{model}@{pin}", pinned_rev, pin)


def _fresh(model: str, revision: str | None) -> RunModel:
    """A hub id resolved as at OUT's first run: the hub, else the local cache (as
    `model_fingerprint`); unresolved, it is keyed by its bare id and nothing is pinned."""
    commit = hub_commit(model, revision)
    return RunModel(model_fingerprint(model, revision=revision), revision, commit)
