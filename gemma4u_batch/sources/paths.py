"""Path rules shared by the sources: which real paths the allowed roots admit."""

from __future__ import annotations

import os
from collections.abc import Iterable


def inside_roots(real: str, roots: Iterable[str]) -> bool:
    """Whether the real (resolved) path lies under one of the real roots."""
    for root in roots:
        try:
            if os.path.commonpath([real, root]) == root:
                return True
        except ValueError:  # different drives / relative vs absolute
            continue
    return False
