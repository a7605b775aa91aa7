"""Template helpers: ``{% load prefloop %}``."""
from __future__ import annotations

from django import template
from django.utils.safestring import mark_safe

from annotate.exact import render_exact
from annotate.rendering import render_markdown

register = template.Library()


@register.filter(name="markdown")
def markdown_filter(text):
    """Safe Markdown (see annotate.rendering)."""
    return render_markdown(text)


@register.filter(name="exact")
def exact_filter(text):
    """Model text with every character shown (see annotate.exact)."""
    return render_exact(text)


def _share(value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return 0.0
    return 0.0 if v != v else max(0.0, min(1.0, v))


@register.simple_tag
def bar(value, target=None, scale=1):
    """A share in [0, 1] as the filled part of a bar, drawn in SVG: width by attribute, not by
    an inline style, so the page needs no 'unsafe-inline' in its Content-Security-Policy. The
    bar's container (``.meter``, ``.share-bar``) gives its size and track colour; ``target``
    (optional) draws a tick at that share; ``scale`` is what a full bar is (100 for a percent,
    a total for a count)."""
    try:
        share = _share(float(value) / float(scale)) if float(scale) > 0 else 0.0
    except (TypeError, ValueError):
        share = 0.0
    fill = f'<rect class="bar-fill" x="0" y="0" width="{share * 100:.2f}" height="10"/>'
    tick = ""
    if target is not None and target != "":
        tick = f'<rect class="bar-target" x="{max(0.0, _share(target) * 100 - 0.6):.2f}" y="0" width="1.2" height="10"/>'
    return mark_safe(
        '<svg class="bar-svg" viewBox="0 0 100 10" preserveAspectRatio="none" aria-hidden="true" focusable="false">'
        f"{fill}{tick}</svg>"
    )


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
