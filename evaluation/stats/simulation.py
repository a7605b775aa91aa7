"""Synthetic judgments with known truth, for tests, benchmarks and demos (pure numpy).

:func:`simulate` draws annotators of known accuracy, position and length bias, judging items
of known label, so that an estimator can be checked against the truth it should recover.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .judgments import TIE, A, B, Judgments


@dataclass(eq=False)
class SimulationTruth:
    """What :func:`simulate` knows: true labels and each worker's behaviour."""

    label: np.ndarray  # [n_items]
    accuracy: np.ndarray  # [n_workers] P(correct) when judging the content
    left_bias: np.ndarray  # [n_workers] P(click left whatever the content)
    length_bias: np.ndarray  # [n_workers] P(click the longer response whatever the content)
    effective_accuracy: np.ndarray  # [n_workers] P(label == truth) overall


def _distinct_workers(rng: np.random.Generator, n_items: int, overlap: int, p: np.ndarray) -> np.ndarray:
    """``[n_items, overlap]`` workers, distinct within each row, drawn with probabilities ``p``."""
    n_workers = p.shape[0]
    if overlap > n_workers:
        raise ValueError("overlap cannot exceed the number of workers")
    cdf = np.cumsum(p)
    cdf[-1] = 1.0

    def draw(size):
        return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), n_workers - 1)

    w = draw((n_items, overlap))
    for _ in range(1000):
        order = np.sort(w, axis=1)
        dup_rows = np.flatnonzero((order[:, 1:] == order[:, :-1]).any(axis=1))
        if dup_rows.size == 0:
            return w
        # Redraw the later copy of each duplicated worker in those rows.
        sub = w[dup_rows]
        srt = np.argsort(sub, axis=1, kind="stable")
        sorted_sub = np.take_along_axis(sub, srt, axis=1)
        is_dup = np.zeros_like(sub, dtype=bool)
        dup_sorted = np.zeros_like(sub, dtype=bool)
        dup_sorted[:, 1:] = sorted_sub[:, 1:] == sorted_sub[:, :-1]
        np.put_along_axis(is_dup, srt, dup_sorted, axis=1)
        sub[is_dup] = draw(int(is_dup.sum()))
        w[dup_rows] = sub
    raise RuntimeError("could not draw distinct workers; lower the activity skew")


def simulate(
    n_workers: int = 50,
    n_items: int = 2000,
    overlap: int = 5,
    *,
    accuracy: np.ndarray | tuple[float, float] = (0.55, 0.95),
    left_bias: np.ndarray | None = None,
    length_bias: np.ndarray | None = None,
    tie_rate: float = 0.0,
    gold_fraction: float = 0.0,
    n_pools: int = 1,
    activity_sigma: float = 0.0,
    seed: int = 0,
) -> tuple[Judgments, SimulationTruth]:
    """Synthetic judgments with known truth (tests, benchmarks, demos).

    Each item gets ``overlap`` distinct workers (chosen with log-normal activity if
    ``activity_sigma > 0``); A is shown on the left with probability 1/2. A worker clicks left
    with probability ``left_bias``, else the longer response with probability ``length_bias``,
    else judges the content: correct with probability ``accuracy``, otherwise one of the other
    classes at random (only the other side when ``tie_rate == 0``).
    """
    rng = np.random.default_rng(seed)
    if isinstance(accuracy, tuple):
        accuracy = rng.uniform(accuracy[0], accuracy[1], n_workers)
    accuracy = np.asarray(accuracy, dtype=np.float64)
    left_bias = np.zeros(n_workers) if left_bias is None else np.asarray(left_bias, dtype=np.float64)
    length_bias = np.zeros(n_workers) if length_bias is None else np.asarray(length_bias, dtype=np.float64)

    truth = np.where(rng.random(n_items) < 0.5, A, B)
    if tie_rate > 0:
        truth = np.where(rng.random(n_items) < tie_rate, TIE, truth)
    len_a = np.round(np.exp(rng.normal(6.0, 0.7, n_items))) + 1
    len_b = np.round(np.exp(rng.normal(6.0, 0.7, n_items))) + 1
    activity = (
        np.exp(rng.normal(0.0, activity_sigma, n_workers)) if activity_sigma > 0 else np.ones(n_workers)
    )
    workers = _distinct_workers(rng, n_items, overlap, activity / activity.sum())

    item = np.repeat(np.arange(n_items), overlap)
    worker = workers.ravel()
    n = item.shape[0]
    a_left = rng.random(n) < 0.5
    t = truth[item]
    # Content judgment: right with P(accuracy), else another class uniformly.
    right = rng.random(n) < accuracy[worker]
    if tie_rate > 0:
        wrong = (t + rng.integers(1, 3, n)) % 3
    else:
        wrong = 1 - t
    content = np.where(right, t, wrong)
    longer = np.where(len_a[item] >= len_b[item], A, B)
    left = np.where(a_left, A, B)
    u = rng.random(n)
    lb, nb = left_bias[worker], length_bias[worker]
    label = np.where(u < lb, left, np.where(u < lb + nb, longer, content))

    seconds_median = np.exp(rng.normal(np.log(20.0), 0.4, n_workers))
    seconds = seconds_median[worker] * np.exp(rng.normal(0.0, 0.5, n))
    gold = np.full(n_items, -1, dtype=np.int8)
    if gold_fraction > 0:
        is_gold = rng.random(n_items) < gold_fraction
        gold[is_gold] = truth[is_gold]
    pool = rng.integers(0, n_pools, n_workers) if n_pools > 1 else np.zeros(n_workers, dtype=np.int64)

    p_tie = tie_rate
    # A position or length click is right when the clicked side is the better one (1/2 of the
    # non-tie items, independent of the click), never on a tie.
    effective = (1 - left_bias - length_bias) * accuracy + (left_bias + length_bias) * 0.5 * (1 - p_tie)
    j = Judgments(
        item=item,
        worker=worker,
        label=label,
        a_left=a_left,
        seconds=seconds,
        n_items=n_items,
        n_workers=n_workers,
        pool=pool,
        gold=gold,
        len_a=len_a,
        len_b=len_b,
    )
    return j, SimulationTruth(truth, accuracy, left_bias, length_bias, effective)
