"""The claim and the submit with the ORM, for databases without the PostgreSQL statements
(SQLite, where write transactions run one at a time): simple and correct, several queries each.
"""
from __future__ import annotations

import time
from datetime import timedelta

from django.db import IntegrityError, connection, transaction
from django.db.models import Count, Exists, OuterRef, Subquery

from ..models import Assignment, AssignmentStatus, Comparison, Judgment, Membership, Project
from .rules import (
    CANDIDATES,
    CLAIM_ATTEMPTS,
    PAUSED,
    AssignmentGone,
    NotAnAnnotator,
    QueueError,
    _expire_stale,
    _jitter,
    _lock,
    _plausible_seconds,
    shown_to_stored,
    _take_slots,
    _with_texts,
    current_assignment,
)

def _seen_ids(annotator, project: Project):
    """Comparisons this annotator may not be served: judged, skipped or held (not expired)."""
    return Assignment.objects.filter(annotator=annotator, project=project).exclude(
        status=AssignmentStatus.EXPIRED
    ).values("comparison_id")


def _pool_targets(project: Project) -> dict[int, float]:
    pools = list(project.pools.values_list("pk", "target_share"))
    total = sum(share for _, share in pools if share > 0)
    if total <= 0:
        return {}
    return {pk: share / total for pk, share in pools if share > 0}


def _claim(annotator, project: Project, membership: Membership, *, golds, now, rng) -> Assignment | None:
    """Take a slot on the best candidate for this annotator, gold or regular in the order of
    ``golds`` (the next kind is tried when the first has no candidate); None when there is none.

    The candidates are read without locks and ranked; then the best one that can be locked
    (``SKIP LOCKED``: another request is claiming it) and still has room is taken, one row
    lock per claim. When every candidate was locked or filled in the meantime, the claim
    looks again (``CLAIM_ATTEMPTS``) instead of reporting an empty queue. Both kinds are tried
    in one transaction, so that a wanted kind with nothing left costs one query, not a second
    lock, held-item check and expiry.
    """
    for attempt in range(CLAIM_ATTEMPTS):
        with transaction.atomic():
            # One claim at a time per annotator (a double click, two tabs): the second waits
            # here, then finds the first one's assignment. An exclusion that landed since the
            # membership was read is seen here.
            if _lock_annotator(membership):
                raise NotAnAnnotator(PAUSED)
            # A separate statement after the lock: on PostgreSQL it reads a snapshot taken
            # after the lock was granted, so it sees an assignment the previous holder of the
            # lock has just committed (a subquery in the locking statement would not).
            held = current_assignment(annotator, project, now)
            if held is not None:
                return held
            if attempt == 0:
                _expire_stale(project, now)
            chosen, busy = None, False
            for gold in golds:
                chosen, found = _lock_best(annotator, project, membership, gold=gold, rng=rng)
                busy = busy or found
                if chosen is not None:
                    break
            if chosen is not None:
                _take_slots(project, chosen.pk, slots=1)
                expires = now + timedelta(seconds=project.assignment_timeout_s)
                a_on_left = rng.random() < 0.5
                fields = dict(
                    project=project,
                    pool_id=membership.pool_id,
                    a_on_left=a_on_left,
                    status=AssignmentStatus.ACTIVE,
                    expires_at=expires,
                    finished_at=None,
                )
                # The candidates exclude every assignment of this annotator but expired ones,
                # and their claims are serialized by the membership lock: an existing row can
                # only be their expired assignment of the same comparison, served again.
                if chosen.mine_expired:
                    Assignment.objects.filter(annotator=annotator, comparison_id=chosen.pk).update(
                        created_at=now, **fields
                    )
                else:
                    Assignment.objects.create(annotator=annotator, comparison_id=chosen.pk, **fields)
        if chosen is not None:
            return _with_texts(Assignment.objects.filter(annotator=annotator, comparison_id=chosen.pk)).get()
        if not busy:
            return None
        # Every candidate was being claimed by a concurrent request or filled meanwhile.
        time.sleep(0.002 * (attempt + 1) * (0.5 + _jitter.random()))
    return None


def _lock_best(annotator, project: Project, membership: Membership, *, gold: bool, rng) -> tuple[Comparison | None, bool]:
    """(The best candidate of this kind, locked and with room, or None; whether there were any.)"""
    candidates = list(
        Comparison.objects.filter(project=project, is_gold=gold, is_open=True)
        .exclude(pk__in=_seen_ids(annotator, project))
        .order_by("-priority", "pk")
        .only("pk", "slots_taken", "is_gold", "priority")[:CANDIDATES]
    )
    if not gold:
        candidates = [c for c in candidates if c.slots_taken < project.overlap]
    if not candidates:
        return None, False
    if gold:
        first = rng.choice(candidates)
        ranked = [first] + [c for c in candidates if c.pk != first.pk]
    else:
        ranked = _by_need(project, membership, candidates)
    for candidate in ranked:
        row = (
            _lock(Comparison.objects.filter(pk=candidate.pk, is_open=True))
            .annotate(mine_expired=Exists(Assignment.objects.filter(
                annotator=annotator, comparison_id=OuterRef("pk"), status=AssignmentStatus.EXPIRED
            )))
            .only("pk", "slots_taken")
            .first()
        )
        if row is not None and (gold or row.slots_taken < project.overlap):
            return row, True
    return None, True


def _lock_annotator(membership: Membership) -> bool:
    """Lock the annotator's membership row (where the database has row locks) and return its
    current ``excluded`` flag (the locked row's latest version)."""
    qs = Membership.objects.filter(pk=membership.pk)
    if connection.features.has_select_for_update:
        qs = qs.select_for_update()
    row = qs.values_list("excluded", flat=True).first()
    return row is None or bool(row)


def _by_need(project: Project, membership: Membership, candidates: list[Comparison]) -> list[Comparison]:
    """The candidates, the one on which the annotator's pool is furthest below its target
    share first (see ``_most_needed``); ties by priority (highest first), then import order."""
    targets = _pool_targets(project)
    pool_id = membership.pool_id
    if not targets or pool_id not in targets:
        return list(candidates)
    taken = dict(
        Assignment.objects.filter(
            comparison_id__in=[c.pk for c in candidates],
            pool_id=pool_id,
            status__in=[AssignmentStatus.ACTIVE, AssignmentStatus.DONE],
        )
        .values("comparison_id")
        .annotate(n=Count("pk"))
        .values_list("comparison_id", "n")
    )
    target = targets[pool_id] * project.overlap
    return sorted(candidates, key=lambda c: (-(target - taken.get(c.pk, 0)), -c.priority, c.pk))


def _most_needed(project: Project, membership: Membership, candidates: list[Comparison]) -> Comparison:
    """The candidate on which the annotator's pool is furthest below its target share.

    deficit = target_share(pool) × overlap − judgments and live assignments from the pool.
    Ties go to the highest priority, then to the oldest comparison, so that in arrival order
    (every priority 0) work finishes in import order.
    """
    return _by_need(project, membership, candidates)[0]


def _submit_orm(annotator, assignment_id: int, *, choice, strength, rationale, seconds, now):
    # The annotator's membership first, in the same order as a claim, so that a late
    # submit and a simultaneous claim of the same annotator cannot deadlock.
    membership = (
        Membership.objects.select_for_update(of=("self",))
        .filter(
            user=annotator,
            project_id=Subquery(
                Assignment.objects.filter(pk=assignment_id, annotator=annotator).values("project_id")[:1]
            ),
        )
        .first()
    )
    if membership is None:
        raise Assignment.DoesNotExist("No such assignment of yours.")
    # of=("self",): lock the assignment row only. A plain select_for_update() with
    # select_related("project") also locks the project row, which serializes every submit
    # of the project and deadlocks against a claim (the claim holds the comparison row and
    # waits on the project row for its assignment's foreign key; the submit holds the
    # project row and waits on the comparison row for its judgment's foreign key).
    assignment = (
        Assignment.objects.select_for_update(of=("self",))
        .select_related("project")
        .get(pk=assignment_id, annotator=annotator)
    )
    project = assignment.project

    def existing():
        return Judgment.objects.get(annotator=annotator, comparison_id=assignment.comparison_id), False, project, membership

    if assignment.status == AssignmentStatus.DONE:
        return existing()
    if assignment.status == AssignmentStatus.SKIPPED:
        raise QueueError("You skipped this item.")
    if membership.excluded:
        raise NotAnAnnotator(PAUSED)
    underlying, strength = shown_to_stored(project, assignment.a_on_left, choice, strength)
    if assignment.status == AssignmentStatus.EXPIRED:
        # The slot went back to the queue: take it again if the comparison still has room.
        comparison = Comparison.objects.select_for_update().get(pk=assignment.comparison_id)
        if not comparison.is_gold and comparison.slots_taken >= project.overlap:
            raise AssignmentGone("This item expired and others have judged it meanwhile.")
    retaken = 1 if assignment.status == AssignmentStatus.EXPIRED else 0
    try:
        with transaction.atomic():
            judgment = Judgment.objects.create(
                project=project,
                comparison_id=assignment.comparison_id,
                annotator=annotator,
                assignment=assignment,
                pool_id=assignment.pool_id,
                a_on_left=assignment.a_on_left,
                choice=underlying,
                strength=strength,
                rationale=(rationale or "").strip(),
                seconds=_plausible_seconds(seconds, now, assignment.created_at),
            )
    except IntegrityError:
        return existing()
    assignment.status = AssignmentStatus.DONE
    assignment.finished_at = now
    assignment.save(update_fields=["status", "finished_at"])
    _take_slots(project, assignment.comparison_id, slots=retaken, judgments=1)
    return judgment, True, project, membership
