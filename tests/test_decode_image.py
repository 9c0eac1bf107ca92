from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from gemma4u_batch.decode import DecodeOptions
from gemma4u_batch.decode.image import decode_image, num_image_tokens, target_size
from gemma4u_batch.errors import ItemError

from .helpers import gif_bytes, jpeg_bytes, photo, png_bytes

OPTS = DecodeOptions(image_tokens=280)


@pytest.mark.parametrize("budget", [70, 140, 280, 560, 1120])
@pytest.mark.parametrize("hw", [(100, 100), (300, 100), (500, 30), (213, 167), (3024, 4032), (20, 3000)])
def test_target_size_matches_transformers(budget: int, hw: tuple[int, int]) -> None:
    from transformers.models.gemma4_unified.image_processing_gemma4_unified import get_aspect_ratio_preserving_size

    h, w = hw
    th, tw = get_aspect_ratio_preserving_size(h, w, patch_size=16, max_patches=budget * 9, pooling_kernel_size=3)
    opts = DecodeOptions(image_tokens=budget)
    assert target_size(w, h, opts) == (tw, th)
    assert num_image_tokens(w, h, opts) <= budget


def test_exif_rotation_applied_and_downscaled() -> None:
    img = Image.new("RGB", (400, 200), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 200, 200))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # viewer rotates 90° clockwise
    out, info = decode_image(jpeg_bytes(img, exif=exif), OPTS)
    assert out.mode == "RGB"
    w, h = out.size
    assert h > w  # portrait after rotation
    arr = np.asarray(out)
    assert arr[5, w // 2, 2] > 200  # the blue half is now on top
    assert arr[-5, w // 2, 0] > 200
    assert info["size"] == [w, h]
    assert (w, h) == target_size(200, 400, OPTS)


def test_rgba_composited_on_white() -> None:
    img = Image.new("RGBA", (96, 96), (0, 0, 0, 0))
    out, _ = decode_image(png_bytes(img), OPTS)
    assert np.asarray(out).min() >= 250


def test_palette_with_transparency_and_la() -> None:
    p = Image.new("P", (64, 64), 0)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p.info["transparency"] = 0
    out, _ = decode_image(png_bytes(p, transparency=0), OPTS)
    assert np.asarray(out).min() >= 250
    la = Image.new("LA", (64, 64), (0, 255))
    out, _ = decode_image(png_bytes(la), OPTS)
    assert np.asarray(out).max() <= 5


def test_sixteen_bit_png_is_not_white() -> None:
    arr = (np.linspace(0, 65535, 128 * 128).reshape(128, 128)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    out, _ = decode_image(buf.getvalue(), OPTS)
    a = np.asarray(out)
    assert a.min() < 20 and a.max() > 235 and 100 < a.mean() < 155


def test_cmyk_gif_webp_decode_to_rgb() -> None:
    astro = photo("astronaut")
    buf = io.BytesIO()
    astro.convert("CMYK").save(buf, format="JPEG")
    out, info = decode_image(buf.getvalue(), OPTS)
    assert out.mode == "RGB" and info["format"] == "JPEG"
    # Colours survive the CMYK round trip (not inverted): the suit is bright.
    assert np.asarray(out).mean() > 60
    out, info = decode_image(gif_bytes(astro), OPTS)
    assert out.mode == "RGB" and info["format"] == "GIF"
    buf = io.BytesIO()
    astro.save(buf, format="WEBP")
    out, info = decode_image(buf.getvalue(), OPTS)
    assert out.mode == "RGB" and info["format"] == "WEBP"


def test_large_jpeg_uses_reduced_decoding_and_lands_on_target() -> None:
    big = photo("astronaut").resize((4032, 3024))
    out, info = decode_image(jpeg_bytes(big), OPTS)
    assert info["source_size"] == [4032, 3024]
    assert out.size == target_size(4032, 3024, OPTS)
    assert info["num_tokens"] <= 280


@pytest.mark.parametrize("size", [(3000, 20), (20, 3000), (1, 1), (2, 2)])
def test_extreme_aspect_and_tiny_images(size: tuple[int, int]) -> None:
    out, info = decode_image(png_bytes(Image.new("RGB", size, (9, 9, 9))), OPTS)
    w, h = out.size
    assert w % 48 == 0 and h % 48 == 0
    assert 1 <= info["num_tokens"] <= 280


def test_bad_inputs_raise_item_errors() -> None:
    with pytest.raises(ItemError) as e:
        decode_image(b"", OPTS)
    assert e.value.kind == "empty"
    with pytest.raises(ItemError) as e:
        decode_image(b"hello, not an image\n", OPTS)
    assert e.value.kind == "not_an_image"
    data = jpeg_bytes(photo("astronaut"))
    with pytest.raises(ItemError) as e:
        decode_image(data[: len(data) // 2], OPTS)
    assert e.value.kind == "corrupt"


def test_decompression_bomb_refused() -> None:
    bomb = png_bytes(Image.new("1", (20000, 20000)))  # tiny file, 400 Mpx
    with pytest.raises(ItemError) as e:
        decode_image(bomb, DecodeOptions(max_image_pixels=50_000_000))
    assert e.value.kind == "too_large"
    assert "max_image_pixels" in e.value.message or "bomb" in e.value.message
