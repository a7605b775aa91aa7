"""The run page's plots: server-side SVG line plots of a run's metric rows, no JavaScript.

``PLOTS`` says which metrics the page draws (each phase apart -- SFT, DPO, reward model, PPO --
held-out beside training; a run shows its recipe's phases); the reward model's calibration
diagram and PPO's sample generations come from the same rows;
``svg_line_plot`` draws one, escaping every text, downsampled to ``MAX_PLOT_POINTS`` points; a
plot with one logged step says so in words; ``plot_table`` is each plot's table alternative.
"""

from __future__ import annotations

import math
from html import escape

from django.utils.safestring import mark_safe

MAX_PLOT_POINTS = 300

PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")


def _fmt(v: float) -> str:
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1e6 or a < 1e-3:
        return f"{v:.1e}"
    if a >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def _downsample(points: list[tuple[int, float]], n: int = MAX_PLOT_POINTS) -> list[tuple[int, float]]:
    if len(points) <= n:
        return points
    stride = len(points) / n
    picked = [points[int(i * stride)] for i in range(n)]
    if picked[-1] != points[-1]:
        picked.append(points[-1])
    return picked


def svg_line_plot(
    title: str,
    series: list[tuple[str, list[tuple[int, float]]]],
    *,
    width: int = 360,
    height: int = 180,
    y_range: tuple[float, float] | None = None,
) -> str:
    """An SVG line plot of ``series`` = ``[(name, [(step, value), ...]), ...]`` over the step axis.

    Every text is escaped; the SVG scales with its container (``viewBox``). A series with one
    point is drawn as a dot."""
    series = [(name, _downsample([(s, v) for s, v in pts if math.isfinite(v)])) for name, pts in series]
    series = [(name, pts) for name, pts in series if pts]
    t = escape(title)
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" viewBox="0 0 {width} {height}" width="100%" '
        f'role="img" aria-label="{t}"><title>{t}</title>'
        f'<text x="8" y="16" class="plot-title">{t}</text>'
    )
    if not series:
        return mark_safe(
            head + f'<text x="{width / 2}" y="{height / 2 + 8}" text-anchor="middle" '
            f'class="plot-empty">no data yet</text></svg>'
        )
    if all(len(pts) == 1 for _, pts in series) and len({pts[0][0] for _, pts in series}) == 1:
        # One logged step: say what it is rather than draw a lone dot in an empty frame.
        step = series[0][1][0][0]
        values = ", ".join(f"{name + ' ' if name else ''}{_fmt(pts[0][1])}" for name, pts in series)
        return mark_safe(
            head + f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="plot-empty">'
            f'{escape(f"one step logged so far (step {step})")}</text>'
            f'<text x="{width / 2}" y="{height / 2 + 18}" text-anchor="middle" class="plot-empty">{escape(values)}</text></svg>'
        )
    xs = [s for _, pts in series for s, _ in pts]
    ys = [v for _, pts in series for _, v in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = (min(ys), max(ys)) if y_range is None else y_range
    if y_range is not None:
        y0, y1 = min(y0, min(ys)), max(y1, max(ys))
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 - y0 < 1e-12:
        pad = abs(y0) * 0.1 or 1.0
        y0, y1 = y0 - pad, y1 + pad
    left, right, top, bottom = 56, 10, max(28, 10 + 14 * len(series)), 24
    pw, ph = width - left - right, height - top - bottom

    def px(s):
        return left + pw * (s - x0) / (x1 - x0)

    def py(v):
        return top + ph * (1 - (v - y0) / (y1 - y0))

    out = [head]
    for frac in (0.0, 0.5, 1.0):
        v = y0 + (y1 - y0) * frac
        y = py(v)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" class="plot-gridline"/>')
        tick = escape(_fmt(v))
        out.append(f'<text x="{left - 4}" y="{y + 3:.1f}" text-anchor="end" class="plot-tick">{tick}</text>')
    out.append(f'<text x="{left}" y="{height - 6}" class="plot-tick">step {x0}</text>')
    out.append(f'<text x="{left + pw}" y="{height - 6}" text-anchor="end" class="plot-tick">{x1}</text>')
    legend_x = width - right
    for i, (name, pts) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        if len(pts) == 1:
            s, v = pts[0]
            out.append(f'<circle cx="{px(s):.1f}" cy="{py(v):.1f}" r="2.5" fill="{color}"/>')
        else:
            d = " ".join(f"{'M' if j == 0 else 'L'}{px(s):.1f},{py(v):.1f}" for j, (s, v) in enumerate(pts))
            out.append(f'<path d="{d}" fill="none" stroke="{color}" stroke-width="1.6"/>')
        if len(series) > 1 or name:
            label = f"{name} {_fmt(pts[-1][1])}"
            out.append(
                f'<text x="{legend_x}" y="{16 + i * 14}" text-anchor="end" class="plot-legend" '
                f'fill="{color}">{escape(label)}</text>'
            )
    out.append("</svg>")
    return mark_safe("".join(out))


#: The run page's plots: (title, [(series name, metric key, phase or None)], y range or None,
#: the phases the plot belongs to). A run shows the plots of its recipe's phases.
PLOTS = (
    (
        "Loss",
        [
            ("SFT", "loss", "sft"),
            ("DPO", "loss", "dpo"),
            ("eval SFT", "eval_loss", "sft"),
            ("eval DPO", "eval_loss", "dpo"),
        ],
        None,
        {"sft", "dpo"},
    ),
    (
        "DPO reward accuracy",
        [("train", "reward_accuracy", "dpo"), ("held-out", "eval_reward_accuracy", "dpo")],
        (0.0, 1.0),
        {"dpo"},
    ),
    (
        "DPO reward margin",
        [("train", "reward_margin", "dpo"), ("held-out", "eval_reward_margin", "dpo")],
        None,
        {"dpo"},
    ),
    ("Log-probs", [("chosen", "chosen_logps", "dpo"), ("rejected", "rejected_logps", "dpo")], None, {"dpo"}),
    ("KL to reference", [("", "kl_to_ref", "dpo")], None, {"dpo"}),
    ("Reward model loss", [("train", "loss", "rm"), ("held-out", "eval_loss", "rm")], None, {"rm"}),
    (
        "Reward model pairwise accuracy",
        [("train", "reward_accuracy", "rm"), ("held-out", "eval_reward_accuracy", "rm")],
        (0.0, 1.0),
        {"rm"},
    ),
    ("PPO reward", [("score", "reward", "ppo"), ("score - KL penalty", "rlhf_reward", "ppo")], None, {"ppo"}),
    ("PPO KL to reference", [("", "kl", "ppo")], None, {"ppo"}),
    (
        "PPO clip fraction",
        [("policy", "clip_fraction", "ppo"), ("value", "value_clip_fraction", "ppo")],
        (0.0, 1.0),
        {"ppo"},
    ),
    ("PPO approximate KL (old to new)", [("", "approx_kl", "ppo")], None, {"ppo"}),
    ("PPO value loss", [("", "value_loss", "ppo")], None, {"ppo"}),
    ("PPO entropy (per token)", [("", "entropy", "ppo")], None, {"ppo"}),
    ("PPO response length", [("", "response_length", "ppo")], None, {"ppo"}),
    (
        "PPO time per iteration (s)",
        [("generation", "gen_s", "ppo"), ("scoring", "score_s", "ppo"), ("optimisation", "update_s", "ppo")],
        None,
        {"ppo"},
    ),
    ("Learning rate", [("", "lr", None)], None, None),
    ("Tokens / s", [("", "tokens_per_s", None)], None, None),
)

#: The phases of each recipe (what its run page plots).
RECIPE_PHASES = {
    "sft": {"sft"},
    "dpo": {"dpo"},
    "sft+dpo": {"sft", "dpo"},
    "rm": {"rm"},
    "ppo": {"ppo"},
    "sft+rm+ppo": {"sft", "rm", "ppo"},
    "sft+dpo+ppo": {"sft", "dpo", "rm", "ppo"},
}


def run_plots(rows: list[tuple[int, dict]], recipe: str | None = None) -> list[str]:
    """The run page's SVG plots from its ``(step, data)`` metric rows (those of ``recipe``'s phases)."""
    phases = RECIPE_PHASES.get(recipe or "", None)
    plots = []
    for title, spec, y_range, plot_phases in PLOTS:
        if phases is not None and plot_phases is not None and not (phases & plot_phases):
            continue
        series = []
        for name, key, phase in spec:
            pts = [
                (step, float(d[key]))
                for step, d in rows
                if isinstance(d.get(key), (int, float))
                and not isinstance(d.get(key), bool)
                and (phase is None or d.get("phase") == phase)
            ]
            if pts:
                series.append((name, pts))
        plots.append(mark_safe(svg_line_plot(title, series, y_range=y_range) + plot_table(title, series)))
    return plots


def calibration_plot(bins: list[dict] | None) -> str | None:
    """The reward model's reliability diagram: per bin of its ``sigma(r_chosen - r_rejected)``,
    the mean prediction against the humans' mean P(chosen), with the diagonal."""
    from evaluation.quality.plots import line_chart

    used = [b for b in (bins or []) if isinstance(b, dict) and b.get("n")]
    if not used:
        return None
    labels = [f"{b['lo']:.1f}-{b['hi']:.1f} (n={b['n']})" for b in used]
    return mark_safe(line_chart(labels, [
        {"name": "human P(chosen)", "values": [b["observed"] for b in used]},
        {"name": "reward model sigma(r_c - r_r)", "values": [b["predicted"] for b in used]},
        {"name": "perfect calibration", "values": [(b["lo"] + b["hi"]) / 2 for b in used]},
    ], title="Reward model calibration (held out)", y_min=0.0, y_max=1.0, y_label="P(chosen)", width=720,
        height=260))


def recent_samples(rows: list[tuple[int, dict]], n_steps: int = 3) -> list[dict]:
    """The sample generations of the last ``n_steps`` logged PPO iterations, newest first."""
    out = []
    for step, data in reversed(rows):
        samples = data.get("samples")
        if isinstance(samples, list) and samples:
            out.append({"step": step, "samples": [s for s in samples if isinstance(s, dict)]})
            if len(out) == n_steps:
                break
    return out


def plot_table(title: str, series: list[tuple[str, list[tuple[int, float]]]]) -> str:
    """The plot's numbers as a table behind a toggle (its text alternative); the same
    downsampled steps the plot draws."""
    if not series:
        return ""
    from evaluation.quality.plots import data_table

    by_step: dict[int, dict[str, float]] = {}
    for name, pts in series:
        for step, v in _downsample(pts):
            by_step.setdefault(step, {})[name] = v
    names = [name for name, _ in series]
    rows = [(step, *(by_step[step].get(n) for n in names)) for step in sorted(by_step)]
    return data_table(title, ["Step", *[n or title for n in names]], rows)
