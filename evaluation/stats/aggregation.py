"""Label aggregation for pairwise preference judgments (pure numpy; no Django).

Every judgment says which of two responses to one prompt is better: ``0`` = A, ``1`` = B,
``2`` = tie (the Django layer maps "both bad" to tie here and passes it separately to
:mod:`evaluation.stats.bias`). :class:`Judgments` holds them as parallel arrays; :func:`aggregate`
turns them into one posterior ``P(A better), P(B better), P(tie)`` per comparison ("item").

Methods (``aggregate(j, method)``):

``majority``
    Vote shares: ``p_k = (votes for k) / (votes)``, optionally weighted per annotator
    (``worker_weights=``, e.g. :func:`evaluation.stats.bias.annotator_weights`). A 1–1 split between
    A and B is ``p = (0.5, 0.5, 0)``.

``gold_weighted``
    Each annotator's vote counts ``w = max(0, log(acc / (1 - acc)))`` where ``acc`` is the
    Beta-posterior mean of their gold accuracy (prior Beta(2, 1), see :data:`GOLD_PRIOR`; an
    annotator with no gold gets the prior mean 2/3, i.e. ``w = log 2``). The item posterior is
    ``softmax_k(sum of w over votes for k)``: the naive-Bayes posterior of a "one-coin" annotator
    who is right with probability ``acc``. Annotators at or below chance get weight 0.

``dawid_skene``, ``dawid_skene_debiased``
    Dawid & Skene (1979) EM with per-annotator 3x3 confusion matrices, the debiased variant
    with an explicit per-annotator position (left/right click) bias: see
    :mod:`evaluation.stats.dawid_skene`.

An item whose voters all have weight 0 is *undecided* (:func:`undecided_items`): it has no
label, and the export, the dashboard and the labels API report it as such.

``pool_balanced=True`` (any method; needs ``pool``) rescales each judgment's weight on an
item so that every pool present on the item carries the same total weight (the item's total
is kept), so a large pool cannot outvote a small one. For Dawid–Skene the rescaling applies
to the item posteriors (E step); annotators' confusion matrices still use all their judgments.
:func:`pool_disagreement` reports how far pools' vote distributions are apart.

Everything is vectorized over judgments: votes are summed with ``np.bincount``; in EM every
per-judgment quantity depends only on the judgment's (worker, label[, side]) combination, so
the E step is a sparse product ``X @ log_table[k]`` per class (``X[i, c]`` = judgments on
item i with combination c) and the M step ``X.T @ T[k]``. The only Python loops are over EM
iterations, the three classes and pool pairs. 1M judgments, 10k annotators, 200k items: well
under a second of CPU (see bench/aggregation.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dawid_skene import dawid_skene
from .judgments import (
    GOLD_PRIOR,
    N_CLASSES,
    Aggregate,
    Judgments,
    clamp_to_gold,
    class_sums,
    gold_posterior_mean,
    pool_balance_factor,
    vote_shares,
)

METHODS = ("majority", "gold_weighted", "dawid_skene", "dawid_skene_debiased")


# --------------------------------------------------------------------------- entry point


def aggregate(j: Judgments, method: str = "dawid_skene", **opts) -> Aggregate:
    """Aggregate judgments into per-item posteriors with ``method`` (one of :data:`METHODS`).

    Common options: ``pool_balanced=False``, ``clamp_gold=True`` (gold items get their gold
    label with probability 1). ``majority``: ``worker_weights``. ``gold_weighted``:
    ``gold_prior``. Dawid–Skene: ``max_iter=100``, ``tol=1e-6``, ``smoothing=0.1``,
    ``prior_smoothing=1.0``, ``init="majority"`` (or an ``[n_items, 3]`` array); debiased also
    ``bias_prior=5.0``, ``bias_init=0.05``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    pool_balanced = opts.pop("pool_balanced", False)
    if pool_balanced and j.pool is None:
        raise ValueError("pool_balanced=True needs Judgments.pool")
    if method == "majority":
        return majority_vote(j, pool_balanced=pool_balanced, **opts)
    if method == "gold_weighted":
        return gold_weighted_vote(j, pool_balanced=pool_balanced, **opts)
    return dawid_skene(j, debias=method == "dawid_skene_debiased", pool_balanced=pool_balanced, **opts)


# --------------------------------------------------------------------------- votes


def majority_vote(
    j: Judgments,
    *,
    worker_weights: np.ndarray | None = None,
    pool_balanced: bool = False,
    clamp_gold: bool = True,
) -> Aggregate:
    """(Weighted) vote shares per item; items without votes get 1/3 each."""
    w = np.ones(j.n) if worker_weights is None else np.asarray(worker_weights, dtype=np.float64)[j.worker]
    if pool_balanced:
        w = w * pool_balance_factor(j, w)
    proba = vote_shares(class_sums(j.item, j.label, j.n_items, w))
    if clamp_gold:
        proba = clamp_to_gold(j, proba)
    return Aggregate("majority", proba, np.bincount(j.item, minlength=j.n_items))


def _softmax_rows(scores: np.ndarray) -> np.ndarray:
    z = np.exp(scores - scores.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def gold_weighted_vote(
    j: Judgments,
    *,
    gold_prior: tuple[float, float] = GOLD_PRIOR,
    pool_balanced: bool = False,
    clamp_gold: bool = True,
) -> Aggregate:
    """Votes weighted by the log-odds of each worker's Beta-posterior gold accuracy."""
    acc = gold_posterior_mean(j, gold_prior)
    log_odds = np.maximum(0.0, np.log(acc) - np.log1p(-acc))
    w = log_odds[j.worker]
    if pool_balanced:
        w = w * pool_balance_factor(j, w)
    proba = _softmax_rows(class_sums(j.item, j.label, j.n_items, w))
    if clamp_gold:
        proba = clamp_to_gold(j, proba)
    return Aggregate("gold_weighted", proba, np.bincount(j.item, minlength=j.n_items), accuracy=acc)


# --------------------------------------------------------------------------- undecided


def undecided_items(j: Judgments, worker_weights: np.ndarray) -> np.ndarray:
    """Per item: True where no judgment carries weight, i.e. every voter's weight is 0 (or the
    item has no votes), and the item is not gold (a gold item's label is its known answer).

    Such an item has no label whatever the method says: a weighted vote over nothing gives
    ``(1/3, 1/3, 1/3)``, and Dawid–Skene would still read a label off votes that carry no
    weight. Callers report it as undecided and never export it as a pair.
    """
    w = np.asarray(worker_weights, dtype=np.float64)
    carried = np.bincount(j.item, weights=np.where(np.isfinite(w), w, 0.0)[j.worker], minlength=j.n_items)
    undecided = ~(carried > 0)
    if j.gold is not None:
        undecided &= j.gold < 0
    return undecided


# --------------------------------------------------------------------------- pools


@dataclass(eq=False)
class PoolDisagreement:
    """How much pools' vote distributions differ.

    ``per_item``: the largest total-variation distance between two pools' vote shares on the
    item (NaN where fewer than two pools voted). ``matrix[p, q]``: mean of that distance over
    items both pools voted on (NaN where none); ``n_shared[p, q]`` those items' count.
    """

    per_item: np.ndarray
    matrix: np.ndarray
    n_shared: np.ndarray


def pool_disagreement(j: Judgments, pool: np.ndarray | None = None) -> PoolDisagreement:
    """Per-item and pool-by-pool disagreement (total-variation distance of vote shares)."""
    pool = j.pool if pool is None else np.asarray(pool, dtype=np.int64)
    if pool is None:
        raise ValueError("pool_disagreement needs a pool per worker")
    n_pools = int(pool.max()) + 1 if pool.size else 0
    key = (j.item * n_pools + pool[j.worker]) * N_CLASSES + j.label
    counts = np.bincount(key, minlength=j.n_items * n_pools * N_CLASSES).reshape(
        j.n_items, n_pools, N_CLASSES
    )
    total = counts.sum(axis=2)
    present = total > 0
    shares = counts / np.maximum(total, 1)[:, :, None]
    per_item = np.full(j.n_items, -np.inf)
    matrix = np.full((n_pools, n_pools), np.nan)
    n_shared = np.zeros((n_pools, n_pools), dtype=np.int64)
    for p in range(n_pools):
        n_shared[p, p] = int(present[:, p].sum())
        matrix[p, p] = 0.0 if n_shared[p, p] else np.nan
        for q in range(p + 1, n_pools):
            both = present[:, p] & present[:, q]
            tv = 0.5 * np.abs(shares[:, p] - shares[:, q]).sum(axis=1)
            per_item = np.where(both, np.maximum(per_item, tv), per_item)
            n_shared[p, q] = n_shared[q, p] = int(both.sum())
            if both.any():
                matrix[p, q] = matrix[q, p] = float(tv[both].mean())
    per_item[np.isneginf(per_item)] = np.nan
    return PoolDisagreement(per_item=per_item, matrix=matrix, n_shared=n_shared)
