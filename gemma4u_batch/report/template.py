"""The report page: one Jinja template with autoescape on, so every string from a record
(captions, JSON data, segment text, sources, error messages) is escaped by construction.
Only SVG built in report_plots.py (which escapes its labels) is marked safe. The page has
no script at all, and its Content-Security-Policy allows only inline styles and data:
media, so even a rendering slip could neither run script nor load anything.
"""

from __future__ import annotations

from typing import Any

import jinja2

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; img-src data:; media-src data:; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>gemma4u report: {{ title }}</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:16px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 8px}h2{font-size:16px;margin:20px 0 8px;border-bottom:1px solid #ddd}
table.facts td{padding:1px 10px 1px 0;vertical-align:top}table.facts td:first-child{color:#666;white-space:nowrap}
.plots{display:flex;flex-wrap:wrap;gap:12px}.plot{background:#fff;border:1px solid #e3e3e3}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:10px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;overflow:hidden}
.card.failed{border-color:#d66}.card img{max-width:100%;display:block;margin:0 auto 4px}
.card audio{width:100%;height:30px}.id{font-weight:600;word-break:break-all}
.meta{color:#777;font-size:12px}.text{white-space:pre-wrap;word-break:break-word;margin:4px 0}
pre.data{font-size:11px;background:#f4f4f4;padding:4px;white-space:pre-wrap;word-break:break-word;margin:4px 0}
.err{color:#b00}.note{color:#a60;font-size:12px;font-style:italic}
.flag{display:inline-block;background:#fe9;border-radius:3px;padding:0 4px;font-size:11px;margin-right:3px}
table.groups{border-collapse:collapse}table.groups td,table.groups th{border:1px solid #ddd;padding:3px 6px;
vertical-align:top;text-align:left}td.count{text-align:right;font-weight:600}
.segs{font-size:12px}.segs span{color:#777}details{margin:4px 0}
</style></head><body>
<h1>gemma4u report: {{ title }}</h1>
<section id="run"><table class="facts">
{% for name, value in facts %}<tr><td>{{ name }}</td><td>{{ value }}</td></tr>
{% endfor %}</table></section>
<h2>Plots</h2><section id="plots" class="plots">{% for svg in plots %}{{ svg }}{% endfor %}</section>
{% for section in groups %}
<h2>{{ section.title }}</h2>
<section id="{{ section.id }}">
{% if section.groups %}<table class="groups">
<tr><th>{{ section.column }}</th><th>records</th><th>first of them</th></tr>
{% for g in section.groups %}<tr class="group" data-name="{{ g.name }}"><td class="name">{{ g.name }}</td>
<td class="count">{{ g.count }}</td><td><ul>{% for source, message in g.examples %}
<li><span class="source">{{ source }}</span>{% if message %}: <span class="meta">{{ message }}</span>{% endif %}</li>
{% endfor %}</ul></td></tr>
{% endfor %}</table>{% else %}<p>none</p>{% endif %}
</section>
{% endfor %}
<h2>Sample: {{ cards|length }} of {{ matched }} records{% if filters %} matching {{ filters }}{% endif %}
 (seed {{ seed }})</h2>
<section id="grid" class="grid">
{% for c in cards %}<div class="card{% if c.error %} failed{% endif %}" data-id="{{ c.id }}" data-task="{{ c.task }}">
{% if c.media.thumb %}<img class="thumb" src="{{ c.media.thumb }}" alt="{{ c.id }}">{% endif %}
{% if c.media.strip %}<img class="strip" src="{{ c.media.strip }}" alt="frames of {{ c.id }}">{% endif %}
{% if c.media.waveform %}<img class="wave" src="{{ c.media.waveform }}" alt="waveform of {{ c.id }}">{% endif %}
{% if c.media.clip %}<audio controls preload="metadata" src="{{ c.media.clip }}"></audio>{% endif %}
{% if c.media.note %}<div class="note">{{ c.media.note }}</div>{% endif %}
<div class="id">{{ c.id }}</div>
<div class="meta">{{ c.task }} · {{ c.modality }}{% if c.tokens is not none %} · {{ c.tokens }} tokens{% endif %}
{% if c.source != c.id %} · {{ c.source }}{% endif %}</div>
{% for f in c.flags %}<span class="flag">{{ f }}</span>{% endfor %}
{% if c.error %}<div class="err"><b>{{ c.error_kind }}</b>: {{ c.error }}</div>{% endif %}
{% if c.text is not none %}<div class="text caption">{{ c.text }}</div>{% endif %}
{% if c.data is not none %}<pre class="data">{{ c.data }}</pre>{% endif %}
{% if c.timeline %}<div class="segtimeline">{{ c.timeline }}</div>
<details class="segs"><summary>{{ c.segments|length }} segments</summary>
{% for s in c.segments %}<div><span>{{ s.start }}–{{ s.end }} s</span> {{ s.text }}</div>{% endfor %}
</details>{% endif %}
</div>
{% endfor %}</section>
<p class="meta">Made by gemma4u {{ version }} from {{ out }} in {{ seconds }} s.</p>
</body></html>
"""


def render_page(context: dict[str, Any]) -> str:
    """The page as a string (autoescaped; Markup values pass through as they are)."""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.from_string(TEMPLATE).render(**context)
