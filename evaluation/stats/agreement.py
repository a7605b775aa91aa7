"""Inter-annotator agreement for A/B/tie judgments (pure numpy).

All counts-based statistics start from ``n[i, c]``, the number of votes for class ``c`` on item
``i`` (``m_i = sum_c n[i, c]`` votes). Only items with ``m_i >= 2`` can show agreement; the
others are ignored everywhere. "Without ties" drops the tie votes first.

Raw agreement
    The share of agreeing pairs among all pairs of votes on the same item:
    ``sum_i sum_c n_ic (n_ic - 1) / sum_i m_i (m_i - 1)``. Items with more votes weigh more
    (they hold more pairs).

Krippendorff's alpha (nominal)
    From the coincidence matrix ``o_ck = sum_i (n_ic n_ik - [c = k] n_ic) / (m_i - 1)``, with
    ``n_c = sum_k o_ck`` and ``n = sum_c n_c``:
    ``alpha = 1 - (n - 1) (n - sum_c o_cc) / (n^2 - sum_c n_c^2)``.

Fleiss' kappa, varying raters per item
    ``P_i = sum_c n_ic (n_ic - 1) / (m_i (m_i - 1))`` for items with ``m_i >= 2``;
    ``P_bar`` = the unweighted mean of ``P_i`` over those items (each item counts once however
    many raters it had); ``p_c = sum_i n_ic / sum_i m_i`` over the same items;
    ``kappa = (P_bar - sum_c p_c^2) / (1 - sum_c p_c^2)``. With a constant number of raters
    this is exactly Fleiss (1971).

Mean pairwise Cohen's kappa (Light's kappa)
    For every pair of annotators with at least ``min_shared`` items judged by both, Cohen's
    kappa of their 3x3 contingency table; the unweighted mean over those pairs (pairs whose
    expected agreement is 1 are skipped).

Bootstrap confidence intervals resample items with replacement (seeded). Each counts-based
statistic is a ratio of sums of per-item features, so a replicate is one bincount of resampled
item indices and one matrix product; Cohen's kappa re-weights the within-item vote pairs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .judgments import N_CLASSES, TIE, Judgments

Stat = dict[str, float]


# --------------------------------------------------------------------------- counts


def class_counts(j: Judgments, include_ties: bool = True) -> np.ndarray:
    """``[n_items, 3]`` votes per item and class (tie votes zeroed when ``include_ties`` is false)."""
    keep = slice(None) if include_ties else j.label != TIE
    counts = np.bincount(j.item[keep] * N_CLASSES + j.label[keep], minlength=j.n_items * N_CLASSES)
    return counts.reshape(j.n_items, N_CLASSES).astype(np.float64)


def _pairable(counts: np.ndarray) -> np.ndarray:
    return counts[counts.sum(axis=1) >= 2]


# Per-item features and how each statistic combines their (weighted) sums. Rows of ``sums``
# may be stacked (one per bootstrap replicate).


def _raw_features(counts: np.ndarray) -> np.ndarray:
    m = counts.sum(axis=1)
    return np.column_stack([(counts * (counts - 1)).sum(axis=1), m * (m - 1)])


def _raw_finish(sums: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums[..., 0] / sums[..., 1]


def _alpha_features(counts: np.ndarray) -> np.ndarray:
    m = counts.sum(axis=1, keepdims=True)
    diag = (counts * (counts - 1)) / (m - 1)  # o_cc contributions
    return np.column_stack([diag, counts])


def _alpha_finish(sums: np.ndarray) -> np.ndarray:
    k = sums.shape[-1] // 2
    o_diag, n_c = sums[..., :k], sums[..., k:]
    n = n_c.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1 - (n - 1) * (n - o_diag.sum(axis=-1)) / (n * n - (n_c * n_c).sum(axis=-1))


def _fleiss_features(counts: np.ndarray) -> np.ndarray:
    m = counts.sum(axis=1, keepdims=True)
    p_i = (counts * (counts - 1)).sum(axis=1, keepdims=True) / (m * (m - 1))
    return np.column_stack([p_i, np.ones_like(p_i), counts, m])


def _fleiss_finish(sums: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        p_bar = sums[..., 0] / sums[..., 1]
        p_c = sums[..., 2:-1] / sums[..., -1:]
        p_e = (p_c * p_c).sum(axis=-1)
        return (p_bar - p_e) / (1 - p_e)


def _statistic(features: Callable, finish: Callable, counts: np.ndarray) -> float:
    counts = _pairable(counts)
    if counts.shape[0] == 0:
        return float("nan")
    return float(finish(features(counts).sum(axis=0)))


def raw_agreement_from_counts(counts: np.ndarray) -> float:
    return _statistic(_raw_features, _raw_finish, counts)


def krippendorff_alpha_from_counts(counts: np.ndarray) -> float:
    """Nominal alpha from an ``[n_items, n_classes]`` count matrix (any number of classes)."""
    return _statistic(_alpha_features, _alpha_finish, counts)


def fleiss_kappa_from_counts(counts: np.ndarray) -> float:
    return _statistic(_fleiss_features, _fleiss_finish, counts)


def raw_agreement(j: Judgments, include_ties: bool = True) -> float:
    return raw_agreement_from_counts(class_counts(j, include_ties))


def krippendorff_alpha(j: Judgments, include_ties: bool = True) -> float:
    return krippendorff_alpha_from_counts(class_counts(j, include_ties))


def fleiss_kappa(j: Judgments, include_ties: bool = True) -> float:
    return fleiss_kappa_from_counts(class_counts(j, include_ties))


# --------------------------------------------------------------------------- Cohen's kappa


@dataclass(eq=False)
class VotePairs:
    """All pairs of votes on the same item by different workers (``worker_a < worker_b``)."""

    item: np.ndarray
    worker_a: np.ndarray
    worker_b: np.ndarray
    label_a: np.ndarray
    label_b: np.ndarray


def vote_pairs(j: Judgments) -> VotePairs:
    """Every within-item pair of judgments, vectorized (no loop over items).

    Sorted by item, judgment ``s + r`` (``r``-th of ``m`` on its item) pairs with the
    ``m - 1 - r`` judgments after it on the same item.
    """
    order = np.argsort(j.item, kind="stable")
    item, worker, label = j.item[order], j.worker[order], j.label[order]
    m = np.bincount(item, minlength=j.n_items)
    start = np.concatenate(([0], np.cumsum(m)[:-1]))
    rank = np.arange(item.shape[0]) - start[item]
    n_after = m[item] - 1 - rank
    first = np.repeat(np.arange(item.shape[0]), n_after)
    # offset 1..n_after within each repeated block
    block_start = np.repeat(np.cumsum(n_after) - n_after, n_after)
    second = first + 1 + (np.arange(first.shape[0]) - block_start)
    wa, wb = worker[first], worker[second]
    la, lb = label[first], label[second]
    swap = wa > wb
    wa, wb = np.where(swap, wb, wa), np.where(swap, wa, wb)
    la, lb = np.where(swap, lb, la), np.where(swap, la, lb)
    distinct = wa != wb  # a worker never pairs with themself
    return VotePairs(item[first][distinct], wa[distinct], wb[distinct], la[distinct], lb[distinct])


@dataclass(eq=False)
class CohenPairs:
    worker_a: np.ndarray
    worker_b: np.ndarray
    n_shared: np.ndarray
    agreement: np.ndarray
    kappa: np.ndarray  # NaN where undefined (expected agreement 1)


def _kappa_from_tables(tables: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cohen's kappa of ``[..., K, K]`` contingency tables: (n, observed agreement, kappa)."""
    n = tables.sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        p_o = np.trace(tables, axis1=-2, axis2=-1) / n
        p_e = (tables.sum(axis=-1) * tables.sum(axis=-2)).sum(axis=-1) / (n * n)
        kappa = (p_o - p_e) / (1 - p_e)
    kappa[~(p_e < 1 - 1e-12)] = np.nan
    return n, p_o, kappa


def _pair_tables(
    pairs: VotePairs, pair_index: np.ndarray, n_pairs: int, weights: np.ndarray | None = None
) -> np.ndarray:
    K = N_CLASSES
    cell = (pair_index * K + pairs.label_a) * K + pairs.label_b
    return np.bincount(cell, weights=weights, minlength=n_pairs * K * K).reshape(n_pairs, K, K)


def _index_worker_pairs(pairs: VotePairs, n_workers: int) -> tuple[np.ndarray, np.ndarray]:
    key = pairs.worker_a * n_workers + pairs.worker_b
    keys, index = np.unique(key, return_inverse=True)
    return keys, index


def cohen_kappa_pairs(j: Judgments, min_shared: int = 10, pairs: VotePairs | None = None) -> CohenPairs:
    """Cohen's kappa for every pair of workers sharing at least ``min_shared`` items."""
    pairs = vote_pairs(j) if pairs is None else pairs
    keys, index = _index_worker_pairs(pairs, j.n_workers)
    n, p_o, kappa = _kappa_from_tables(_pair_tables(pairs, index, keys.shape[0]))
    keep = n >= min_shared
    return CohenPairs(
        keys[keep] // j.n_workers, keys[keep] % j.n_workers, n[keep].astype(np.int64), p_o[keep], kappa[keep]
    )


def mean_cohen_kappa(j: Judgments, min_shared: int = 10) -> float:
    kappa = cohen_kappa_pairs(j, min_shared).kappa
    kappa = kappa[np.isfinite(kappa)]
    return float(kappa.mean()) if kappa.size else float("nan")


# --------------------------------------------------------------------------- bootstrap


def _resample_weights(rng: np.random.Generator, n_items: int, n_boot: int, chunk_cells: int = 2_000_000):
    """Yield ``[b, n_items]`` bootstrap multiplicities (how often each item was drawn)."""
    per_chunk = max(1, chunk_cells // max(n_items, 1))
    done = 0
    while done < n_boot:
        b = min(per_chunk, n_boot - done)
        draws = rng.integers(0, n_items, size=(b, n_items))
        flat = (np.arange(b)[:, None] * n_items + draws).ravel()
        yield np.bincount(flat, minlength=b * n_items).reshape(b, n_items).astype(np.float64)
        done += b


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def _bootstrap_stats(
    counts: np.ndarray, specs: dict[str, tuple[Callable, Callable]], n_boot: int, level: float, rng
) -> dict[str, Stat]:
    """Point value and percentile interval of several counts-based statistics at once."""
    counts = _pairable(counts)
    out: dict[str, Stat] = {}
    if counts.shape[0] == 0:
        return {name: {"value": float("nan"), "low": float("nan"), "high": float("nan")} for name in specs}
    feats = {name: features(counts) for name, (features, _) in specs.items()}
    reps = {name: [] for name in specs}
    for w in _resample_weights(rng, counts.shape[0], n_boot):
        for name, (_, finish) in specs.items():
            reps[name].append(finish(w @ feats[name]))
    for name, (_, finish) in specs.items():
        value = float(finish(feats[name].sum(axis=0)))
        low, high = _interval(np.concatenate(reps[name]) if reps[name] else np.array([]), level)
        out[name] = {"value": value, "low": low, "high": high}
    return out


def _bootstrap_cohen(j: Judgments, min_shared: int, n_boot: int, level: float, rng) -> Stat:
    pairs = vote_pairs(j)
    keys, index = _index_worker_pairs(pairs, j.n_workers)
    n, _, kappa = _kappa_from_tables(_pair_tables(pairs, index, keys.shape[0]))
    keep = (n >= min_shared) & np.isfinite(kappa)
    value = float(kappa[keep].mean()) if keep.any() else float("nan")
    result = {"value": value, "low": float("nan"), "high": float("nan"), "n_pairs": int(keep.sum())}
    if not keep.any() or n_boot <= 0:
        return result
    # Resample the items the kept worker pairs share; re-weight their vote pairs.
    sel = keep[index]
    sub = VotePairs(
        pairs.item[sel], pairs.worker_a[sel], pairs.worker_b[sel], pairs.label_a[sel], pairs.label_b[sel]
    )
    sub_index = np.cumsum(keep)[index[sel]] - 1
    items, item_index = np.unique(sub.item, return_inverse=True)
    n_kept = int(keep.sum())
    reps = np.empty(n_boot)
    done = 0
    for w in _resample_weights(rng, items.shape[0], n_boot):
        for row in w:
            tables = _pair_tables(sub, sub_index, n_kept, row[item_index])
            reps[done] = np.nanmean(_kappa_from_tables(tables)[2]) if n_kept else np.nan
            done += 1
    result["low"], result["high"] = _interval(reps, level)
    return result


_COUNT_STATS = {
    "krippendorff_alpha": (_alpha_features, _alpha_finish),
    "fleiss_kappa": (_fleiss_features, _fleiss_finish),
    "raw_agreement": (_raw_features, _raw_finish),
}


def agreement_summary(
    j: Judgments, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0, min_shared: int = 10
) -> dict:
    """Every agreement statistic of ``j`` with bootstrap intervals (``{"value","low","high"}``)."""
    rng = np.random.default_rng(seed)
    summary: dict = {"n_judgments": j.n, "n_workers": int(np.unique(j.worker).size)}
    counts = class_counts(j)
    summary["n_items"] = int((counts.sum(axis=1) >= 2).sum())
    summary.update(_bootstrap_stats(counts, _COUNT_STATS, n_boot, level, rng))
    no_ties = _bootstrap_stats(
        class_counts(j, include_ties=False), {"raw": _COUNT_STATS["raw_agreement"]}, n_boot, level, rng
    )
    summary["raw_agreement_no_ties"] = no_ties["raw"]
    summary["cohen_kappa"] = _bootstrap_cohen(j, min_shared, n_boot, level, rng)
    return summary


def between_group_agreement(
    j: Judgments, groups: np.ndarray, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> dict[str, np.ndarray]:
    """Raw agreement between groups: pairs of votes on the same item, one from each group.

    ``raw_agreement[g, h] = sum_i sum_c n_igc n_ihc / sum_i m_ig m_ih`` (the diagonal is the
    within-group raw agreement), with bootstrap intervals and the number of vote pairs.
    """
    groups = np.asarray(groups, dtype=np.int64)
    G = int(groups.max()) + 1 if groups.size else 0
    K = N_CLASSES
    key = (j.item * G + groups[j.worker]) * K + j.label
    n = np.bincount(key, minlength=j.n_items * G * K).reshape(j.n_items, G, K).astype(np.float64)
    m = n.sum(axis=2)
    iu = np.triu_indices(G)
    agree = np.empty((j.n_items, iu[0].shape[0]))
    pairs = np.empty_like(agree)
    for col, (g, h) in enumerate(zip(*iu, strict=True)):
        agree[:, col] = (n[:, g] * n[:, h]).sum(axis=1)
        pairs[:, col] = m[:, g] * m[:, h]
        if g == h:  # within a group: unordered pairs of two different votes
            agree[:, col] = (agree[:, col] - m[:, g]) / 2
            pairs[:, col] = (pairs[:, col] - m[:, g]) / 2
    useful = pairs.sum(axis=1) > 0
    agree, pairs = agree[useful], pairs[useful]
    feats = np.concatenate([agree, pairs], axis=1)
    P = iu[0].shape[0]

    def finish(sums):
        with np.errstate(invalid="ignore", divide="ignore"):
            return sums[..., :P] / sums[..., P:]

    value = finish(feats.sum(axis=0))
    reps = []
    if n_boot > 0 and feats.shape[0]:
        rng = np.random.default_rng(seed)
        reps = [finish(w @ feats) for w in _resample_weights(rng, feats.shape[0], n_boot)]
    reps = np.concatenate(reps) if reps else np.full((1, P), np.nan)
    bounds = np.array([_interval(reps[:, col], level) for col in range(P)]).reshape(P, 2)
    low, high = bounds[:, 0], bounds[:, 1]

    def square(v):
        out = np.full((G, G), np.nan)
        out[iu] = v
        out[iu[1], iu[0]] = v
        return out

    return {
        "raw_agreement": square(value),
        "low": square(low),
        "high": square(high),
        "n_pairs": square(pairs.sum(axis=0)).astype(np.int64) if P else np.zeros((G, G), dtype=np.int64),
    }


def agreement_report(
    j: Judgments,
    groups: np.ndarray | None = None,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    min_shared: int = 10,
) -> dict:
    """Agreement overall, per group (default: ``j.pool``) and between groups.

    ``{"overall": summary, "per_group": {g: summary}, "between_groups": {...}}`` where a summary
    is :func:`agreement_summary`'s dict and ``between_groups`` is
    :func:`between_group_agreement`'s (absent without groups).
    """
    report: dict = {
        "overall": agreement_summary(j, n_boot=n_boot, level=level, seed=seed, min_shared=min_shared)
    }
    groups = j.pool if groups is None else np.asarray(groups, dtype=np.int64)
    if groups is None:
        return report
    report["per_group"] = {
        int(g): agreement_summary(
            j.subset(groups[j.worker] == g), n_boot=n_boot, level=level, seed=seed, min_shared=min_shared
        )
        for g in np.unique(groups)
    }
    report["between_groups"] = between_group_agreement(j, groups, n_boot=n_boot, level=level, seed=seed)
    return report
