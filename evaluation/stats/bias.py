"""Per-annotator reliability and bias estimates, and the annotator weight (pure numpy/scipy).

Every estimate comes with its uncertainty, so a dashboard can tell "biased" from "few data".

Gold accuracy
    ``acc ~ Beta(a + correct, b + wrong)`` with prior Beta(2, 1) (:data:`GOLD_PRIOR`): one
    pseudo-correct answer on top of a uniform prior, mean 2/3. It is weak (worth two answers)
    and mildly optimistic, so three right answers give 5/6 rather than a perfect annotator,
    and an annotator without gold sits at 2/3. Posterior mean and equal-tailed credible interval.

Position bias
    Display order is randomized per assignment, so among an annotator's non-tie judgments an
    unbiased annotator picks the left response half the time whatever their accuracy.
    ``bias = P(pick left) - 0.5`` with a Wilson score interval. If a fraction ``lam`` of their
    clicks go left regardless of content, ``bias = lam / 2``. The consensus-relative version
    ``mean(picked left - P_consensus(left better | not tie))`` removes the content signal.
    Only judgments with a known display order count (imported votes may lack it); an annotator
    with none has ``n = 0`` and NaN estimates (n/a), and a position factor of 1.

Length bias
    Over an annotator's non-tie judgments on items whose responses differ in length:
    ``bias = mean(picked longer - P_consensus(longer better | not tie))``, i.e. how much more
    often they pick the longer response than the consensus does on the same items, with a normal
    interval from the per-judgment differences. (The consensus includes the annotator's own
    vote, which pulls the estimate slightly towards 0: conservative.)

Tie / both-bad propensity
    Rates with Wilson intervals next to the project-wide rates.

Speed
    Median seconds per judgment; flagged as implausibly fast when the median is below
    ``min_seconds`` (3 s) or below ``relative`` (0.25) times the crowd median (the median of
    annotators' medians), given at least ``min_judgments`` timed judgments.

Annotator weight (:func:`annotator_weights`), the single rule used by export and training::

    acc      = gold posterior mean           if the annotator has >= min_gold (10) gold judgments
             = Dawid–Skene accuracy          else, when given
             = gold posterior mean           else (the prior mean 2/3 with no gold at all)
    base     = clip(2 * acc - 1, 0, 1)       chance (1/2) -> 0, perfect -> 1
    position = 1 - min(1, 2 * d_pos)         d_pos = distance of the position-bias CI from 0
    length   = 1 - min(1, 2 * d_len)         d_len = distance of the length-bias CI from 0
    speed    = 1/2 if flagged too fast, else 1
    weight   = base * position * length * speed * manual,   0 if excluded

``2 * bias`` estimates the share of content-free clicks (left, or longer), so the factors keep
the share of clicks that are about the content. Using the CI's distance from 0 (0 when the
interval contains 0) means noise is never penalized, only bias the data demonstrate.
``manual`` is an admin's down-weight in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from .aggregation import aggregate
from .judgments import GOLD_PRIOR, TIE, A, Aggregate, B, Judgments, gold_counts

# --------------------------------------------------------------------------- helpers


def _z(level: float) -> float:
    return float(stats.norm.ppf(0.5 + level / 2))


def wilson_interval(
    successes: np.ndarray, n: np.ndarray, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for a binomial proportion (NaN where n = 0)."""
    successes = np.asarray(successes, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    z = _z(level)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = successes / n
        denom = 1 + z * z / n
        centre = (p + z * z / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return centre - half, centre + half


def _group_mean_se(
    group: np.ndarray, values: np.ndarray, n_groups: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group count, mean and standard error of the mean (NaN where undefined)."""
    n = np.bincount(group, minlength=n_groups).astype(np.float64)
    s = np.bincount(group, weights=values, minlength=n_groups)
    s2 = np.bincount(group, weights=values * values, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s / n
        var = np.maximum(s2 - n * mean * mean, 0.0) / (n - 1)
        se = np.sqrt(var / n)
    se[n < 2] = np.nan
    return n, mean, se


def _ci_distance_from_zero(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """How far an interval lies from 0 (0 when it contains 0 or is undefined)."""
    d = np.maximum(np.maximum(low, 0.0), np.maximum(-high, 0.0))
    return np.nan_to_num(d, nan=0.0)


def consensus_proba(j: Judgments, consensus: Aggregate | np.ndarray | None = None) -> np.ndarray:
    """``[n_items, 3]`` consensus posteriors: given, or the majority vote."""
    if consensus is None:
        return aggregate(j, "majority").proba
    if isinstance(consensus, Aggregate):
        return consensus.proba
    proba = np.asarray(consensus, dtype=np.float64)
    if proba.shape != (j.n_items, 3):
        raise ValueError(f"consensus must have shape {(j.n_items, 3)}")
    return proba


# --------------------------------------------------------------------------- gold accuracy


@dataclass(eq=False)
class GoldAccuracy:
    n_gold: np.ndarray
    n_correct: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    prior: tuple[float, float]


def gold_accuracy(j: Judgments, prior: tuple[float, float] = GOLD_PRIOR, level: float = 0.95) -> GoldAccuracy:
    """Beta-posterior gold accuracy per worker: mean and equal-tailed credible interval."""
    n_gold, n_correct = gold_counts(j)
    a = prior[0] + n_correct
    b = prior[1] + (n_gold - n_correct)
    tail = (1 - level) / 2
    return GoldAccuracy(
        n_gold=n_gold,
        n_correct=n_correct,
        mean=a / (a + b),
        low=stats.beta.ppf(tail, a, b),
        high=stats.beta.ppf(1 - tail, a, b),
        prior=prior,
    )


# --------------------------------------------------------------------------- position bias


@dataclass(eq=False)
class PositionBias:
    n: np.ndarray  # non-tie judgments with known display order
    n_left: np.ndarray
    bias: np.ndarray  # P(pick left) - 0.5
    se: np.ndarray
    low: np.ndarray
    high: np.ndarray
    significant: np.ndarray  # the interval excludes 0
    relative: np.ndarray  # mean(picked left - P_consensus(left better | not tie))
    relative_se: np.ndarray


def _non_tie_consensus(proba: np.ndarray) -> np.ndarray:
    """P(A better | not tie) per item (1/2 where the consensus is all tie)."""
    ab = proba[:, A] + proba[:, B]
    return np.divide(proba[:, A], ab, out=np.full(proba.shape[0], 0.5), where=ab > 0)


def position_bias(
    j: Judgments, consensus: Aggregate | np.ndarray | None = None, level: float = 0.95
) -> PositionBias:
    """Per-worker left-pick rate minus 1/2, with a Wilson interval; and relative to consensus.

    Over non-tie judgments whose display order is known (``Judgments.order_known``); NaN for a
    worker without any.
    """
    if j.a_left is None:
        raise ValueError("position_bias needs Judgments.a_left")
    keep = (j.label != TIE) & j.order_known
    worker = j.worker[keep]
    picked_left = (j.label[keep] == np.where(j.a_left[keep], A, B)).astype(np.float64)
    n = np.bincount(worker, minlength=j.n_workers)
    n_left = np.bincount(worker, weights=picked_left, minlength=j.n_workers)
    low, high = wilson_interval(n_left, n, level)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = n_left / n
        se = np.sqrt(rate * (1 - rate) / n)
    p_a = _non_tie_consensus(consensus_proba(j, consensus))[j.item[keep]]
    p_left = np.where(j.a_left[keep], p_a, 1 - p_a)
    _, relative, relative_se = _group_mean_se(worker, picked_left - p_left, j.n_workers)
    low, high = low - 0.5, high - 0.5
    return PositionBias(
        n=n,
        n_left=n_left,
        bias=rate - 0.5,
        se=se,
        low=low,
        high=high,
        significant=(low > 0) | (high < 0),
        relative=relative,
        relative_se=relative_se,
    )


# --------------------------------------------------------------------------- length bias


@dataclass(eq=False)
class LengthBias:
    n: np.ndarray  # non-tie judgments on items with unequal lengths
    rate_longer: np.ndarray  # P(worker picks the longer)
    consensus_rate_longer: np.ndarray  # mean P_consensus(longer better | not tie), same items
    bias: np.ndarray  # rate_longer - consensus_rate_longer
    se: np.ndarray
    low: np.ndarray
    high: np.ndarray
    significant: np.ndarray


def length_bias(
    j: Judgments, consensus: Aggregate | np.ndarray | None = None, level: float = 0.95
) -> LengthBias:
    """Per-worker tendency to pick the longer response beyond what the consensus does."""
    if j.len_a is None or j.len_b is None:
        raise ValueError("length_bias needs Judgments.len_a and len_b")
    differ = j.len_a[j.item] != j.len_b[j.item]
    keep = (j.label != TIE) & differ
    item, worker, label = j.item[keep], j.worker[keep], j.label[keep]
    a_longer = j.len_a[item] > j.len_b[item]
    picked_longer = (label == np.where(a_longer, A, B)).astype(np.float64)
    p_a = _non_tie_consensus(consensus_proba(j, consensus))[item]
    cons_longer = np.where(a_longer, p_a, 1 - p_a)
    n, bias, se = _group_mean_se(worker, picked_longer - cons_longer, j.n_workers)
    _, rate_longer, _ = _group_mean_se(worker, picked_longer, j.n_workers)
    _, cons_rate, _ = _group_mean_se(worker, cons_longer, j.n_workers)
    z = _z(level)
    low, high = bias - z * se, bias + z * se
    return LengthBias(
        n=n.astype(np.int64),
        rate_longer=rate_longer,
        consensus_rate_longer=cons_rate,
        bias=bias,
        se=se,
        low=low,
        high=high,
        significant=(low > 0) | (high < 0),
    )


# --------------------------------------------------------------------------- propensities


@dataclass(eq=False)
class Propensity:
    n: np.ndarray
    tie_rate: np.ndarray
    tie_low: np.ndarray
    tie_high: np.ndarray
    project_tie_rate: float
    both_bad_rate: np.ndarray | None
    both_bad_low: np.ndarray | None
    both_bad_high: np.ndarray | None
    project_both_bad_rate: float


def propensities(j: Judgments, level: float = 0.95) -> Propensity:
    """Tie rate (label 2, which includes "both bad") and both-bad rate per worker."""
    n = np.bincount(j.worker, minlength=j.n_workers)
    ties = np.bincount(j.worker, weights=(j.label == TIE).astype(np.float64), minlength=j.n_workers)
    with np.errstate(invalid="ignore", divide="ignore"):
        tie_rate = ties / n
    tie_low, tie_high = wilson_interval(ties, n, level)
    project_tie = float(np.mean(j.label == TIE)) if j.n else float("nan")
    bb_rate = bb_low = bb_high = None
    project_bb = float("nan")
    if j.both_bad is not None:
        bb = np.bincount(j.worker, weights=j.both_bad.astype(np.float64), minlength=j.n_workers)
        with np.errstate(invalid="ignore", divide="ignore"):
            bb_rate = bb / n
        bb_low, bb_high = wilson_interval(bb, n, level)
        project_bb = float(np.mean(j.both_bad)) if j.n else float("nan")
    return Propensity(n, tie_rate, tie_low, tie_high, project_tie, bb_rate, bb_low, bb_high, project_bb)


# --------------------------------------------------------------------------- speed


@dataclass(eq=False)
class Speed:
    n_timed: np.ndarray
    median_seconds: np.ndarray  # NaN without timed judgments
    crowd_median: float  # median of the workers' medians
    too_fast: np.ndarray


def group_median(group: np.ndarray, values: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-group count and median, vectorized (sort by group then value; NaN for empty)."""
    order = np.lexsort((values, group))
    g, v = group[order], values[order]
    n = np.bincount(g, minlength=n_groups)
    start = np.concatenate(([0], np.cumsum(n)[:-1]))
    median = np.full(n_groups, np.nan)
    has = n > 0
    lo = start[has] + (n[has] - 1) // 2
    hi = start[has] + n[has] // 2
    median[has] = 0.5 * (v[lo] + v[hi])
    return n, median


def speed(j: Judgments, min_seconds: float = 3.0, relative: float = 0.25, min_judgments: int = 3) -> Speed:
    """Median seconds per judgment per worker; flag medians below ``min_seconds`` or
    ``relative`` x the crowd median (workers with at least ``min_judgments`` timed judgments)."""
    if j.seconds is None:
        nan = np.full(j.n_workers, np.nan)
        return Speed(
            np.zeros(j.n_workers, dtype=np.int64), nan, float("nan"), np.zeros(j.n_workers, dtype=bool)
        )
    timed = np.isfinite(j.seconds)
    n, median = group_median(j.worker[timed], j.seconds[timed], j.n_workers)
    enough = n >= min_judgments
    crowd = float(np.median(median[enough])) if enough.any() else float("nan")
    too_fast = enough & ((median < min_seconds) | (median < relative * crowd))
    return Speed(n_timed=n, median_seconds=median, crowd_median=crowd, too_fast=too_fast)


# --------------------------------------------------------------------------- weights


@dataclass(eq=False)
class AnnotatorWeights:
    """The weight and every factor that made it (see the module docstring for the rule)."""

    weight: np.ndarray
    accuracy: np.ndarray
    accuracy_source: np.ndarray  # "gold", "dawid_skene" or "prior"
    base: np.ndarray
    position_factor: np.ndarray
    length_factor: np.ndarray
    speed_factor: np.ndarray
    excluded: np.ndarray


def annotator_weights(
    j: Judgments,
    *,
    consensus: Aggregate | np.ndarray | None = None,
    ds_accuracy: np.ndarray | None = None,
    excluded: np.ndarray | None = None,
    manual: np.ndarray | None = None,
    min_gold: int = 10,
    gold_prior: tuple[float, float] = GOLD_PRIOR,
    level: float = 0.95,
    min_seconds: float = 3.0,
    relative_speed: float = 0.25,
) -> AnnotatorWeights:
    """Per-worker weight in [0, 1] by the rule in the module docstring.

    ``consensus`` (default: majority vote) is used for the length bias; ``ds_accuracy`` (e.g.
    ``aggregate(j, "dawid_skene").accuracy``) stands in for gold accuracy below ``min_gold``.
    Position / length factors are 1 where ``a_left`` / lengths are unknown (the position factor
    also for a worker without a known-order judgment).
    """
    W = j.n_workers
    gold = gold_accuracy(j, gold_prior, level)
    enough_gold = gold.n_gold >= min_gold
    acc = gold.mean.copy()
    source = np.where(gold.n_gold > 0, "gold", "prior").astype("<U11")
    if ds_accuracy is not None:
        ds = np.asarray(ds_accuracy, dtype=np.float64)
        use_ds = ~enough_gold & np.isfinite(ds)
        acc[use_ds] = ds[use_ds]
        source[use_ds] = "dawid_skene"
    base = np.clip(2 * acc - 1, 0.0, 1.0)

    position_factor = np.ones(W)
    if j.a_left is not None:
        pos = position_bias(j, consensus, level)
        position_factor = 1 - np.minimum(1.0, 2 * _ci_distance_from_zero(pos.low, pos.high))
    length_factor = np.ones(W)
    if j.len_a is not None and j.len_b is not None:
        cons = consensus_proba(j, consensus)
        lb = length_bias(j, cons, level)
        length_factor = 1 - np.minimum(1.0, 2 * _ci_distance_from_zero(lb.low, lb.high))
    speed_factor = np.where(speed(j, min_seconds, relative_speed).too_fast, 0.5, 1.0)
    manual_factor = np.ones(W) if manual is None else np.clip(np.asarray(manual, dtype=np.float64), 0.0, 1.0)
    excluded = np.zeros(W, dtype=bool) if excluded is None else np.asarray(excluded, dtype=bool)

    weight = base * position_factor * length_factor * speed_factor * manual_factor
    weight[excluded] = 0.0
    return AnnotatorWeights(
        weight=weight,
        accuracy=acc,
        accuracy_source=source,
        base=base,
        position_factor=position_factor,
        length_factor=length_factor,
        speed_factor=speed_factor,
        excluded=excluded,
    )


def annotator_report(
    j: Judgments,
    consensus: Aggregate | np.ndarray | None = None,
    *,
    ds_accuracy: np.ndarray | None = None,
    excluded: np.ndarray | None = None,
    manual: np.ndarray | None = None,
    level: float = 0.95,
) -> dict[str, np.ndarray]:
    """Every per-worker figure for the quality dashboard, as flat columns of equal length."""
    cons = consensus_proba(j, consensus)
    gold = gold_accuracy(j, level=level)
    prop = propensities(j, level)
    spd = speed(j)
    weights = annotator_weights(
        j, consensus=cons, ds_accuracy=ds_accuracy, excluded=excluded, manual=manual, level=level
    )
    report: dict[str, np.ndarray] = {
        "n_judgments": np.bincount(j.worker, minlength=j.n_workers),
        "gold_n": gold.n_gold,
        "gold_accuracy": gold.mean,
        "gold_low": gold.low,
        "gold_high": gold.high,
        "tie_rate": prop.tie_rate,
        "median_seconds": spd.median_seconds,
        "too_fast": spd.too_fast,
        "weight": weights.weight,
        "accuracy_used": weights.accuracy,
        "accuracy_source": weights.accuracy_source,
    }
    if prop.both_bad_rate is not None:
        report["both_bad_rate"] = prop.both_bad_rate
    if j.a_left is not None:
        pos = position_bias(j, cons, level)
        report.update(
            position_bias=pos.bias,
            position_low=pos.low,
            position_high=pos.high,
            position_flag=pos.significant,
        )
    if j.len_a is not None and j.len_b is not None:
        lb = length_bias(j, cons, level)
        report.update(length_bias=lb.bias, length_low=lb.low, length_high=lb.high, length_flag=lb.significant)
    return report
