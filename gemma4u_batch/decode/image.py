"""Image decoding: every common real-world form to an RGB PIL image at the size the
Gemma 4 Unified processor will use, so the engine never resizes huge images."""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import ItemError
from .options import DecodeOptions


def target_size(width: int, height: int, opts: DecodeOptions) -> tuple[int, int]:
    """(width, height) the processor resizes to: transformers' aspect-ratio-preserving
    formula for `image_tokens` soft tokens (multiples of 48 px)."""
    max_patches = opts.image_tokens * opts.pooling_kernel_size**2
    target_px = max_patches * opts.patch_size**2
    factor = math.sqrt(target_px / (height * width))
    side = opts.pooling_kernel_size * opts.patch_size
    th = int(math.floor(factor * height / side)) * side
    tw = int(math.floor(factor * width / side)) * side
    max_side = (max_patches // opts.pooling_kernel_size**2) * side
    if th == 0 and tw == 0:
        th = tw = side
    elif th == 0:
        th, tw = side, min(int(math.floor(width / height)) * side, max_side)
    elif tw == 0:
        tw, th = side, min(int(math.floor(height / width)) * side, max_side)
    return tw, th


def num_image_tokens(width: int, height: int, opts: DecodeOptions) -> int:
    tw, th = target_size(width, height, opts)
    return (tw // opts.patch_size) * (th // opts.patch_size) // opts.pooling_kernel_size**2


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any mode to RGB; transparency composited on white, 16-bit scaled, CMYK converted."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr8 = np.clip(np.round(arr / hi * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        arr = np.where(np.isfinite(arr), arr, 0.0)
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        return Image.fromarray(((arr - lo) * scale).astype(np.uint8), mode="L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("LA", "PA", "La"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "RGBa"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    if img.mode == "CMYK" and img.format == "JPEG":
        # Adobe CMYK JPEGs are stored inverted; Pillow's convert handles the common case.
        return img.convert("RGB")
    if img.mode != "RGB":
        return img.convert("RGB")
    return img


# EXIF orientation → the transpose that shows the image upright (as ImageOps.exif_transpose).
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(img: Image.Image) -> int:
    """EXIF orientation 1-8; damaged EXIF means upright (it must not cost the image)."""
    try:
        value = img.getexif().get(0x0112, 1)
    except Exception:
        return 1
    return value if isinstance(value, int) and value in _ORIENTATION_TRANSPOSE else 1


def _too_many_pixels(w: int, h: int, limit: int) -> ItemError:
    return ItemError("too_large", f"image is {w}x{h} = {w * h} pixels, over the max_image_pixels limit of {limit}")


def decode_image(data: bytes, opts: DecodeOptions) -> tuple[Image.Image, dict]:
    """Decode bytes to an RGB image already at the processor's target size.

    The pixel limit is checked on the header, before any pixel is decoded. Raises
    ItemError with a kind the record carries: `empty`, `not_an_image`, `too_large`, `corrupt`.
    """
    if not data:
        raise ItemError("empty", "file is empty (0 bytes)")
    limit = opts.max_image_pixels
    # Pillow's own bomb check also guards sizes read after open (ICO, GIF frames).
    Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            src_w, src_h = img.size
            fmt = img.format
            if src_w <= 0 or src_h <= 0:
                raise ItemError("corrupt", f"image could not be decoded: invalid size {src_w}x{src_h}")
            if src_w * src_h > limit:
                raise _too_many_pixels(src_w, src_h, limit)
            if getattr(img, "is_animated", False):
                img.seek(0)
            # EXIF orientation changes which side is long, so size the draft after it.
            orientation = _orientation(img)
            w, h = (src_h, src_w) if orientation in (5, 6, 7, 8) else (src_w, src_h)
            tw, th = target_size(w, h, opts)
            if fmt == "JPEG" and img.mode in ("RGB", "L", "CMYK"):
                # Reduced-size DCT decoding: never below the target size.
                dw, dh = (th, tw) if orientation in (5, 6, 7, 8) else (tw, th)
                img.draft(img.mode, (dw, dh))
            img.load()
            out: Image.Image = img
            if orientation != 1:
                out = out.transpose(_ORIENTATION_TRANSPOSE[orientation])
            out = _to_rgb(out)
            if out.size != (tw, th):
                out = out.resize((tw, th), Image.Resampling.BICUBIC, reducing_gap=3.0)
    except ItemError:
        raise
    except MemoryError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ItemError("too_large", f"image is over the max_image_pixels limit of {limit} ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ItemError("not_an_image", "not a recognised image format") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ItemError("corrupt", f"image could not be decoded: {exc}") from exc
    except Exception as exc:  # Pillow plugins raise struct.error, IndexError, ... on damaged files
        raise ItemError("corrupt", f"image could not be decoded: {type(exc).__name__}: {exc}") from exc
    info = {
        "format": fmt,
        "source_size": [src_w, src_h],
        "size": [tw, th],
        "num_tokens": num_image_tokens(w, h, opts),
    }
    return out, info
