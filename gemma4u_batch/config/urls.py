"""What counts as a URL where a path is allowed (INPUT, a manifest row, --allow-root): a scheme
followed by `://`. Such text is kept as text, never made a Path (which would drop a `/`)."""

from __future__ import annotations

import re
from pathlib import Path

WRITABLE_STORES = frozenset({"s3", "gs", "gcs", "az", "abfs", "abfss"})
"""Schemes OUT may have: object stores with conditional writes (the commit protocol's)."""

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme_of(text: str) -> str | None:
    """The URL scheme of `text` (lower case), or None for a local path."""
    m = _URL.match(text)
    return m.group(1).lower() if m else None


def is_url(text: object) -> bool:
    return isinstance(text, str) and scheme_of(text) is not None


def was_url(value: object) -> bool:
    """A URL, or one a Path has already mangled (`Path("s3://b/x")` is `s3:/b/x`): a folder named
    after a URL is never what was meant."""
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:/", str(value)))


def path_or_url(value: object) -> Path | str:
    """A location as typed: a URL stays text, anything else is a local path."""
    return value if isinstance(value, str) and is_url(value) else Path(str(value))
