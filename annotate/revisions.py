"""Changing a judgment after submitting it ("back" on the annotator page).

An annotator may reopen their previous item and change its judgment. The judgment row is
updated in place, so the database still holds one judgment per annotator and comparison and
everything that reads judgments (statistics, exports, agreement) sees the latest version;
the replaced values are first copied to ``JudgmentRevision``, so the original is kept.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from .models import Choice, Judgment, JudgmentRevision, Membership, Project
from .queue import NotAnAnnotator, PAUSED, shown_to_stored


@dataclass(frozen=True)
class Reopened:
    """The previous item as the annotator saw it, with their current answer in shown terms."""

    judgment: Judgment
    left: object  # Response shown on the left
    right: object
    shown_choice: str  # left / right / tie / both_bad


def to_shown(a_on_left: bool, choice: str) -> str:
    if choice == Choice.A:
        return "left" if a_on_left else "right"
    if choice == Choice.B:
        return "right" if a_on_left else "left"
    return choice


def last_judgment(annotator, project: Project) -> Judgment | None:
    """The annotator's most recent judgment made in the app in this project (not an import)."""
    return (
        Judgment.objects.filter(annotator=annotator, project=project, assignment__isnull=False)
        .select_related("comparison__prompt", "comparison__response_a", "comparison__response_b")
        .order_by("-created_at", "-pk")
        .first()
    )


def reopen(judgment: Judgment) -> Reopened:
    c = judgment.comparison
    left, right = (c.response_a, c.response_b) if judgment.a_on_left else (c.response_b, c.response_a)
    return Reopened(judgment, left, right, to_shown(judgment.a_on_left, judgment.choice))


def revise(
    annotator,
    judgment_id: int,
    *,
    choice: str,
    strength: int | None = None,
    rationale: str = "",
    now: datetime | None = None,
) -> tuple[Judgment, bool]:
    """Change the annotator's own judgment; ``choice`` in shown terms (left/right/tie/both_bad).
    Returns (judgment, changed). An unchanged resubmit writes nothing.

    Raises Judgment.DoesNotExist for a judgment that is not the annotator's (or was imported),
    NotAnAnnotator when they are excluded, QueueError for an invalid answer."""
    now = now or timezone.now()
    with transaction.atomic():
        judgment = (
            Judgment.objects.select_for_update(of=("self",))
            .select_related("project")
            .get(pk=judgment_id, annotator=annotator, assignment__isnull=False)
        )
        project = judgment.project
        membership = Membership.objects.filter(project=project, user=annotator).first()
        if membership is None or membership.excluded:
            raise NotAnAnnotator(PAUSED)
        underlying, strength = shown_to_stored(project, judgment.a_on_left, choice, strength)
        rationale = (rationale or "").strip()
        if (judgment.choice, judgment.strength, judgment.rationale) == (underlying, strength, rationale):
            return judgment, False
        JudgmentRevision.objects.create(
            judgment=judgment,
            choice=judgment.choice,
            strength=judgment.strength,
            rationale=judgment.rationale,
            judged_at=judgment.revised_at or judgment.created_at,
        )
        judgment.choice, judgment.strength, judgment.rationale = underlying, strength, rationale
        judgment.revised_at = now
        # post_save with these update_fields tells evaluation to recompute (evaluation.signals).
        judgment.save(update_fields=["choice", "strength", "rationale", "revised_at"])
    return judgment, True
