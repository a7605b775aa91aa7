"""The queue service (annotate.queue), sequentially: overlap, pool balance, gold mixing, display
order, expiry, skips, exclusion and the one-judgment-per-annotator rule.

Concurrency against PostgreSQL is in test_queue_concurrency.py.
"""
from __future__ import annotations

import random
from collections import Counter, defaultdict
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.utils import timezone

from annotate import queue
from annotate.models import Assignment, AssignmentStatus, Choice, Comparison, Judgment, Membership, Pool
from annotate.models import Project, Role
from tests.factories import make_annotators, make_comparisons, make_project

pytestmark = pytest.mark.django_db

User = get_user_model()


# --- helpers ---------------------------------------------------------------------------------


def check_invariants(project: Project) -> None:
    """slots_taken = judgments + live assignments ≤ overlap; is_open follows; counters match rows."""
    project.refresh_from_db()
    judgments = Counter(Judgment.objects.filter(project=project).values_list("comparison_id", flat=True))
    active = Counter(
        Assignment.objects.filter(project=project, status=AssignmentStatus.ACTIVE).values_list(
            "comparison_id", flat=True
        )
    )
    for c in Comparison.objects.filter(project=project):
        assert c.n_judgments == judgments[c.pk], c
        assert c.slots_taken == c.n_judgments + active[c.pk], (c, c.slots_taken, c.n_judgments, active[c.pk])
        if not c.is_gold:
            assert c.slots_taken <= project.overlap, (c, c.slots_taken)
            assert c.n_judgments <= project.overlap, (c, c.n_judgments)
            assert c.is_open == (c.slots_taken < project.overlap), c
        else:
            assert c.is_open
    per_annotator = Counter(
        Assignment.objects.filter(project=project, status=AssignmentStatus.ACTIVE).values_list(
            "annotator_id", flat=True
        )
    )
    assert all(n == 1 for n in per_annotator.values()), per_annotator


class FixedRng:
    """An rng whose ``random()`` returns the given values in turn (then repeats the last)."""

    def __init__(self, *values):
        self.values = list(values)

    def random(self):
        return self.values.pop(0) if len(self.values) > 1 else self.values[0]

    def choice(self, seq):
        return seq[0]


# --- overlap ---------------------------------------------------------------------------------


def test_overlap_never_exceeded_with_submits_skips_expiry_and_late_submits():
    rng = random.Random(7)
    project = make_project(overlap=3, assignment_timeout_s=60)
    comparisons = make_comparisons(project, 12)
    annotators = make_annotators(project, 8)
    now = timezone.now()
    abandoned: list[tuple] = []
    finished: set[int] = set()
    steps = 0
    while len(finished) < len(annotators):
        steps += 1
        assert steps < 2000
        user = rng.choice([a for a in annotators if a.pk not in finished])
        now += timedelta(seconds=rng.choice([1, 5, 30]))
        assignment = queue.next_assignment(user, project, now=now, rng=rng)
        if assignment is None:
            finished.add(user.pk)
            continue
        action = rng.random()
        if action < 0.7:
            queue.submit_judgment(user, assignment.pk, choice=rng.choice(queue.SHOWN_CHOICES), now=now)
        elif action < 0.8:
            queue.skip(user, assignment.pk, now=now)
        else:
            abandoned.append((user, assignment.pk))
            now += timedelta(seconds=61)  # the abandoned assignment expires
            finished.discard(user.pk)
        if abandoned and rng.random() < 0.3:
            late_user, late_id = abandoned.pop(0)
            try:
                queue.submit_judgment(late_user, late_id, choice="left", now=now)
            except queue.AssignmentGone:
                pass
            except queue.QueueError:
                pass  # skipped meanwhile
        check_invariants(project)
        if steps % 25 == 0:
            finished.clear()  # everyone asks again: expired slots may have come back
    # Drained: every comparison is complete, or everybody has judged or skipped it.
    queue.expire_stale(project, now + timedelta(days=1))
    check_invariants(project)
    for c in Comparison.objects.filter(project=project):
        if c.n_judgments < project.overlap:
            for a in annotators:
                st = Assignment.objects.filter(annotator=a, comparison=c).values_list("status", flat=True).first()
                # An expired one would have been re-served: only done or skipped remain.
                assert st in (AssignmentStatus.DONE, AssignmentStatus.SKIPPED) or c.slots_taken >= project.overlap
    assert Judgment.objects.filter(project=project).count() <= len(comparisons) * project.overlap


def test_annotator_never_gets_the_same_comparison_twice():
    project = make_project(overlap=2)
    make_comparisons(project, 5)
    (user,) = make_annotators(project, 1)
    seen = []
    while (a := queue.next_assignment(user, project)) is not None:
        seen.append(a.comparison_id)
        queue.submit_judgment(user, a.pk, choice="right")
    assert len(seen) == 5 == len(set(seen))
    # And the database refuses a second judgment on its own.
    j = Judgment.objects.filter(annotator=user).first()
    with pytest.raises(IntegrityError), transaction.atomic():
        Judgment.objects.create(project=project, comparison_id=j.comparison_id, annotator=user, a_on_left=True,
                                choice=Choice.A)


def test_held_assignment_is_returned_until_finished():
    project = make_project()
    make_comparisons(project, 3)
    (user,) = make_annotators(project, 1)
    first = queue.next_assignment(user, project)
    assert queue.next_assignment(user, project).pk == first.pk
    assert Assignment.objects.filter(annotator=user, status=AssignmentStatus.ACTIVE).count() == 1


def test_submit_is_idempotent_and_refuses_foreign_assignments():
    project = make_project()
    make_comparisons(project, 2)
    u1, u2 = make_annotators(project, 2)
    a = queue.next_assignment(u1, project)
    j1 = queue.submit_judgment(u1, a.pk, choice="left", strength=3, rationale="r")
    j2 = queue.submit_judgment(u1, a.pk, choice="right")
    assert j1.pk == j2.pk and j2.choice == j1.choice
    assert Judgment.objects.count() == 1
    assert Comparison.objects.get(pk=a.comparison_id).n_judgments == 1
    with pytest.raises(Assignment.DoesNotExist):
        queue.submit_judgment(u2, a.pk, choice="left")
    with pytest.raises(Assignment.DoesNotExist):
        queue.skip(u2, a.pk)


def test_choice_validation():
    project = make_project(allow_ties=False)
    make_comparisons(project, 1)
    (user,) = make_annotators(project, 1)
    a = queue.next_assignment(user, project)
    with pytest.raises(queue.QueueError, match="Ties"):
        queue.submit_judgment(user, a.pk, choice="tie")
    with pytest.raises(queue.QueueError):
        queue.submit_judgment(user, a.pk, choice="a")
    with pytest.raises(queue.QueueError):
        queue.submit_judgment(user, a.pk, choice="left", strength=9)
    j = queue.submit_judgment(user, a.pk, choice="both_bad", strength=3)
    assert j.choice == Choice.BOTH_BAD and j.strength is None


# --- pool balance ----------------------------------------------------------------------------


def test_annotator_goes_where_their_pool_is_missing():
    """Pools below their target share on a comparison come first, even over older comparisons."""
    project = make_project(overlap=4)
    eu = Pool.objects.create(project=project, name="eu", target_share=0.5)
    us = Pool.objects.create(project=project, name="us", target_share=0.5)
    c1, c2 = make_comparisons(project, 2)
    eu1, eu2, eu3 = make_annotators(project, 3, eu)
    (us1,) = make_annotators(project, 1, us)
    assert queue.next_assignment(eu1, project).comparison_id == c1.pk
    # c1 has one EU slot of its two; c2 none: the next EU annotator goes to c2.
    assert queue.next_assignment(eu2, project).comparison_id == c2.pk
    # Both have one EU slot: ties go to the oldest.
    assert queue.next_assignment(eu3, project).comparison_id == c1.pk
    # US has nothing anywhere: the oldest.
    assert queue.next_assignment(us1, project).comparison_id == c1.pk


def test_a_pool_spreads_over_comparisons_instead_of_filling_them():
    """With two pools of equal target, the first pool to arrive takes one slot per comparison
    (its share) rather than filling comparisons, so the other pool finds room everywhere."""
    project = make_project(overlap=2)
    a_pool = Pool.objects.create(project=project, name="a", target_share=0.5)
    b_pool = Pool.objects.create(project=project, name="b", target_share=0.5)
    comparisons = make_comparisons(project, 10)
    a_users = make_annotators(project, 3, a_pool)
    b_users = make_annotators(project, 3, b_pool)
    for i in range(10):  # pool A alone for 10 items
        user = a_users[i % 3]
        a = queue.next_assignment(user, project)
        queue.submit_judgment(user, a.pk, choice="left")
    per_comparison = Counter(Judgment.objects.values_list("comparison_id", flat=True))
    assert all(per_comparison[c.pk] == 1 for c in comparisons), per_comparison
    for _ in range(10):
        for user in b_users:
            a = queue.next_assignment(user, project)
            if a is not None:
                queue.submit_judgment(user, a.pk, choice="left")
    pools = defaultdict(Counter)
    for cid, pool_id in Judgment.objects.values_list("comparison_id", "pool_id"):
        pools[cid][pool_id] += 1
    assert all(pools[c.pk] == Counter({a_pool.pk: 1, b_pool.pk: 1}) for c in comparisons), pools


def _run_pools(shares, headcounts, *, overlap, n_comparisons, seed):
    project = make_project(overlap=overlap)
    pools, users = [], []
    for k, (share, count) in enumerate(zip(shares, headcounts)):
        pool = Pool.objects.create(project=project, name=f"p{k}", target_share=share)
        pools.append(pool)
        users += make_annotators(project, count, pool, prefix=f"s{seed}-")
    make_comparisons(project, n_comparisons)
    rng = random.Random(seed)
    active = list(users)
    while active:  # rounds: every active annotator asks once, in a random order
        rng.shuffle(active)
        for user in list(active):
            a = queue.next_assignment(user, project, rng=rng)
            if a is None:
                active.remove(user)
                continue
            queue.submit_judgment(user, a.pk, choice="left")
    counts = defaultdict(Counter)
    for cid, pool_id in Judgment.objects.filter(project=project).values_list("comparison_id", "pool_id"):
        counts[cid][pool_id] += 1
    return project, pools, counts


N_POOL_COMPARISONS = 20


def test_pool_shares_per_comparison_and_overall():
    """Three pools with target shares 0.4/0.4/0.2 and overlap 5 (2, 2 and 1 judgments per
    comparison), annotators active in the same proportion (rounds in which every annotator asks
    once, in random order). Each comparison's pool mix lands on its targets and so do the
    overall shares. The same people in the same order without targets (first come, first
    served) leave most comparisons off their mix: the balance is the queue's doing."""
    shares, headcounts, overlap = (0.4, 0.4, 0.2), (4, 4, 2), 5
    project, pools, counts = _run_pools(shares, headcounts, overlap=overlap, n_comparisons=N_POOL_COMPARISONS, seed=3)
    total = sum(sum(c.values()) for c in counts.values())
    assert total == N_POOL_COMPARISONS * overlap  # everything got judged
    for pool, share in zip(pools, shares):
        observed = sum(c[pool.pk] for c in counts.values()) / total
        assert abs(observed - share) <= 0.03, (pool.name, observed, share)

    def off_target(counts, pools):
        return [
            (cid, {p.name: c[p.pk] for p in pools}) for cid, c in counts.items()
            if any(c[p.pk] != share * overlap for p, share in zip(pools, shares))
        ]

    # At most one comparison (finished by whoever was left at the end) misses its mix.
    assert len(off_target(counts, pools)) <= 1, off_target(counts, pools)

    _, base_pools, base_counts = _run_pools(
        (0, 0, 0), headcounts, overlap=overlap, n_comparisons=N_POOL_COMPARISONS, seed=3
    )
    assert len(off_target(base_counts, base_pools)) >= N_POOL_COMPARISONS // 4


# --- gold mixing and display order -----------------------------------------------------------


@pytest.mark.slow
def test_gold_mixing_rate_and_display_order_over_many_draws():
    """1000 draws (10 annotators × 100) at gold_rate 0.2 with gold and regular work always
    available: the observed gold rate is within ±0.03 and response A is on the left about
    half the time. Most items are skipped (the cheaper way to move on); every tenth is judged,
    and its judgment records the order shown."""
    rng = random.Random(11)
    project = make_project(overlap=10, gold_rate=0.2)
    make_comparisons(project, 110)
    make_comparisons(project, 60, gold=True)
    annotators = make_annotators(project, 10)
    draws = gold = left = judged = 0
    for user in annotators:
        for i in range(100):
            a = queue.next_assignment(user, project, rng=rng)
            assert a is not None
            draws += 1
            gold += a.comparison.is_gold
            left += a.a_on_left
            if i % 10 == 0:
                j = queue.submit_judgment(user, a.pk, choice="left")
                assert j.a_on_left == a.a_on_left
                assert j.choice == (Choice.A if a.a_on_left else Choice.B)
                judged += 1
            else:
                queue.skip(user, a.pk)
    assert draws == 1000 and judged == 100
    assert abs(gold / draws - 0.2) <= 0.03, gold / draws
    assert abs(left / draws - 0.5) <= 0.05, left / draws
    # Each annotator saw each gold comparison at most once; gold comparisons stay open.
    seen = Counter(Assignment.objects.filter(comparison__is_gold=True).values_list("annotator_id", "comparison_id"))
    assert max(seen.values()) == 1
    assert not Comparison.objects.filter(project=project, is_gold=True, is_open=False).exists()
    check_invariants(project)


def test_gold_falls_back_to_regular_and_back():
    project = make_project(gold_rate=1.0)
    (regular,) = make_comparisons(project, 1)
    (user,) = make_annotators(project, 1)
    # Wants gold, none exists: served the regular one.
    a = queue.next_assignment(user, project, rng=FixedRng(0.0))
    assert a.comparison_id == regular.pk
    queue.submit_judgment(user, a.pk, choice="left")
    (gold,) = make_comparisons(project, 1, gold=True)
    Project.objects.filter(pk=project.pk).update(gold_rate=0.0)
    project.refresh_from_db()
    # Wants regular, none left: served the gold one.
    a = queue.next_assignment(user, project, rng=FixedRng(0.9))
    assert a.comparison_id == gold.pk


def test_gold_rate_zero_never_serves_gold_while_regular_work_remains():
    project = make_project(gold_rate=0.0, overlap=1)
    make_comparisons(project, 5)
    make_comparisons(project, 5, gold=True)
    (user,) = make_annotators(project, 1)
    for _ in range(5):
        a = queue.next_assignment(user, project)
        assert not a.comparison.is_gold
        queue.submit_judgment(user, a.pk, choice="left")


@pytest.mark.parametrize(
    "a_on_left, shown, stored",
    [(True, "left", "a"), (True, "right", "b"), (False, "left", "b"), (False, "right", "a"),
     (True, "tie", "tie"), (False, "both_bad", "both_bad")],
)
def test_choice_maps_from_shown_side_to_response(a_on_left, shown, stored):
    project = make_project()
    (c,) = make_comparisons(project, 1)
    (user,) = make_annotators(project, 1)
    # rng.random(): first the gold draw (rate 0: unused), then a_on_left = random() < 0.5.
    a = queue.next_assignment(user, project, rng=FixedRng(0.1 if a_on_left else 0.9))
    assert a.a_on_left is a_on_left
    left, right = queue.shown_pair(a)
    assert (left.pk, right.pk) == ((c.response_a_id, c.response_b_id) if a_on_left else (c.response_b_id,
                                                                                          c.response_a_id))
    j = queue.submit_judgment(user, a.pk, choice=shown, strength=2)
    assert j.choice == stored and j.a_on_left is a_on_left
    assert queue.to_underlying(a_on_left, shown) == stored


# --- expiry ----------------------------------------------------------------------------------


def test_expired_assignment_goes_to_another_and_late_submit_is_gone_when_filled():
    project = make_project(overlap=1, assignment_timeout_s=60)
    (c,) = make_comparisons(project, 1)
    u1, u2 = make_annotators(project, 2)
    t0 = timezone.now()
    a1 = queue.next_assignment(u1, project, now=t0)
    assert queue.next_assignment(u2, project, now=t0 + timedelta(seconds=30)) is None  # still held
    a2 = queue.next_assignment(u2, project, now=t0 + timedelta(seconds=61))
    assert a2 is not None and a2.comparison_id == c.pk
    assert Assignment.objects.get(pk=a1.pk).status == AssignmentStatus.EXPIRED
    queue.submit_judgment(u2, a2.pk, choice="left", now=t0 + timedelta(seconds=70))
    with pytest.raises(queue.AssignmentGone):
        queue.submit_judgment(u1, a1.pk, choice="right", now=t0 + timedelta(seconds=80))
    c.refresh_from_db()
    assert (c.n_judgments, c.slots_taken, c.is_open) == (1, 1, False)
    check_invariants(project)


def test_late_submit_accepted_when_room_remains():
    project = make_project(overlap=2, assignment_timeout_s=60)
    (c,) = make_comparisons(project, 1)
    u1, u2 = make_annotators(project, 2)
    t0 = timezone.now()
    a1 = queue.next_assignment(u1, project, now=t0)
    a2 = queue.next_assignment(u2, project, now=t0 + timedelta(seconds=61))  # expires a1
    assert Assignment.objects.get(pk=a1.pk).status == AssignmentStatus.EXPIRED
    j1 = queue.submit_judgment(u1, a1.pk, choice="left", now=t0 + timedelta(seconds=65))
    assert j1.pk
    queue.submit_judgment(u2, a2.pk, choice="left", now=t0 + timedelta(seconds=66))
    c.refresh_from_db()
    assert (c.n_judgments, c.slots_taken, c.is_open) == (2, 2, False)
    check_invariants(project)


def test_expired_assignment_can_be_served_again_to_its_annotator():
    project = make_project(overlap=1, assignment_timeout_s=60)
    (c,) = make_comparisons(project, 1)
    (user,) = make_annotators(project, 1)
    t0 = timezone.now()
    a1 = queue.next_assignment(user, project, now=t0)
    a2 = queue.next_assignment(user, project, now=t0 + timedelta(seconds=120))
    assert a2.comparison_id == c.pk and a2.status == AssignmentStatus.ACTIVE
    assert a2.expires_at > t0 + timedelta(seconds=120)
    assert Assignment.objects.filter(annotator=user).count() == 1 and a1.pk == a2.pk
    check_invariants(project)


# --- skip and exclusion ----------------------------------------------------------------------


def test_skip_is_never_served_again_and_frees_the_slot():
    project = make_project(overlap=1)
    (c,) = make_comparisons(project, 1)
    u1, u2 = make_annotators(project, 2)
    a = queue.next_assignment(u1, project)
    queue.skip(u1, a.pk)
    assert queue.next_assignment(u1, project) is None
    assert queue.next_assignment(u1, project, now=timezone.now() + timedelta(days=1)) is None
    assert queue.next_assignment(u2, project).comparison_id == c.pk
    assert queue.progress(u1, project).skipped == 1
    # Skipping twice changes nothing.
    assert queue.skip(u1, a.pk).status == AssignmentStatus.SKIPPED
    check_invariants(project)


def test_excluded_and_non_annotators_are_not_served():
    project = make_project()
    make_comparisons(project, 2)
    (user,) = make_annotators(project, 1)
    Membership.objects.filter(user=user).update(excluded=True)
    with pytest.raises(queue.NotAnAnnotator):
        queue.next_assignment(user, project)
    assert not Assignment.objects.exists()
    researcher = User.objects.create(username="res")
    Membership.objects.create(project=project, user=researcher, role=Role.RESEARCHER)
    with pytest.raises(queue.NotAnAnnotator):
        queue.next_assignment(researcher, project)
    stranger = User.objects.create(username="stranger")
    with pytest.raises(queue.NotAnAnnotator):
        queue.next_assignment(stranger, project)


def test_progress_counts():
    project = make_project(overlap=1)
    make_comparisons(project, 4)
    (user,) = make_annotators(project, 1)
    assert queue.progress(user, project) == queue.Progress(done=0, skipped=0, remaining=4)
    a = queue.next_assignment(user, project)
    queue.submit_judgment(user, a.pk, choice="left")
    a = queue.next_assignment(user, project)
    queue.skip(user, a.pk)
    p = queue.progress(user, project)
    assert (p.done, p.skipped, p.remaining) == (1, 1, 2)


def test_sync_open_follows_an_overlap_change():
    project = make_project(overlap=2)
    c1, c2 = make_comparisons(project, 2)
    u1, u2 = make_annotators(project, 2)
    for user in (u1, u2):
        a = queue.next_assignment(user, project)
        queue.submit_judgment(user, a.pk, choice="left")
    c1.refresh_from_db()
    assert (c1.n_judgments, c1.is_open) == (2, False)
    project.overlap = 3
    project.save()
    assert queue.sync_open(project) == 1
    c1.refresh_from_db()
    assert c1.is_open
    project.overlap = 1
    project.save()
    queue.sync_open(project)
    assert set(Comparison.objects.filter(project=project).values_list("pk", "is_open")) == {
        (c1.pk, False), (c2.pk, True)
    }


def test_counter_moves_alike_for_gold_and_regular_items():
    """The progress counter never tells which item was gold: each judged item, gold or not,
    moves "done" up by one and "remaining" down by one."""
    project = make_project(overlap=1, gold_rate=0.5)
    make_comparisons(project, 6)
    make_comparisons(project, 6, gold=True)
    (user,) = make_annotators(project, 1)
    before = queue.progress(user, project)
    assert before.remaining == 12
    kinds = set()
    for _ in range(12):
        a = queue.next_assignment(user, project)
        kinds.add(a.comparison.is_gold)
        queue.submit_judgment(user, a.pk, choice="left")
        after = queue.progress(user, project)
        assert (after.done - before.done, before.remaining - after.remaining) == (1, 1)
        before = after
    assert kinds == {True, False} and before.remaining == 0
    assert queue.next_assignment(user, project) is None


def test_large_open_counts_are_cached_longer_the_larger_they_are():
    """Above ``EXACT_COUNT_UP_TO`` the progress counter reads a cached count of the project's open
    comparisons, kept for longer the larger it is: recounting scans n rows, so at 10M it is
    recounted ten times less often than at 1M and costs the same per second."""
    from annotate.queue.reads import OPEN_COUNT_ROWS_PER_S, open_count_ttl

    assert open_count_ttl(queue.EXACT_COUNT_UP_TO + 1) == queue.OPEN_COUNT_TTL_S
    assert open_count_ttl(10_000_000) == 10 * open_count_ttl(1_000_000)
    for n in (50_000, 1_000_000, 10_000_000):
        assert n / open_count_ttl(n) <= OPEN_COUNT_ROWS_PER_S
