"""Regenerate the bundled example media. Everything here is drawn by this script
(no third-party content), so the examples are license-clean (CC0)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).parent


def sunset(w: int = 640, h: int = 400) -> Image.Image:
    img = Image.new("RGB", (w, h))
    px = img.load()
    for y in range(h):
        for x in range(w):
            t = y / h
            px[x, y] = (int(250 - 80 * t), int(150 - 100 * t), int(60 + 120 * t))
    d = ImageDraw.Draw(img)
    d.ellipse((w // 2 - 60, h // 2 - 20, w // 2 + 60, h // 2 + 100), fill=(255, 220, 80))
    d.rectangle((0, int(h * 0.7), w, h), fill=(20, 40, 90))
    return img


def shapes(w: int = 480, h: int = 480) -> Image.Image:
    img = Image.new("RGB", (w, h), (245, 245, 240))
    d = ImageDraw.Draw(img)
    d.rectangle((40, 40, 200, 200), fill=(200, 30, 30))
    d.ellipse((240, 60, 440, 260), fill=(30, 90, 200))
    d.polygon([(80, 440), (240, 260), (400, 440)], fill=(40, 160, 60))
    d.text((180, 450), "gemma4u", fill=(0, 0, 0))
    return img


def main() -> None:
    out = HERE / "images"
    out.mkdir(exist_ok=True)
    sunset().save(out / "sunset.jpg", quality=85)
    shapes().save(out / "shapes.png")
    # A portrait photo stored sideways with EXIF orientation 6 (rotate 90° clockwise to view).
    exif = Image.Exif()
    exif[0x0112] = 6
    sunset(400, 300).rotate(90, expand=True).save(out / "rotated_exif.jpg", exif=exif, quality=85)
    # RGBA with transparency: composited on white before captioning.
    rgba = shapes(320, 320).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((320, 320)))
    rgba.save(out / "transparent.png")
    # A very wide banner.
    sunset(1600, 120).save(out / "banner.webp", quality=80)


if __name__ == "__main__":
    main()
