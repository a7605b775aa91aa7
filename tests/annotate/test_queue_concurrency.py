"""The queue under concurrent requests, against PostgreSQL (row locks, SKIP LOCKED).

Run: DATABASE_URL=postgres://postgres@127.0.0.1:5432/prefloop \\
     .venv/bin/python -m pytest tests/annotate/test_queue_concurrency.py -q

Each thread is one annotator's request with its own database connection (closed at the end
of the thread); a barrier releases them at the same moment (the ``run_at_once`` fixture).
"""
from __future__ import annotations

import random
from collections import Counter

import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from annotate import queue
from annotate.models import (
    Assignment,
    AssignmentStatus,
    Comparison,
    Judgment,
    Membership,
    Project,
    Prompt,
    Response,
    Role,
    content_hash,
)

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

User = get_user_model()
N_ANNOTATORS = 12
OVERLAP = 2
N_COMPARISONS = 3


@pytest.fixture(autouse=True)
def _postgres_only():
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (set DATABASE_URL)")


def setup_project(n_comparisons=N_COMPARISONS, n_annotators=N_ANNOTATORS, overlap=OVERLAP):
    project = Project.objects.create(name="concurrent", overlap=overlap, gold_rate=0.0, assignment_timeout_s=600)
    for i in range(n_comparisons):
        prompt = Prompt.objects.create(project=project, text=f"p{i}", content_hash=content_hash(f"p{i}"))
        a = Response.objects.create(prompt=prompt, text=f"a{i}", content_hash=content_hash(f"a{i}"))
        b = Response.objects.create(prompt=prompt, text=f"b{i}", content_hash=content_hash(f"b{i}"))
        Comparison.objects.create(
            project=project, prompt=prompt, response_a=a, response_b=b, pair_hash=content_hash(f"pair{i}")
        )
    users = []
    for i in range(n_annotators):
        user = User.objects.create(username=f"ann{i}")
        Membership.objects.create(project=project, user=user, role=Role.ANNOTATOR)
        users.append(user)
    return project, users


def assert_invariants(project):
    project.refresh_from_db()
    active = Counter(
        Assignment.objects.filter(project=project, status=AssignmentStatus.ACTIVE).values_list(
            "comparison_id", flat=True
        )
    )
    judged = Counter(Judgment.objects.filter(project=project).values_list("comparison_id", flat=True))
    for c in Comparison.objects.filter(project=project):
        assert c.slots_taken <= project.overlap, (c.pk, c.slots_taken)
        assert c.n_judgments <= project.overlap, (c.pk, c.n_judgments)
        assert judged[c.pk] <= project.overlap, (c.pk, judged[c.pk])
        assert active[c.pk] + judged[c.pk] <= project.overlap, (c.pk, active[c.pk], judged[c.pk])
        assert c.slots_taken == active[c.pk] + judged[c.pk], (c.pk, c.slots_taken, active[c.pk], judged[c.pk])
        assert c.is_open == (c.slots_taken < project.overlap)
    per_annotator = Counter(
        Assignment.objects.filter(project=project, status=AssignmentStatus.ACTIVE).values_list(
            "annotator_id", flat=True
        )
    )
    assert not per_annotator or max(per_annotator.values()) == 1, per_annotator


def test_simultaneous_next_never_exceeds_overlap(run_at_once):
    project, users = setup_project()
    served = run_at_once([lambda u=u: queue.next_assignment(u, project) for u in users])
    assert_invariants(project)
    got = [a for a in served if a is not None]
    assert 1 <= len(got) <= N_COMPARISONS * OVERLAP
    assert all(n <= OVERLAP for n in Counter(a.comparison_id for a in got).values())


def test_rounds_of_simultaneous_next_and_submit(run_at_once):
    """Everyone asks, judges and asks again, in lock-step rounds, until nobody gets anything;
    then the queue is drained sequentially. Nothing ever passes the overlap, and in the end
    every comparison has exactly ``overlap`` judgments."""
    project, users = setup_project(n_comparisons=5)
    rng = random.Random(5)

    def step(user):
        a = queue.next_assignment(user, project)
        if a is None:
            return None
        return queue.submit_judgment(user, a.pk, choice=rng.choice(["left", "right", "tie"])).pk

    for _ in range(6):
        run_at_once([lambda u=u: step(u) for u in users])
        assert_invariants(project)
    for user in users:  # drain whatever contention left behind
        while step(user) is not None:
            pass
    assert_invariants(project)
    assert sorted(Comparison.objects.filter(project=project).values_list("n_judgments", flat=True)) == [OVERLAP] * 5
    assert Judgment.objects.filter(project=project).count() == 5 * OVERLAP


def test_submits_and_claims_at_once_do_not_deadlock(run_at_once):
    """Half the annotators submit while the other half claim, on the same comparisons. A
    submit must not lock more than its own assignment: a lock on the project row (taken by
    ``select_for_update()`` with ``select_related("project")``) against a claim's lock on the
    comparison the submit writes to is a deadlock."""
    for attempt in range(5):
        Project.objects.all().delete()
        User.objects.all().delete()
        project, users = setup_project(n_comparisons=3, n_annotators=12, overlap=8)
        holders, claimers = users[:6], users[6:]
        held = {u.pk: queue.next_assignment(u, project).pk for u in holders}
        run_at_once(
            [lambda u=u: queue.submit_judgment(u, held[u.pk], choice="left") for u in holders]
            + [lambda u=u: queue.next_assignment(u, project) for u in claimers]
        )
        assert_invariants(project)
        assert Judgment.objects.filter(project=project).count() == 6


def test_simultaneous_submits_of_one_assignment_write_one_judgment(run_at_once):
    project, users = setup_project()
    user = users[0]
    a = queue.next_assignment(user, project)
    results = run_at_once([lambda: queue.submit_judgment(user, a.pk, choice="left").pk for _ in range(8)])
    assert len(set(results)) == 1
    assert Judgment.objects.filter(annotator=user).count() == 1
    assert_invariants(project)


def test_one_annotator_asking_twice_at_once_holds_one_assignment(run_at_once):
    """A double click or two open tabs: the same annotator's simultaneous requests must end
    with one active assignment, not two slots taken on two comparisons."""
    project, users = setup_project(n_comparisons=60)  # enough rows that each request finds some
    user = users[0]
    served = run_at_once([lambda: queue.next_assignment(user, project) for _ in range(6)])
    assert_invariants(project)
    assert len({a.pk for a in served if a is not None}) == 1


def test_simultaneous_requests_serve_everyone_while_slots_remain(run_at_once):
    """12 annotators ask at once for 3 comparisons × overlap 2: six slots, so six of them
    should get an item. Row locks must not make the others see an empty queue."""
    project, users = setup_project()
    served = run_at_once([lambda u=u: queue.next_assignment(u, project) for u in users])
    assert_invariants(project)
    assert sum(a is not None for a in served) == N_COMPARISONS * OVERLAP


def random_priorities(project, seed):
    """Priorities as the active-selection task writes them (ties included): every claim then
    goes first for the same few rows, the hardest case for the row locks."""
    rng = random.Random(seed)
    for pk in Comparison.objects.filter(project=project).values_list("pk", flat=True):
        Comparison.objects.filter(pk=pk).update(priority=rng.choice([0.0, 1.0, rng.uniform(-5, 5)]))


@pytest.mark.parametrize("priorities", [None, 1, 2], ids=["arrival", "random-1", "random-2"])
def test_twenty_annotators_at_once_fill_five_comparisons_of_overlap_three(run_at_once, priorities):
    """20 annotators ask at the same moment for 5 comparisons × overlap 3: exactly 15 are served,
    3 on each comparison, and the other 5 are told there is nothing left."""
    project, users = setup_project(n_comparisons=5, n_annotators=20, overlap=3)
    if priorities is not None:
        random_priorities(project, priorities)
    served = run_at_once([lambda u=u: queue.next_assignment(u, project) for u in users])
    assert_invariants(project)
    got = [a for a in served if a is not None]
    assert len(got) == 15
    assert sorted(Counter(a.comparison_id for a in got).values()) == [3] * 5
    assert len({a.annotator_id for a in got}) == 15


@pytest.mark.parametrize("priorities", [None, 3], ids=["arrival", "random"])
def test_twenty_annotators_judging_one_request_each_fill_everything_exactly(run_at_once, priorities):
    """The same 20 annotators then judge in lock-step rounds with ``submit_and_next`` (the one
    request per judgment of the API and the page): each judgment and the next claim in one
    transaction. Nothing passes the overlap at any round, and in the end every comparison has
    exactly 3 judgments."""
    project, users = setup_project(n_comparisons=5, n_annotators=20, overlap=3)
    if priorities is not None:
        random_priorities(project, priorities)
    held = dict(zip([u.pk for u in users], run_at_once([lambda u=u: queue.next_assignment(u, project) for u in users])))
    rng = random.Random(20)

    def step(user):
        a = held[user.pk]
        if a is None:
            held[user.pk] = queue.next_assignment(user, project)
            return None
        done = queue.submit_and_next(user, a.pk, choice=rng.choice(["left", "right", "both_bad"]), project=project)
        held[user.pk] = done.next
        return done.judgment.pk

    for _ in range(6):
        run_at_once([lambda u=u: step(u) for u in users])
        assert_invariants(project)
    for user in users:  # drain whatever contention left behind
        if held[user.pk] is None:
            held[user.pk] = queue.next_assignment(user, project)
        while held[user.pk] is not None:
            step(user)
    assert_invariants(project)
    assert sorted(Comparison.objects.filter(project=project).values_list("n_judgments", flat=True)) == [3] * 5
    assert Judgment.objects.filter(project=project).count() == 15
