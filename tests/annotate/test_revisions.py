"""Changing a judgment ("back" on the annotator page): the original is kept in the history,
the database still holds one judgment per annotator and comparison, and the statistics
loader (which the exports share) reads the new answer."""
from __future__ import annotations

import pytest
from django.urls import reverse

from annotate import queue, revisions
from annotate.models import Choice, Judgment, JudgmentRevision, Membership
from evaluation.selectors import load_judgments

from .test_views import HX, annotate_url, assignment_id, login, world  # noqa: F401 - fixture

pytestmark = pytest.mark.django_db


def judge_first(client, project, choice="left"):
    html = client.get(annotate_url(project)).content.decode()
    client.post(annotate_url(project), {"assignment": assignment_id(html), "choice": choice, "strength": "2"}, **HX)
    return Judgment.objects.latest("pk")


def test_back_reopens_and_a_change_keeps_the_original(client, world):
    project, ann = world["project"], world["users"]["ann"]
    login(client, ann)
    j = judge_first(client, project, "left")
    original_choice = j.choice
    held = queue.current_assignment(ann, project)

    html = client.get(reverse("annotate_back", args=[project.pk]), **HX).content.decode()
    assert "Changing your judgment" in html and 'value="left" checked' in html
    assert f'name="judgment" value="{j.pk}"' in html

    r = client.post(reverse("annotate_revise", args=[project.pk]), {"judgment": j.pk, "choice": "right"}, **HX)
    html = r.content.decode()
    assert "Changed · 1 done today" in html
    assert assignment_id(html) == held.pk  # back at the item they hold

    j.refresh_from_db()
    assert j.choice != original_choice and j.strength is None and j.revised_at is not None
    rev = JudgmentRevision.objects.get(judgment=j)
    assert (rev.choice, rev.strength) == (original_choice, 2)
    assert Judgment.objects.filter(annotator=ann, comparison=j.comparison).count() == 1

    table = load_judgments(project)
    label = {Choice.A: 0, Choice.B: 1}[j.choice]
    assert table.label[list(table.judgment_ids).index(j.pk)] == label

    # An unchanged resubmit writes no revision.
    _j, changed = revisions.revise(ann, j.pk, choice="right")
    assert not changed and JudgmentRevision.objects.count() == 1


def test_nobody_changes_anothers_judgment_or_after_exclusion(client, world):
    project, ann, ann2 = world["project"], world["users"]["ann"], world["users"]["ann2"]
    login(client, ann)
    j = judge_first(client, project)
    with pytest.raises(Judgment.DoesNotExist):
        revisions.revise(ann2, j.pk, choice="right")
    r = login(client, ann2).post(reverse("annotate_revise", args=[project.pk]), {"judgment": j.pk, "choice": "right"}, **HX)
    assert "not yours" in r.content.decode()
    Membership.objects.filter(user=ann).update(excluded=True)
    with pytest.raises(queue.NotAnAnnotator):
        revisions.revise(ann, j.pk, choice="right")
    j.refresh_from_db()
    assert j.revised_at is None and not JudgmentRevision.objects.exists()


def test_back_with_nothing_judged_says_so(client, world):
    project, ann = world["project"], world["users"]["ann"]
    html = login(client, ann).get(reverse("annotate_back", args=[project.pk]), **HX).content.decode()
    assert "Nothing to go back to yet" in html
