"""Reads: judgments from the database into the arrays the pure statistics modules take."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from django.db.models.functions import Length

from annotate.models import Choice, Comparison, GoldAnswer, Judgment, Membership, Project

LABEL = {Choice.A: 0, Choice.B: 1, Choice.TIE: 2, Choice.BOTH_BAD: 2}
GOLD_LABEL = {Choice.A: 0, Choice.B: 1, Choice.TIE: 2, Choice.BOTH_BAD: 2}


@dataclass
class JudgmentTable:
    """Judgments of one project as parallel arrays plus the maps back to database ids.

    ``item``/``worker`` index into ``comparison_ids``/``annotator_ids``; ``label`` is
    0 = A better, 1 = B better, 2 = tie or both bad (``both_bad`` tells which).
    """

    judgment_ids: np.ndarray
    item: np.ndarray
    worker: np.ndarray
    label: np.ndarray
    both_bad: np.ndarray
    a_left: np.ndarray
    seconds: np.ndarray
    strength: np.ndarray
    pool_of_judgment: np.ndarray
    comparison_ids: np.ndarray
    annotator_ids: np.ndarray
    worker_pool: np.ndarray  # pool id of each worker (membership), -1 if none
    len_a: np.ndarray
    len_b: np.ndarray
    gold: np.ndarray  # per item: -1, or the gold label 0/1/2

    @property
    def n_items(self) -> int:
        return len(self.comparison_ids)

    @property
    def n_workers(self) -> int:
        return len(self.annotator_ids)

    def __len__(self) -> int:
        return len(self.item)


def load_judgments(
    project: Project,
    *,
    rounds: list[int] | None = None,
    pools: list[int] | None = None,
    include_excluded: bool = True,
) -> JudgmentTable:
    qs = Judgment.objects.filter(project=project)
    if rounds:
        qs = qs.filter(comparison__round__in=rounds)
    if pools:
        qs = qs.filter(pool_id__in=pools)
    if not include_excluded:
        excluded = Membership.objects.filter(project=project, excluded=True).values("user_id")
        qs = qs.exclude(annotator_id__in=excluded)
    rows = list(
        qs.order_by("pk").values_list(
            "pk", "comparison_id", "annotator_id", "choice", "a_on_left", "seconds", "strength", "pool_id"
        ).iterator(chunk_size=20000)
    )
    n = len(rows)
    if n:
        jid, cid, uid, choice, a_left, seconds, strength, pool = zip(*rows)
    else:
        jid = cid = uid = choice = a_left = seconds = strength = pool = ()
    cid_arr = np.fromiter(cid, dtype=np.int64, count=n)
    uid_arr = np.fromiter(uid, dtype=np.int64, count=n)
    comparison_ids, item = np.unique(cid_arr, return_inverse=True)
    annotator_ids, worker = np.unique(uid_arr, return_inverse=True)

    member_pool = dict(
        Membership.objects.filter(project=project, user_id__in=annotator_ids.tolist()).values_list("user_id", "pool_id")
    )
    worker_pool = np.array([member_pool.get(int(u)) or -1 for u in annotator_ids], dtype=np.int64)

    lengths = {}
    gold_of = {}
    ids = comparison_ids.tolist()
    for start in range(0, len(ids), 5000):
        chunk = ids[start : start + 5000]
        lengths.update(
            (pk, (la, lb))
            for pk, la, lb in Comparison.objects.filter(pk__in=chunk)
            .annotate(la=Length("response_a__text"), lb=Length("response_b__text"))
            .values_list("pk", "la", "lb")
        )
        gold_of.update(GoldAnswer.objects.filter(comparison_id__in=chunk).values_list("comparison_id", "answer"))
    len_a = np.array([lengths[c][0] for c in ids], dtype=np.int64)
    len_b = np.array([lengths[c][1] for c in ids], dtype=np.int64)
    gold = np.array([GOLD_LABEL[gold_of[c]] if c in gold_of else -1 for c in ids], dtype=np.int8)

    return JudgmentTable(
        judgment_ids=np.fromiter(jid, dtype=np.int64, count=n),
        item=item.astype(np.int64),
        worker=worker.astype(np.int64),
        label=np.fromiter((LABEL[c] for c in choice), dtype=np.int8, count=n),
        both_bad=np.fromiter((c == Choice.BOTH_BAD for c in choice), dtype=bool, count=n),
        a_left=np.fromiter(a_left, dtype=bool, count=n),
        seconds=np.fromiter((s if s is not None else np.nan for s in seconds), dtype=np.float64, count=n),
        strength=np.fromiter((s or 0 for s in strength), dtype=np.int8, count=n),
        pool_of_judgment=np.fromiter((p or -1 for p in pool), dtype=np.int64, count=n),
        comparison_ids=comparison_ids,
        annotator_ids=annotator_ids,
        worker_pool=worker_pool,
        len_a=len_a,
        len_b=len_b,
        gold=gold,
    )
