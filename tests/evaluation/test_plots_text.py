"""Charts say what they show: one point or no data is a sentence, not an empty frame, and
every chart's numbers are available as a table (its text alternative)."""
from __future__ import annotations

import re

from evaluation.quality import plots
from training.plots import plot_table, svg_line_plot


def test_single_point_line_chart_says_so():
    svg = plots.line_chart(["week 1"], [{"name": "Raw agreement", "values": [0.81]}], title="Agreement over time")
    assert "One point so far (week 1: Raw agreement 0.81)" in svg and "<circle" not in svg
    two = plots.line_chart(["w1", "w2"], [{"name": "Raw", "values": [0.8, 0.7]}])
    assert "<path" in two and "One point" not in two
    assert "Not enough data yet" in plots.line_chart([], [{"name": "Raw", "values": []}])


def test_axis_text_is_at_least_12_units():
    svgs = [
        plots.line_chart(["a", "b", "c"], [{"name": "x", "values": [0.1, 0.5, 0.9]}], y_label="share"),
        plots.interval_plot([{"label": "ann1", "value": 0.8, "low": 0.6, "high": 0.9}], threshold=0.6),
        plots.bar_chart(["m1", "m2"], [0.4, 0.6], low=[0.3, 0.5], high=[0.5, 0.7]),
        plots.histogram([{"low": 0, "high": 0.5, "count": 3}, {"low": 0.5, "high": 1, "count": 5}], x_label="acc"),
        plots.heatmap(["EU", "US"], [[0.1, 0.3], [0.3, 0.2]]),
    ]
    for svg in svgs:
        sizes = [float(s) for s in re.findall(r'font-size="([\d.]+)"', svg)]
        assert sizes and min(sizes) >= 12, sizes
        assert "style=" not in svg  # the Content-Security-Policy allows no inline style


def test_chart_tables_hold_the_numbers():
    html = plots.data_table("Gold accuracy", ["Annotator", "Accuracy"], [("<ann>", 0.8125), ("b", None)])
    assert "Show as a table" in html and "&lt;ann&gt;" in html and "0.812" in html and "–" in html
    series = [("train", [(0, 1.0), (10, 0.5)]), ("held-out", [(10, 0.7)])]
    table = plot_table("Loss", series)
    assert "<th scope=\"row\">10</th><td class=\"num\">0.500</td><td class=\"num\">0.700</td>" in table


def test_training_plot_with_one_step_says_so():
    svg = str(svg_line_plot("Loss", [("SFT", [(5, 2.5)])]))
    assert "one step logged so far (step 5)" in svg and "<circle" not in svg
