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

Serving the next item reads a bounded number of rows through the
``comparison_open_idx`` partial index (project, is_gold, id) WHERE is_open: it never scans all
comparisons.

On PostgreSQL the hot path is a few statements (``annotate.queue.postgres``): a claim is one
statement after the membership lock, a submit two, and ``submit_and_next`` does both in one
transaction. Other databases (SQLite) run the plain ORM version below, one write transaction
at a time.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.core.cache import cache
from django.db import IntegrityError, connection, transaction
from django.db.models import BooleanField, Count, Exists, ExpressionWrapper, F, OuterRef, Q, Subquery
from django.utils import timezone

from ..models import (
    Assignment,
    AssignmentStatus,
    Choice,
    Comparison,
    Judgment,
    Membership,
    Project,
    Role,
    Strength,
)
from . import postgres

# How many open comparisons are considered per request to restore pool balance.
CANDIDATES = 16
# How many times a claim looks again when all its candidates were taken by concurrent requests.
CLAIM_ATTEMPTS = 8

_rng = random.SystemRandom()
_jitter = random.Random()  # back-off only; never the caller's rng, so seeded runs stay reproducible


PAUSED = "An admin has paused your work in this project."


class QueueError(Exception):
    """A request the queue refuses, with a message fit for the annotator."""


class NotAnAnnotator(QueueError):
    pass


class AssignmentGone(QueueError):
    """The assignment expired and its comparison has since been filled by others."""


@dataclass
class Progress:
    done: int
    skipped: int
    remaining: int

    @property
    def total(self) -> int:
        return self.done + self.remaining


def annotator_membership(annotator, project: Project) -> Membership:
    return _active_member(Membership.objects.filter(user=annotator, project=project).select_related("pool").first())


def _active_member(m: Membership | None) -> Membership:
    if m is None or m.role != Role.ANNOTATOR:
        raise NotAnAnnotator("You are not an annotator in this project.")
    if m.excluded:
        raise NotAnAnnotator(PAUSED)
    return m


def _open_expr(project: Project):
    return ExpressionWrapper(Q(is_gold=True) | Q(slots_taken__lt=project.overlap), output_field=BooleanField())


def _release_slots(project: Project, comparison_ids: list[int]) -> None:
    """Give one slot back per id (ids may repeat) and re-open the comparisons."""
    counts: dict[int, int] = {}
    for cid in comparison_ids:
        counts[cid] = counts.get(cid, 0) + 1
    for cid, n in sorted(counts.items()):  # one lock order for all: no deadlock between two expiries
        Comparison.objects.filter(pk=cid).update(slots_taken=F("slots_taken") - n)
    if counts:
        Comparison.objects.filter(pk__in=list(counts)).update(is_open=_open_expr(project))


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


def _expire_stale(project: Project, now: datetime) -> int:
    """``expire_stale`` inside the caller's transaction."""
    stale = list(
        _lock(
            Assignment.objects.filter(project=project, status=AssignmentStatus.ACTIVE, expires_at__lt=now)
        ).values_list("pk", "comparison_id")
    )
    if not stale:
        return 0
    Assignment.objects.filter(pk__in=[pk for pk, _ in stale]).update(status=AssignmentStatus.EXPIRED)
    _release_slots(project, [cid for _, cid in stale])
    return len(stale)


def _lock(qs):
    """Row locks where the database has them; SQLite serializes write transactions instead.

    ``FOR NO KEY UPDATE`` (where available) rather than ``FOR UPDATE``: it still excludes a
    second claimer, but not the ``KEY SHARE`` lock that inserting a judgment or assignment
    takes on the rows it references, so a claim does not skip a comparison merely because
    someone is submitting a judgment on it.
    """
    if connection.features.has_select_for_update_skip_locked:
        return qs.select_for_update(skip_locked=True, no_key=connection.features.has_select_for_no_key_update)
    return qs


def _with_texts(assignments):
    """Assignments with what the annotator is shown: the prompt and both responses."""
    return assignments.select_related("comparison__prompt", "comparison__response_a", "comparison__response_b")


def current_assignment(annotator, project: Project, now: datetime | None = None) -> Assignment | None:
    now = now or timezone.now()
    return (
        _with_texts(Assignment.objects.filter(
            annotator=annotator, project=project, status=AssignmentStatus.ACTIVE, expires_at__gte=now
        ))
        .order_by("created_at")
        .first()
    )


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
    order = (True, False) if want_gold else (False, True)
    for gold in order:
        assignment = _claim(annotator, project, membership, gold=gold, now=now, rng=rng)
        if assignment is not None:
            return assignment
    return None


# A claim's answer when the project has assignments past their deadline: expire them first
# (``_expire_stale``), then claim again, so that returned slots are served before newer work.
_STALE = object()
# The candidate window grows by this factor, up to MAX_WINDOW, when every candidate in it was
# being claimed by a concurrent request; only then does the claim back off and retry.
WINDOW_GROWTH = 4
MAX_WINDOW = 1024


def _claim_pg(annotator, project: Project, membership: Membership, *, now, rng, ignore_stale: bool):
    """The held or a newly claimed assignment, None when nothing is left, or ``_STALE``.

    Inside the caller's transaction, which holds the annotator's membership lock (PostgreSQL).
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
            )
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


def _claim(annotator, project: Project, membership: Membership, *, gold: bool, now, rng) -> Assignment | None:
    """Take a slot on the best candidate for this annotator; None when there is none.

    The candidates are read without locks and ranked; then the best one that can be locked
    (``SKIP LOCKED``: another request is claiming it) and still has room is taken, one row
    lock per claim. When every candidate was locked or filled in the meantime, the claim
    looks again (``CLAIM_ATTEMPTS``) instead of reporting an empty queue.
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
            candidates = list(
                Comparison.objects.filter(project=project, is_gold=gold, is_open=True)
                .exclude(pk__in=_seen_ids(annotator, project))
                .order_by("pk")
                .only("pk", "slots_taken", "is_gold")[:CANDIDATES]
            )
            if not gold:
                candidates = [c for c in candidates if c.slots_taken < project.overlap]
            if not candidates:
                return None
            if gold:
                first = rng.choice(candidates)
                ranked = [first] + [c for c in candidates if c.pk != first.pk]
            else:
                ranked = _by_need(project, membership, candidates)
            chosen = None
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
                    chosen = row
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
        # Every candidate was being claimed by a concurrent request or filled meanwhile.
        time.sleep(0.002 * (attempt + 1) * (0.5 + _jitter.random()))
    return None


def _take_slots(project: Project, comparison_id: int, *, slots: int = 0, judgments: int = 0) -> None:
    """One UPDATE: add to the comparison's slot and judgment counts and re-derive ``is_open``
    (the right-hand sides of an UPDATE see the old row, hence ``overlap - slots``)."""
    still_open = ExpressionWrapper(
        Q(is_gold=True) | Q(slots_taken__lt=project.overlap - slots), output_field=BooleanField()
    )
    Comparison.objects.filter(pk=comparison_id).update(
        slots_taken=F("slots_taken") + slots, n_judgments=F("n_judgments") + judgments, is_open=still_open
    )


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
    share first (see ``_most_needed``); ties in import order."""
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
    return sorted(candidates, key=lambda c: (-(target - taken.get(c.pk, 0)), c.pk))


def _most_needed(project: Project, membership: Membership, candidates: list[Comparison]) -> Comparison:
    """The candidate on which the annotator's pool is furthest below its target share.

    deficit = target_share(pool) × overlap − judgments and live assignments from the pool.
    Ties go to the oldest comparison, so work finishes in import order.
    """
    return _by_need(project, membership, candidates)[0]


SHOWN_CHOICES = ("left", "right", "tie", "both_bad")


def to_underlying(a_on_left: bool, shown: str) -> str:
    """Map a choice in terms of what was shown (left/right) to the underlying responses (a/b)."""
    if shown == "left":
        return Choice.A if a_on_left else Choice.B
    if shown == "right":
        return Choice.B if a_on_left else Choice.A
    if shown in (Choice.TIE, Choice.BOTH_BAD):
        return shown
    raise QueueError(f"Unknown choice {shown!r}: expected one of {', '.join(SHOWN_CHOICES)}.")


@dataclass
class Submitted:
    """What ``submit_and_next`` did: the judgment (``created`` False when it was the first one of
    a repeated submit) and the annotator's next item (None when nothing is left)."""

    judgment: Judgment
    created: bool
    next: Assignment | None


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
) -> Submitted:
    """``submit_judgment``, then ``next_assignment``: the one-request-per-judgment step of the
    annotator's page and of ``POST /api/assignments/{id}/judgment/``. Raises what
    ``submit_judgment`` raises, and then writes nothing. The next item is None when nothing is
    left or the annotator may no longer be served.

    On PostgreSQL both run in one transaction under one membership lock: four statements and
    one commit for the judgment and the next item.
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
        nxt = _claim_pg(annotator, project, membership, now=now, rng=rng, ignore_stale=False)
    if nxt is _STALE:
        # Expire in a transaction of its own: this one held the judged comparison's row lock,
        # and two expiries that each hold a row the other needs would deadlock.
        try:
            nxt = next_assignment(annotator, project, now=now, rng=rng)
        except NotAnAnnotator:
            nxt = None
    return Submitted(judgment, created, nxt)


def _shown_to_stored(project: Project, a_on_left: bool, choice: str, strength: int | None) -> tuple[str, int | None]:
    """The choice in terms of the responses, and the strength kept (None for tie and both_bad);
    QueueError for a choice the project does not take."""
    underlying = to_underlying(a_on_left, choice)
    if underlying == Choice.TIE and not project.allow_ties:
        raise QueueError("Ties are not allowed in this project.")
    if strength is not None and strength not in Strength.values:
        raise QueueError(f"Unknown strength {strength!r}: expected 1, 2 or 3.")
    if underlying in (Choice.TIE, Choice.BOTH_BAD):
        strength = None
    return underlying, strength


def _plausible_seconds(seconds: float | None, now: datetime, created_at: datetime) -> float:
    """The client's time on the item, or the server's clock when it is missing or implausible."""
    elapsed = (now - created_at).total_seconds()
    if seconds is None or not (0 < seconds <= max(elapsed, 0) + 5):
        seconds = max(elapsed, 0.0)
    return round(float(seconds), 3)


def _submit(annotator, assignment_id: int, *, choice, strength, rationale, seconds, now, project):
    """Inside the caller's transaction: (judgment, created, project, membership)."""
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
    underlying, strength = _shown_to_stored(project, lock.a_on_left, choice, strength)
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
    underlying, strength = _shown_to_stored(project, assignment.a_on_left, choice, strength)
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


def progress(annotator, project: Project) -> Progress:
    """Done and skipped by this annotator, and what remains for them: the open regular
    comparisons and the gold ones they have not finished, the item they hold included.

    Gold and regular items move the counter alike, so it never tells which item was gold.
    One statement: the annotator's own counts, and the project's open regular and gold
    comparisons counted exactly while there are at most ``EXACT_COUNT_UP_TO`` of them (an
    index-range count that stops there); above that a count cached for ``OPEN_COUNT_TTL_S``
    is used instead, so no request counts a large table.
    """
    keys = {gold: _open_count_key(project, gold) for gold in (False, True)}
    cached = cache.get_many(list(keys.values()))
    open_counts = {gold: cached[key] for gold, key in keys.items() if key in cached}
    exact = [gold for gold in (False, True) if gold not in open_counts]
    sql = PROGRESS_SQL.format(counts="".join(CAPPED_COUNT_SQL for _ in exact))
    params = [p for gold in exact for p in (project.pk, gold, EXACT_COUNT_UP_TO + 1)] + [annotator.pk, project.pk]
    with connection.cursor() as cur:
        cur.execute(sql, params)
        row = cur.fetchone()
    done, skipped, finished_open, finished_gold, held_full = (int(x or 0) for x in row[:5])
    for gold, n in zip(exact, row[5:]):
        if n > EXACT_COUNT_UP_TO:
            n = Comparison.objects.filter(project=project, is_gold=gold, is_open=True).order_by().count()
            cache.set(keys[gold], n, OPEN_COUNT_TTL_S)
        open_counts[gold] = n
    # A held item whose comparison others have meanwhile filled is still the annotator's.
    remaining = (open_counts[False] - finished_open + held_full) + (open_counts[True] - finished_gold)
    return Progress(done=done, skipped=skipped, remaining=max(remaining, 0))


# Counts of open comparisons are exact up to this many; above it they are cached briefly,
# since counting half a million index entries on every request is what would slow the queue.
EXACT_COUNT_UP_TO = 1_000
OPEN_COUNT_TTL_S = 10

# Portable SQL (PostgreSQL and SQLite). Gold comparisons are always open.
PROGRESS_SQL = """
SELECT
    SUM(CASE WHEN a.status = 'done' THEN 1 ELSE 0 END),
    SUM(CASE WHEN a.status = 'skipped' THEN 1 ELSE 0 END),
    SUM(CASE WHEN a.status IN ('done', 'skipped') AND NOT c.is_gold AND c.is_open THEN 1 ELSE 0 END),
    SUM(CASE WHEN a.status IN ('done', 'skipped') AND c.is_gold THEN 1 ELSE 0 END),
    SUM(CASE WHEN a.status = 'active' AND NOT c.is_gold AND NOT c.is_open THEN 1 ELSE 0 END)
    {counts}
FROM annotate_assignment a JOIN annotate_comparison c ON c.id = a.comparison_id
WHERE a.annotator_id = %s AND a.project_id = %s
"""
# In id order, so that PostgreSQL walks the partial index of open comparisons: unordered, a
# LIMITed count may seq-scan from the start of the table, through every closed comparison
# (late in a project, the first half of the table) before it finds its open ones.
CAPPED_COUNT_SQL = """,
    (SELECT COUNT(*) FROM (
        SELECT 1 FROM annotate_comparison
        WHERE project_id = %s AND is_gold = %s AND is_open ORDER BY id LIMIT %s
    ) capped)"""


def _open_count_key(project: Project, gold: bool) -> str:
    return f"prefloop:queue:open:{project.pk}:{int(gold)}"


# The assignment, its project and the annotator's membership in it, in one portable statement
# (the API's permission check of every submit and skip).
_OWNED_SQL = (
    "SELECT {a}, {p}, m.id, m.role, m.excluded, m.pool_id FROM annotate_assignment a "
    "JOIN annotate_project p ON p.id = a.project_id "
    "LEFT JOIN annotate_membership m ON m.project_id = a.project_id AND m.user_id = a.annotator_id "
    "WHERE a.id = %s AND a.annotator_id = %s"
).format(
    a=", ".join(f"a.{f.column}" for f in Assignment._meta.concrete_fields),
    p=", ".join(f"p.{f.column}" for f in Project._meta.concrete_fields),
)


def owned_assignment(annotator, assignment_id: int) -> tuple[Assignment, Membership | None] | None:
    """The annotator's assignment (its ``project`` loaded) and their membership in its project
    (None when they have none), or None when the assignment is not theirs. One query."""
    with connection.cursor() as cur:
        cur.execute(_OWNED_SQL, [assignment_id, annotator.pk])
        row = cur.fetchone()
    if row is None:
        return None
    n_a, n_p = len(Assignment._meta.concrete_fields), len(Project._meta.concrete_fields)
    a_values, p_values, (m_id, role, excluded, pool_id) = row[:n_a], row[n_a:n_a + n_p], row[n_a + n_p:]
    assignment = _from_row(Assignment, a_values)
    assignment.project = _from_row(Project, p_values)
    membership = None
    if m_id is not None:
        membership = Membership(
            pk=m_id, project_id=assignment.project_id, user_id=annotator.pk, role=role, pool_id=pool_id,
            excluded=bool(excluded),
        )
        membership._state.adding, membership._state.db = False, connection.alias
    return assignment, membership


_converters: dict = {}


def _from_row(model, values):
    """A model instance from a row of all its concrete columns, with the database's converters
    applied (SQLite returns booleans as integers and datetimes as text)."""
    key = (connection.vendor, model)
    if key not in _converters:
        cols = [f.get_col(model._meta.db_table) for f in model._meta.concrete_fields]
        _converters[key] = [
            (col, connection.ops.get_db_converters(col) + col.field.get_db_converters(connection)) for col in cols
        ]
    converted = []
    for (col, converters), value in zip(_converters[key], values):
        for converter in converters:
            value = converter(value, col, connection)
        converted.append(value)
    return model.from_db(connection.alias, [f.attname for f in model._meta.concrete_fields], converted)


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
