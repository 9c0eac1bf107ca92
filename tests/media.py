"""Test media made in the tests (plus scikit-image's public-domain photos)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def photo(name: str = "astronaut") -> Image.Image:
    """A real public-domain photo shipped with scikit-image (CC0 / public domain)."""
    from skimage import data

    arr = getattr(data, name)()
    if arr.ndim == 2:
        return Image.fromarray(arr, mode="L").convert("RGB")
    return Image.fromarray(arr[..., :3])


def jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def write_image_folder(root: Path, with_bad: bool = True) -> dict[str, str]:
    """Good images of the usual real-world forms plus bad files. Returns id → expected kind."""
    root.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str] = {}
    astro = photo("astronaut")
    (root / "astronaut.jpg").write_bytes(jpeg_bytes(astro))
    expected["astronaut.jpg"] = "ok"
    sub = root / "nested" / "deeper"
    sub.mkdir(parents=True)
    coffee = photo("coffee")
    exif = Image.Exif()
    exif[0x0112] = 6
    (sub / "coffee_rotated.jpg").write_bytes(jpeg_bytes(coffee.rotate(90, expand=True), exif=exif))
    expected["nested/deeper/coffee_rotated.jpg"] = "ok"
    chelsea = photo("chelsea").convert("RGBA")
    chelsea.putalpha(128)
    (root / "chelsea_rgba.png").write_bytes(png_bytes(chelsea))
    expected["chelsea_rgba.png"] = "ok"
    (root / "palette.gif").write_bytes(_gif(photo("rocket")))
    expected["palette.gif"] = "ok"
    cam16 = (np.asarray(photo("camera").convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(cam16).save(root / "gray16.png")
    expected["gray16.png"] = "ok"
    photo("coins").convert("CMYK").save(root / "cmyk.jpg", format="JPEG")
    expected["cmyk.jpg"] = "ok"
    photo("astronaut").save(root / "astro.webp", format="WEBP")
    expected["astro.webp"] = "ok"
    Image.new("RGB", (3000, 20), (10, 200, 10)).save(root / "wide.png")
    expected["wide.png"] = "ok"
    Image.new("RGB", (2, 2), (200, 0, 0)).save(root / "tiny.png")
    expected["tiny.png"] = "ok"
    (root / ".hidden.png").write_bytes(png_bytes(Image.new("RGB", (8, 8))))
    (root / "notes.txt").write_text("not media, skipped")
    if with_bad:
        (root / "zero.jpg").write_bytes(b"")
        expected["zero.jpg"] = "empty"
        (root / "text.png").write_text("this is a text file named .png\n")
        expected["text.png"] = "not_an_image"
        data = jpeg_bytes(photo("astronaut"))
        (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
        expected["truncated.jpg"] = "corrupt"
    return expected


def _gif(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    frames = [img.convert("P", palette=Image.Palette.ADAPTIVE), img.rotate(10).convert("P")]
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()
