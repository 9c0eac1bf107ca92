"""Baseline (a): the script a user would write by hand.

Decode every file with Pillow (`Image.open(p).convert("RGB")`), build the chat-template
prompt, and make one `LLM.generate` call over all of them. Same model, dtype, token
budget, max_tokens, max_num_seqs and greedy sampling as the gemma4u run.

usage: python -m benchmarks.baseline_llm IMAGES_DIR OUT.jsonl TIMING.json --model M --max-tokens N --max-num-seqs S
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

T_PROCESS = time.monotonic()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("images", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("timing", type=Path)
    ap.add_argument("--model", required=True)
    ap.add_argument("--max-tokens", type=int, required=True)
    ap.add_argument("--max-num-seqs", type=int, required=True)
    a = ap.parse_args()

    from PIL import Image
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    from benchmarks import common

    t0 = time.monotonic()
    llm = LLM(
        model=a.model,
        dtype=common.DTYPE,  # type: ignore[arg-type]
        max_model_len=common.MAX_MODEL_LEN,
        max_num_seqs=a.max_num_seqs,
        gpu_memory_utilization=common.GPU_MEMORY_UTILIZATION,
        enforce_eager=common.ENFORCE_EAGER,
        limit_mm_per_prompt={"image": 1},
        mm_processor_kwargs={"max_soft_tokens": common.IMAGE_TOKENS},
        seed=0,
    )
    t_ready = time.monotonic()
    tok = AutoTokenizer.from_pretrained(a.model)
    prompt = tok.apply_chat_template(common.messages(common.instruction()), tokenize=False, add_generation_prompt=True)
    paths = common.list_images(a.images)
    inputs = [{"prompt": prompt, "multi_modal_data": {"image": Image.open(p).convert("RGB")}} for p in paths]
    t_decoded = time.monotonic()
    params = SamplingParams(max_tokens=a.max_tokens, temperature=0.0, seed=0)
    outs = llm.generate(inputs, params, use_tqdm=False)  # type: ignore[arg-type]
    t_done = time.monotonic()
    n_out = 0
    n_prompt = 0
    with a.out.open("w") as fh:
        for p, o in zip(paths, outs, strict=True):
            c = o.outputs[0]
            n_out += len(c.token_ids)
            n_prompt += len(o.prompt_token_ids or [])
            fh.write(
                json.dumps(
                    {
                        "id": p.name,
                        "text": c.text,
                        "num_output_tokens": len(c.token_ids),
                        "num_prompt_tokens": len(o.prompt_token_ids or []),
                    }
                )
                + "\n"
            )
    t_end = time.monotonic()
    common.write_json(
        a.timing,
        {
            "items": len(paths),
            "output_tokens": n_out,
            "prompt_tokens": n_prompt,
            "ready_at": t_ready,
            "import_s": t0 - T_PROCESS,
            "engine_start_s": t_ready - t0,
            "decode_s": t_decoded - t_ready,
            "generate_s": t_done - t_decoded,
            "after_start_s": t_end - t_ready,
        },
    )


if __name__ == "__main__":
    main()
