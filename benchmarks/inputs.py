"""Benchmark inputs, built on the fly from scikit-image's public-domain photos.

- phone photos: 4032×3024 JPEGs (quality 90) with camera EXIF, as a phone writes them:
  a photo cropped to 4:3, upscaled, with sensor-like noise so the JPEG has realistic
  entropy (~3-5 MB); every fourth one is stored landscape with EXIF Orientation 6
  (a portrait shot), as phones do.
- small images: ~320×240 JPEGs (quality 90).
- tiny PNGs for the memory test (thousands of them, quickly).

Everything is deterministic (seeded) and cached by file name, so a rerun reuses it.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

PHONE_SIZE = (4032, 3024)
SMALL_SIZE = (320, 240)
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "cat")

# EXIF tags
_MAKE, _MODEL, _ORIENTATION, _DATETIME, _SOFTWARE = 0x010F, 0x0110, 0x0112, 0x0132, 0x0131


def base_photo(index: int) -> Image.Image:
    """One of scikit-image's public-domain photos (CC0 / public domain), RGB."""
    from skimage import data

    arr = getattr(data, PHOTOS[index % len(PHOTOS)])()
    if arr.ndim == 2:
        return Image.fromarray(arr, mode="L").convert("RGB")
    return Image.fromarray(arr[..., :3])


def _crop_to_aspect(img: Image.Image, aspect: float, shift: float) -> Image.Image:
    """Largest crop of `img` with width/height = aspect; `shift` in [0, 1] slides it."""
    w, h = img.size
    if w / h > aspect:
        cw, ch = int(round(h * aspect)), h
    else:
        cw, ch = w, int(round(w / aspect))
    x = int((w - cw) * shift)
    y = int((h - ch) * shift)
    return img.crop((x, y, x + cw, y + ch))


def phone_exif(orientation: int = 1) -> Image.Exif:
    exif = Image.Exif()
    exif[_MAKE] = "BenchPhone"
    exif[_MODEL] = "BP-12 Pro"
    exif[_SOFTWARE] = "gemma4u-bench"
    exif[_DATETIME] = "2024:06:01 12:00:00"
    exif[_ORIENTATION] = orientation
    return exif


def phone_photo_bytes(index: int, size: tuple[int, int] = PHONE_SIZE, quality: int = 90) -> bytes:
    """A 4032×3024 JPEG with EXIF (orientation 6 for every fourth image)."""
    rng = np.random.default_rng(1000 + index)
    base = _crop_to_aspect(base_photo(index), size[0] / size[1], shift=(index * 0.37) % 1.0)
    big = base.resize(size, Image.Resampling.BICUBIC)
    arr = np.asarray(big, dtype=np.int16)
    # Sensor-like noise, generated at a quarter of the size and tiled (fast, still high entropy).
    qh, qw = size[1] // 2, size[0] // 2
    noise = rng.integers(-7, 8, size=(qh, qw, 3), dtype=np.int16)
    noise = np.tile(noise, (2, 2, 1))[: size[1], : size[0]]
    arr = np.clip(arr + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    buf = io.BytesIO()
    orientation = 6 if index % 4 == 3 else 1
    img.save(buf, format="JPEG", quality=quality, exif=phone_exif(orientation).tobytes())
    return buf.getvalue()


def small_image_bytes(index: int, size: tuple[int, int] = SMALL_SIZE, quality: int = 90) -> bytes:
    base = _crop_to_aspect(base_photo(index), size[0] / size[1], shift=(index * 0.37) % 1.0)
    img = base.resize(size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _write_set(folder: Path, n: int, make, ext: str, prefix: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"{prefix}{i:05d}.{ext}"
        if not p.exists():
            tmp = p.with_suffix(".tmp")
            tmp.write_bytes(make(i))
            tmp.rename(p)
        paths.append(p)
    # A folder is one benchmark set: nothing else may be in it.
    for extra in folder.iterdir():
        if extra not in paths:
            extra.unlink()
    return paths


def make_phone_photos(folder: Path, n: int) -> list[Path]:
    return _write_set(folder, n, phone_photo_bytes, "jpg", "phone_")


def make_small_images(folder: Path, n: int) -> list[Path]:
    return _write_set(folder, n, small_image_bytes, "jpg", "small_")


def make_tiny_pngs(folder: Path, n: int, size: tuple[int, int] = (64, 48)) -> list[Path]:
    """Thousands of small distinct PNGs for the memory test (distinct content, fast)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    base = np.asarray(base_photo(0).resize(size), dtype=np.uint8)
    paths = []
    for i in range(n):
        p = folder / f"img_{i:06d}.png"
        if not p.exists():
            arr = base.copy()
            arr[0, :, :] = rng.integers(0, 256, size=(size[0], 3), dtype=np.uint8)  # make each file distinct
            Image.fromarray(arr).save(p, format="PNG", compress_level=1)
        paths.append(p)
    for extra in folder.iterdir():
        if extra not in paths:
            extra.unlink()
    return paths
