"""The report's plots as small inline SVG, drawn here.

Hand-written on purpose: four simple charts (a line and bar charts) are ~100 lines of
SVG, while matplotlib would add a large dependency to the stack and make ~30 KB of SVG
per plot; these are ~2 KB. Every label goes through `escape` (it may come from a record).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence

from markupsafe import Markup, escape

W, H = 420, 180
PAD_L, PAD_R, PAD_T, PAD_B = 48, 12, 12, 40
BAR = "#4a6fb5"


def _frame(body: list[str], title: str) -> Markup:
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}" role="img" aria-label="{escape(title)}">'
    )
    axes = (
        f'<line x1="{PAD_L}" y1="{H - PAD_B}" x2="{W - PAD_R}" y2="{H - PAD_B}" stroke="#888"/>'
        f'<line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{H - PAD_B}" stroke="#888"/>'
    )
    return Markup(head + axes + "".join(body) + "</svg>")


def _text(x: float, y: float, label: object, anchor: str = "middle", size: int = 10) -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="#333">{escape(label)}</text>'


def _short(n: float) -> str:
    if n >= 1_000_000:
        return f"{n / 1_000_000:.1f}M"
    if n >= 10_000:
        return f"{n / 1000:.0f}k"
    return f"{n:g}" if n == int(n) else f"{n:.1f}"


def bar_chart(labels: Sequence[str], values: Sequence[int], title: str) -> Markup:
    """Vertical bars with the value on top; labels under every bar (or every few when many)."""
    if not values:
        return _frame([_text(W / 2, H / 2, "none"), _text(W / 2, H - 6, title, size=11)], title)
    top = max(max(values), 1)
    span = (W - PAD_L - PAD_R) / len(values)
    every = max(1, len(values) // 8)
    body = [_text(PAD_L - 4, PAD_T + 8, _short(top), "end"), _text(PAD_L - 4, H - PAD_B, "0", "end")]
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        h = (H - PAD_T - PAD_B) * v / top
        x = PAD_L + i * span
        body.append(
            f'<rect x="{x + 1:.1f}" y="{H - PAD_B - h:.1f}" width="{max(span - 2, 1):.1f}" height="{h:.1f}" '
            f'fill="{BAR}"><title>{escape(label)}: {v}</title></rect>'
        )
        if i % every == 0:
            body.append(_text(x + span / 2, H - PAD_B + 12, label, size=9))
    body.append(_text(W / 2, H - 6, title, size=11))
    return _frame(body, title)


def histogram(counts: Counter[int], bins: int = 16) -> tuple[list[str], list[int]]:
    """Equal-width bins over the observed range of integer values (labels: bin starts)."""
    if not counts:
        return [], []
    lo, hi = min(counts), max(counts)
    width = max(1, -(-(hi - lo + 1) // bins))
    n = -(-(hi - lo + 1) // width)
    values = [0] * n
    for v, c in counts.items():
        values[(v - lo) // width] += c
    return [_short(lo + i * width) for i in range(n)], values


def cumulative_chart(points: Sequence[tuple[float, int]], title: str) -> Markup:
    """Records committed over time: a step line from the first commit to the last."""
    if not points:
        return _frame([_text(W / 2, H / 2, "no commits"), _text(W / 2, H - 6, title, size=11)], title)
    t0, t1 = points[0][0], max(points[-1][0], points[0][0] + 1e-6)
    total = max(sum(n for _, n in points), 1)

    def xs(t: float) -> float:
        return PAD_L + (W - PAD_L - PAD_R) * (t - t0) / (t1 - t0)

    def ys(c: int) -> float:
        return H - PAD_B - (H - PAD_T - PAD_B) * c / total

    path, run = [f"M{xs(t0):.1f},{ys(0):.1f}"], 0
    for t, n in points:
        run += n
        path.append(f"L{xs(t):.1f},{ys(run - n):.1f} L{xs(t):.1f},{ys(run):.1f}")
    body = [
        f'<path d="{" ".join(path)}" fill="none" stroke="{BAR}" stroke-width="2"/>',
        _text(PAD_L - 4, PAD_T + 8, _short(total), "end"),
        _text(PAD_L - 4, H - PAD_B, "0", "end"),
        _text(PAD_L, H - PAD_B + 12, time.strftime("%H:%M:%S", time.gmtime(t0)), "start", 9),
        _text(W - PAD_R, H - PAD_B + 12, time.strftime("%H:%M:%S", time.gmtime(t1)) + " UTC", "end", 9),
        _text(W / 2, H - 6, title, size=11),
    ]
    return _frame(body, title)


def segment_timeline(segments: Sequence[dict[str, object]], width: int = 220, height: int = 26) -> Markup:
    """A transcript's segments along the file's time axis; each segment's text as its tooltip."""
    spans = [(float(s.get("start") or 0.0), float(s.get("end") or 0.0), s.get("text") or "") for s in segments]  # type: ignore[arg-type]
    end = max([e for _, e, _ in spans] + [1e-6])
    body = [f'<rect x="0" y="0" width="{width}" height="{height - 10}" fill="#eef"/>']
    for i, (s, e, text) in enumerate(spans):
        x, w = width * s / end, max(width * (e - s) / end, 1.0)
        fill = "#4a6fb5" if i % 2 == 0 else "#7f9ad0"
        body.append(
            f'<rect class="seg" x="{x:.1f}" y="0" width="{w:.1f}" height="{height - 10}" fill="{fill}">'
            f"<title>{s:.1f}–{e:.1f} s: {escape(text)}</title></rect>"
        )
    body.append(f'<text x="0" y="{height - 1}" font-size="9" fill="#555">0 s</text>')
    body.append(f'<text x="{width}" y="{height - 1}" font-size="9" text-anchor="end" fill="#555">{end:.1f} s</text>')
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="100%" height="{height}" '
        f'viewBox="0 0 {width} {height}">' + "".join(body) + "</svg>"
    )
