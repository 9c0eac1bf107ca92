"""Baseline (c): transformers' own batched `generate` on the same checkpoint.

Gemma4UnifiedForConditionalGeneration + its processor, fp32, greedy, batches of
--batch-size images, left padding; Pillow decode. Same prompt, token budget and
max_new_tokens as the gemma4u run.

usage: python -m benchmarks.baseline_hf IMAGES_DIR OUT.jsonl TIMING.json --model M --max-tokens N --batch-size B
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
    ap.add_argument("--batch-size", type=int, default=8)
    a = ap.parse_args()

    import torch
    from PIL import Image
    from transformers import AutoProcessor, Gemma4UnifiedForConditionalGeneration

    from benchmarks import common

    t0 = time.monotonic()
    model = Gemma4UnifiedForConditionalGeneration.from_pretrained(a.model, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(a.model)
    processor.tokenizer.padding_side = "left"
    t_ready = time.monotonic()
    prompt = processor.apply_chat_template(
        common.messages(common.instruction()), tokenize=False, add_generation_prompt=True
    )
    paths = common.list_images(a.images)
    n_out = n_prompt = 0
    with a.out.open("w") as fh, torch.inference_mode():
        for i in range(0, len(paths), a.batch_size):
            batch = paths[i : i + a.batch_size]
            images = [Image.open(p).convert("RGB") for p in batch]
            enc = processor(
                text=[prompt] * len(batch), images=[[im] for im in images], padding=True, return_tensors="pt"
            )
            gen = model.generate(**enc, max_new_tokens=a.max_tokens, do_sample=False)
            new = gen[:, enc["input_ids"].shape[1] :]
            mask = enc["attention_mask"].sum(dim=1)
            for p, row, plen in zip(batch, new, mask, strict=True):
                ids = row.tolist()
                eos = model.generation_config.eos_token_id
                eos = set([eos] if isinstance(eos, int) else (eos or []))
                for j, t in enumerate(ids):
                    if t in eos:
                        ids = ids[: j + 1]
                        break
                n_out += len(ids)
                n_prompt += int(plen)
                text = processor.tokenizer.decode(ids, skip_special_tokens=True)
                fh.write(
                    json.dumps(
                        {"id": p.name, "text": text, "num_output_tokens": len(ids), "num_prompt_tokens": int(plen)}
                    )
                    + "\n"
                )
    t_done = time.monotonic()
    common.write_json(
        a.timing,
        {
            "items": len(paths),
            "output_tokens": n_out,
            "prompt_tokens": n_prompt,
            "ready_at": t_ready,
            "import_s": t0 - T_PROCESS,
            "engine_start_s": t_ready - t0,
            "after_start_s": t_done - t_ready,
        },
    )


if __name__ == "__main__":
    main()
