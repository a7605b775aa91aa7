"""Template helpers: ``{% load prefloop %}``."""
from __future__ import annotations

from django import template

from annotate.rendering import render_markdown

register = template.Library()


@register.filter(name="markdown")
def markdown_filter(text):
    """Safe Markdown (see annotate.rendering)."""
    return render_markdown(text)


@register.filter
def percent(value, digits: int = 0):
    """0.153 → '15%' (or '15.3%' with ``|percent:1``); '–' for None."""
    if value is None or value == "":
        return "–"
    try:
        return f"{float(value) * 100:.{int(digits)}f}%"
    except (TypeError, ValueError):
        return "–"


@register.filter
def bar_width(value):
    """A share in [0, 1] as a CSS width percentage, clamped."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "0%"
    return f"{max(0.0, min(1.0, v)) * 100:.1f}%"
