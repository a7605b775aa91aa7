"""Quality services other parts call: the effective-weight rule, an admin's weight actions
(exclude, include, override), and aggregated labels.

The weight the export and training use is :func:`effective_weight`: the computed weight
(:func:`evaluation.stats.bias.annotator_weights`), replaced by an admin's override when set,
and 0 for an excluded annotator. ``docs/quality.md`` writes the whole rule down.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from django.db import transaction

from annotate.models import Membership, Project, Role

from ..models import AnnotatorQuality
from ..selectors import load_judgments, pool_groups
from ..stats.aggregation import aggregate, pool_disagreement, undecided_items
from ..stats.jsonsafe import finite_or_none as _num
from .scheduling import auto_quality_enabled, schedule_quietly


def effective_weight(membership: Membership | None, quality: AnnotatorQuality | None) -> float:
    """The weight an annotator's judgments carry in exports and training, in [0, 1].

    0 when the annotator is excluded; else the admin's override when set; else the computed
    weight (``quality.weight``, from :func:`evaluation.stats.bias.annotator_weights`); else 1 when
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
    """The user is not a member of the project."""


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
    m = _membership(project, user_id)
    if m.excluded != excluded:
        m.excluded = excluded
        m.save(update_fields=["excluded"])
        if auto_quality_enabled():
            transaction.on_commit(lambda: schedule_quietly(project.pk))
    return m


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


def aggregated_labels(
    project: Project,
    method: str = "dawid_skene",
    *,
    pool_balanced: bool = False,
    rounds: list[int] | None = None,
) -> list[dict]:
    """Per judged comparison: P(A), P(B), P(tie), the label, its confidence and the pools' spread.

    Excluded annotators are left out; for ``majority`` each vote counts with the annotator's
    effective weight (:func:`effective_weight`). A comparison whose voters all have effective
    weight 0 is undecided (any method): ``label``, the probabilities and ``confidence`` are None
    and ``undecided`` is true.
    """
    table = load_judgments(project, rounds=rounds, include_excluded=False)
    if not len(table):
        return []
    pool_index, _ = pool_groups(project, table)
    j = table.to_judgments(pool_index)
    opts: dict[str, Any] = {"pool_balanced": pool_balanced}
    weights = effective_weights(project)
    worker_weights = np.array([weights.get(int(u), 1.0) for u in table.annotator_ids])
    if method == "majority":
        opts["worker_weights"] = worker_weights
    agg = aggregate(j, method, **opts)
    undecided = undecided_items(j, worker_weights)
    spread = pool_disagreement(j).per_item if j.n_pools >= 2 else np.full(j.n_items, np.nan)
    label_name = {0: "a", 1: "b", 2: "tie"}
    gold = table.gold
    out = []
    for i, cid in enumerate(table.comparison_ids.tolist()):
        none = bool(undecided[i])
        out.append(
            {
                "comparison": cid,
                "p_a": None if none else float(agg.p_a[i]),
                "p_b": None if none else float(agg.p_b[i]),
                "p_tie": None if none else float(agg.p_tie[i]),
                "label": None if none else label_name[int(agg.label[i])],
                "undecided": none,
                "confidence": None if none else float(agg.confidence[i]),
                "n_judgments": int(agg.n_judgments[i]),
                "is_gold": bool(gold[i] >= 0),
                "pool_disagreement": _num(spread[i]),
            }
        )
    return out
