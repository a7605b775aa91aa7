"""Quality services: compute and store annotator quality, admin weight actions, own accuracy.

The statistics live in the pure modules (:mod:`evaluation.aggregation`, :mod:`evaluation.bias`,
:mod:`evaluation.agreement`, :mod:`evaluation.ranking`); this module feeds them the project's
judgments (:func:`evaluation.selectors.load_judgments`) and writes what they return:

* one :class:`~evaluation.models.AnnotatorQuality` row per annotator with judgments
  (gold accuracy with its credible interval, Dawid–Skene accuracy, position and length bias,
  tie / both-bad rates, median seconds, flags and the *computed* weight), and
* the report's ``data`` (see :func:`recompute_quality`): agreement overall, per pool and
  between pools with bootstrap intervals, the pool-by-pool disagreement matrix, agreement over
  time, the label aggregation summary and per-round model win rates.

The weight the export and training use is :func:`effective_weight`: the computed weight
(:func:`evaluation.bias.annotator_weights`), replaced by an admin's override when set, and 0
for an excluded annotator. ``docs/quality.md`` writes the whole rule down.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.db.models import (
    BooleanField,
    Case,
    Count,
    Exists,
    ExpressionWrapper,
    F,
    FilteredRelation,
    FloatField,
    Func,
    IntegerField,
    JSONField,
    OuterRef,
    Q,
    TextField,
    Value,
    When,
)
from django.db.models.functions import Abs, Cast, Coalesce, Floor, Greatest, Least, Lower
from django.utils import timezone

from annotate.models import Comparison, GoldAnswer, Judgment, Membership, Pool, Project, Role

from . import agreement, bias, ranking
from .aggregation import GOLD_PRIOR, TIE, Judgments, aggregate, pool_disagreement
from .models import AnnotatorQuality, JobStatus, QualityReport
from .selectors import JudgmentTable, load_judgments

Progress = Callable[[float, str], None]

DATA_VERSION = 1
NO_POOL = "(no pool)"

# Defaults of the knobs below; each can be set in Django settings.
DEFAULTS = {
    # An annotator whose accuracy (gold posterior mean, else Dawid–Skene) is below this is flagged.
    "PREFLOOP_QUALITY_MIN_ACCURACY": 0.7,
    # ... and one whose computed weight is below this.
    "PREFLOOP_QUALITY_MIN_WEIGHT": 0.3,
    # Bootstrap replicates for the agreement intervals (overall, per pool, between pools).
    "PREFLOOP_QUALITY_BOOTSTRAP": 500,
    # Bootstrap replicates per point of the agreement-over-time series.
    "PREFLOOP_QUALITY_BOOTSTRAP_TIME": 200,
    # Bootstrap replicates for the Bradley–Terry strength intervals (per round).
    "PREFLOOP_QUALITY_BOOTSTRAP_BT": 100,
    # Gold judgments an annotator needs before their gold accuracy replaces the Dawid–Skene one.
    "PREFLOOP_QUALITY_MIN_GOLD": 10,
}

FLAG_LABELS = {
    "low_accuracy": "Low accuracy",
    "low_weight": "Low weight",
    "position_bias": "Position bias",
    "length_bias": "Length bias",
    "too_fast": "Too fast",
    "tie_heavy": "Many ties",
    "excluded": "Excluded",
}
FLAG_HELP = {
    "low_accuracy": "Accuracy (gold, else Dawid–Skene) below the threshold",
    "low_weight": "Computed weight below the threshold",
    "position_bias": "Picks the left (or right) response more than chance: the 95% interval excludes 0",
    "length_bias": "Picks the longer response more than the consensus does: the 95% interval excludes 0",
    "too_fast": "Median time per judgment implausibly short",
    "tie_heavy": "Far more ties than the project as a whole",
    "excluded": "Excluded by an admin: not served, weight 0, judgments kept",
}
#: Flags that make an annotator "below threshold" (highlighted on the dashboard).
BELOW_THRESHOLD_FLAGS = ("low_accuracy", "low_weight")


def knob(name: str):
    return getattr(settings, name, DEFAULTS[name])


# --------------------------------------------------------------------------- helpers


def _clean(value: Any) -> Any:
    """JSON-safe: numpy scalars and arrays to Python, NaN/inf to None."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    return value


def _num(value) -> float | None:
    """A finite float, or None."""
    if value is None:
        return None
    v = float(value)
    return v if math.isfinite(v) else None


@dataclass
class _Stepper:
    """Writes progress into the report row (and calls the caller's ``progress``)."""

    report: QualityReport
    callback: Progress | None = None

    def __call__(self, fraction: float, message: str) -> None:
        fraction = max(0.0, min(1.0, float(fraction)))
        QualityReport.objects.filter(pk=self.report.pk).update(progress=fraction, message=message)
        self.report.progress, self.report.message = fraction, message
        if self.callback is not None:
            self.callback(fraction, message)


def to_judgments(table: JudgmentTable, pool_index: np.ndarray, *, a_left: bool = True) -> Judgments:
    """The pure modules' :class:`Judgments` from the selector's table (display order unknown
    where ``table.a_left_known`` is false; none at all with ``a_left=False``)."""
    return Judgments(
        item=table.item,
        worker=table.worker,
        label=table.label,
        a_left=table.a_left if a_left else None,
        a_left_known=table.a_left_known if a_left else None,
        seconds=table.seconds,
        both_bad=table.both_bad,
        n_items=table.n_items,
        n_workers=table.n_workers,
        pool=pool_index,
        gold=table.gold,
        len_a=table.len_a.astype(np.float64),
        len_b=table.len_b.astype(np.float64),
    )


def _pool_groups(project: Project, table: JudgmentTable) -> tuple[np.ndarray, list[dict]]:
    """Dense pool index per worker (annotators without a pool share one group) and pool info."""
    names = dict(Pool.objects.filter(project=project).values_list("pk", "name"))
    pool_ids = sorted(
        {int(p) for p in table.worker_pool.tolist()}, key=lambda p: (p < 0, names.get(p, ""), p)
    )
    index_of = {p: i for i, p in enumerate(pool_ids)}
    pool_index = np.array([index_of[int(p)] for p in table.worker_pool], dtype=np.int64)
    info = []
    for p in pool_ids:
        workers = pool_index == index_of[p]
        info.append(
            {
                "id": p if p >= 0 else None,
                "name": names.get(p, NO_POOL) if p >= 0 else NO_POOL,
                "n_annotators": int(workers.sum()),
                "n_judgments": int(np.isin(table.worker, np.flatnonzero(workers)).sum()),
            }
        )
    return pool_index, info


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
         "aggregation": {"method", "label_counts", "mean_confidence", "iterations", "converged"},
         "annotators": {user_id: {"accuracy_source", "accuracy_used", "factors": {...},
                                  "position_low", "position_high", "length_low", "length_high"}},
         "rounds": [{"round", "n_comparisons", "models": [{"name", "win_rate", "low", "high",
                     "strength", "strength_low", "strength_high", "n"}]}]}

    where a summary is :func:`evaluation.agreement.agreement_summary`'s dict (each statistic
    ``{"value", "low", "high"}``). Statistics are over all judgments, excluded annotators'
    included, except agreement, which leaves excluded annotators out (their judgments do not
    reach exports either). Runs synchronously; the Celery task wraps it.
    """
    if report is None:
        report = QualityReport.objects.create(project=project, status=JobStatus.RUNNING)
    elif report.status != JobStatus.RUNNING:
        report.status = JobStatus.RUNNING
        report.save(update_fields=["status"])
    step = _Stepper(report, progress)
    step(0.02, "Loading judgments")
    table = load_judgments(project)
    pool_index, pools = _pool_groups(project, table)
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
        j = to_judgments(table, pool_index)
        step(0.1, "Aggregating labels (Dawid–Skene)")
        consensus = aggregate(j, "dawid_skene")
        data["aggregation"] = _aggregation_summary(consensus)

        step(0.25, "Estimating annotator reliability and bias")
        rows, per_annotator = _annotator_stats(table, j, consensus, excluded)
        data["annotators"] = per_annotator

        step(0.4, "Computing agreement")
        included = j.subset(~excluded[j.worker]) if excluded.any() else j
        data["agreement"] = _agreement(included, pools)
        data["pool_matrix"] = _pool_matrix(included, pools, data["agreement"].get("between_pools"))

        step(0.65, "Agreement over time")
        data["over_time"] = _over_time(project, table, included)

        step(0.85, "Model win rates per round")
        data["rounds"] = _rounds(table, consensus)
    else:
        rows = []

    step(0.95, "Saving")
    now = timezone.now()
    data["computed_at"] = now.isoformat()
    with transaction.atomic():
        _store_rows(project, rows)
        report.data = _clean(data)
        report.n_judgments = len(table)
        report.status = JobStatus.SUCCEEDED
        report.progress = 1.0
        report.message = ""
        report.finished_at = now
        report.save(update_fields=["data", "n_judgments", "status", "progress", "message", "finished_at"])
    if progress is not None:
        progress(1.0, "Done")
    return report


def _aggregation_summary(consensus) -> dict:
    judged = consensus.n_judgments > 0
    labels = consensus.label[judged]
    return {
        "method": consensus.method,
        "label_counts": {
            "a": int((labels == 0).sum()),
            "b": int((labels == 1).sum()),
            "tie": int((labels == TIE).sum()),
        },
        "mean_confidence": float(consensus.confidence[judged].mean()) if judged.any() else None,
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
            to_judgments(table, j.pool, a_left=False),
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


def _rounds(table: JudgmentTable, consensus) -> list[dict]:
    """Per round: each model's mean score against the others (tie = ½) and Bradley–Terry strength."""
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
    usable = (consensus.n_judgments > 0) & (ma != "") & (mb != "") & (ma != mb)
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


# --------------------------------------------------------------------------- weights


def effective_weight(membership: Membership | None, quality: AnnotatorQuality | None) -> float:
    """The weight an annotator's judgments carry in exports and training, in [0, 1].

    0 when the annotator is excluded; else the admin's override when set; else the computed
    weight (``quality.weight``, from :func:`evaluation.bias.annotator_weights`); else 1 when
    quality has not been computed yet.
    """
    if membership is not None and membership.excluded:
        return 0.0
    if membership is not None and membership.weight_override is not None:
        return float(min(1.0, max(0.0, membership.weight_override)))
    if quality is not None:
        return float(min(1.0, max(0.0, quality.weight)))
    return 1.0


def effective_weights(project: Project) -> dict[int, float]:
    """``{user_id: effective weight}`` for every annotator member or annotator with quality."""
    memberships = {m.user_id: m for m in Membership.objects.filter(project=project)}
    qualities = {q.annotator_id: q for q in AnnotatorQuality.objects.filter(project=project)}
    return {
        uid: effective_weight(memberships.get(uid), qualities.get(uid))
        for uid in set(qualities) | {uid for uid, m in memberships.items() if m.role == Role.ANNOTATOR}
    }


class NotAMember(Exception):
    pass


def _membership(project: Project, user_id: int) -> Membership:
    m = Membership.objects.filter(project=project, user_id=user_id).select_related("user", "pool").first()
    if m is None:
        raise NotAMember(f"User {user_id} is not a member of this project.")
    return m


def set_excluded(project: Project, user_id: int, excluded: bool) -> Membership:
    """Exclude (or include again) an annotator: the queue stops (or resumes) serving them
    (:func:`annotate.queue.annotator_membership`). Their judgments are kept; their effective
    weight becomes 0 (or returns). Agreement is recomputed (debounced) since it leaves excluded
    annotators out."""
    from .tasks import schedule_recompute

    m = _membership(project, user_id)
    if m.excluded != excluded:
        m.excluded = excluded
        m.save(update_fields=["excluded"])
        if getattr(settings, "PREFLOOP_AUTO_QUALITY", True):
            transaction.on_commit(lambda: _safe_schedule(schedule_recompute, project))
    return m


def _safe_schedule(schedule, project) -> None:
    try:
        schedule(project)
    except Exception:  # pragma: no cover - broker trouble must not fail the admin action
        import logging

        logging.getLogger(__name__).exception("could not schedule a quality recomputation")


def set_weight_override(project: Project, user_id: int, weight: float | None) -> Membership:
    """Set (``weight`` in [0, 1]) or clear (``None``) an annotator's admin weight override."""
    if weight is not None:
        weight = float(weight)
        if not (0.0 <= weight <= 1.0):
            raise ValueError("The weight must be between 0 and 1.")
    m = _membership(project, user_id)
    m.weight_override = weight
    m.save(update_fields=["weight_override"])
    return m


# --------------------------------------------------------------------------- reads


@dataclass
class AnnotatorRow:
    """One row of the dashboard's annotator table."""

    user_id: int
    username: str
    pool: str
    membership: Membership | None
    quality: AnnotatorQuality | None
    extras: dict = field(default_factory=dict)

    @property
    def excluded(self) -> bool:
        return bool(self.membership and self.membership.excluded)

    @property
    def override(self) -> float | None:
        return self.membership.weight_override if self.membership else None

    @property
    def weight(self) -> float:
        return effective_weight(self.membership, self.quality)

    @property
    def flags(self) -> list[str]:
        flags = list(self.quality.flags) if self.quality else []
        if self.excluded and "excluded" not in flags:
            flags.append("excluded")
        if not self.excluded and "excluded" in flags:
            flags.remove("excluded")
        return flags

    @property
    def flag_labels(self) -> list[tuple[str, str, str]]:
        return [(f, FLAG_LABELS.get(f, f), FLAG_HELP.get(f, "")) for f in self.flags]

    @property
    def below_threshold(self) -> bool:
        return any(f in BELOW_THRESHOLD_FLAGS for f in self.flags)

    def value(self, key: str):
        """Sort key for a column (None sorts last)."""
        q = self.quality
        if key == "annotator":
            return self.username.lower()
        if key == "pool":
            return self.pool.lower()
        if key == "weight":
            return self.weight
        if key == "flags":
            return len(self.flags)
        if q is None:
            return None
        if key in ("position_bias", "length_bias"):
            v = getattr(q, key)
            return None if v is None else abs(v)
        return getattr(q, key, None)


SORT_KEYS = (
    "annotator",
    "pool",
    "n_judgments",
    "gold_accuracy",
    "estimated_accuracy",
    "position_bias",
    "length_bias",
    "tie_rate",
    "median_seconds",
    "weight",
    "flags",
)


class _JSONArrayLength(Func):
    """The number of elements of a JSON array column (SQLite and PostgreSQL)."""

    function = "JSON_ARRAY_LENGTH"
    output_field = IntegerField()

    def as_postgresql(self, compiler, connection, **extra_context):
        return super().as_sql(compiler, connection, function="JSONB_ARRAY_LENGTH", **extra_context)


def _has_flag(name: str) -> Q:
    """Rows of an ``AnnotatorQuality`` queryset aliased with ``flags_text`` (see
    :func:`_qualities`) whose stored flags hold ``name``. The flags are a JSON list of plain
    names, so the quoted name matches exactly one element."""
    return Q(flags_text__contains=f'"{name}"')


def _qualities(project: Project):
    return AnnotatorQuality.objects.filter(project=project).alias(flags_text=Cast("flags", TextField()))


def _below_threshold() -> Q:
    q = Q()
    for name in BELOW_THRESHOLD_FLAGS:
        q |= _has_flag(name)
    return q


def _clamp(expression):
    return Greatest(Least(expression, Value(1.0)), Value(0.0))


def _sort_columns(key: str) -> tuple:
    """Column ``key`` of the annotator table as :meth:`AnnotatorRow.value` computes it (NULL
    where that gives None), as two database expressions: over ``AnnotatorQuality`` rows (with
    ``m``, the annotator's membership if any, and ``flags_text``) and over the memberships of
    annotators without one."""
    if key == "annotator":
        return Lower("annotator__username"), Lower("user__username")
    if key == "pool":
        return Lower(Coalesce("m__pool__name", Value("—"))), Lower(Coalesce("pool__name", Value("—")))
    if key == "weight":  # effective_weight()
        return (
            Case(
                When(m__excluded=True, then=Value(0.0)),
                When(m__weight_override__isnull=False, then=_clamp(F("m__weight_override"))),
                default=_clamp(F("weight")),
                output_field=FloatField(),
            ),
            Case(
                When(excluded=True, then=Value(0.0)),
                When(weight_override__isnull=False, then=_clamp(F("weight_override"))),
                default=Value(1.0),
                output_field=FloatField(),
            ),
        )
    if key == "flags":  # len(AnnotatorRow.flags): the stored flags, "excluded" as it is now
        return (
            ExpressionWrapper(
                _JSONArrayLength("flags")
                - Case(When(_has_flag("excluded"), then=Value(1)), default=Value(0))
                + Case(When(m__excluded=True, then=Value(1)), default=Value(0)),
                output_field=IntegerField(),
            ),
            Case(When(excluded=True, then=Value(1)), default=Value(0)),
        )
    field = AnnotatorQuality._meta.get_field(key)
    return (Abs(key) if key in ("position_bias", "length_bias") else F(key)), Value(None, output_field=field)


@dataclass
class AnnotatorTable:
    """The annotator table, sorted in the database: slice it (as Django's ``Paginator`` and
    DRF's paginations do) for ``{"uid", "uname", ...}`` per row; :meth:`count` counts it."""

    project: Project
    rows: Any  # the sorted union queryset

    def count(self) -> int:
        """Two small counts (the union itself would compute every column of every row)."""
        qualities = AnnotatorQuality.objects.filter(project=self.project)
        return qualities.count() + _members_without_quality(self.project).count()

    def __getitem__(self, index):
        return self.rows[index]

    def __iter__(self):
        return iter(self.rows)


def _members_without_quality(project: Project):
    return Membership.objects.filter(project=project, role=Role.ANNOTATOR).filter(
        ~Exists(AnnotatorQuality.objects.filter(project=project, annotator=OuterRef("user_id")))
    )


def annotator_table(project: Project, sort: str = "annotator", descending: bool = False) -> AnnotatorTable:
    """The annotator table in table order: one row per annotator member or anyone with
    computed quality (former members included).

    Sorted by column ``sort`` (one of :data:`SORT_KEYS`, as :meth:`AnnotatorRow.value`), ties
    by name in the same direction; rows without a value (no statistics yet) come last in
    either direction, by name. The database sorts the union of two plain joins (stored
    statistics with their membership; annotator members without statistics). Slice (or page)
    it and give the slice to :func:`annotator_rows_for`: only those rows are built.
    """
    if sort not in SORT_KEYS:
        sort = "annotator"
    on_quality, on_member = _sort_columns(sort)
    columns = ("uid", "uname", "lname", "sort_value", "null_name")
    null_name = Case(When(sort_value__isnull=True, then=F("lname")))
    with_quality = (
        _qualities(project)
        .alias(
            m=FilteredRelation("annotator__memberships", condition=Q(annotator__memberships__project=project))
        )
        .annotate(
            uid=F("annotator_id"),
            uname=F("annotator__username"),
            lname=Lower("annotator__username"),
            sort_value=on_quality,
            null_name=null_name,
        )
        .values(*columns)
    )
    without = (
        _members_without_quality(project)
        .annotate(
            uid=F("user_id"),
            uname=F("user__username"),
            lname=Lower("user__username"),
            sort_value=on_member,
            null_name=null_name,
        )
        .values(*columns)
    )
    rows = with_quality.union(without, all=True)
    if not descending:
        rows = rows.order_by(F("sort_value").asc(nulls_last=True), "lname", "uid")
    else:
        # Rows without a value last, by name ascending (null_name: their name, else NULL).
        rows = rows.order_by(F("sort_value").desc(nulls_last=True), "null_name", "-lname", "-uid")
    return AnnotatorTable(project, rows)


def annotator_rows_for(project: Project, report: QualityReport | None, entries) -> list[AnnotatorRow]:
    """The table rows of ``entries`` (``{"uid", "uname"}``, e.g. one page of
    :func:`annotator_table`), in their order, with their extras from ``report`` (none
    without one)."""
    entries = list(entries)
    memberships = Membership.objects.filter(project=project).select_related("pool")
    qualities = AnnotatorQuality.objects.filter(project=project)
    ids = None  # more than 1,000 rows: the whole project (under the databases' parameter limits)
    if len(entries) <= 1000:
        ids = [e["uid"] for e in entries]
        memberships, qualities = memberships.filter(user_id__in=ids), qualities.filter(annotator_id__in=ids)
    by_user = {m.user_id: m for m in memberships}
    quality_of = {q.annotator_id: q for q in qualities}
    extras = _annotator_extras(report, ids)
    rows = []
    for e in entries:
        m = by_user.get(e["uid"])
        rows.append(
            AnnotatorRow(
                user_id=e["uid"],
                username=e["uname"],
                pool=(m.pool.name if m and m.pool else "—"),
                membership=m,
                quality=quality_of.get(e["uid"]),
                extras=extras.get(str(e["uid"]), {}),
            )
        )
    return rows


def annotator_rows(
    project: Project, report: QualityReport | None = None, sort: str = "annotator", descending: bool = False
) -> list[AnnotatorRow]:
    """Every row of the annotator table, sorted by ``sort`` (see :func:`annotator_table`)."""
    return annotator_rows_for(project, report, annotator_table(project, sort, descending))


def annotator_row(project: Project, report: QualityReport | None, user_id: int) -> AnnotatorRow | None:
    """One annotator's table row, or None if they are not in the table."""
    in_table = (
        Q(memberships__project=project, memberships__role=Role.ANNOTATOR)
        | Exists(AnnotatorQuality.objects.filter(project=project, annotator=OuterRef("pk")))
    )
    user = get_user_model().objects.filter(in_table, pk=user_id).first()
    if user is None:
        return None
    return annotator_rows_for(project, report, [{"uid": user.pk, "uname": user.get_username()}])[0]


@dataclass
class TableSummary:
    """Counts over the whole annotator table, for the dashboard's heading and gold chart."""

    n_below: int  # rows below threshold (BELOW_THRESHOLD_FLAGS)
    n_gold: int  # annotators with a gold accuracy
    #: Each annotator with a gold accuracy, by name: ``{"label", "value", "low", "high",
    #: "flagged"}``; None when there are more than ``max_points`` of them.
    gold_points: list[dict] | None
    #: Otherwise ``GOLD_BINS`` equal bins of gold accuracy over [0, 1]:
    #: ``{"low", "high", "count", "flagged"}`` (flagged: below threshold).
    gold_bins: list[dict] | None


GOLD_BINS = 20


def table_summary(project: Project, max_points: int = 1000) -> TableSummary:
    """Aggregate queries over the project's stored annotator statistics: the count below
    threshold and the gold accuracies, one point per annotator up to ``max_points`` of them,
    else binned in the database."""
    qualities = _qualities(project)
    below = _below_threshold()
    counts = qualities.aggregate(
        n_below=Count("pk", filter=below), n_gold=Count("pk", filter=Q(gold_accuracy__isnull=False))
    )
    gold = qualities.filter(gold_accuracy__isnull=False)
    points = bins = None
    if counts["n_gold"] <= max_points:
        points = [
            {"label": name, "value": value, "low": low, "high": high, "flagged": flagged}
            for name, value, low, high, flagged in gold.annotate(
                flagged=ExpressionWrapper(below, output_field=BooleanField())
            )
            .order_by(Lower("annotator__username"), "annotator_id")
            .values_list(
                "annotator__username", "gold_accuracy", "gold_accuracy_low", "gold_accuracy_high", "flagged"
            )
        ]
    else:
        index = Least(Cast(Floor(F("gold_accuracy") * GOLD_BINS), IntegerField()), Value(GOLD_BINS - 1))
        found = {
            b: (n, flagged)
            for b, n, flagged in gold.annotate(b=index)
            .values("b")
            .annotate(n=Count("pk"), flagged=Count("pk", filter=below))
            .values_list("b", "n", "flagged")
        }
        bins = [
            {
                "low": b / GOLD_BINS,
                "high": (b + 1) / GOLD_BINS,
                "count": found.get(b, (0, 0))[0],
                "flagged": found.get(b, (0, 0))[1],
            }
            for b in range(GOLD_BINS)
        ]
    return TableSummary(
        n_below=counts["n_below"], n_gold=counts["n_gold"], gold_points=points, gold_bins=bins
    )


def latest_report(project: Project) -> QualityReport | None:
    """The newest finished (succeeded) report."""
    return (
        QualityReport.objects.filter(project=project, status=JobStatus.SUCCEEDED)
        .order_by("-finished_at", "-pk")
        .first()
    )


class _WithoutKey(Func):
    """A JSON object column less one top-level key, computed by the database (SQLite, PostgreSQL)."""

    output_field = JSONField()

    def __init__(self, expression, key: str):
        super().__init__(expression)
        self.key = key

    def as_sqlite(self, compiler, connection, **extra_context):
        sql, params = compiler.compile(self.get_source_expressions()[0])
        return f"JSON_REMOVE({sql}, %s)", (*params, f'$."{self.key}"')

    def as_postgresql(self, compiler, connection, **extra_context):
        sql, params = compiler.compile(self.get_source_expressions()[0])
        return f"({sql} - %s)", (*params, self.key)


def dashboard_report(project: Project) -> QualityReport | None:
    """:func:`latest_report` with ``data`` less the per-annotator extras (``data["annotators"]``:
    an entry per annotator, megabytes at 10,000 annotators). :func:`annotator_rows_for` reads
    the extras of the rows it builds only."""
    report = (
        QualityReport.objects.filter(project=project, status=JobStatus.SUCCEEDED)
        .order_by("-finished_at", "-pk")
        .defer("data")
        .annotate(data_less_annotators=_WithoutKey("data", "annotators"))
        .first()
    )
    if report is not None:
        report.data = report.data_less_annotators
    return report


def _annotator_extras(report: QualityReport | None, user_ids: list[int] | None) -> dict[str, dict]:
    """``report.data["annotators"]`` for ``user_ids`` (all with None), read in the database."""
    if report is None or user_ids == []:
        return {}
    table = connection.ops.quote_name(QualityReport._meta.db_table)
    if connection.vendor == "postgresql":
        sql = f"SELECT e.key, e.value FROM {table} r, jsonb_each(r.data -> 'annotators') e WHERE r.id = %s"
    else:
        sql = f"SELECT e.key, e.value FROM {table} r, json_each(r.data, '$.annotators') e WHERE r.id = %s"
    params: list = [report.pk]
    if user_ids is not None:
        sql += f" AND e.key IN ({', '.join(['%s'] * len(user_ids))})"
        params += [str(int(u)) for u in user_ids]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return {key: json.loads(value) if isinstance(value, str) else value for key, value in rows}


def pending_report(project: Project) -> QualityReport | None:
    """The newest queued or running report, if any (``data`` is loaded when first read)."""
    return (
        QualityReport.objects.filter(project=project, status__in=[JobStatus.QUEUED, JobStatus.RUNNING])
        .order_by("-created_at", "-pk")
        .defer("data")
        .first()
    )


# --------------------------------------------------------------------------- own accuracy


@dataclass
class OwnAccuracy:
    """What an annotator may see about themself. ``visible`` False: show nothing numeric."""

    enabled: bool
    visible: bool
    accuracy: float | None = None
    low: float | None = None
    high: float | None = None
    computed_at: Any = None
    reason: str = ""

    def as_dict(self) -> dict:
        return {
            "enabled": self.enabled,
            "visible": self.visible,
            "accuracy": self.accuracy,
            "low": self.low,
            "high": self.high,
            "computed_at": self.computed_at.isoformat() if self.computed_at else None,
            "reason": self.reason,
        }


def annotator_own_accuracy(user, project: Project) -> OwnAccuracy:
    """The annotator's own gold accuracy, if the project shows it and they qualify.

    Shown only when ``project.show_accuracy_after`` is set and the annotator has at least that
    many gold judgments. The figures come from the last stored computation (not recomputed per
    request), rounded to whole percent, and neither the number of gold judgments nor anything
    per item is returned: watching a live count after each answer would reveal which items
    were gold.
    """
    threshold = project.show_accuracy_after
    if threshold is None:
        return OwnAccuracy(
            enabled=False, visible=False, reason="This project does not show accuracy to annotators."
        )
    n_gold = Judgment.objects.filter(
        project=project, annotator=user, comparison__in=GoldAnswer.objects.values("comparison_id")
    ).count()
    q = AnnotatorQuality.objects.filter(project=project, annotator=user).first()
    if n_gold < max(1, threshold) or q is None or q.gold_accuracy is None or q.n_gold < max(1, threshold):
        return OwnAccuracy(
            enabled=True,
            visible=False,
            reason="Your accuracy appears here after you have answered enough calibration items. Keep going!",
        )

    def pct(v):
        return None if v is None else round(float(v), 2)

    return OwnAccuracy(
        enabled=True,
        visible=True,
        accuracy=pct(q.gold_accuracy),
        low=pct(q.gold_accuracy_low),
        high=pct(q.gold_accuracy_high),
        computed_at=q.computed_at,
    )


# --------------------------------------------------------------------------- aggregated labels


def aggregated_labels(
    project: Project,
    method: str = "dawid_skene",
    *,
    pool_balanced: bool = False,
    rounds: list[int] | None = None,
) -> list[dict]:
    """Per judged comparison: P(A), P(B), P(tie), the label, its confidence and the pools' spread.

    Excluded annotators are left out; for ``majority`` each vote counts with the annotator's
    effective weight (:func:`effective_weight`).
    """
    table = load_judgments(project, rounds=rounds, include_excluded=False)
    if not len(table):
        return []
    pool_index, _ = _pool_groups(project, table)
    j = to_judgments(table, pool_index)
    opts: dict[str, Any] = {"pool_balanced": pool_balanced}
    if method == "majority":
        weights = effective_weights(project)
        opts["worker_weights"] = np.array([weights.get(int(u), 1.0) for u in table.annotator_ids])
    agg = aggregate(j, method, **opts)
    spread = pool_disagreement(j).per_item if j.n_pools >= 2 else np.full(j.n_items, np.nan)
    label_name = {0: "a", 1: "b", 2: "tie"}
    gold = table.gold
    out = []
    for i, cid in enumerate(table.comparison_ids.tolist()):
        out.append(
            {
                "comparison": cid,
                "p_a": float(agg.p_a[i]),
                "p_b": float(agg.p_b[i]),
                "p_tie": float(agg.p_tie[i]),
                "label": label_name[int(agg.label[i])],
                "confidence": float(agg.confidence[i]),
                "n_judgments": int(agg.n_judgments[i]),
                "is_gold": bool(gold[i] >= 0),
                "pool_disagreement": _num(spread[i]),
            }
        )
    return out
