"""Selecting and weighting an export's pairs: the annotator weights ``w_j``, the aggregation,
the filters (undecided, gold, ``min_confidence``, ties, both-bad) and the train/test split by
prompt. An undecided comparison (every voter has weight 0) is never exported; ``removed``
counts it under ``"undecided"`` when there is one.

:func:`select` returns a :class:`Selection`, the arrays the writers and the card read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from annotate.models import Membership, Pool, Project, Prompt

from ..models import AnnotatorQuality
from ..quality.services import effective_weight
from ..selectors import JudgmentTable, load_judgments
from ..stats import aggregation as agg
from ..stats.bias import annotator_weights
from ..stats.judgments import TIE, Aggregate, Judgments
from .options import ExportError, ExportOptions, describe_filters, precheck
from .progress import Progress


@dataclass
class _Computed:
    """Stands in for an ``AnnotatorQuality`` row: just the computed weight."""

    weight: float


def annotator_weight_vector(
    project: Project, table: JudgmentTable, j: Judgments, ds_accuracy: np.ndarray | None
) -> tuple[np.ndarray, str]:
    """``w_j`` per worker of ``table`` and a sentence saying where the weights came from.

    Always ``effective_weight(membership, quality)`` of the quality dashboard (exclusion → 0,
    an admin's override replaces the computed weight). The computed weight is the dashboard's
    stored one (``AnnotatorQuality.weight``, from its last report) when the project has
    stored rows; otherwise :func:`evaluation.stats.bias.annotator_weights` on these judgments.
    """
    ids = [int(u) for u in table.annotator_ids]
    members = {m.user_id: m for m in Membership.objects.filter(project=project, user_id__in=ids)}
    quality = {
        q.annotator_id: q for q in AnnotatorQuality.objects.filter(project=project, annotator_id__in=ids)
    }
    # ``source`` goes into the card and metadata.json.
    if quality:
        when = max(q.computed_at for q in quality.values())
        rows = [quality.get(u) for u in ids]
        source = (
            f"the quality dashboard's stored annotator weights (computed {when:%Y-%m-%d %H:%M} UTC; "
            "evaluation.stats.bias.annotator_weights), with admin exclusions and overrides"
        )
    else:
        computed = np.nan_to_num(annotator_weights(j, ds_accuracy=ds_accuracy).weight, nan=0.0)
        rows = [_Computed(float(w)) for w in computed]
        source = (
            "evaluation.stats.bias.annotator_weights computed on this export's judgments "
            "(Dawid–Skene accuracy where gold is scarce), with admin exclusions and overrides"
        )
    w = np.array(
        [_safe_weight(effective_weight(members.get(u), row)) for u, row in zip(ids, rows)], dtype=np.float64
    )
    return w, source


def _safe_weight(value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return 1.0
    return min(1.0, max(0.0, value)) if math.isfinite(value) else 0.0


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer: a fixed, platform-independent 64-bit hash of uint64 values."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def prompt_hash(prompt_ids: np.ndarray, seed: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        key = np.asarray(prompt_ids, dtype=np.uint64) + _mix64(np.array([seed], dtype=np.uint64))[0]
    return _mix64(key)


def split_prompts(
    selected_prompts: np.ndarray, all_prompts: np.ndarray, test_fraction: float, seed: int
) -> np.ndarray:
    """Boolean "is test" for ``all_prompts``.

    The ``test_fraction`` of the distinct ``selected_prompts`` (rounded, at least one when
    there are two or more and the fraction is positive) with the smallest seeded hashes are
    test; any other prompt is test when its hash is below the largest of those. So the split
    is a function of the prompt: no prompt is on both sides.
    """
    if test_fraction <= 0 or all_prompts.size == 0:
        return np.zeros(all_prompts.shape[0], dtype=bool)
    distinct = np.unique(selected_prompts)
    n_test = int(round(test_fraction * distinct.size))
    if distinct.size >= 2:
        n_test = min(max(n_test, 1), distinct.size - 1)
    else:
        n_test = 0
    if n_test == 0:
        return np.zeros(all_prompts.shape[0], dtype=bool)
    threshold = np.sort(prompt_hash(distinct, seed))[n_test - 1]
    return prompt_hash(all_prompts, seed) <= threshold


@dataclass(eq=False)
class Selection:
    """Everything the writers and the card need, as arrays over the aggregated items."""

    project: Project
    opts: ExportOptions
    table: JudgmentTable
    judgments: Judgments
    result: Aggregate
    worker_weight: np.ndarray
    weights_source: str
    pool_ids: np.ndarray  # dense pool index -> pool id (-1 = none)
    pool_names: dict[int, str]  # pool id -> name
    item_prompt: np.ndarray
    item_round: np.ndarray
    item_test: np.ndarray
    label: np.ndarray  # 0 A, 1 B, 2 tie
    item_both_bad: np.ndarray
    confidence: np.ndarray
    agreement: np.ndarray
    support: np.ndarray
    pool_disagreement: np.ndarray
    selected: np.ndarray  # sorted item indices of the exported pairs
    conversational: bool
    chat_prompts: np.ndarray  # sorted prompt ids whose Prompt.messages is set
    removed: dict[str, int]
    n_ties_included: int
    n_both_bad_included: int

    @property
    def n_pairs(self) -> int:
        return int(self.selected.shape[0])


def select(project: Project, opts: ExportOptions, progress: Progress | None = None) -> Selection:
    """Load, aggregate and filter; raises :class:`ExportError` when nothing is left."""
    progress = progress or Progress()
    precheck(project, opts)
    progress.stage("load")
    table = load_judgments(
        project, rounds=opts.rounds, pools=opts.pools, include_excluded=opts.include_excluded
    )
    item_prompt, item_round = table.item_prompt, table.item_round
    if len(table) == 0:  # raced with a deletion after the pre-check
        raise ExportError("no comparisons match: no judgments pass the rounds / pools filters")
    pool_names = dict(Pool.objects.filter(project=project).values_list("pk", "name"))
    progress.stage("aggregate")

    pool_ids, worker_pool_dense = np.unique(table.worker_pool, return_inverse=True)
    j = table.to_judgments(worker_pool_dense.astype(np.int64))
    # Dawid–Skene accuracies stand in for gold accuracy in the weight rule where gold is scarce.
    if opts.method in ("dawid_skene", "dawid_skene_debiased"):
        result = agg.aggregate(j, opts.method, pool_balanced=opts.pool_balanced)
        ds_accuracy = result.accuracy
        worker_weight, source = annotator_weight_vector(project, table, j, ds_accuracy)
    else:
        ds_accuracy = agg.aggregate(j, "dawid_skene").accuracy
        worker_weight, source = annotator_weight_vector(project, table, j, ds_accuracy)
        extra = {"worker_weights": worker_weight} if opts.method == "majority" else {}
        result = agg.aggregate(j, opts.method, pool_balanced=opts.pool_balanced, **extra)

    n_items = table.n_items
    label = result.label
    confidence = result.confidence
    n_per_item = np.bincount(j.item, minlength=n_items).astype(np.float64)
    agree = np.bincount(j.item, weights=(j.label == label[j.item]).astype(np.float64), minlength=n_items)
    agreement = np.divide(agree, n_per_item, out=np.zeros(n_items), where=n_per_item > 0)
    wsum = np.bincount(j.item, weights=worker_weight[j.worker], minlength=n_items)
    support = np.divide(wsum, n_per_item, out=np.zeros(n_items), where=n_per_item > 0)
    bb = np.bincount(j.item, weights=table.both_bad.astype(np.float64), minlength=n_items)
    plain_tie = np.bincount(
        j.item, weights=((j.label == TIE) & ~table.both_bad).astype(np.float64), minlength=n_items
    )
    item_both_bad = bb > plain_tie
    if pool_ids.shape[0] > 1:
        pool_dis = agg.pool_disagreement(j).per_item
    else:
        pool_dis = np.full(n_items, np.nan)

    # Filters, in order; the first one that empties the selection is named.
    keep = np.ones(n_items, dtype=bool)
    removed = {"gold": 0, "min_confidence": 0, "ties": 0, "both_bad": 0}
    filt = f" ({describe_filters(opts, pool_names)})" if (opts.rounds or opts.pools) else ""
    # Undecided: every voter has weight 0, so there is no label to export (never a pair).
    undecided = agg.undecided_items(j, worker_weight)
    if undecided.any():
        removed["undecided"] = int(undecided.sum())
        keep &= ~undecided
        if not keep.any():
            raise ExportError(
                f"no comparisons match: all {n_items} judged comparisons{filt} are undecided: every "
                "judgment on them is by an annotator whose weight is 0 (excluded, overridden to 0, or "
                "computed 0 by the weight rule; see the quality page). Set a weight override or include "
                "the annotators to export them"
            )
    if not opts.include_gold:
        is_gold = table.gold >= 0
        removed["gold"] = int(is_gold.sum())
        keep &= ~is_gold
        if not keep.any():
            raise ExportError(
                f"no comparisons match: all {n_items} judged comparisons{filt} are gold (calibration) "
                "comparisons, and include_gold is off"
            )
    if opts.min_confidence > 0:
        low = keep & (confidence < opts.min_confidence - 1e-12)
        removed["min_confidence"] = int(low.sum())
        keep &= ~low
        if not keep.any():
            raise ExportError(
                f"no comparisons match: min_confidence={opts.min_confidence:g} "
                f"removes all {int(low.sum())} remaining "
                f"comparisons{filt} (the highest confidence is {confidence[keep | low].max():.3f})"
            )
    is_tie = label == TIE
    tie_plain = keep & is_tie & ~item_both_bad
    tie_bb = keep & is_tie & item_both_bad
    n_left = int(keep.sum())
    if not opts.include_ties:
        removed["ties"] = int(tie_plain.sum())
        keep &= ~tie_plain
    if not opts.include_both_bad:
        removed["both_bad"] = int(tie_bb.sum())
        keep &= ~tie_bb
    if not keep.any():
        raise ExportError(
            f"no comparisons match: all {n_left} comparisons left{filt} are ties or both-bad, and "
            f"include_ties={opts.include_ties}, include_both_bad={opts.include_both_bad} exclude them"
        )
    selected = np.flatnonzero(keep)

    chat_prompts = np.array(
        sorted(
            Prompt.objects.filter(project=project, messages__isnull=False)
            .exclude(messages=None)
            .values_list("pk", flat=True)
            .iterator(chunk_size=20000)
        ),
        dtype=np.int64,
    )
    has_chat = bool(np.isin(item_prompt[selected], chat_prompts).any()) if chat_prompts.size else False
    conversational = opts.style == "conversational" or (opts.style == "auto" and has_chat)
    item_test = split_prompts(item_prompt[selected], item_prompt, opts.test_fraction, opts.seed)

    return Selection(
        project=project,
        opts=opts,
        table=table,
        judgments=j,
        result=result,
        worker_weight=worker_weight,
        weights_source=source,
        pool_ids=pool_ids,
        pool_names=pool_names,
        item_prompt=item_prompt,
        item_round=item_round,
        item_test=item_test,
        label=label,
        item_both_bad=item_both_bad,
        confidence=confidence,
        agreement=agreement,
        support=support,
        pool_disagreement=pool_dis,
        selected=selected,
        conversational=conversational,
        chat_prompts=chat_prompts,
        removed=removed,
        n_ties_included=int((keep & is_tie & ~item_both_bad).sum()),
        n_both_bad_included=int((keep & is_tie & item_both_bad).sum()),
    )
