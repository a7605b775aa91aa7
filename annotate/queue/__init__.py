"""The annotation queue: which comparison an annotator judges next, and the writes that follow.

Invariants kept here and nowhere else:

* ``Comparison.slots_taken`` = judgments + live (active) assignments, and
  ``Comparison.is_open`` = ``slots_taken < project.overlap`` for regular comparisons (gold
  comparisons stay open: every annotator may be served each gold item once).
* A comparison is never pushed past its overlap: the row to take is locked
  (``SELECT … FOR NO KEY UPDATE SKIP LOCKED`` on PostgreSQL; SQLite runs write transactions
  one at a time) and the slot count is re-read under the lock before it is taken.
* An annotator holds at most one active assignment: claims of one annotator are serialized
  on their membership row.
* An annotator is never served a comparison they judged, skipped or hold; an expired
  assignment returns its slot to the queue.

Open comparisons are served highest ``priority`` first, then in id (import) order; pool
balance comes before priority for regular items, and gold items keep their own random order.
Priority is 0 everywhere in an arrival-order project (the active-selection task writes it,
and zeroes it when the project goes back to arrival order), so the queue always orders by it
and never reads ``project.pair_order``.

Serving the next item reads a bounded number of rows through the
``comparison_open_prio_idx`` partial index (project, is_gold, priority DESC, id) WHERE is_open:
it never scans all comparisons.

On PostgreSQL the hot path is a few statements (``annotate.queue.postgres``): a claim is one
statement after the membership lock, a submit two, and ``submit_and_next`` does both in one
transaction (and can read the progress counter in the claim's round trip). Other databases
(SQLite) run the plain ORM version (``annotate.queue.orm``), one write transaction at a time.
``annotate.queue.reads``: the progress counter and the API's one-query look at an assignment;
``annotate.queue.rules``: the pieces these share.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connection, transaction
from django.utils import timezone

from ..models import Assignment, AssignmentStatus, Comparison, Judgment, Membership, Project, Role
from . import postgres
from .orm import _claim, _submit_orm
from .reads import EXACT_COUNT_UP_TO, OPEN_COUNT_TTL_S, ProgressQuery, owned_assignment, progress
from .rules import (
    CANDIDATES,
    CLAIM_ATTEMPTS,
    PAUSED,
    SHOWN_CHOICES,
    AssignmentGone,
    NotAnAnnotator,
    Progress,
    QueueError,
    _active_member,
    _expire_stale,
    _jitter,
    _release_slots,
    _rng,
    shown_to_stored,
    _plausible_seconds,
    annotator_membership,
    current_assignment,
    to_underlying,
)

__all__ = [
    "CANDIDATES", "CLAIM_ATTEMPTS", "EXACT_COUNT_UP_TO", "OPEN_COUNT_TTL_S", "PAUSED", "SHOWN_CHOICES",
    "AssignmentGone", "NotAnAnnotator", "Progress", "QueueError", "Submitted", "annotator_membership",
    "current_assignment", "expire_stale", "next_assignment", "owned_assignment", "progress", "release_assignments",
    "shown_pair", "shown_to_stored", "skip", "submit_and_next", "submit_judgment", "sync_open",
    "to_underlying",
]


def sync_open(project: Project) -> int:
    """Re-derive ``is_open`` of the project's regular comparisons from ``slots_taken`` and the
    current ``project.overlap``. Call it after changing the overlap. Returns the rows changed."""
    closed = Comparison.objects.filter(
        project=project, is_gold=False, is_open=True, slots_taken__gte=project.overlap
    ).update(is_open=False)
    opened = Comparison.objects.filter(
        project=project, is_gold=False, is_open=False, slots_taken__lt=project.overlap
    ).update(is_open=True)
    return closed + opened


def expire_stale(project: Project, now: datetime | None = None) -> int:
    """Mark active assignments past their deadline expired and return their slots."""
    with transaction.atomic():
        return _expire_stale(project, now or timezone.now())


def _one_statement() -> bool:
    """Whether the claim and the submit run as the few statements of ``annotate.queue.postgres``."""
    return connection.vendor == "postgresql"


def next_assignment(
    annotator,
    project: Project,
    *,
    membership: Membership | None = None,
    held_checked: bool = False,
    now: datetime | None = None,
    rng=None,
) -> Assignment | None:
    """The annotator's current assignment, or a newly claimed one; None when nothing is left.

    With probability ``project.gold_rate`` a gold comparison the annotator has not seen is
    served instead of a regular one; both look the same to the annotator.

    ``membership``: the annotator's membership when the caller has already read it (a view
    that checked the role). ``held_checked``: the caller knows the annotator holds nothing
    (it has just finished their item), so the unlocked look for a held item is skipped; the
    claim looks again under its lock either way. (On PostgreSQL both are moot: the membership
    is read as it is locked, and the held item is looked for in the claim's statement.)
    """
    rng = rng or _rng
    now = now or timezone.now()
    if _one_statement():
        with transaction.atomic():
            member = _active_member(postgres.lock_member(annotator.pk, project.pk))
            got = _claim_pg(annotator, project, member, now=now, rng=rng, ignore_stale=False)
            if got is _STALE:
                _expire_stale(project, now)
                got = _claim_pg(annotator, project, member, now=now, rng=rng, ignore_stale=True)
        return got
    membership = _active_member(membership) if membership is not None else annotator_membership(annotator, project)
    if not held_checked:
        held = current_assignment(annotator, project, now)
        if held is not None:
            return held
    want_gold = project.gold_rate > 0 and rng.random() < project.gold_rate
    return _claim(annotator, project, membership, golds=(True, False) if want_gold else (False, True), now=now, rng=rng)


# A claim's answer when the project has assignments past their deadline: expire them first
# (``_expire_stale``), then claim again, so that returned slots are served before newer work.
_STALE = object()
# The candidate window grows by this factor, up to MAX_WINDOW, when every candidate in it was
# being claimed by a concurrent request; only then does the claim back off and retry.
WINDOW_GROWTH = 4
MAX_WINDOW = 1024


def _claim_pg(
    annotator, project: Project, membership: Membership, *, now, rng, ignore_stale: bool,
    progress: ProgressQuery | None = None,
):
    """The held or a newly claimed assignment, None when nothing is left, or ``_STALE``.

    Inside the caller's transaction, which holds the annotator's membership lock (PostgreSQL).
    ``progress``: its statement runs right after each claim statement, in the same round trip,
    and ``progress.row`` is the row of the last one (what the claim's answer left).
    """
    want_gold = project.gold_rate > 0 and rng.random() < project.gold_rate
    order = (True, False) if want_gold else (False, True)
    a_on_left = rng.random() < 0.5
    expires = now + timedelta(seconds=project.assignment_timeout_s)
    seed = None
    window = CANDIDATES
    for attempt in range(CLAIM_ATTEMPTS):
        busy = full = False
        for gold in order:
            if gold and seed is None:
                seed = repr(rng.random())  # the order in which gold items are offered
            got = postgres.claim(
                user_id=annotator.pk, project=project, pool_id=membership.pool_id, gold=gold, now=now,
                expires=expires, a_on_left=a_on_left, seed=seed or "", window=window, ignore_stale=ignore_stale,
                then=progress.statement() if progress is not None else None,
            )
            if progress is not None:
                progress.row = got.then_row
            if got.assignment is not None:
                return got.assignment
            if got.stale and not ignore_stale:
                return _STALE
            # Candidates all locked or filled meanwhile, or (stale and already expired once)
            # the annotator's own stale item is being expired by a concurrent request.
            busy = busy or got.candidates > 0 or got.stale
            full = full or got.candidates >= window
        if not busy:
            return None
        if full and window < MAX_WINDOW:  # there is more beyond the window: look further at once
            window *= WINDOW_GROWTH
        else:  # the few candidates there are are being claimed: let those claims commit
            time.sleep(0.002 * (attempt + 1) * (0.5 + _jitter.random()))
    return None


@dataclass
class Submitted:
    """What ``submit_and_next`` did: the judgment (``created`` False when it was the first one of
    a repeated submit), the annotator's next item (None when nothing is left), and, when asked
    for and read on the way, their progress after both (else None: call ``progress``)."""

    judgment: Judgment
    created: bool
    next: Assignment | None
    progress: Progress | None = None


def submit_judgment(
    annotator,
    assignment_id: int,
    *,
    choice: str,
    strength: int | None = None,
    rationale: str = "",
    seconds: float | None = None,
    now: datetime | None = None,
    project: Project | None = None,
) -> Judgment:
    """Record the annotator's judgment on their assignment. Idempotent: a second submit of the
    same assignment returns the first judgment and writes nothing.

    ``choice`` is in displayed terms: left, right, tie or both_bad. ``project``: the
    assignment's project when the caller has it (saves a read).
    Raises Assignment.DoesNotExist for an assignment that is not the annotator's.
    """
    now = now or timezone.now()
    with transaction.atomic():
        judgment, _, _, _ = _submit(
            annotator, assignment_id, choice=choice, strength=strength, rationale=rationale, seconds=seconds,
            now=now, project=project,
        )
    return judgment


def submit_and_next(
    annotator,
    assignment_id: int,
    *,
    choice: str,
    strength: int | None = None,
    rationale: str = "",
    seconds: float | None = None,
    project: Project | None = None,
    now: datetime | None = None,
    rng=None,
    with_progress: bool = False,
) -> Submitted:
    """``submit_judgment``, then ``next_assignment``: the one-request-per-judgment step of the
    annotator's page and of ``POST /api/assignments/{id}/judgment/``. Raises what
    ``submit_judgment`` raises, and then writes nothing. The next item is None when nothing is
    left or the annotator may no longer be served.

    On PostgreSQL both run in one transaction under one membership lock: four statements and
    one commit for the judgment and the next item. ``with_progress``: the annotator's progress
    counter (``progress``) too, read in the claim's round trip (PostgreSQL; elsewhere, and when
    the claim had to expire stale assignments first, ``Submitted.progress`` is None).
    """
    rng = rng or _rng
    now = now or timezone.now()
    if not _one_statement():
        with transaction.atomic():
            judgment, created, project, membership = _submit(
                annotator, assignment_id, choice=choice, strength=strength, rationale=rationale, seconds=seconds,
                now=now, project=project,
            )
        try:
            nxt = next_assignment(annotator, project, membership=membership, held_checked=created, now=now, rng=rng)
        except NotAnAnnotator:
            nxt = None
        return Submitted(judgment, created, nxt)
    with transaction.atomic():
        judgment, created, project, membership = _submit(
            annotator, assignment_id, choice=choice, strength=strength, rationale=rationale, seconds=seconds,
            now=now, project=project,
        )
        if membership.role != Role.ANNOTATOR or membership.excluded:
            return Submitted(judgment, created, None)
        query = ProgressQuery(annotator, project) if with_progress else None
        nxt = _claim_pg(annotator, project, membership, now=now, rng=rng, ignore_stale=False, progress=query)
    if nxt is not _STALE:
        return Submitted(judgment, created, nxt, query.result(query.row) if query is not None else None)
    # Expire in a transaction of its own: this one held the judged comparison's row lock, and two
    # expiries that each hold a row the other needs would deadlock.
    try:
        nxt = next_assignment(annotator, project, now=now, rng=rng)
    except NotAnAnnotator:
        nxt = None
    return Submitted(judgment, created, nxt)


def _submit(annotator, assignment_id: int, *, choice, strength, rationale, seconds, now, project):
    """Inside the caller's transaction: (judgment, created, project, membership)."""
    if not -(2**63) <= int(assignment_id) < 2**63:  # no row has it; raw SQL would fail on it
        raise Assignment.DoesNotExist("No such assignment of yours.")
    if _one_statement():
        return _submit_pg(
            annotator, assignment_id, choice=choice, strength=strength, rationale=rationale, seconds=seconds,
            now=now, project=project,
        )
    return _submit_orm(
        annotator, assignment_id, choice=choice, strength=strength, rationale=rationale, seconds=seconds, now=now
    )


def _submit_pg(annotator, assignment_id: int, *, choice, strength, rationale, seconds, now, project):
    lock = postgres.lock_for_submit(annotator.pk, assignment_id)
    if lock is None:
        raise Assignment.DoesNotExist("No such assignment of yours.")
    if project is None or project.pk != lock.project_id:
        project = Project.objects.get(pk=lock.project_id)
    membership = lock.membership

    def existing():
        return Judgment.objects.get(annotator=annotator, comparison_id=lock.comparison_id), False, project, membership

    if lock.status == AssignmentStatus.DONE:
        return existing()
    if lock.status == AssignmentStatus.SKIPPED:
        raise QueueError("You skipped this item.")
    if membership.excluded:
        raise NotAnAnnotator(PAUSED)
    underlying, strength = shown_to_stored(project, lock.a_on_left, choice, strength)
    retaken = 0
    if lock.status == AssignmentStatus.EXPIRED:
        # The slot went back to the queue: take it again if the comparison still has room.
        is_gold, taken = (
            Comparison.objects.select_for_update().filter(pk=lock.comparison_id).values_list("is_gold", "slots_taken").get()
        )
        if not is_gold and taken >= project.overlap:
            raise AssignmentGone("This item expired and others have judged it meanwhile.")
        retaken = 1
    judgment = postgres.write_judgment(
        user_id=annotator.pk, assignment_id=assignment_id, lock=lock, overlap=project.overlap, choice=underlying,
        strength=strength, rationale=(rationale or "").strip(), seconds=_plausible_seconds(seconds, now, lock.created_at),
        retaken=retaken, now=now, created_at=timezone.now(),
    )
    if judgment is None:  # one of this annotator's judgments of the comparison exists (an import)
        return existing()
    return judgment, True, project, membership


def skip(annotator, assignment_id: int, *, now: datetime | None = None) -> Assignment:
    """Give the item back; the annotator is not served it again."""
    now = now or timezone.now()
    with transaction.atomic():
        assignment = Assignment.objects.select_for_update(of=("self",)).select_related("project").get(
            pk=assignment_id, annotator=annotator
        )
        if assignment.status == AssignmentStatus.ACTIVE:
            assignment.status = AssignmentStatus.SKIPPED
            assignment.finished_at = now
            assignment.save(update_fields=["status", "finished_at"])
            _release_slots(assignment.project, [assignment.comparison_id])
        elif assignment.status == AssignmentStatus.EXPIRED:
            assignment.status = AssignmentStatus.SKIPPED
            assignment.finished_at = now
            assignment.save(update_fields=["status", "finished_at"])
    return assignment


def shown_pair(assignment: Assignment):
    """(left response, right response) in the order this annotator sees them."""
    c = assignment.comparison
    return (c.response_a, c.response_b) if assignment.a_on_left else (c.response_b, c.response_a)


def release_assignments(annotator, project: Project) -> int:
    """Give the slots of the annotator's active assignments in the project back to the queue
    and return how many there were; for an annotator who leaves the project
    (``annotate.services.remove_member``).

    The assignments become expired, exactly as if their time had run out: their comparisons'
    ``slots_taken`` drops by one each and ``is_open`` is re-derived (``_release_slots``), so
    other annotators can be served them. Judgments and finished assignments are not touched.

    Runs in the caller's transaction when there is one. The annotator's membership row is
    locked first, in the same order as a claim and a submit, so that neither can add an
    assignment or a judgment of this annotator meanwhile; the active assignments are then
    locked without ``SKIP LOCKED`` (and re-checked under the lock), so that an expiry running
    in another request cannot release the same slot a second time.
    """
    with transaction.atomic():
        member = Membership.objects.filter(user=annotator, project=project)
        held = Assignment.objects.filter(annotator=annotator, project=project, status=AssignmentStatus.ACTIVE)
        if connection.features.has_select_for_update:
            member = member.select_for_update()
            held = held.select_for_update().order_by("pk")
        list(member.values_list("pk", flat=True))
        rows = list(held.values_list("pk", "comparison_id"))
        if not rows:
            return 0
        Assignment.objects.filter(pk__in=[pk for pk, _ in rows]).update(status=AssignmentStatus.EXPIRED)
        _release_slots(project, [cid for _, cid in rows])
    return len(rows)
