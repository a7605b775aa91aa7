"""The data of label aggregation (pure numpy; no Django): judgments in, posteriors out.

:class:`Judgments` holds pairwise preference judgments as parallel arrays (``0`` = A better,
``1`` = B better, ``2`` = tie); :class:`Aggregate` is what every method of
:mod:`evaluation.stats.aggregation` returns, one posterior ``P(A), P(B), P(tie)`` per item.
Also here: the per-item vote sums, gold counts and pool balancing that the methods share.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

A, B, TIE = 0, 1, 2
N_CLASSES = 3
#: Beta prior on gold accuracy: one pseudo-correct answer on top of a uniform prior.
#: Its mean 2/3 says "annotators are usually better than chance", and it weighs two answers,
#: so three right answers give 5/6, not 1.
GOLD_PRIOR: tuple[float, float] = (2.0, 1.0)


# --------------------------------------------------------------------------- data


def _as_array(name: str, x, dtype, ndim: int = 1) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d array, got shape {arr.shape}")
    if np.issubdtype(np.dtype(dtype), np.integer) or dtype is bool:
        if arr.size and not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
            if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
                raise ValueError(f"{name}: expected integers")
    return np.ascontiguousarray(arr, dtype=dtype)


@dataclass(frozen=True, eq=False)
class Judgments:
    """Judgments as parallel arrays, one row per judgment (validated on construction).

    ``item``/``worker`` are dense indices ``0..n_items-1`` / ``0..n_workers-1``; ``label`` is
    0 = A better, 1 = B better, 2 = tie. Optional: ``a_left`` (A shown on the left) and
    ``a_left_known`` (false where the display order is unknown, ``a_left`` then being
    meaningless; None = every order known), ``seconds`` (time spent; NaN = unknown),
    ``both_bad`` (the tie was "both bad"), per-worker ``pool``, per-item ``gold`` (-1 = not
    gold, else 0/1/2), ``len_a``/``len_b`` (characters).
    """

    item: np.ndarray
    worker: np.ndarray
    label: np.ndarray
    a_left: np.ndarray | None = None
    a_left_known: np.ndarray | None = None
    seconds: np.ndarray | None = None
    both_bad: np.ndarray | None = None
    n_items: int | None = None
    n_workers: int | None = None
    pool: np.ndarray | None = None
    gold: np.ndarray | None = None
    len_a: np.ndarray | None = None
    len_b: np.ndarray | None = None

    def __post_init__(self) -> None:
        def put(name: str, value) -> None:
            object.__setattr__(self, name, value)

        item = _as_array("item", self.item, np.int64)
        worker = _as_array("worker", self.worker, np.int64)
        label = _as_array("label", self.label, np.int8)
        n = item.shape[0]
        if worker.shape[0] != n or label.shape[0] != n:
            raise ValueError(
                f"item, worker, label must have the same length ({n}, {worker.shape[0]}, {label.shape[0]})"
            )
        if n and (label.min() < 0 or label.max() > 2):
            raise ValueError("label must be 0 (A), 1 (B) or 2 (tie)")
        if n and (item.min() < 0 or worker.min() < 0):
            raise ValueError("item and worker indices must be >= 0")
        n_items = int(item.max()) + 1 if n else 0
        n_workers = int(worker.max()) + 1 if n else 0
        if self.n_items is not None:
            if self.n_items < n_items:
                raise ValueError(f"n_items={self.n_items} but an item index is {n_items - 1}")
            n_items = int(self.n_items)
        if self.n_workers is not None:
            if self.n_workers < n_workers:
                raise ValueError(f"n_workers={self.n_workers} but a worker index is {n_workers - 1}")
            n_workers = int(self.n_workers)
        put("item", item)
        put("worker", worker)
        put("label", label)
        put("n_items", n_items)
        put("n_workers", n_workers)

        if self.a_left_known is not None and self.a_left is None:
            raise ValueError("a_left_known needs a_left")
        for name, dtype in (
            ("a_left", bool),
            ("a_left_known", bool),
            ("both_bad", bool),
            ("seconds", np.float64),
        ):
            value = getattr(self, name)
            if value is not None:
                value = _as_array(name, value, dtype)
                if value.shape[0] != n:
                    raise ValueError(f"{name} must have one entry per judgment ({n}), got {value.shape[0]}")
                put(name, value)
        if self.seconds is not None and np.any(self.seconds < 0):
            raise ValueError("seconds must be >= 0 (NaN for unknown)")
        if self.both_bad is not None and np.any(self.both_bad & (label != TIE)):
            raise ValueError("both_bad judgments must have label 2 (tie)")

        if self.pool is not None:
            pool = _as_array("pool", self.pool, np.int64)
            if pool.shape[0] != n_workers:
                raise ValueError(f"pool must have one entry per worker ({n_workers}), got {pool.shape[0]}")
            if pool.size and pool.min() < 0:
                raise ValueError("pool indices must be >= 0")
            put("pool", pool)
        if self.gold is not None:
            gold = _as_array("gold", self.gold, np.int8)
            if gold.shape[0] != n_items:
                raise ValueError(f"gold must have one entry per item ({n_items}), got {gold.shape[0]}")
            if gold.size and (gold.min() < -1 or gold.max() > 2):
                raise ValueError("gold must be -1 (not gold) or a label 0/1/2")
            put("gold", gold)
        for name in ("len_a", "len_b"):
            value = getattr(self, name)
            if value is not None:
                value = _as_array(name, value, np.float64)
                if value.shape[0] != n_items:
                    raise ValueError(f"{name} must have one entry per item ({n_items}), got {value.shape[0]}")
                put(name, value)

    @property
    def n(self) -> int:
        return int(self.item.shape[0])

    @property
    def order_known(self) -> np.ndarray | None:
        """Per judgment: whether its display order is known (None without ``a_left``)."""
        if self.a_left is None:
            return None
        if self.a_left_known is None:
            return np.ones(self.n, dtype=bool)
        return self.a_left_known

    @property
    def n_pools(self) -> int:
        return int(self.pool.max()) + 1 if self.pool is not None and self.pool.size else 0

    def subset(self, mask: np.ndarray) -> Judgments:
        """The judgments where ``mask`` is true, keeping the item and worker index spaces."""
        mask = np.asarray(mask)

        def pick(x):
            return None if x is None else x[mask]

        return Judgments(
            item=self.item[mask],
            worker=self.worker[mask],
            label=self.label[mask],
            a_left=pick(self.a_left),
            a_left_known=pick(self.a_left_known),
            seconds=pick(self.seconds),
            both_bad=pick(self.both_bad),
            n_items=self.n_items,
            n_workers=self.n_workers,
            pool=self.pool,
            gold=self.gold,
            len_a=self.len_a,
            len_b=self.len_b,
        )


def class_sums(
    item: np.ndarray, label: np.ndarray, n_items: int, weights: np.ndarray | None = None
) -> np.ndarray:
    """``[n_items, 3]`` sum of ``weights`` (default 1) of the judgments per item and label."""
    flat = np.bincount(item * N_CLASSES + label, weights=weights, minlength=n_items * N_CLASSES)
    return flat.reshape(n_items, N_CLASSES).astype(np.float64, copy=False)


def gold_counts(j: Judgments) -> tuple[np.ndarray, np.ndarray]:
    """Per worker: number of gold judgments and number matching the gold label."""
    if j.gold is None:
        zeros = np.zeros(j.n_workers, dtype=np.int64)
        return zeros, zeros.copy()
    g = j.gold[j.item]
    is_gold = g >= 0
    n_gold = np.bincount(j.worker[is_gold], minlength=j.n_workers)
    n_correct = np.bincount(j.worker[is_gold & (g == j.label)], minlength=j.n_workers)
    return n_gold, n_correct


def gold_posterior_mean(j: Judgments, prior: tuple[float, float] = GOLD_PRIOR) -> np.ndarray:
    """Beta-posterior mean of each worker's gold accuracy (the prior mean if no gold)."""
    n_gold, n_correct = gold_counts(j)
    a, b = prior
    return (n_correct + a) / (n_gold + a + b)


# --------------------------------------------------------------------------- results


@dataclass(eq=False)
class Aggregate:
    """Per-item posteriors (``proba[:, k]`` for k = A, B, tie) plus per-worker estimates."""

    method: str
    proba: np.ndarray
    n_judgments: np.ndarray
    confusion: np.ndarray | None = None  # [n_workers, 3, 3]: P(says l | truth k)
    accuracy: np.ndarray | None = None  # [n_workers]
    left_bias: np.ndarray | None = None  # [n_workers]: lam_left - lam_right (debiased DS)
    prior: np.ndarray | None = None  # [3] class prior (Dawid–Skene)
    iterations: int = 0
    converged: bool = True
    log_likelihood: float = float("nan")

    @property
    def p_a(self) -> np.ndarray:
        return self.proba[:, A]

    @property
    def p_b(self) -> np.ndarray:
        return self.proba[:, B]

    @property
    def p_tie(self) -> np.ndarray:
        return self.proba[:, TIE]

    @property
    def label(self) -> np.ndarray:
        """Most probable class; when the maximum is shared (e.g. an A/B split), tie (2)."""
        return argmax_label(self.proba)

    @property
    def confidence(self) -> np.ndarray:
        """The maximum posterior probability."""
        return self.proba.max(axis=1)


def argmax_label(proba: np.ndarray) -> np.ndarray:
    top = proba.max(axis=1, keepdims=True)
    at_top = proba >= top - 1e-12
    label = np.argmax(proba, axis=1).astype(np.int8)
    label[at_top.sum(axis=1) > 1] = TIE
    return label


# --------------------------------------------------------------------------- shared sums


def pool_balance_factor(j: Judgments, weights: np.ndarray) -> np.ndarray:
    """Per-judgment multiplier giving each pool present on an item the same total weight.

    ``factor_n = W_i / (P_i * W_{i, pool_n})`` with ``W_i`` the item's total weight, ``P_i`` the
    number of pools with positive weight on it and ``W_{i,p}`` pool p's weight on it.
    """
    if j.pool is None:
        raise ValueError("pool balancing needs Judgments.pool")
    n_pools = j.n_pools
    key = j.item * n_pools + j.pool[j.worker]
    w_ip = np.bincount(key, weights=weights, minlength=j.n_items * n_pools)
    w_i = w_ip.reshape(j.n_items, n_pools).sum(axis=1)
    p_i = (w_ip.reshape(j.n_items, n_pools) > 0).sum(axis=1)
    denom = p_i[j.item] * w_ip[key]
    return np.divide(w_i[j.item], denom, out=np.zeros(j.n), where=denom > 0)


def clamp_to_gold(j: Judgments, proba: np.ndarray) -> np.ndarray:
    """Gold items get their gold label with probability 1 (``proba`` changed in place)."""
    if j.gold is not None:
        is_gold = j.gold >= 0
        proba[is_gold] = 0.0
        proba[is_gold, j.gold[is_gold]] = 1.0
    return proba


def vote_shares(sums: np.ndarray) -> np.ndarray:
    """Row-normalized vote sums; items without votes get 1/3 each."""
    total = sums.sum(axis=1, keepdims=True)
    return np.divide(sums, total, out=np.full_like(sums, 1.0 / N_CLASSES), where=total > 0)
