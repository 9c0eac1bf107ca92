"""Spoken-language names and codes: `--language` normalised, and the codes `auto` detection
may answer with.

pycountry rather than langcodes: it ships the ISO 639-3 tables (with 639-1 and the 639-2/B
codes and English names) as data, with no further dependency, and it is already in the CPU
lock; langcodes adds BCP 47 tags and regional variants, which a spoken-language hint does not
need. One canonical form: the ISO 639-1 code where the language has one, else its 639-3 code.
"""

from __future__ import annotations

import re
from functools import lru_cache

AUTO = "auto"

# Whisper's language set (the ones a speech model is commonly trained on), as ISO codes:
# what `--language auto` lets the model choose from, in this order. `jw` is Whisper's
# spelling of Javanese; the ISO code is `jv`.
_CODES = (
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no th ur hr bg "
    "lt la mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw gl mr pa si km sn yo so "
    "af oc ka be tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl mg as tt haw ln ha ba jv su yue"
)
DETECT_CODES: tuple[str, ...] = tuple(_CODES.split(" "))


def normalise_language(value: str | None) -> str | None:
    """The canonical code of an ISO 639-1/2/3 code or English name (any case); None for
    `auto` or nothing (detect it). ValueError naming the value when it is no language."""
    if value is None or value.strip().lower() in ("", AUTO):
        return None
    code = _lookup(value.strip().lower())
    if code is None:
        raise ValueError(
            f"unknown language {value!r}: give an ISO 639-1 or 639-3 code (fr, fra), an English name (French) or auto"
        )
    return code


@lru_cache(maxsize=256)
def _lookup(value: str) -> str | None:
    import pycountry

    db = pycountry.languages
    # codes first: a bare lookup also matches names, and 'en' is the name of a language too
    lang = (
        (len(value) == 2 and db.get(alpha_2=value))
        or (len(value) == 3 and (db.get(alpha_3=value) or db.get(bibliographic=value)))
        or None
    )
    if lang is None:
        try:
            lang = db.lookup(value)
        except LookupError:
            return _names().get(value)
    return str(getattr(lang, "alpha_2", None) or lang.alpha_3)


@lru_cache(maxsize=1)
def _names() -> dict[str, str]:
    """Lowercased names without ISO's qualifiers ('modern greek' for 'Modern Greek (1453-)') → code."""
    import pycountry

    out: dict[str, str] = {}
    for lang in pycountry.languages:
        out.setdefault(_clean(str(lang.name)).lower(), str(getattr(lang, "alpha_2", None) or lang.alpha_3))
    return out


def _clean(name: str) -> str:
    return re.sub(r"\s*\(.*?\)", "", name.split(";")[0]).strip()


@lru_cache(maxsize=256)
def language_name(code: str) -> str:
    """The English name for the prompt: 'French', 'Modern Greek' (ISO's '(1453-)' dropped)."""
    import pycountry

    lang = pycountry.languages.get(alpha_2=code) if len(code) == 2 else pycountry.languages.get(alpha_3=code)
    if lang is None:
        return code
    return _clean(str(lang.name))
