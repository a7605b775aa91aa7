"""The queue's shared pieces: its errors, limits, the row-lock helper, slot bookkeeping, the
annotator's held item, expiry, and the mapping between shown and stored choices.

Used by ``annotate.queue`` (the service), ``annotate.queue.orm`` (the portable claim and
submit) and ``annotate.queue.reads``; the invariants they keep are in ``annotate.queue``.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime

from django.db import connection
from django.utils import timezone
from django.db.models import BooleanField, ExpressionWrapper, F, Q

from ..models import Assignment, AssignmentStatus, Choice, Comparison, Membership, Project, Role, Strength

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


def _take_slots(project: Project, comparison_id: int, *, slots: int = 0, judgments: int = 0) -> None:
    """One UPDATE: add to the comparison's slot and judgment counts and re-derive ``is_open``
    (the right-hand sides of an UPDATE see the old row, hence ``overlap - slots``)."""
    still_open = ExpressionWrapper(
        Q(is_gold=True) | Q(slots_taken__lt=project.overlap - slots), output_field=BooleanField()
    )
    Comparison.objects.filter(pk=comparison_id).update(
        slots_taken=F("slots_taken") + slots, n_judgments=F("n_judgments") + judgments, is_open=still_open
    )


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


def shown_to_stored(project: Project, a_on_left: bool, choice: str, strength: int | None) -> tuple[str, int | None]:
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
