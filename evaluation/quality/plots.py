"""Server-side SVG charts for the quality dashboard (hand-written SVG; no JS, no CDN).

Each function takes plain Python numbers (``None`` or NaN = missing) and returns an SVG
string that is safe to put in a template with ``|safe``: every piece of text is escaped here.
The charts scale with their container (``viewBox`` + ``width="100%"``) and carry a
``<title>`` and ``aria-label`` for screen readers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from html import escape

# Colour-blind-safe palette (Okabe–Ito).
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
GRID = "#e3e6ea"
AXIS = "#6b7280"
TEXT = "#1f2937"
MISSING = "#eef0f2"
# Every text is at least this many units; the charts are drawn at their natural size (one unit
# = one CSS pixel, scrolling sideways in a narrow window rather than shrinking), so axis text
# is never under 12 px.
MIN_TEXT = 12
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif"


def _ok(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _f(v: float) -> str:
    return f"{v:.1f}"


def _text(x, y, s, *, anchor="middle", size=MIN_TEXT, fill=TEXT, weight="normal", extra="") -> str:
    return (
        f'<text x="{_f(x)}" y="{_f(y)}" text-anchor="{anchor}" font-size="{size}" fill="{fill}" '
        f'font-weight="{weight}"{extra}>{escape(str(s))}</text>'
    )


def _open(width: int, height: int, title: str, css_class: str, desc: str = "") -> str:
    t = escape(title)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart {css_class}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" preserveAspectRatio="xMinYMin meet" role="img" '
        f'aria-label="{t}" '
        f'font-family="{escape(FONT)}"><title>{t}</title>' + (f"<desc>{escape(desc)}</desc>" if desc else "")
    )


def _empty(width: int, height: int, title: str, css_class: str, message: str) -> str:
    return (
        _open(width, height, title, css_class)
        + f'<rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" fill="#fafafa" stroke="{GRID}" '
        'rx="6"/>' + _text(width / 2, height / 2, message, fill=AXIS, size=13) + "</svg>"
    )


def _at(values, i: int):
    return values[i] if values is not None and i < len(values) else None


def data_table(caption: str, headers: Sequence[str], rows: Iterable[Sequence], *, numeric_from: int = 1) -> str:
    """A chart's numbers as an HTML table behind a "Show as a table" toggle: the text
    alternative of a chart for screen readers and for anyone who wants the exact values.
    Cells are escaped; floats print with 3 decimals, missing values as "–"."""
    def cell(v) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "–"
        if isinstance(v, float):
            return f"{v:.3f}"
        return escape(str(v))

    num = ' class="num"'
    head = "".join(
        f'<th scope="col"{num if k >= numeric_from else ""}>{escape(h)}</th>' for k, h in enumerate(headers)
    )
    body = "".join(
        "<tr>" + "".join(
            f'<td class="num">{cell(v)}</td>' if k >= numeric_from else f'<th scope="row">{cell(v)}</th>'
            for k, v in enumerate(row)
        ) + "</tr>"
        for row in rows
    )
    return (
        f'<details class="chart-data"><summary>Show as a table</summary><div class="table-wrap">'
        f'<table class="table"><caption class="sr-only">{escape(caption)}</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div></details>"
    )


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = math.ceil(lo / step - 1e-9) * step
    ticks = []
    v = start
    while v <= hi + 1e-9:
        ticks.append(round(v, 10))
        v += step
    return ticks


def line_chart(
    labels: Sequence[str],
    series: Sequence[dict],
    *,
    title: str = "",
    y_min: float | None = None,
    y_max: float | None = None,
    y_label: str = "",
    width: int = 1000,
    height: int = 300,
    reference: float | None = None,
    empty_message: str = "Not enough data yet",
) -> str:
    """A line chart over categorical x ``labels``.

    Each series is ``{"name", "values", "low"?, "high"?}`` (same length as ``labels``); ``low``
    and ``high`` draw a shaded interval band and whiskers. Missing values break the line.
    """
    css = "chart-line"
    values = [v for s in series for key in ("values", "low", "high") for v in (s.get(key) or []) if _ok(v)]
    if not labels or not values:
        return _empty(width, height, title or "line chart", css, empty_message)
    shown = [i for i in range(len(labels)) if any(_ok(_at(s.get("values"), i)) for s in series)]
    if len(shown) == 1:
        # One dot in an empty frame reads as a broken chart: say what the one point is.
        i = shown[0]
        parts = [f"{s.get('name') or 'value'} {_at(s.get('values'), i):.2f}" for s in series if _ok(_at(s.get("values"), i))]
        message = f"One point so far ({labels[i]}: {', '.join(parts)}); the line starts with the second."
        return _empty(width, 120, title or "line chart", css, message)
    lo = min(values) if y_min is None else min(y_min, min(values))
    hi = max(values) if y_max is None else max(y_max, max(values))
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    ticks = _nice_ticks(lo, hi)
    lo, hi = min(lo, ticks[0]), max(hi, ticks[-1])

    legend_h = 22 if len(series) > 1 or series[0].get("name") else 0
    left, right, top, bottom = 52, 16, 14 + legend_h, 46
    pw, ph = width - left - right, height - top - bottom
    n = len(labels)

    def x(i: int) -> float:
        return left + (pw * (i + 0.5) / n)

    def y(v: float) -> float:
        return top + ph * (1 - (v - lo) / (hi - lo))

    out = [_open(width, height, title or "line chart", css)]
    for t in ticks:
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{_f(y(t))}" y2="{_f(y(t))}" stroke="{GRID}"/>')
        out.append(_text(left - 6, y(t) + 4, f"{t:g}", anchor="end", size=MIN_TEXT, fill=AXIS))
    out.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + ph}" stroke="{AXIS}"/>')
    out.append(f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" stroke="{AXIS}"/>')
    if reference is not None and lo <= reference <= hi:
        out.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{_f(y(reference))}" y2="{_f(y(reference))}" '
            f'stroke="{AXIS}" stroke-dasharray="4 4"/>'
        )
    if y_label:
        out.append(
            _text(
                14,
                top + ph / 2,
                y_label,
                size=MIN_TEXT,
                fill=AXIS,
                extra=f' transform="rotate(-90 14 {_f(top + ph / 2)})"',
            )
        )
    # x labels: at most ~10 shown so they never overlap.
    every = max(1, math.ceil(n / 10))
    for i, label in enumerate(labels):
        if i % every == 0 or i == n - 1:
            out.append(_text(x(i), top + ph + 16, label, size=MIN_TEXT, fill=AXIS))

    for k, s in enumerate(series):
        color = s.get("color") or PALETTE[k % len(PALETTE)]
        vals = list(s.get("values") or [])
        low, high = s.get("low"), s.get("high")
        if low and high:
            # Band over each run of consecutive points that have an interval.
            run: list[int] = []
            for i in range(n + 1):
                if i < n and _ok(low[i]) and _ok(high[i]):
                    run.append(i)
                    continue
                if run:
                    pts = [f"{_f(x(j))},{_f(y(high[j]))}" for j in run] + [
                        f"{_f(x(j))},{_f(y(low[j]))}" for j in reversed(run)
                    ]
                    if len(run) == 1:
                        j = run[0]
                        out.append(
                            f'<line x1="{_f(x(j))}" x2="{_f(x(j))}" y1="{_f(y(low[j]))}" '
                            f'y2="{_f(y(high[j]))}" '
                            f'stroke="{color}" stroke-width="2" opacity="0.35"/>'
                        )
                    else:
                        out.append(f'<polygon points="{" ".join(pts)}" fill="{color}" opacity="0.15"/>')
                    run = []
        path: list[str] = []
        for i, v in enumerate(vals):
            if _ok(v):
                path.append(("M" if not path or not _ok(vals[i - 1]) else "L") + f"{_f(x(i))},{_f(y(v))}")
        if path:
            out.append(f'<path d="{" ".join(path)}" fill="none" stroke="{color}" stroke-width="2"/>')
        for i, v in enumerate(vals):
            if _ok(v):
                tip = f"{s.get('name', '')} {labels[i]}: {v:.3f}"
                if low and high and _ok(low[i]) and _ok(high[i]):
                    tip += f" [{low[i]:.3f}, {high[i]:.3f}]"
                out.append(
                    f'<circle cx="{_f(x(i))}" cy="{_f(y(v))}" r="3" '
                    f'fill="{color}"><title>{escape(tip)}</title></circle>'
                )
    # Legend
    lx = left
    for k, s in enumerate(series):
        if not s.get("name"):
            continue
        color = s.get("color") or PALETTE[k % len(PALETTE)]
        out.append(f'<rect x="{lx}" y="6" width="12" height="12" fill="{color}" rx="2"/>')
        out.append(_text(lx + 17, 16, s["name"], anchor="start", size=MIN_TEXT))
        lx += 30 + 7 * len(str(s["name"]))
    out.append("</svg>")
    return "".join(out)


def _heat_color(v: float, vmax: float) -> str:
    """White → deep orange-red, by ``v / vmax``."""
    t = max(0.0, min(1.0, v / vmax if vmax > 0 else 0.0))
    r0, g0, b0 = 255, 255, 255
    r1, g1, b1 = 179, 38, 30
    r, g, b = (round(a + (b_ - a) * t) for a, b_ in ((r0, r1), (g0, g1), (b0, b1)))
    return f"#{r:02x}{g:02x}{b:02x}"


def heatmap(
    labels: Sequence[str],
    matrix: Sequence[Sequence[float | None]],
    *,
    counts: Sequence[Sequence[int]] | None = None,
    title: str = "",
    vmax: float | None = None,
    value_format: str = "{:.2f}",
    empty_message: str = "Needs at least two pools judging the same items",
) -> str:
    """A square heatmap with the value written in each cell (missing cells grey, "—")."""
    css = "chart-heatmap"
    n = len(labels)
    if n == 0:
        return _empty(480, 160, title or "heatmap", css, empty_message)
    finite = [v for row in matrix for v in row if _ok(v)]
    if vmax is None:
        vmax = max([v for v in finite] + [1e-9])
        vmax = max(vmax, 0.25)  # small disagreements should stay pale
    cell = max(36, min(72, 480 // max(n, 1)))
    label_w = min(180, 12 + 7 * max(len(str(s)) for s in labels))
    left, top = label_w, label_w * 0.55 + 10
    width = int(left + n * cell + 90)
    height = int(top + n * cell + 16)
    out = [_open(width, height, title or "heatmap", css)]
    for i, name in enumerate(labels):
        cy = top + i * cell + cell / 2 + 4
        out.append(_text(left - 8, cy, name, anchor="end", size=MIN_TEXT))
        cx = left + i * cell + cell / 2
        out.append(
            _text(
                cx,
                top - 8,
                name,
                anchor="start",
                size=MIN_TEXT,
                extra=f' transform="rotate(-40 {_f(cx)} {_f(top - 8)})"',
            )
        )
    for i in range(n):
        for j in range(n):
            v = matrix[i][j]
            x0, y0 = left + j * cell, top + i * cell
            tip = f"{labels[i]} × {labels[j]}: "
            if _ok(v):
                fill = _heat_color(float(v), vmax)
                label = value_format.format(v)
                tip += label
            else:
                fill, label = MISSING, "—"
                tip += "no shared items"
            if counts is not None:
                tip += f" ({counts[i][j]} shared items)"
            out.append(
                f'<rect x="{_f(x0)}" y="{_f(y0)}" width="{cell - 2}" height="{cell - 2}" fill="{fill}" '
                f'stroke="{GRID}"><title>{escape(tip)}</title></rect>'
            )
            dark = _ok(v) and float(v) / vmax > 0.55
            out.append(
                _text(
                    x0 + (cell - 2) / 2, y0 + cell / 2 + 3, label, size=MIN_TEXT, fill="#ffffff" if dark else TEXT
                )
            )
    # Colour scale
    sx, sy, sh = left + n * cell + 24, top, n * cell - 2
    steps = 20
    for k in range(steps):
        v = vmax * (1 - k / steps)
        out.append(
            f'<rect x="{_f(sx)}" y="{_f(sy + sh * k / steps)}" width="14" height="{_f(sh / steps + 0.5)}" '
            f'fill="{_heat_color(v, vmax)}"/>'
        )
    out.append(f'<rect x="{_f(sx)}" y="{_f(sy)}" width="14" height="{_f(sh)}" fill="none" stroke="{GRID}"/>')
    out.append(_text(sx + 18, sy + 9, value_format.format(vmax), anchor="start", size=MIN_TEXT, fill=AXIS))
    out.append(_text(sx + 18, sy + sh, value_format.format(0.0), anchor="start", size=MIN_TEXT, fill=AXIS))
    out.append("</svg>")
    return "".join(out)


def interval_plot(
    rows: Iterable[dict],
    *,
    title: str = "",
    x_min: float = 0.0,
    x_max: float = 1.0,
    threshold: float | None = None,
    width: int = 1000,
    empty_message: str = "No gold judgments yet",
) -> str:
    """One row per entry ``{"label", "value", "low", "high", "flagged"}``: a dot and its interval
    (e.g. each annotator's gold accuracy with its credible interval), with an optional threshold."""
    css = "chart-interval"
    rows = [r for r in rows if _ok(r.get("value"))]
    if not rows:
        return _empty(width, 120, title or "interval plot", css, empty_message)
    row_h = 22
    label_w = min(200, 16 + 7 * max(len(str(r["label"])) for r in rows))
    left, right, top, bottom = label_w, 24, 12, 34
    height = top + row_h * len(rows) + bottom
    pw = width - left - right

    def x(v: float) -> float:
        return left + pw * (max(x_min, min(x_max, v)) - x_min) / (x_max - x_min)

    out = [_open(width, height, title or "interval plot", css)]
    for t in _nice_ticks(x_min, x_max):
        out.append(
            f'<line x1="{_f(x(t))}" x2="{_f(x(t))}" y1="{top}" y2="{top + row_h * len(rows)}" '
            f'stroke="{GRID}"/>'
        )
        out.append(_text(x(t), top + row_h * len(rows) + 16, f"{t:g}", size=MIN_TEXT, fill=AXIS))
    if threshold is not None:
        tx = x(threshold)
        out.append(
            f'<line x1="{_f(tx)}" x2="{_f(tx)}" y1="{top - 4}" y2="{top + row_h * len(rows)}" '
            f'stroke="{PALETTE[1]}" stroke-dasharray="4 3"/>'
        )
        out.append(
            _text(tx, top + row_h * len(rows) + 30, f"threshold {threshold:g}", size=MIN_TEXT, fill=PALETTE[1])
        )
    for k, r in enumerate(rows):
        cy = top + row_h * k + row_h / 2
        color = PALETTE[1] if r.get("flagged") else PALETTE[0]
        out.append(_text(left - 8, cy + 4, r["label"], anchor="end", size=MIN_TEXT))
        lo, hi = r.get("low"), r.get("high")
        if _ok(lo) and _ok(hi):
            out.append(
                f'<line x1="{_f(x(lo))}" x2="{_f(x(hi))}" y1="{_f(cy)}" y2="{_f(cy)}" stroke="{color}" '
                'stroke-width="2"/>'
            )
        tip = f"{r['label']}: {r['value']:.3f}"
        if _ok(lo) and _ok(hi):
            tip += f" [{lo:.3f}, {hi:.3f}]"
        out.append(
            f'<circle cx="{_f(x(r["value"]))}" cy="{_f(cy)}" r="4" '
            f'fill="{color}"><title>{escape(tip)}</title></circle>'
        )
    out.append("</svg>")
    return "".join(out)


def bar_chart(
    labels: Sequence[str],
    values: Sequence[float | None],
    *,
    low: Sequence[float | None] | None = None,
    high: Sequence[float | None] | None = None,
    title: str = "",
    x_max: float = 1.0,
    reference: float | None = 0.5,
    value_format: str = "{:.0%}",
    width: int = 720,
    empty_message: str = "No data",
) -> str:
    """Horizontal bars (e.g. model win rates) with optional interval whiskers."""
    css = "chart-bar"
    if not labels or not any(_ok(v) for v in values):
        return _empty(width, 100, title or "bar chart", css, empty_message)
    row_h = 24
    label_w = min(240, 16 + 7 * max(len(str(s)) for s in labels))
    left, right, top, bottom = label_w, 60, 8, 26
    height = top + row_h * len(labels) + bottom
    pw = width - left - right

    def x(v: float) -> float:
        return left + pw * max(0.0, min(x_max, v)) / x_max

    out = [_open(width, height, title or "bar chart", css)]
    for t in _nice_ticks(0, x_max):
        out.append(
            f'<line x1="{_f(x(t))}" x2="{_f(x(t))}" y1="{top}" y2="{top + row_h * len(labels)}" '
            f'stroke="{GRID}"/>'
        )
        out.append(_text(x(t), top + row_h * len(labels) + 16, value_format.format(t), size=MIN_TEXT, fill=AXIS))
    for k, (name, v) in enumerate(zip(labels, values, strict=False)):
        y0 = top + row_h * k
        out.append(_text(left - 8, y0 + row_h / 2 + 4, name, anchor="end", size=MIN_TEXT))
        if not _ok(v):
            continue
        out.append(
            f'<rect x="{left}" y="{_f(y0 + 4)}" width="{_f(x(v) - left)}" height="{row_h - 8}" '
            f'fill="{PALETTE[0]}" '
            f'opacity="0.85" rx="2"><title>{escape(f"{name}: {value_format.format(v)}")}</title></rect>'
        )
        if low is not None and high is not None and _ok(low[k]) and _ok(high[k]):
            cy = y0 + row_h / 2
            out.append(
                f'<line x1="{_f(x(low[k]))}" x2="{_f(x(high[k]))}" y1="{_f(cy)}" y2="{_f(cy)}" '
                f'stroke="{TEXT}" stroke-width="1.5"/>'
            )
        out.append(
            _text(
                max(x(v), x(high[k]) if high is not None and _ok(high[k]) else 0) + 6,
                y0 + row_h / 2 + 4,
                value_format.format(v),
                anchor="start",
                size=MIN_TEXT,
                fill=AXIS,
            )
        )
    if reference is not None:
        out.append(
            f'<line x1="{_f(x(reference))}" x2="{_f(x(reference))}" y1="{top}" '
            f'y2="{top + row_h * len(labels)}" '
            f'stroke="{AXIS}" stroke-dasharray="4 3"/>'
        )
    out.append("</svg>")
    return "".join(out)


def histogram(
    bins: Sequence[dict],
    *,
    title: str = "",
    x_label: str = "",
    y_label: str = "",
    threshold: float | None = None,
    width: int = 1000,
    height: int = 280,
    empty_message: str = "No data",
) -> str:
    """Vertical bars over equal bins ``{"low", "high", "count", "flagged"?}`` (in order), the
    ``flagged`` part of each bar stacked in orange (e.g. annotators below threshold); an
    optional dashed threshold line. For distributions too large for one mark per item: its
    size does not depend on the number of items counted. The ``<desc>`` lists every bin's
    counts for screen readers."""
    css = "chart-histogram"
    total = sum(int(b["count"]) for b in bins)
    if not bins or total == 0:
        return _empty(width, 120, title or "histogram", css, empty_message)
    flagged_total = sum(int(b.get("flagged") or 0) for b in bins)
    desc = f"{total:,} in {len(bins)} bins"
    if flagged_total:
        desc += f", {flagged_total:,} of them below threshold"
    desc += ". " + "; ".join(
        f"{b['low']:g}–{b['high']:g}: {b['count']:,}"
        + (f" ({b['flagged']:,} below)" if b.get("flagged") else "")
        for b in bins
        if b["count"]
    )
    x_min, x_max = bins[0]["low"], bins[-1]["high"]
    y_max = max(int(b["count"]) for b in bins)
    ticks = _nice_ticks(0, y_max, 4)
    if ticks[-1] < y_max and len(ticks) > 1:  # a gridline above the tallest bar
        ticks.append(ticks[-1] + ticks[1] - ticks[0])
    y_top = max(y_max, ticks[-1])
    legend_h = 22 if flagged_total else 0
    left, right, top, bottom = 60, 16, 12 + legend_h, 46 if x_label else 30
    pw, ph = width - left - right, height - top - bottom

    def x(v: float) -> float:
        return left + pw * (v - x_min) / (x_max - x_min)

    def y(v: float) -> float:
        return top + ph * (1 - v / y_top)

    out = [_open(width, height, title or "histogram", css, desc)]
    for t in ticks:
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{_f(y(t))}" y2="{_f(y(t))}" stroke="{GRID}"/>')
        out.append(_text(left - 6, y(t) + 4, f"{t:,g}", anchor="end", size=MIN_TEXT, fill=AXIS))
    for t in _nice_ticks(x_min, x_max):
        out.append(_text(x(t), top + ph + 16, f"{t:g}", size=MIN_TEXT, fill=AXIS))
    for b in bins:
        n, k = int(b["count"]), int(b.get("flagged") or 0)
        if not n:
            continue
        x0, x1 = x(b["low"]) + 1, x(b["high"]) - 1
        tip = f"{b['low']:g}–{b['high']:g}: {n:,}" + (f", {k:,} below threshold" if k else "")
        out.append(f"<g><title>{escape(tip)}</title>")
        if n - k:
            out.append(
                f'<rect x="{_f(x0)}" y="{_f(y(n))}" width="{_f(x1 - x0)}" height="{_f(y(k) - y(n))}" '
                f'fill="{PALETTE[0]}" opacity="0.85"/>'
            )
        if k:
            out.append(
                f'<rect x="{_f(x0)}" y="{_f(y(k))}" width="{_f(x1 - x0)}" height="{_f(y(0) - y(k))}" '
                f'fill="{PALETTE[1]}" opacity="0.85"/>'
            )
        out.append("</g>")
    out.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + ph}" stroke="{AXIS}"/>')
    out.append(f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" stroke="{AXIS}"/>')
    if threshold is not None and x_min <= threshold <= x_max:
        tx = x(threshold)
        out.append(
            f'<line x1="{_f(tx)}" x2="{_f(tx)}" y1="{top}" y2="{top + ph}" stroke="{PALETTE[1]}" '
            'stroke-dasharray="4 3"/>'
        )
        out.append(
            _text(tx + 4, top + 10, f"threshold {threshold:g}", anchor="start", size=MIN_TEXT, fill=PALETTE[1])
        )
    if x_label:
        out.append(_text(left + pw / 2, height - 8, x_label, size=MIN_TEXT, fill=AXIS))
    if y_label:
        cy = top + ph / 2
        out.append(_text(14, cy, y_label, size=MIN_TEXT, fill=AXIS, extra=f' transform="rotate(-90 14 {_f(cy)})"'))
    if flagged_total:
        for k, (label, color) in enumerate((("others", PALETTE[0]), ("below threshold", PALETTE[1]))):
            lx = left + k * 90
            out.append(f'<rect x="{lx}" y="6" width="12" height="12" fill="{color}" rx="2"/>')
            out.append(_text(lx + 17, 16, label, anchor="start", size=MIN_TEXT))
    out.append("</svg>")
    return "".join(out)
