"""The queue's serving order: highest ``Comparison.priority`` first, then import order, with the
pool balance ranked before priority; and the queue's invariants under any priorities.

Runs on SQLite (the ORM claim) and on PostgreSQL (the one-statement claim); priorities under
concurrent claims are in test_queue_concurrency.py.
"""
from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from annotate import queue
from annotate.models import Assignment, AssignmentStatus, Comparison, Judgment, Pool
from tests.factories import make_annotators, make_comparisons, make_project

pytestmark = pytest.mark.django_db


def set_priorities(comparisons, priorities) -> None:
    for c, p in zip(comparisons, priorities):
        Comparison.objects.filter(pk=c.pk).update(priority=p)


def serving_order(project) -> list[int]:
    """The regular comparisons' ids in the order the queue should serve them."""
    rows = Comparison.objects.filter(project=project, is_gold=False).values_list("pk", "priority")
    return [pk for pk, _ in sorted(rows, key=lambda r: (-r[1], r[0]))]


def test_highest_priority_is_served_first_even_far_beyond_the_first_candidates():
    """40 comparisons whose priorities rise with import order except for a few ties: one
    annotator (overlap 1) is served them highest first, ties oldest first. The best ones were
    imported last, well past the claim's first ``CANDIDATES`` comparisons in id order."""
    project = make_project(overlap=1)
    comparisons = make_comparisons(project, 40)
    set_priorities(comparisons, [i // 3 * 0.5 - 4 for i in range(40)])
    (user,) = make_annotators(project, 1)
    served = []
    while (a := queue.next_assignment(user, project)) is not None:
        served.append(a.comparison_id)
        queue.submit_judgment(user, a.pk, choice="left")
    assert served == serving_order(project)
    assert served[0] == comparisons[39].pk
    assert served[-3:] == [c.pk for c in comparisons[:3]]  # the lowest priority, a tie: oldest first


def test_arrival_order_when_every_priority_is_zero():
    project = make_project(overlap=1)
    comparisons = make_comparisons(project, 20)
    (user,) = make_annotators(project, 1)
    served = []
    while (a := queue.next_assignment(user, project)) is not None:
        served.append(a.comparison_id)
        queue.submit_judgment(user, a.pk, choice="right")
    assert served == [c.pk for c in comparisons]


def test_a_new_priority_changes_what_is_served_next():
    """The active-selection task rewrites priorities while annotators work: the next claim
    follows the new values."""
    project = make_project(overlap=1)
    c1, c2, c3 = make_comparisons(project, 3)
    (user,) = make_annotators(project, 1)
    a = queue.next_assignment(user, project)
    assert a.comparison_id == c1.pk
    queue.submit_judgment(user, a.pk, choice="left")
    set_priorities([c3], [2.5])
    assert queue.next_assignment(user, project).comparison_id == c3.pk


def test_pool_balance_comes_before_priority():
    """A pool below its target share on a comparison is sent there even when another comparison
    has a higher priority; where the pools' needs are equal, priority decides."""
    project = make_project(overlap=2)
    eu = Pool.objects.create(project=project, name="eu", target_share=0.5)
    us = Pool.objects.create(project=project, name="us", target_share=0.5)
    low, high = make_comparisons(project, 2)
    set_priorities([low, high], [0.0, 5.0])
    eu1, eu2 = make_annotators(project, 2, eu)
    (us1,) = make_annotators(project, 1, us)
    assert queue.next_assignment(eu1, project).comparison_id == high.pk  # equal need: priority
    assert queue.next_assignment(eu2, project).comparison_id == low.pk  # EU already has its share of `high`
    assert queue.next_assignment(us1, project).comparison_id == high.pk  # US needs both: priority


# --- any priorities: the invariants hold and the best eligible item is served ------------------

PRIORITY = st.one_of(st.sampled_from([0.0, 1.0, -1.0]), st.floats(-1e9, 1e9, allow_nan=False))
STEP = st.tuples(st.integers(0, 2), st.sampled_from(["submit", "submit", "skip", "abandon", "late"]))


def assert_invariants(project) -> None:
    """slots_taken = judgments + active assignments, never past the overlap, is_open follows;
    at most one active assignment per annotator; at most one judgment per annotator and item."""
    project.refresh_from_db()
    judged = Counter(Judgment.objects.filter(project=project).values_list("comparison_id", flat=True))
    active = Assignment.objects.filter(project=project, status=AssignmentStatus.ACTIVE)
    held = Counter(active.values_list("comparison_id", flat=True))
    for c in Comparison.objects.filter(project=project):
        assert c.n_judgments == judged[c.pk]
        assert c.slots_taken == judged[c.pk] + held[c.pk], (c.pk, c.slots_taken, judged[c.pk], held[c.pk])
        assert c.slots_taken <= project.overlap, (c.pk, c.slots_taken)
        assert c.is_open == (c.slots_taken < project.overlap)
    assert max(Counter(active.values_list("annotator_id", flat=True)).values(), default=0) <= 1
    pairs = Counter(Judgment.objects.filter(project=project).values_list("annotator_id", "comparison_id"))
    assert max(pairs.values(), default=0) <= 1


def best_eligible(user, project) -> int | None:
    """What the queue should serve ``user`` who holds nothing (and with nothing stale): the open
    regular comparison they have not judged, skipped or held, highest priority first, then oldest."""
    seen = set(
        Assignment.objects.filter(annotator=user, project=project)
        .exclude(status=AssignmentStatus.EXPIRED)
        .values_list("comparison_id", flat=True)
    )
    order = [pk for pk in serving_order(project) if pk not in seen]
    open_ids = set(Comparison.objects.filter(project=project, is_open=True).values_list("pk", flat=True))
    return next((pk for pk in order if pk in open_ids), None)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(priorities=st.lists(PRIORITY, min_size=1, max_size=7), steps=st.lists(STEP, max_size=25),
       overlap=st.integers(1, 3))
def test_any_priorities_keep_the_invariants_and_serve_the_best_eligible_item(priorities, steps, overlap):
    """Three annotators ask, submit, skip, abandon items (which then expire) and submit late,
    over comparisons with arbitrary priorities (ties, negatives, large values). After every step
    the invariants hold, nobody is served an item they judged or skipped, and whoever holds
    nothing is served the best eligible comparison."""
    project = make_project(overlap=overlap, assignment_timeout_s=60)
    set_priorities(make_comparisons(project, len(priorities)), priorities)
    annotators = make_annotators(project, 3, prefix="prop")
    now = timezone.now()
    abandoned: list[tuple] = []
    for who, action in steps:
        user = annotators[who]
        now += timedelta(seconds=1)
        queue.expire_stale(project, now)
        holds = Assignment.objects.filter(annotator=user, project=project, status=AssignmentStatus.ACTIVE).first()
        expected = holds.comparison_id if holds else best_eligible(user, project)
        finished = set(
            Assignment.objects.filter(
                annotator=user, status__in=[AssignmentStatus.DONE, AssignmentStatus.SKIPPED]
            ).values_list("comparison_id", flat=True)
        )
        a = queue.next_assignment(user, project, now=now)
        assert (a.comparison_id if a else None) == expected
        if a is not None:
            assert a.comparison_id not in finished
            if action == "submit":
                queue.submit_judgment(user, a.pk, choice="left", now=now)
            elif action == "skip":
                queue.skip(user, a.pk, now=now)
            elif action == "abandon":
                abandoned.append((user, a.pk))
                now += timedelta(seconds=61)  # it expires before the next step
        if action == "late" and abandoned:
            late_user, late_id = abandoned.pop(0)
            try:
                queue.submit_judgment(late_user, late_id, choice="right", now=now)
            except queue.QueueError:
                pass  # gone (filled meanwhile) or skipped since
        assert_invariants(project)
