"""Where the per-item time goes on phone photos, without the engine (micro-profiles).

    .venv/bin/python -m benchmarks.profile_frontend [--n 8] [--model DIR]

Per 4032×3024 phone photo, median ms of:
- gemma4u's decode stage (decode_item: read + sha256 + JPEG draft decode + EXIF + resize),
  and its parts;
- the hand-written script's Pillow decode (Image.open().convert("RGB"), full size);
- the HF image processor vLLM calls (Gemma4UnifiedImageProcessor, torchvision) on the
  full-size image vs on gemma4u's target-size image (where it skips its resize);
- vLLM's multimodal hash of the image (what it computes per item unless the request
  carries `multi_modal_uuids`), full size vs target size;
- pickling the decoded image (what the decode worker sends back over its pipe).
It also checks that gemma4u's target size equals the processor's own (else the
processor would resize a second time).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import pickle
import statistics
import time
from pathlib import Path
from typing import Any


def _ms(fn: Any, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8, help="phone photos")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--model", type=Path, default=Path("/tmp/gemma4u-bench/models/tiny"))
    a = ap.parse_args()

    import numpy as np
    from PIL import Image
    from transformers import AutoProcessor
    from transformers.models.gemma4_unified.image_processing_gemma4_unified import get_aspect_ratio_preserving_size
    from vllm.multimodal.hasher import MultiModalHasher

    from benchmarks.inputs import phone_photo_bytes
    from gemma4u_batch.decode import DecodeOptions
    from gemma4u_batch.decode.image import decode_image, target_size

    opts = DecodeOptions(image_tokens=280)
    datas = [phone_photo_bytes(i) for i in range(a.n)]
    proc = AutoProcessor.from_pretrained(str(a.model)).image_processor
    from vllm.config.multimodal import MultiModalConfig

    algo = MultiModalConfig().mm_hasher_algorithm  # vLLM's default hasher

    def hash_image(img: Image.Image) -> None:
        MultiModalHasher.hash_kwargs(algo, model_id="m", image=img)

    rows: dict[str, list[float]] = {}

    def add(name: str, v: float) -> None:
        rows.setdefault(name, []).append(v)

    mismatches = 0
    for data in datas:
        add("gemma4u decode_image (draft + EXIF + resize)", _ms(lambda d=data: decode_image(d, opts), a.reps))
        add("  sha256 of the file bytes", _ms(lambda d=data: hashlib.sha256(d).hexdigest(), a.reps))

        def draft_only(d: bytes = data) -> Image.Image:
            im = Image.open(io.BytesIO(d))
            im.draft("RGB", (1008, 756))
            im.load()
            return im

        add("  JPEG draft decode alone (1/4 scale)", _ms(draft_only, a.reps))
        add(
            "(a) Pillow full decode Image.open().convert('RGB')",
            _ms(lambda d=data: Image.open(io.BytesIO(d)).convert("RGB"), a.reps),
        )
        full = Image.open(io.BytesIO(data)).convert("RGB")
        small, _ = decode_image(data, opts)
        th, tw = get_aspect_ratio_preserving_size(
            height=small.size[1],
            width=small.size[0],
            patch_size=opts.patch_size,
            max_patches=opts.image_tokens * opts.pooling_kernel_size**2,
            pooling_kernel_size=opts.pooling_kernel_size,
        )
        mismatches += (tw, th) != small.size or small.size != target_size(*small.size, opts)
        add(
            "HF image processor on the full-size image (resizes)",
            _ms(lambda im=full: proc(images=[im], return_tensors="pt", max_soft_tokens=280), a.reps),
        )
        add(
            "HF image processor on gemma4u's target-size image (no resize)",
            _ms(lambda im=small: proc(images=[im], return_tensors="pt", max_soft_tokens=280), a.reps),
        )
        add("vLLM mm hash of the full-size image", _ms(lambda im=full: hash_image(im), a.reps))
        add("vLLM mm hash of the target-size image", _ms(lambda im=small: hash_image(im), a.reps))
        add(
            "pickle the target-size image (worker → main pipe)",
            _ms(lambda im=small: pickle.loads(pickle.dumps(im, protocol=pickle.HIGHEST_PROTOCOL)), a.reps),
        )
        add("np.asarray(target-size image)", _ms(lambda im=small: np.asarray(im), a.reps))

    print(
        f"{a.n} phone photos (4032×3024, ~{statistics.mean(len(d) for d in datas) / 1e6:.1f} MB), "
        f"median of {a.reps} reps each; target {small.size}"
    )
    print("| step | median ms / photo |")
    print("|---|---|")
    for name, vals in rows.items():
        print(f"| {name} | {statistics.median(vals):.1f} |")
    print(f"\ntarget size equals the processor's own: {'yes' if mismatches == 0 else f'NO ({mismatches} differ)'}")


if __name__ == "__main__":
    main()
