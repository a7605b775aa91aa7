"""Label aggregation for pairwise preference judgments (pure numpy; no Django).

Every judgment says which of two responses to one prompt is better: ``0`` = A, ``1`` = B,
``2`` = tie (the Django layer maps "both bad" to tie here and passes it separately to
:mod:`evaluation.bias`). :class:`Judgments` holds them as parallel arrays; :func:`aggregate`
turns them into one posterior ``P(A better), P(B better), P(tie)`` per comparison ("item").

Methods (``aggregate(j, method)``):

``majority``
    Vote shares: ``p_k = (votes for k) / (votes)``, optionally weighted per annotator
    (``worker_weights=``, e.g. :func:`evaluation.bias.annotator_weights`). A 1–1 split between
    A and B is ``p = (0.5, 0.5, 0)``.

``gold_weighted``
    Each annotator's vote counts ``w = max(0, log(acc / (1 - acc)))`` where ``acc`` is the
    Beta-posterior mean of their gold accuracy (prior Beta(2, 1), see :data:`GOLD_PRIOR`; an
    annotator with no gold gets the prior mean 2/3, i.e. ``w = log 2``). The item posterior is
    ``softmax_k(sum of w over votes for k)``: the naive-Bayes posterior of a "one-coin" annotator
    who is right with probability ``acc``. Annotators at or below chance get weight 0.

``dawid_skene``
    Dawid & Skene (1979) EM with three classes. Annotator ``j`` has a confusion matrix
    ``pi[j, k, l] = P(says l | truth k)``; the classes have a prior ``rho``. E step:
    ``log T[i, k] = log rho_k + sum_{judgments n on i} log pi[worker_n, k, label_n]``, normalized.
    M step: ``pi[j, k, l] ∝ sum_{n by j with label l} T[item_n, k] + smoothing`` and
    ``rho ∝ sum_i T[i] + prior_smoothing``. Initialized from the (gold-clamped) vote shares;
    gold items are clamped to their gold label after every E step. Stops when the log
    likelihood per judgment improves by less than ``tol``.

``dawid_skene_debiased``
    Dawid–Skene with an explicit position bias. Display order is randomized per assignment,
    so a judgment either picks the response shown on the left, the one on the right, or tie.
    Annotator ``j`` answers in one of three ways: with probability ``lam_left[j]`` they click
    *left* whatever the content, with probability ``lam_right[j]`` they click *right*, and
    otherwise they judge the content through an ordinary confusion matrix ``pi[j]`` over
    A/B/tie. So for a judgment showing A on the left::

        P(label = A | truth k) = (1 - lam_left - lam_right) * pi[k, A] + lam_left
        P(label = B | truth k) = (1 - lam_left - lam_right) * pi[k, B] + lam_right
        P(label = tie | truth k) = (1 - lam_left - lam_right) * pi[k, tie]

    (mirrored when B is on the left). The constant ``lam_left`` does not depend on the truth,
    so it pulls the likelihood ratio of a left pick towards 1: a left-biased annotator's left
    picks are discounted, their right picks keep (and gain) weight. Because the order is
    random, ``lam`` is identified from how labels correlate with display order. EM treats
    "which of the three ways" as a second latent variable; ``lam`` gets a pseudo-count prior
    of ``bias_prior`` judgments of content-driven clicking, so small samples shrink to no bias.
    ``left_bias = lam_left - lam_right`` is reported per annotator. With ``lam = 0`` the model
    is exactly ``dawid_skene``.

    Judgments whose display order was not recorded (``a_left_known`` false: imported votes)
    keep the model with the unknown order marginalized out, taking it random like the app's
    (A on the left with probability 1/2, whatever the content): a position click then lands on
    A or B with probability 1/2 each, independently of the truth, so::

        P(label = A | truth k) = (1 - lam_left - lam_right) * pi[k, A] + (lam_left + lam_right) / 2
        P(label = B | truth k) = (1 - lam_left - lam_right) * pi[k, B] + (lam_left + lam_right) / 2
        P(label = tie | truth k) = (1 - lam_left - lam_right) * pi[k, tie]

    EM is exact for this marginal likelihood (a position click on such a judgment is attributed
    to left and right in proportion ``lam_left : lam_right``). Such judgments carry no
    information about ``lam``: with the order unknown, ``(lam_left + lam_right) / 2`` on A and
    B is indistinguishable from content noise in ``pi``. So ``lam`` is identified only by an
    annotator's known-order judgments; an annotator with none starts (and, as ``lam = 0`` is a
    fixed point of EM and the prior's mode, stays) at ``lam = 0``, their ``left_bias`` is NaN,
    and their judgments count exactly as in ``dawid_skene``. When no judgment has a known
    order the result equals ``dawid_skene``'s.

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
import scipy.sparse as sp

A, B, TIE = 0, 1, 2
N_CLASSES = 3
METHODS = ("majority", "gold_weighted", "dawid_skene", "dawid_skene_debiased")
#: Beta prior on gold accuracy: one pseudo-correct answer on top of a uniform prior.
#: Its mean 2/3 says "annotators are usually better than chance", and it weighs two answers,
#: so three right answers give 5/6, not 1.
GOLD_PRIOR: tuple[float, float] = (2.0, 1.0)
_TINY = 1e-300


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


def _clamp_gold(j: Judgments, proba: np.ndarray) -> np.ndarray:
    if j.gold is not None:
        is_gold = j.gold >= 0
        proba[is_gold] = 0.0
        proba[is_gold, j.gold[is_gold]] = 1.0
    return proba


def _shares(sums: np.ndarray) -> np.ndarray:
    total = sums.sum(axis=1, keepdims=True)
    return np.divide(sums, total, out=np.full_like(sums, 1.0 / N_CLASSES), where=total > 0)


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
    proba = _shares(class_sums(j.item, j.label, j.n_items, w))
    if clamp_gold:
        proba = _clamp_gold(j, proba)
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
        proba = _clamp_gold(j, proba)
    return Aggregate("gold_weighted", proba, np.bincount(j.item, minlength=j.n_items), accuracy=acc)


# --------------------------------------------------------------------------- Dawid–Skene


# Everything a judgment contributes depends only on its (worker, label[, side]) "combo", so
# likelihoods live in small per-combo tables. With ``X[i, c]`` the number of judgments on item
# i with combo c (a fixed sparse matrix, one nonzero per judgment), the E step's per-item sums
# are ``X @ log_table[k]`` and the M step's expected counts ``X.T @ T[k]``: the same sums as
# ``np.bincount`` with weights, done by scipy's CSR / CSC kernels. Posteriors are kept
# class-major (``T[k, i]``) so that every per-class operation reads a contiguous array.

#: Display sides of a debiased combo: B on the left, A on the left, order unknown (the last
#: only when some judgment's order is unknown).
SIDE_B_LEFT, SIDE_A_LEFT, SIDE_UNKNOWN = 0, 1, 2
_N_SIDES = 3


class _Combos:
    """Each judgment's (worker, label[, side]) combination, what it means, and the matrix X.

    With sides, ``picked_left[c]`` / ``picked_right[c]`` are the probabilities that a click on
    the left / right response gives the combo's label: 0 or 1 when the order is known, 1/2
    each for an A or B label when it is unknown (the order marginalized at 1/2), 0 for a tie.
    """

    def __init__(self, j: Judgments, with_side: bool, e_weight: np.ndarray | None = None):
        K = N_CLASSES
        # The third side (order unknown) only when some judgment needs it: smaller tables.
        some_unknown = with_side and j.a_left_known is not None and not j.a_left_known.all()
        sides = (_N_SIDES if some_unknown else 2) if with_side else 1
        self.sides = sides
        self.n = j.n_workers * K * sides
        index = (j.worker * K + j.label) * sides
        if with_side:
            side = j.a_left.astype(np.int64)  # SIDE_A_LEFT = 1, SIDE_B_LEFT = 0
            if j.a_left_known is not None:
                side = np.where(j.a_left_known, side, SIDE_UNKNOWN)
            index = index + side
        shape = (j.n_items, self.n)
        self.counts = sp.csr_matrix((np.ones(j.n), (j.item, index)), shape=shape)
        self.counts_t = self.counts.T  # CSC: (combos x items)
        # Pool balancing re-weights judgments in the E step only.
        self.e_counts = (
            self.counts if e_weight is None else sp.csr_matrix((e_weight, (j.item, index)), shape=shape)
        )
        c = np.arange(self.n)
        self.worker = c // (K * sides)
        self.label = (c // sides) % K
        self.unknown_ab = None  # combos of an A/B label with the order unknown (None: none)
        if with_side:
            side = c % sides
            known = side != SIDE_UNKNOWN
            not_tie = self.label != TIE
            left_label = np.where(side == SIDE_A_LEFT, A, B)
            self.picked_left = np.where(known, self.label == left_label, 0.5 * not_tie).astype(np.float64)
            self.picked_right = np.where(
                known, (self.label != left_label) & not_tie, 0.5 * not_tie
            ).astype(np.float64)
            if some_unknown:
                self.unknown_ab = ~known & not_tie


def _combo_likelihood(confusion: np.ndarray, combos: _Combos, lam_left=None, lam_right=None):
    """``[3, n_combos]`` P(label | truth k). Debiased also ``(content_share, to_left,
    to_right)``: the share of it that comes from judging the content (``[3, n_combos]``), and
    the fractions of a position click on the combo that are left / right clicks
    (``[n_combos]``: 0 or 1 when the order is known, ``lam_left : lam_right`` when not)."""
    K = N_CLASSES
    table = confusion.transpose(1, 0, 2).reshape(K, -1)  # [truth, worker * K + said]
    if lam_left is None:
        return table, None
    table = np.repeat(table, combos.sides, axis=1)
    content = (1.0 - lam_left - lam_right)[combos.worker] * table
    lik = content + (
        lam_left[combos.worker] * combos.picked_left + lam_right[combos.worker] * combos.picked_right
    )
    to_left, to_right = combos.picked_left, combos.picked_right
    if combos.unknown_ab is not None:
        ll, lr = lam_left[combos.worker], lam_right[combos.worker]
        split = np.divide(ll, ll + lr, out=np.full(combos.n, 0.5), where=ll + lr > 0)
        to_left = np.where(combos.unknown_ab, split, to_left)
        to_right = np.where(combos.unknown_ab, 1.0 - split, to_right)
    return lik, (content / np.maximum(lik, _TINY), to_left, to_right)


def _posterior(log_lik_table: np.ndarray, combos: _Combos, log_prior: np.ndarray):
    """E step: ``[3, n_items]`` (class-major) posteriors and the marginal log-likelihood."""
    scores = np.empty((N_CLASSES, combos.counts.shape[0]))
    for k in range(N_CLASSES):
        if np.isneginf(log_prior[k]):  # a disabled class: skip its product
            scores[k] = -np.inf
        else:
            scores[k] = combos.e_counts @ log_lik_table[k]
            scores[k] += log_prior[k]
    top = np.maximum(np.maximum(scores[0], scores[1]), scores[2])
    scores -= top
    np.exp(scores, out=scores)
    total = scores[0] + scores[1] + scores[2]
    scores /= total
    return scores, float(np.log(total).sum() + top.sum())


def _log(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(x)


def _clamp_gold_class_major(j: Judgments, T: np.ndarray) -> np.ndarray:
    if j.gold is not None:
        is_gold = np.flatnonzero(j.gold >= 0)
        T[:, is_gold] = 0.0
        T[j.gold[is_gold], is_gold] = 1.0
    return T


def dawid_skene(
    j: Judgments,
    *,
    debias: bool = False,
    max_iter: int = 100,
    tol: float = 1e-6,
    smoothing: float = 0.1,
    prior_smoothing: float = 1.0,
    init: str | np.ndarray = "majority",
    clamp_gold: bool = True,
    pool_balanced: bool = False,
    bias_prior: float = 5.0,
    bias_init: float = 0.05,
) -> Aggregate:
    """Dawid–Skene EM (optionally position-debiased); see the module docstring.

    ``smoothing`` is a pseudo-count added to every cell of each confusion matrix (``0`` gives
    plain maximum likelihood with a 1e-10 floor, crowd-kit's M step); ``prior_smoothing`` the
    same for the class prior. ``tol``: stop when the log-likelihood per judgment changes by
    less. ``bias_prior``: pseudo-count of content-driven judgments shrinking ``lam`` to 0.
    Debiased: judgments with an unknown display order (``a_left_known`` false) have the order
    marginalized (module docstring); ``lam`` starts at ``bias_init`` only for annotators with at
    least one known-order judgment, else at 0 (not identifiable), and their ``left_bias`` is NaN.
    """
    if debias and j.a_left is None:
        raise ValueError("dawid_skene_debiased needs Judgments.a_left")
    n_items, n_workers, K = j.n_items, j.n_workers, N_CLASSES
    if debias:
        order_known = j.order_known
        has_order = np.bincount(j.worker[order_known], minlength=n_workers) > 0
    if j.n == 0:  # nothing to learn from: uniform posteriors (gold still clamped)
        proba = np.full((n_items, K), 1.0 / K)
        return Aggregate(
            method="dawid_skene_debiased" if debias else "dawid_skene",
            proba=_clamp_gold(j, proba) if clamp_gold else proba,
            n_judgments=np.zeros(n_items, dtype=np.int64),
            confusion=np.full((n_workers, K, K), 1.0 / K),
            accuracy=np.full(n_workers, np.nan),
            left_bias=np.full(n_workers, np.nan) if debias else None,
            prior=np.full(K, 1.0 / K),
            converged=True,
        )
    e_weight = pool_balance_factor(j, np.ones(j.n)) if pool_balanced else None
    combos = _Combos(j, with_side=debias, e_weight=e_weight)
    n_per_worker = np.bincount(j.worker, minlength=n_workers).astype(np.float64)
    n_per_item = np.bincount(j.item, minlength=n_items)
    judged = (n_per_item > 0).astype(np.float64)

    if isinstance(init, str):
        if init != "majority":
            raise ValueError("init must be 'majority' or an [n_items, 3] array")
        T = _shares(class_sums(j.item, j.label, n_items))
    else:
        T = np.asarray(init, dtype=np.float64)
        if T.shape != (n_items, K):
            raise ValueError(f"init must have shape {(n_items, K)}")
    T = np.ascontiguousarray(T.T)  # class-major [3, n_items]: per-class rows are contiguous
    # A class nobody ever uses (no tie votes, no tie gold) cannot be estimated: without this
    # the spare latent class slowly absorbs a cluster of items. Its prior is fixed at 0.
    used = np.bincount(j.label, minlength=K) > 0
    if j.gold is not None:
        used |= np.bincount(j.gold[j.gold >= 0], minlength=K) > 0
    T[~used] = 0.0
    if clamp_gold:
        T = _clamp_gold_class_major(j, T)
    # Position clicks are identifiable only from known-order judgments: annotators without any
    # start at lam = 0, a fixed point of EM (their position shares are then 0).
    lam_left = np.where(has_order, bias_init, 0.0) if debias else None
    lam_right = np.where(has_order, bias_init, 0.0) if debias else None

    def m_step(T: np.ndarray, shares: tuple[np.ndarray, np.ndarray, np.ndarray] | None):
        """Expected counts -> confusion, prior (and position-click rates when debiased)."""
        expected = np.zeros((K, combos.n))  # sum of T[k, item_n] over the judgments of each combo
        for k in np.flatnonzero(used):
            expected[k] = combos.counts_t @ T[k]
        new_left = new_right = None
        if shares is not None:
            content_share, to_left, to_right = shares
            position = (expected * (1.0 - content_share)).sum(axis=0)
            denom = n_per_worker + bias_prior
            new_left = np.bincount(combos.worker, weights=position * to_left, minlength=n_workers) / denom
            new_right = np.bincount(combos.worker, weights=position * to_right, minlength=n_workers) / denom
            expected = expected * content_share
        if debias:
            expected = expected.reshape(K, n_workers * K, combos.sides).sum(axis=2)
        counts = expected.reshape(K, n_workers, K).transpose(1, 0, 2)  # [worker, truth, said]
        confusion = np.maximum(counts + smoothing, 1e-10)
        confusion /= confusion.sum(axis=2, keepdims=True)
        prior = np.where(used, np.maximum(T @ judged + prior_smoothing, 1e-10), 0.0)
        prior /= prior.sum()
        return counts, confusion, prior, new_left, new_right

    # Initial parameters from the initial posteriors (every judgment content-driven).
    counts, confusion, prior, _, _ = m_step(T, None)
    log_lik = -np.inf
    converged = False
    iterations = 0
    for iterations in range(1, max_iter + 1):
        lik, shares = _combo_likelihood(confusion, combos, lam_left, lam_right)
        T, new_log_lik = _posterior(np.log(np.maximum(lik, _TINY)), combos, _log(prior))
        if clamp_gold:
            T = _clamp_gold_class_major(j, T)
        counts, confusion, prior, new_left, new_right = m_step(T, shares)
        if debias:
            lam_left, lam_right = new_left, new_right
        change = (new_log_lik - log_lik) / max(j.n, 1)
        log_lik = new_log_lik
        if abs(change) < tol:
            converged = True
            break

    # Final posteriors under the final parameters.
    lik, _ = _combo_likelihood(confusion, combos, lam_left, lam_right)
    T, log_lik = _posterior(np.log(np.maximum(lik, _TINY)), combos, _log(prior))
    if clamp_gold:
        T = _clamp_gold_class_major(j, T)

    # Accuracy: P(correct) from the confusion diagonal, mixed by the classes the worker saw.
    seen = counts.sum(axis=2)  # [worker, truth]
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = (seen * np.diagonal(confusion, axis1=1, axis2=2)).sum(axis=1) / seen.sum(axis=1)
    if debias:
        # A position click is right when the better response happens to be on that side: half
        # the non-tie items.
        accuracy = (1.0 - lam_left - lam_right) * accuracy + 0.5 * (lam_left + lam_right) * (1.0 - prior[TIE])
    return Aggregate(
        method="dawid_skene_debiased" if debias else "dawid_skene",
        proba=np.ascontiguousarray(T.T),
        n_judgments=n_per_item,
        confusion=confusion,
        accuracy=accuracy,
        left_bias=np.where(has_order, lam_left - lam_right, np.nan) if debias else None,
        prior=prior,
        iterations=iterations,
        converged=converged,
        log_likelihood=log_lik,
    )


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


# --------------------------------------------------------------------------- simulation


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
