"""Quality pages: the project quality dashboard, its admin actions, and an annotator's own accuracy.

Each view checks the role (:func:`annotate.roles.project_for`), calls one service or
selector of :mod:`evaluation.quality`, and renders. HTMX requests get partials: the
annotator table (sorting, paging), one table row (admin actions), the progress box (polling).
"""

from __future__ import annotations

import math

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from annotate.models import Role
from annotate.roles import READ_ROLES, project_for, role_of

from ..models import JobStatus, QualityReport
from . import plots, selectors, services, thresholds
from .forms import WeightOverrideForm
from .scheduling import check_report, schedule_recompute

ADMIN_ONLY = (Role.ADMIN,)
#: Annotators per page of the dashboard's table.
ANNOTATORS_PER_PAGE = 50
ALL_ROLES = (Role.ADMIN, Role.RESEARCHER, Role.ANNOTATOR)
#: Up to this many annotators with gold accuracy, the gold chart draws each one (dot and
#: interval); above, a histogram of their accuracies.
GOLD_CHART_MAX_POINTS = 1000

COLUMNS = (
    # (sort key, header, numeric, tooltip)
    ("annotator", "Annotator", False, ""),
    ("pool", "Pool", False, ""),
    ("n_judgments", "Judgments", True, "Judgments by this annotator in the project"),
    (
        "gold_accuracy",
        "Gold accuracy",
        True,
        "Beta-posterior mean of accuracy on gold items, with 95% credible interval",
    ),
    (
        "estimated_accuracy",
        "DS accuracy",
        True,
        "Accuracy estimated by Dawid–Skene from agreement with others",
    ),
    (
        "position_bias",
        "Position bias",
        True,
        "P(pick the left response) − ½, ± 95% interval; n/a when display order is unknown",
    ),
    (
        "length_bias",
        "Length bias",
        True,
        "How much more often they pick the longer response than the consensus does",
    ),
    ("tie_rate", "Tie rate", True, "Share of tie or both-bad judgments"),
    ("median_seconds", "Speed", True, "Median seconds per judgment"),
    (
        "weight",
        "Weight",
        True,
        "Effective weight in exports and training (override, else computed; 0 if excluded)",
    ),
    ("flags", "Flags", False, ""),
)


# --------------------------------------------------------------------------- formatting


def _ok(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def fmt(v, digits: int = 2) -> str:
    return f"{v:.{digits}f}" if _ok(v) else "—"


def fmt_pct(v, digits: int = 0) -> str:
    return f"{v * 100:.{digits}f}%" if _ok(v) else "—"


def fmt_signed(v, digits: int = 2) -> str:
    return f"{v:+.{digits}f}" if _ok(v) else "—"


def stat_view(stat: dict | None, digits: int = 2) -> dict:
    """``{"value", "low", "high"}`` → display strings."""
    stat = stat or {}
    value, low, high = stat.get("value"), stat.get("low"), stat.get("high")
    return {
        "value": fmt(value, digits),
        "interval": f"[{fmt(low, digits)}, {fmt(high, digits)}]" if _ok(low) and _ok(high) else "",
        "raw": value,
    }


def _row_view(row: selectors.AnnotatorRow) -> dict:
    q, x = row.quality, row.extras or {}
    cells: dict = {
        "gold": "—",
        "gold_ci": "",
        "gold_n": "",
        "ds": "—",
        "pos": "—",
        "pos_ci": "",
        "len": "—",
        "len_ci": "",
        "tie": "—",
        "speed": "—",
    }
    if q is not None:
        if q.gold_accuracy is not None:
            cells["gold"] = fmt_pct(q.gold_accuracy)
            cells["gold_ci"] = f"{fmt_pct(q.gold_accuracy_low)}–{fmt_pct(q.gold_accuracy_high)}"
            cells["gold_n"] = f"{q.gold_correct}/{q.n_gold}"
        cells["ds"] = fmt_pct(q.estimated_accuracy)
        if q.position_bias is not None:
            cells["pos"] = fmt_signed(q.position_bias)
            if _ok(x.get("position_low")) and _ok(x.get("position_high")):
                cells["pos_ci"] = f"[{fmt_signed(x['position_low'])}, {fmt_signed(x['position_high'])}]"
        else:
            cells["pos"] = "n/a"
        if q.length_bias is not None:
            cells["len"] = fmt_signed(q.length_bias)
            if _ok(x.get("length_low")) and _ok(x.get("length_high")):
                cells["len_ci"] = f"[{fmt_signed(x['length_low'])}, {fmt_signed(x['length_high'])}]"
        cells["tie"] = fmt_pct(q.tie_rate)
        cells["speed"] = f"{q.median_seconds:.0f} s" if _ok(q.median_seconds) else "—"
    factors = x.get("factors") or {}
    why = []
    if q is not None:
        why.append(f"computed {q.weight:.2f}")
        if x.get("accuracy_source"):
            why.append(
                f"accuracy {fmt(x.get('accuracy_used'))} from {x['accuracy_source'].replace('_', '–')}"
            )
        for name in ("base", "position", "length", "speed"):
            if _ok(factors.get(name)):
                why.append(f"{name} ×{factors[name]:.2f}")
    if row.override is not None:
        why.append(f"admin override {row.override:.2f}")
    if row.excluded:
        why.append("excluded → 0")
    return {
        "row": row,
        "cells": cells,
        "weight": f"{row.weight:.2f}",
        "weight_raw": row.weight,
        "computed_weight": f"{q.weight:.2f}" if q is not None else "—",
        "weight_why": "; ".join(why),
    }


# --------------------------------------------------------------------------- charts


def _charts(report: QualityReport | None, summary: selectors.TableSummary) -> dict:
    data = report.data if report is not None else {}
    over = (data.get("over_time") or {}).get("points") or []
    labels = [p["label"] for p in over]

    def series(key, name):
        return {
            "name": name,
            "values": [(p.get(key) or {}).get("value") for p in over],
            "low": [(p.get(key) or {}).get("low") for p in over],
            "high": [(p.get(key) or {}).get("high") for p in over],
        }

    unit = (data.get("over_time") or {}).get("unit")
    charts = {
        "over_time": plots.line_chart(
            labels,
            [series("raw_agreement", "Raw agreement"), series("krippendorff_alpha", "Krippendorff's α")],
            title="Agreement over time",
            y_min=0.0,
            y_max=1.0,
            empty_message="Agreement over time appears once items have two or more judgments",
        ),
        "over_time_unit": "week of completion" if unit == "week" else "items, in order of completion",
    }
    if over:
        raw, alpha = series("raw_agreement", "Raw"), series("krippendorff_alpha", "α")
        charts["over_time_table"] = plots.data_table(
            "Agreement over time",
            ["Period", "Raw agreement", "low", "high", "Krippendorff's α", "low", "high"],
            [
                (lab, raw["values"][i], raw["low"][i], raw["high"][i], alpha["values"][i], alpha["low"][i], alpha["high"][i])
                for i, lab in enumerate(labels)
            ],
        )
    matrix = data.get("pool_matrix") or {}
    pool_labels = matrix.get("labels") or []
    if len(pool_labels) >= 2 and matrix.get("disagreement") is not None:
        charts["heatmap"] = plots.heatmap(
            pool_labels,
            matrix["disagreement"],
            counts=matrix.get("n_pairs"),
            title="Disagreement between pools (1 − raw agreement of vote pairs)",
        )
        charts["heatmap_table"] = plots.data_table(
            "Disagreement between pools", ["Pool", *pool_labels],
            [(name, *row) for name, row in zip(pool_labels, matrix["disagreement"])],
        )
    else:
        charts["heatmap"] = ""
    min_acc = (data.get("settings") or {}).get(
        "min_accuracy", thresholds.knob("PREFLOOP_QUALITY_MIN_ACCURACY")
    )
    if summary.gold_points:
        charts["gold"] = plots.interval_plot(
            summary.gold_points, title="Gold accuracy with 95% credible interval", threshold=min_acc
        )
        charts["gold_table"] = plots.data_table(
            "Gold accuracy", ["Annotator", "Accuracy", "low", "high"],
            [(p.get("label"), p.get("value"), p.get("low"), p.get("high")) for p in summary.gold_points],
        )
        charts["gold_binned"] = False
    elif summary.gold_bins:
        width = summary.gold_bins[0]["high"] - summary.gold_bins[0]["low"]
        charts["gold_bin_width"] = f"{width:g}"
        charts["gold_max_points"] = f"{GOLD_CHART_MAX_POINTS:,}"
        charts["gold"] = plots.histogram(
            summary.gold_bins,
            title=f"Gold accuracy of {summary.n_gold:,} annotators: number per bin of {width:g}",
            x_label="Gold accuracy (posterior mean)",
            y_label="Annotators",
            threshold=min_acc,
        )
        charts["gold_binned"] = True
        charts["gold_table"] = plots.data_table(
            "Gold accuracy per bin", ["Bin", "Annotators", "below threshold"],
            [(f"{b['low']:g}–{b['high']:g}", b["count"], b.get("flagged") or 0) for b in summary.gold_bins],
        )
    else:
        charts["gold"] = ""
    rounds = []
    for rnd in sorted(data.get("rounds") or [], key=lambda r: -r["round"]):
        models = rnd["models"]
        rounds.append(
            {
                "round": rnd["round"],
                "n_comparisons": rnd["n_comparisons"],
                "models": [
                    {
                        **m,
                        "win_rate_str": fmt_pct(m.get("win_rate")),
                        "ci": f"{fmt_pct(m.get('low'))}–{fmt_pct(m.get('high'))}"
                        if _ok(m.get("low"))
                        else "",
                        "elo_str": f"{m['elo']:+.0f}" if _ok(m.get("elo")) else "—",
                    }
                    for m in models
                ],
                "svg": plots.bar_chart(
                    [m["name"] for m in models],
                    [m.get("win_rate") for m in models],
                    low=[m.get("low") for m in models],
                    high=[m.get("high") for m in models],
                    title=f"Round {rnd['round']}: win rate (tie = ½)",
                ),
            }
        )
    charts["rounds"] = rounds
    return charts


def _agreement_view(data: dict) -> dict:
    ag = data.get("agreement") or {}
    overall = ag.get("overall") or {}
    summary = {
        "raw": stat_view(overall.get("raw_agreement")),
        "raw_no_ties": stat_view(overall.get("raw_agreement_no_ties")),
        "alpha": stat_view(overall.get("krippendorff_alpha")),
        "fleiss": stat_view(overall.get("fleiss_kappa")),
        "cohen": stat_view(overall.get("cohen_kappa")),
        "n_items": overall.get("n_items"),
        "n_workers": overall.get("n_workers"),
    }
    per_pool = [
        {
            "name": p["name"],
            "n_items": p.get("n_items"),
            "n_workers": p.get("n_workers"),
            "n_judgments": p.get("n_judgments"),
            "raw": stat_view(p.get("raw_agreement")),
            "alpha": stat_view(p.get("krippendorff_alpha")),
            "cohen": stat_view(p.get("cohen_kappa")),
        }
        for p in ag.get("per_pool") or []
    ]
    between = ag.get("between_pools") or {}
    pairs = []
    labels = between.get("labels") or []
    for i in range(len(labels)):
        for k in range(i + 1, len(labels)):
            value = between["raw_agreement"][i][k]
            if value is None:
                continue
            pairs.append(
                {
                    "a": labels[i],
                    "b": labels[k],
                    "raw": stat_view(
                        {"value": value, "low": between["low"][i][k], "high": between["high"][i][k]}
                    ),
                    "n_pairs": between["n_pairs"][i][k],
                }
            )
    return {"summary": summary, "per_pool": per_pool, "between": pairs}


# --------------------------------------------------------------------------- dashboard


def _sort_params(request) -> tuple[str, bool]:
    sort = request.GET.get("sort", "annotator")
    if sort not in selectors.SORT_KEYS:
        sort = "annotator"
    descending = request.GET.get("dir", "desc" if sort in ("flags",) else "asc") == "desc"
    return sort, descending


def _table_context(request, project, role, report) -> dict:
    """The annotator table: sorted and paged in the database, only this page's rows built
    (``page``: Django's ``get_page``, so a bad or out-of-range number gives the first or last
    page)."""
    sort, descending = _sort_params(request)
    table = selectors.annotator_table(project, sort=sort, descending=descending)
    page = Paginator(table, ANNOTATORS_PER_PAGE).get_page(request.GET.get("page"))
    headers = []
    for key, label, numeric, tip in COLUMNS:
        active = key == sort
        next_dir = "asc" if active and descending else ("desc" if active or numeric else "asc")
        headers.append(
            {
                "key": key,
                "label": label,
                "numeric": numeric,
                "tip": tip,
                "active": active,
                "descending": descending,
                "next_dir": next_dir,
            }
        )
    return {
        "project": project,
        "role": role,
        "is_admin": role == Role.ADMIN,
        "page": page,
        "row_views": [_row_view(r) for r in selectors.annotator_rows_for(project, report, page.object_list)],
        "headers": headers,
        "sort": sort,
        "dir": "desc" if descending else "asc",
    }


@login_required
@require_GET
def quality_dashboard(request, pk: int):
    project = project_for(request.user, pk, *READ_ROLES)
    role = role_of(request.user, project)
    report = selectors.dashboard_report(project)
    table = _table_context(request, project, role, report)
    if request.htmx and request.htmx.target == "annotator-table":
        return render(request, "evaluation/quality_table.html", table)
    data = report.data if report is not None else {}
    summary = selectors.table_summary(project, max_points=GOLD_CHART_MAX_POINTS)
    context = {
        **table,
        "n_below": summary.n_below,
        "tab": "quality",
        "report": report,
        "pending": selectors.pending_report(project),
        "data": data,
        "agreement": _agreement_view(data),
        "charts": _charts(report, summary),
        "aggregation": data.get("aggregation") or {},
        "thresholds": data.get("settings")
        or {
            name.removeprefix("PREFLOOP_QUALITY_").lower(): thresholds.knob(name)
            for name in thresholds.DEFAULTS
        },
        "flag_labels": thresholds.FLAG_LABELS,
        "override_form": WeightOverrideForm(),
    }
    return render(request, "evaluation/quality.html", context)


@login_required
@require_POST
def quality_recompute(request, pk: int):
    project = project_for(request.user, pk, *READ_ROLES)
    report = schedule_recompute(project, countdown=0)
    if request.htmx:
        return render(request, "evaluation/quality_progress.html", {"project": project, "pending": report})
    messages.info(request, "Recomputation queued.")
    return redirect("quality_dashboard", pk=project.pk)


@login_required
@require_GET
def quality_progress(request, pk: int, report_id: int):
    project = project_for(request.user, pk, *READ_ROLES)
    report = get_object_or_404(QualityReport, pk=report_id, project=project)
    check_report(report)  # a report whose worker died: re-queued or failed, never "running"
    if report.status != JobStatus.SUCCEEDED:
        # A newer report (queued after this one, or already done) is what the page should show.
        report = selectors.newer_report(report) or report
    response = render(request, "evaluation/quality_progress.html", {"project": project, "pending": report})
    if report.status == JobStatus.SUCCEEDED and request.htmx:
        # Reload the dashboard so every figure shows the new computation.
        response["HX-Refresh"] = "true"
    return response


# --------------------------------------------------------------------------- admin actions


def _after_action(request, project, user_id: int, *, error: str = "", ok: str = ""):
    """HTMX: the updated table row; otherwise back to the dashboard with a message."""
    if request.htmx:
        role = role_of(request.user, project)
        report = selectors.dashboard_report(project)
        row = selectors.annotator_row(project, report, user_id)
        if row is None:
            raise Http404
        return render(
            request,
            "evaluation/quality_row.html",
            {
                "project": project,
                "role": role,
                "is_admin": role == Role.ADMIN,
                "rv": _row_view(row),
                "row_error": error,
                "row_ok": ok,
            },
        )
    if error:
        messages.error(request, error)
    elif ok:
        messages.success(request, ok)
    return redirect(reverse("quality_dashboard", kwargs={"pk": project.pk}) + f"#annotator-{user_id}")


def _set_excluded(request, pk: int, user_id: int, excluded: bool):
    project = project_for(request.user, pk, *ADMIN_ONLY)
    try:
        m = services.set_excluded(project, user_id, excluded)
    except services.NotAMember as exc:
        raise Http404(str(exc)) from None
    name = m.user.get_username()
    msg = (
        f"{name} is excluded: no new items are served to them; their judgments are kept and weigh 0."
        if excluded
        else f"{name} is included again."
    )
    return _after_action(request, project, user_id, ok=msg)


@login_required
@require_POST
def quality_exclude(request, pk: int, user_id: int):
    return _set_excluded(request, pk, user_id, True)


@login_required
@require_POST
def quality_include(request, pk: int, user_id: int):
    return _set_excluded(request, pk, user_id, False)


@login_required
@require_POST
def quality_override(request, pk: int, user_id: int):
    project = project_for(request.user, pk, *ADMIN_ONLY)
    form = WeightOverrideForm(request.POST)
    if not form.is_valid():
        error = "; ".join(e for errors in form.errors.values() for e in errors)
        # Nothing is saved; the message says why.
        return _after_action(request, project, user_id, error=f"Weight not saved: {error}")
    try:
        m = services.set_weight_override(project, user_id, form.cleaned_data["weight"])
    except services.NotAMember as exc:
        raise Http404(str(exc)) from None
    return _after_action(
        request, project, user_id, ok=f"{m.user.get_username()}'s weight is set to {m.weight_override:.2f}."
    )


@login_required
@require_POST
def quality_clear_override(request, pk: int, user_id: int):
    project = project_for(request.user, pk, *ADMIN_ONLY)
    try:
        m = services.set_weight_override(project, user_id, None)
    except services.NotAMember as exc:
        raise Http404(str(exc)) from None
    return _after_action(
        request,
        project,
        user_id,
        ok=f"{m.user.get_username()}'s weight override is cleared; the computed weight applies.",
    )


# --------------------------------------------------------------------------- annotator's own


@login_required
@require_GET
def my_quality(request, pk: int):
    project = project_for(request.user, pk, *ALL_ROLES)
    role = role_of(request.user, project)
    own = selectors.annotator_own_accuracy(request.user, project)
    context = {
        "project": project,
        "role": role,
        "tab": "my_quality",
        "own": own,
        "accuracy": fmt_pct(own.accuracy),
        "low": fmt_pct(own.low),
        "high": fmt_pct(own.high),
    }
    if request.htmx:
        return render(request, "evaluation/quality_mine_card.html", context)
    return render(request, "evaluation/quality_mine.html", context)
