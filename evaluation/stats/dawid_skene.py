"""Dawid–Skene EM for A/B/tie judgments, optionally position-debiased (pure numpy/scipy).

Called through :func:`evaluation.stats.aggregation.aggregate` (methods ``dawid_skene`` and
``dawid_skene_debiased``).

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
Everything a judgment contributes depends only on its (worker, label[, side]) combination,
so the E step is a sparse product ``X @ log_table[k]`` per class (``X[i, c]`` = judgments on
item i with combination c) and the M step ``X.T @ T[k]``. The only Python loops are over EM
iterations and the three classes.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .judgments import (
    N_CLASSES,
    TIE,
    A,
    Aggregate,
    B,
    Judgments,
    clamp_to_gold,
    class_sums,
    pool_balance_factor,
    vote_shares,
)

_TINY = 1e-300


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
            self.picked_right = np.where(known, (self.label != left_label) & not_tie, 0.5 * not_tie).astype(
                np.float64
            )
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
            proba=clamp_to_gold(j, proba) if clamp_gold else proba,
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
        T = vote_shares(class_sums(j.item, j.label, n_items))
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
