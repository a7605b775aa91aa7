"""The rounds page: how each round's new model fared with the annotators, overall and per pool
(a win-rate-by-round chart with its table), and the Bradley–Terry leaderboard per group."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.views.decorators.http import require_GET

from annotate.roles import READ_ROLES, project_for, role_of

from ..quality import plots
from ..quality.views import fmt_pct, fmt_signed
from . import verdicts


def _interval(low, high, fmt=fmt_pct) -> str:
    return f"[{fmt(low)}, {fmt(high)}]" if low is not None and high is not None else ""


def rounds_context(project) -> dict:
    games = verdicts.load_games(project)
    by_round = verdicts.round_verdicts(project, games)
    board = verdicts.leaderboard(project, games)
    group_names = []
    for r in by_round:
        for g in r["groups"]:
            if g["name"] not in group_names:
                group_names.append(g["name"])
    labels = [f"Round {r['round']}" for r in by_round]
    series = []
    for name in group_names:
        cells = [next((g for g in r["groups"] if g["name"] == name), {}) for r in by_round]
        series.append(
            {
                "name": name,
                "values": [c.get("win_rate") for c in cells],
                "low": [c.get("low") for c in cells],
                "high": [c.get("high") for c in cells],
            }
        )
    chart = plots.line_chart(
        labels,
        series,
        title="Win rate of each round's new model, by pool (tie = ½)",
        y_min=0.0,
        y_max=1.0,
        y_label="win rate",
        reference=0.5,
        empty_message="No round has model-vs-model judgments yet",
    )
    table = plots.data_table(
        "Win rate of each round's new model by pool, with 95% intervals over prompts",
        ["Round", "Model", *[f"{n} win rate" for n in group_names], *[f"{n} low" for n in group_names],
         *[f"{n} high" for n in group_names]],
        [
            (label, r["model"], *[s["values"][i] for s in series], *[s["low"][i] for s in series],
             *[s["high"][i] for s in series])
            for i, (label, r) in enumerate(zip(labels, by_round))
        ],
        numeric_from=2,
    )
    rounds = [
        {
            "round": r["round"],
            "model": r["model"],
            "against": ", ".join(r["against"]),
            "groups": [
                {**g, "rate": fmt_pct(g["win_rate"]), "ci": _interval(g["low"], g["high"])} for g in r["groups"]
            ],
        }
        for r in reversed(by_round)
    ]
    leaderboards = [
        {
            "name": group["name"],
            "models": [
                {
                    **m,
                    "elo_str": f"{m['elo']:+.0f}" if m["elo"] is not None else "—",
                    "ci": _interval(m["low"], m["high"], lambda v: fmt_signed(v, 2)),
                    "strength_str": fmt_signed(m["strength"], 2),
                    "rate": fmt_pct(m["win_rate"]),
                }
                for m in group["models"]
            ],
        }
        for group in board
    ]
    return {"chart": chart, "chart_table": table, "rounds": rounds, "leaderboards": leaderboards,
            "n_judgments": len(games), "versions": version_rows(project, games.models),
            "loops": _loops(project)}


def _loops(project) -> list:
    """The project's newest loops; one whose process died is resumed or failed first (docs/jobs.md)."""
    from training.loop.service import check

    loops = list(project.loops.select_related("latest_model").order_by("-created_at", "-pk")[:10])
    for loop in loops:
        check(loop)
    return loops


def version_rows(project, names: list[str]) -> list[dict]:
    """The automatic metrics the worker recorded for the project's model versions that were judged
    (through the project's ``model_versions``: this app does not import the training app)."""
    rows = []
    for v in project.model_versions.filter(name__in=names).select_related("parent").order_by("created_at", "pk"):
        m = v.metrics or {}
        length, change = m.get("mean_length"), m.get("length_change")
        rows.append({
            "name": v.name,
            "parent": v.parent.name if v.parent else "—",
            "accuracy": fmt_pct(m.get("preference_accuracy")),
            "kl": fmt_signed(m.get("kl_to_parent"), 2) if m.get("kl_to_parent") is not None else "—",
            "length": f"{length:.1f}" if length is not None else "—",
            "change": fmt_signed(change, 1) if change is not None else "",
            "distinct": fmt_signed(m.get("distinct_2"), 3).lstrip("+") if m.get("distinct_2") is not None else "—",
        })
    return rows


@login_required
@require_GET
def rounds_page(request, pk: int):
    project = project_for(request.user, pk, *READ_ROLES)
    context = {"project": project, "role": role_of(request.user, project), "tab": "rounds", **rounds_context(project)}
    return render(request, "evaluation/rounds.html", context)
