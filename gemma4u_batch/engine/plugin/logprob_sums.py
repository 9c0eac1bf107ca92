"""Log-probabilities without their token texts, for requests that only need the sum.

Every request asks vLLM for the sampled tokens' log-probabilities (a record's `mean_logprob`
is their mean), but the per-token list is only written with `--logprobs N`. vLLM 0.32's
front end turns each sampled token back into text for that list (`LogprobsProcessor`:
decode, then a second decode to verify it), in the process that feeds the engine: about
1.5 ms per 32-token answer there, more than rendering the request. A request marked with
`SUM_ONLY` in its `extra_args` gets a logprobs processor without a tokenizer (vLLM's own
path when detokenising is off): the same log-probabilities and sum, no token texts. The
answer's text is detokenised as before. Front end only; written for vLLM 0.32.x.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("vllm.gemma4u_bidi")

SUM_ONLY = "gemma4u_logprob_sum_only"


def sum_only(sampling_params: Any) -> bool:
    extra = getattr(sampling_params, "extra_args", None)
    return bool(extra and extra.get(SUM_ONLY))


def apply() -> bool:
    """Patch vLLM's LogprobsProcessor in this process (idempotent). False on another vLLM
    version or when its shape is not the one this was written for: marked requests then
    simply get their token texts."""
    from vllm.v1.engine import logprobs

    from . import _vllm_version, version_supported

    if not version_supported(_vllm_version()):
        return False

    cls = logprobs.LogprobsProcessor
    original = cls.__dict__.get("from_new_request")
    if not isinstance(original, classmethod):
        log.warning("gemma4u: vLLM's LogprobsProcessor.from_new_request is not a classmethod; not patched")
        return False
    if getattr(original.__func__, "_gemma4u", False):
        return True
    make = original.__func__

    def from_new_request(klass: Any, tokenizer: Any, request: Any) -> Any:
        return make(klass, None if sum_only(request.sampling_params) else tokenizer, request)

    from_new_request._gemma4u = True  # type: ignore[attr-defined]
    cls.from_new_request = classmethod(from_new_request)  # type: ignore[assignment]
    return True
