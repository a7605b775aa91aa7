"""Compute and store a project's annotator quality and agreement statistics.

The statistics live in the pure modules (:mod:`evaluation.stats.aggregation`,
:mod:`evaluation.stats.bias`, :mod:`evaluation.stats.agreement`, :mod:`evaluation.stats.ranking`);
:func:`recompute_quality` feeds them the project's judgments
(:func:`evaluation.selectors.load_judgments`) and writes what they return:

* one :class:`~evaluation.models.AnnotatorQuality` row per annotator with judgments
  (gold accuracy with its credible interval, Dawid–Skene accuracy, position and length bias,
  tie / both-bad rates, median seconds, flags and the *computed* weight), and
* the report's ``data`` (see :func:`recompute_quality`): agreement overall, per pool and
  between pools with bootstrap intervals, the pool-by-pool disagreement matrix, agreement over
  time, the label aggregation summary and per-round model win rates.

Runs synchronously; the Celery task (:mod:`evaluation.quality.tasks`) wraps it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import numpy as np
from django.db import transaction
from django.utils import timezone

from annotate.models import Comparison, Judgment, Membership, Project
from prefloop import jobs

from ..models import AnnotatorQuality, JobStatus, QualityReport
from ..selectors import JudgmentTable, load_judgments, pool_groups
from ..stats import agreement, bias, ranking
from ..stats.aggregation import aggregate, pool_disagreement, undecided_items
from ..stats.jsonsafe import clean_json
from ..stats.jsonsafe import finite_or_none as _num
from ..stats.judgments import GOLD_PRIOR, TIE, Judgments
from .scheduling import QUALITY_JOBS, ReportNotClaimed
from .thresholds import DEFAULTS, knob

Progress = Callable[[float, str], None]

DATA_VERSION = 1


@dataclass
class _Stepper:
    """Writes progress into the report row (and calls the caller's ``progress``)."""

    report: QualityReport
    callback: Progress | None = None

    def __call__(self, fraction: float, message: str) -> None:
        fraction = max(0.0, min(1.0, float(fraction)))
        jobs.fenced(self.report).update(progress=fraction, message=message)
        self.report.progress, self.report.message = fraction, message
        if self.callback is not None:
            self.callback(fraction, message)


def _order_known(table: JudgmentTable) -> np.ndarray:
    """Per worker: whether their known-order judgments show both display orders (position
    bias is identifiable).

    Judgments without a recorded display order (``a_on_left`` NULL: imported votes) do not
    count. For an annotator who only ever saw one order, "picks left" and "picks A" cannot be
    told apart (this also covers imports from before the order could be NULL, which stored
    A on the left for every vote).
    """
    n = table.n_workers
    known = table.a_left_known
    worker = table.worker[known]
    left = np.bincount(worker, weights=table.a_left[known].astype(np.float64), minlength=n)
    total = np.bincount(worker, minlength=n)
    return (left > 0) & (left < total)


# --------------------------------------------------------------------------- recompute


def recompute_quality(
    project: Project, report: QualityReport | None = None, progress: Progress | None = None
) -> QualityReport:
    """Compute every quality statistic of ``project`` and store it; returns the report.

    Writes the ``AnnotatorQuality`` rows and ``report.data``::

        {"version", "computed_at", "n_judgments", "n_items", "n_annotators", "n_gold_items",
         "settings": {...},
         "pools": [{"id", "name", "n_annotators", "n_judgments"}],
         "agreement": {"overall": summary, "per_pool": [{"pool", "name", **summary}],
                       "between_pools": {"labels", "raw_agreement", "low", "high", "n_pairs"}},
         "pool_matrix": {"labels", "disagreement", "tv_distance", "n_shared"},
         "over_time": {"unit": "week"|"items", "points": [{"label", "start", "end", "n_items",
                       "raw_agreement": {...}, "krippendorff_alpha": {...}}]},
         "aggregation": {"method", "label_counts": {"a", "b", "tie", "undecided"}, "mean_confidence",
                         "iterations", "converged"},
         "annotators": {user_id: {"accuracy_source", "accuracy_used", "factors": {...},
                                  "position_low", "position_high", "length_low", "length_high"}},
         "rounds": [{"round", "n_comparisons", "models": [{"name", "win_rate", "low", "high",
                     "strength", "strength_low", "strength_high", "n"}]}]}

    where a summary is :func:`evaluation.stats.agreement.agreement_summary`'s dict (each statistic
    ``{"value", "low", "high"}``). Statistics are over all judgments, excluded annotators'
    included, except agreement, which leaves excluded annotators out (their judgments do not
    reach exports either). Runs synchronously; the Celery task wraps it.

    The report is a background job (:mod:`prefloop.jobs`): without ``report`` a new one is
    created and claimed here; a given ``report`` is claimed unless this process already holds it
    (:class:`ReportNotClaimed` when another live worker does, or it is finished). A heartbeat runs
    while it computes, every write is fenced to the claim, and an error marks it failed (and
    propagates).
    """
    if report is None:
        now = timezone.now()
        report = QualityReport.objects.create(project=project, status=JobStatus.QUEUED, heartbeat_at=now)
    if not (report.status == JobStatus.RUNNING and report.worker == jobs.worker_id()):
        claimed = jobs.claim(QUALITY_JOBS, report.pk)
        if claimed is None:
            report.refresh_from_db()
            raise ReportNotClaimed(report.pk, report.status)
        report = claimed
    try:
        with jobs.Heartbeat(report):
            return _compute(project, report, progress)
    except Exception as exc:
        jobs.finish(report, status=JobStatus.FAILED, message=f"{type(exc).__name__}: {exc}"[:2000],
                    finished_at=timezone.now())
        raise


def _compute(project: Project, report: QualityReport, progress: Progress | None) -> QualityReport:
    """:func:`recompute_quality` for a claimed report."""
    step = _Stepper(report, progress)
    step(0.02, "Loading judgments")
    table = load_judgments(project)
    pool_index, pools = pool_groups(project, table)
    excluded_ids = set(
        Membership.objects.filter(project=project, excluded=True).values_list("user_id", flat=True)
    )
    excluded = np.array([int(u) in excluded_ids for u in table.annotator_ids], dtype=bool)

    data: dict[str, Any] = {
        "version": DATA_VERSION,
        "n_judgments": len(table),
        "n_items": table.n_items,
        "n_annotators": table.n_workers,
        "n_gold_items": int((table.gold >= 0).sum()),
        "settings": {name.removeprefix("PREFLOOP_QUALITY_").lower(): knob(name) for name in DEFAULTS}
        | {"gold_prior": list(GOLD_PRIOR)},
        "pools": pools,
    }
    if len(table):
        j = table.to_judgments(pool_index)
        step(0.1, "Aggregating labels (Dawid–Skene)")
        consensus = aggregate(j, "dawid_skene")

        step(0.25, "Estimating annotator reliability and bias")
        rows, per_annotator = _annotator_stats(table, j, consensus, excluded)
        data["annotators"] = per_annotator
        undecided = undecided_items(j, _effective_worker_weights(project, table, rows))
        data["aggregation"] = _aggregation_summary(consensus, undecided)

        step(0.4, "Computing agreement")
        included = j.subset(~excluded[j.worker]) if excluded.any() else j
        data["agreement"] = _agreement(included, pools)
        data["pool_matrix"] = _pool_matrix(included, pools, data["agreement"].get("between_pools"))

        step(0.65, "Agreement over time")
        data["over_time"] = _over_time(project, table, included)

        step(0.85, "Model win rates per round")
        data["rounds"] = _rounds(table, consensus, undecided)
    else:
        rows = []

    step(0.95, "Saving")
    now = timezone.now()
    data["computed_at"] = now.isoformat()
    with transaction.atomic():
        if not jobs.fenced(report).select_for_update().exists():  # presumed lost and taken over
            report.refresh_from_db()
            raise ReportNotClaimed(report.pk, report.status)
        _store_rows(project, rows)
        report.data = clean_json(data)
        report.n_judgments = len(table)
        report.status = JobStatus.SUCCEEDED
        report.progress = 1.0
        report.message = ""
        report.finished_at = now
        report.save(update_fields=["data", "n_judgments", "status", "progress", "message", "finished_at"])
    if progress is not None:
        progress(1.0, "Done")
    return report


def _effective_worker_weights(project: Project, table: JudgmentTable, rows: list[dict]) -> np.ndarray:
    """Per worker of ``table``: the effective weight (exclusion, override, else the weight just
    computed), as the export will use it."""
    from .services import effective_weight

    members = {m.user_id: m for m in Membership.objects.filter(project=project)}
    computed = {row["annotator_id"]: row["weight"] for row in rows}
    return np.array(
        [
            effective_weight(members.get(int(u)), SimpleNamespace(weight=computed.get(int(u), 1.0)))
            for u in table.annotator_ids
        ],
        dtype=np.float64,
    )


def _aggregation_summary(consensus, undecided: np.ndarray) -> dict:
    """Label counts of the judged comparisons; an undecided one (every voter's effective weight
    is 0) is counted as ``undecided``, never as a, b or tie."""
    judged = consensus.n_judgments > 0
    decided = judged & ~undecided
    labels = consensus.label[decided]
    return {
        "method": consensus.method,
        "label_counts": {
            "a": int((labels == 0).sum()),
            "b": int((labels == 1).sum()),
            "tie": int((labels == TIE).sum()),
            "undecided": int((judged & undecided).sum()),
        },
        "mean_confidence": float(consensus.confidence[decided].mean()) if decided.any() else None,
        "iterations": int(consensus.iterations),
        "converged": bool(consensus.converged),
    }


def _annotator_stats(table: JudgmentTable, j: Judgments, consensus, excluded: np.ndarray):
    """Per-worker AnnotatorQuality field values and the report's per-annotator extras."""
    W = table.n_workers
    level = 0.95
    min_gold = int(knob("PREFLOOP_QUALITY_MIN_GOLD"))
    min_accuracy = float(knob("PREFLOOP_QUALITY_MIN_ACCURACY"))
    min_weight = float(knob("PREFLOOP_QUALITY_MIN_WEIGHT"))

    gold = bias.gold_accuracy(j, level=level)
    prop = bias.propensities(j, level)
    spd = bias.speed(j)
    order_known = _order_known(table)
    pos = bias.position_bias(j, consensus, level)
    lb = bias.length_bias(j, consensus, level)
    # The computed weight leaves exclusion and overrides to effective_weight().
    weights = bias.annotator_weights(
        j, consensus=consensus, ds_accuracy=consensus.accuracy, min_gold=min_gold, level=level
    )
    if not order_known.all():
        # No position factor where position bias is not identifiable: no known-order judgment
        # (position_bias already gives those n/a and factor 1) or only one order seen.
        blind = bias.annotator_weights(
            table.to_judgments(j.pool, a_left=False),
            consensus=consensus,
            ds_accuracy=consensus.accuracy,
            min_gold=min_gold,
            level=level,
        )
        for name in ("weight", "position_factor"):
            getattr(weights, name)[~order_known] = getattr(blind, name)[~order_known]

    n_judgments = np.bincount(table.worker, minlength=W)
    rows, extras = [], {}
    for w in range(W):
        user_id = int(table.annotator_ids[w])
        flags = []
        source = str(weights.accuracy_source[w])
        if source != "prior" and weights.accuracy[w] < min_accuracy:
            flags.append("low_accuracy")
        if weights.weight[w] < min_weight:
            flags.append("low_weight")
        if order_known[w] and bool(pos.significant[w]):
            flags.append("position_bias")
        if bool(lb.significant[w]):
            flags.append("length_bias")
        if bool(spd.too_fast[w]):
            flags.append("too_fast")
        if (
            n_judgments[w] >= 10
            and _num(prop.tie_low[w]) is not None
            and prop.tie_low[w] > max(0.5, 2 * prop.project_tie_rate)
        ):
            flags.append("tie_heavy")
        if excluded[w]:
            flags.append("excluded")
        has_gold = gold.n_gold[w] > 0
        rows.append(
            {
                "annotator_id": user_id,
                "n_judgments": int(n_judgments[w]),
                "n_gold": int(gold.n_gold[w]),
                "gold_correct": int(gold.n_correct[w]),
                "gold_accuracy": _num(gold.mean[w]) if has_gold else None,
                "gold_accuracy_low": _num(gold.low[w]) if has_gold else None,
                "gold_accuracy_high": _num(gold.high[w]) if has_gold else None,
                "estimated_accuracy": _num(consensus.accuracy[w]),
                "position_bias": _num(pos.bias[w]) if order_known[w] else None,
                "position_bias_se": _num(pos.se[w]) if order_known[w] else None,
                "length_bias": _num(lb.bias[w]),
                "length_bias_se": _num(lb.se[w]),
                "tie_rate": _num(prop.tie_rate[w]),
                "both_bad_rate": _num(prop.both_bad_rate[w]) if prop.both_bad_rate is not None else None,
                "median_seconds": _num(spd.median_seconds[w]),
                "flags": flags,
                "weight": float(np.clip(weights.weight[w], 0.0, 1.0)),
            }
        )
        extras[str(user_id)] = {
            "accuracy_source": source,
            "accuracy_used": _num(weights.accuracy[w]),
            "factors": {
                "base": _num(weights.base[w]),
                "position": _num(weights.position_factor[w]),
                "length": _num(weights.length_factor[w]),
                "speed": _num(weights.speed_factor[w]),
            },
            "order_known": bool(order_known[w]),
            "position_low": _num(pos.low[w]) if order_known[w] else None,
            "position_high": _num(pos.high[w]) if order_known[w] else None,
            "position_relative": _num(pos.relative[w]) if order_known[w] else None,
            "length_low": _num(lb.low[w]),
            "length_high": _num(lb.high[w]),
            "length_n": int(lb.n[w]),
            "tie_low": _num(prop.tie_low[w]),
            "tie_high": _num(prop.tie_high[w]),
        }
    return rows, extras


def _store_rows(project: Project, rows: list[dict]) -> None:
    fields = [f for f in rows[0] if f != "annotator_id"] if rows else []
    objs = [AnnotatorQuality(project=project, **row) for row in rows]
    if objs:
        AnnotatorQuality.objects.bulk_create(
            objs,
            update_conflicts=True,
            unique_fields=["project", "annotator"],
            update_fields=fields + ["computed_at"],
            batch_size=500,
        )


def _agreement(j: Judgments, pools: list[dict]) -> dict:
    n_boot = int(knob("PREFLOOP_QUALITY_BOOTSTRAP"))
    report = agreement.agreement_report(j, j.pool, n_boot=n_boot)
    per_pool = []
    for g, summary in sorted(report.get("per_group", {}).items()):
        per_pool.append({"pool": pools[g]["id"], "name": pools[g]["name"], **summary})
    out = {"overall": report["overall"], "per_pool": per_pool}
    between = report.get("between_groups")
    if between is not None:
        out["between_pools"] = {"labels": [p["name"] for p in pools], **between}
    return out


def _pool_matrix(j: Judgments, pools: list[dict], between: dict | None) -> dict:
    """Pool-by-pool disagreement: 1 − raw agreement between a vote from each pool (diagonal:
    within the pool), and the total-variation distance of the pools' vote shares."""
    labels = [p["name"] for p in pools]
    out: dict[str, Any] = {"labels": labels}
    if between is not None:
        out["disagreement"] = 1.0 - np.asarray(between["raw_agreement"], dtype=np.float64)
        out["n_pairs"] = between["n_pairs"]
    if len(pools) >= 2 and j.n:
        pd = pool_disagreement(j)
        out["tv_distance"] = pd.matrix
        out["n_shared"] = pd.n_shared
        per_item = pd.per_item[np.isfinite(pd.per_item)]
        out["mean_item_tv"] = float(per_item.mean()) if per_item.size else None
        out["n_items_multi_pool"] = int(per_item.size)
    return out


def _item_completion(project: Project, table: JudgmentTable) -> tuple[np.ndarray, np.ndarray]:
    """Per item: the time (epoch seconds) and rank (by judgment id) of its last judgment."""
    rows = list(Judgment.objects.filter(project=project).order_by("pk").values_list("pk", "created_at"))
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    ts = np.fromiter((r[1].timestamp() for r in rows), dtype=np.float64, count=len(rows))
    pos = np.searchsorted(ids, table.judgment_ids)
    t = ts[np.minimum(pos, len(ts) - 1)]
    last_t = np.full(table.n_items, -np.inf)
    np.maximum.at(last_t, table.item, t)
    last_id = np.full(table.n_items, -1, dtype=np.int64)
    np.maximum.at(last_id, table.item, table.judgment_ids)
    return last_t, last_id


def _over_time(project: Project, table: JudgmentTable, j: Judgments) -> dict:
    """Agreement of the items completed in each period (by the time of their last judgment).

    Weekly when the judgments span at least three weeks, else up to 8 equal-count slices of
    the items in completion order (imports and short projects).
    """
    n_boot = int(knob("PREFLOOP_QUALITY_BOOTSTRAP_TIME"))
    votes = np.bincount(j.item, minlength=j.n_items)
    last_t, last_id = _item_completion(project, table)
    multi = np.flatnonzero(votes >= 2)
    if multi.size == 0:
        return {"unit": "items", "points": []}
    span = last_t[multi].max() - last_t[multi].min()
    groups: list[tuple[str, str | None, str | None, np.ndarray]] = []
    if span >= 21 * 86400:
        unit = "week"
        days = np.floor(last_t[multi] / 86400).astype(np.int64)
        # Weeks start on Monday; 1970-01-01 was a Thursday (day 0), so Monday is day -3.
        week = (days + 3) // 7
        for wk in np.unique(week):
            start = datetime.fromtimestamp(float(wk * 7 - 3) * 86400, tz=UTC)
            end = start + timedelta(days=7)
            groups.append((start.strftime("%d %b %Y"), start.isoformat(), end.isoformat(), multi[week == wk]))
    else:
        unit = "items"
        order = multi[np.argsort(last_id[multi], kind="stable")]
        n_bins = int(min(8, max(1, order.size // 20)))
        lo = 0
        for chunk in np.array_split(order, n_bins):
            groups.append((f"{lo + 1}–{lo + len(chunk)}", None, None, chunk))
            lo += len(chunk)
    points = []
    for label, start, end, items in groups:
        mask = np.zeros(j.n_items, dtype=bool)
        mask[items] = True
        sub = j.subset(mask[j.item])
        summary = agreement.agreement_summary(sub, n_boot=n_boot)
        points.append(
            {
                "label": label,
                "start": start,
                "end": end,
                "n_items": int(items.size),
                "n_judgments": int(sub.n),
                "raw_agreement": summary["raw_agreement"],
                "krippendorff_alpha": summary["krippendorff_alpha"],
            }
        )
    return {"unit": unit, "points": points}


def _rounds(table: JudgmentTable, consensus, undecided: np.ndarray) -> list[dict]:
    """Per round: each model's mean score against the others (tie = ½) and Bradley–Terry strength,
    over the decided comparisons."""
    if not table.n_items:
        return []
    info = {
        pk: (rnd, ma or "", mb or "")
        for pk, rnd, ma, mb in Comparison.objects.filter(pk__in=table.comparison_ids.tolist()).values_list(
            "pk", "round", "response_a__model_name", "response_b__model_name"
        )
    }
    ids = table.comparison_ids.tolist()
    rnd = np.array([info[c][0] for c in ids], dtype=np.int64)
    ma = np.array([info[c][1] for c in ids], dtype=object)
    mb = np.array([info[c][2] for c in ids], dtype=object)
    score = np.clip(consensus.p_a + consensus.p_tie / 2, 0.0, 1.0)
    usable = (consensus.n_judgments > 0) & ~undecided & (ma != "") & (mb != "") & (ma != mb)
    out = []
    for r in np.unique(rnd[usable]):
        sel = usable & (rnd == r)
        names = sorted(set(ma[sel].tolist()) | set(mb[sel].tolist()))
        index = {n: i for i, n in enumerate(names)}
        a = np.array([index[n] for n in ma[sel]], dtype=np.int64)
        b = np.array([index[n] for n in mb[sel]], dtype=np.int64)
        s = score[sel]
        bt = ranking.bradley_terry(
            a, b, s, n_models=len(names), n_boot=int(knob("PREFLOOP_QUALITY_BOOTSTRAP_BT"))
        )
        models = []
        for i, name in enumerate(names):
            mine = np.concatenate([s[a == i], 1 - s[b == i]])
            n = mine.size
            rate = float(mine.mean()) if n else float("nan")
            se = float(mine.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
            models.append(
                {
                    "name": name,
                    "n": int(n),
                    "win_rate": rate,
                    "low": max(0.0, rate - 1.96 * se) if math.isfinite(se) else None,
                    "high": min(1.0, rate + 1.96 * se) if math.isfinite(se) else None,
                    "strength": bt.strength[i],
                    "strength_low": bt.low[i],
                    "strength_high": bt.high[i],
                    "elo": bt.elo[i],
                }
            )
        models.sort(key=lambda m: -(m["win_rate"] if math.isfinite(m["win_rate"]) else -1))
        out.append({"round": int(r), "n_comparisons": int(sel.sum()), "models": models})
    return out
