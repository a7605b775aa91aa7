"""The progress counter (``annotate.queue.progress``) after issue 12: it no longer reads the
annotator's whole history, and shows exactly the numbers the old statement computed from it.

The old statement is kept here as the oracle. Runs on SQLite and on PostgreSQL (the prepared
statement of ``annotate.queue.reads``).
"""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.cache import cache
from django.db import connection
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from annotate import queue, revisions
from annotate.models import Comparison, Judgment
from annotate.queue import reads
from tests.factories import make_annotators, make_comparisons, make_project

pytestmark = pytest.mark.django_db

# What progress() ran before issue 12: every assignment the annotator has in the project, joined
# to its comparison.
HISTORY_PROGRESS_SQL = """
SELECT
    SUM(CASE WHEN a.status = 'done' THEN 1 ELSE 0 END),
    SUM(CASE WHEN a.status = 'skipped' THEN 1 ELSE 0 END),
    SUM(CASE WHEN a.status IN ('done', 'skipped') AND NOT c.is_gold AND c.is_open THEN 1 ELSE 0 END),
    SUM(CASE WHEN a.status IN ('done', 'skipped') AND c.is_gold THEN 1 ELSE 0 END),
    SUM(CASE WHEN a.status = 'active' AND NOT c.is_gold AND NOT c.is_open THEN 1 ELSE 0 END)
FROM annotate_assignment a JOIN annotate_comparison c ON c.id = a.comparison_id
WHERE a.annotator_id = %(user)s AND a.project_id = %(project)s
"""


def old_progress(user, project) -> queue.Progress:
    """The counter as the old statement computed it, with exact open counts (the projects here
    stay below ``EXACT_COUNT_UP_TO``, where the old counter was exact too)."""
    with connection.cursor() as cur:
        cur.execute(HISTORY_PROGRESS_SQL, {"user": user.pk, "project": project.pk})
        done, skipped, finished_open, finished_gold, held_full = (int(x or 0) for x in cur.fetchone())
    open_regular, open_gold = (
        Comparison.objects.filter(project=project, is_gold=gold, is_open=True).count()
        for gold in (False, True)
    )
    remaining = (open_regular - finished_open + held_full) + (open_gold - finished_gold)
    return queue.Progress(done=done, skipped=skipped, remaining=max(remaining, 0))


# (annotator, what they do): take the next item and submit it, skip it, or walk away from it
# (it expires before the next step); submit an item they walked away from after it expired;
# revise their last judgment; or the admin changes the overlap.
STEP = st.one_of(
    st.tuples(st.integers(0, 2), st.sampled_from(["submit", "submit", "skip", "abandon", "late", "revise"])),
    st.tuples(st.just(0), st.sampled_from(["overlap 1", "overlap 2", "overlap 3"])),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_regular=st.integers(0, 6), n_gold=st.integers(0, 3), overlap=st.integers(1, 3),
       steps=st.lists(STEP, max_size=30))
def test_the_counter_equals_the_old_history_count_after_any_sequence(n_regular, n_gold, overlap, steps):
    """Three annotators claim, submit, skip, walk away from items (which then expire), submit
    late, revise, while the overlap changes (closing and reopening comparisons under finished
    and held items alike). After every step every annotator's counter is what the old statement
    over their whole history showed."""
    project = make_project(overlap=overlap, assignment_timeout_s=60, gold_rate=0.4)
    make_comparisons(project, n_regular)
    make_comparisons(project, n_gold, gold=True)
    annotators = make_annotators(project, 3, prefix="prog")
    now = timezone.now()
    abandoned: list[tuple] = []
    for who, action in steps:
        user = annotators[who]
        now += timedelta(seconds=1)
        queue.expire_stale(project, now)
        if action.startswith("overlap"):
            project.overlap = int(action.split()[1])
            project.save(update_fields=["overlap"])
            queue.sync_open(project)
        elif action == "late":
            if abandoned:
                late_user, late_id = abandoned.pop(0)
                try:
                    queue.submit_judgment(late_user, late_id, choice="right", now=now)
                except queue.QueueError:
                    pass  # filled meanwhile, or the comparison is no longer theirs to judge
        elif action == "revise":
            last = Judgment.objects.filter(annotator=user, project=project).order_by("-pk").first()
            if last is not None:
                revisions.revise(user, last.pk, choice="tie" if last.choice != "tie" else "left", now=now)
        else:
            a = queue.next_assignment(user, project, now=now)
            if a is not None:
                if action == "submit":
                    queue.submit_judgment(user, a.pk, choice="left", now=now)
                elif action == "skip":
                    queue.skip(user, a.pk, now=now)
                else:
                    abandoned.append((user, a.pk))
                    now += timedelta(seconds=61)
        for annotator in annotators:
            assert queue.progress(annotator, project) == old_progress(annotator, project)


def test_a_held_item_filled_by_others_still_counts_as_remaining():
    """An annotator holds an item; the admin lowers the overlap so that the item is full. It is
    still theirs to judge, so it stays in "remaining" until they do."""
    project = make_project(overlap=2)
    make_comparisons(project, 2)
    u1, u2 = make_annotators(project, 2)
    a1 = queue.next_assignment(u1, project)
    queue.submit_judgment(u1, a1.pk, choice="left")
    queue.next_assignment(u2, project)  # the same first comparison
    project.overlap = 1
    project.save(update_fields=["overlap"])
    queue.sync_open(project)
    # u2: the comparison they hold (now full) and the second one.
    assert queue.progress(u2, project) == queue.Progress(done=0, skipped=0, remaining=2)
    assert queue.progress(u2, project) == old_progress(u2, project)


def test_above_the_exact_cap_the_counter_still_moves_by_one_per_judgment(monkeypatch):
    """With more open comparisons than ``EXACT_COUNT_UP_TO`` (lowered to 3 here) the open count
    is cached, and so is the annotator's finished count, moved by their own judgments: each
    judgment, gold or regular, still moves "done" up and "remaining" down by one. Once the cached
    counts expire (cleared here) the counter is the exact one again."""
    monkeypatch.setattr(reads, "EXACT_COUNT_UP_TO", 3)
    project = make_project(overlap=3, gold_rate=0.5)
    make_comparisons(project, 8)
    make_comparisons(project, 5, gold=True)
    (user, other) = make_annotators(project, 2)
    # The other annotator's judgments make the annotator's history-side count nonzero.
    for _ in range(3):
        queue.submit_judgment(other, queue.next_assignment(other, project).pk, choice="left")
    before = queue.progress(user, project)
    assert before == old_progress(user, project) == queue.Progress(done=0, skipped=0, remaining=13)
    for _ in range(6):
        a = queue.next_assignment(user, project)
        queue.submit_judgment(user, a.pk, choice="left")
        after = queue.progress(user, project)
        assert (after.done - before.done, before.remaining - after.remaining) == (1, 1)
        before = after
    cache.clear()
    assert queue.progress(user, project) == old_progress(user, project) == queue.Progress(
        done=6, skipped=0, remaining=7
    )


@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL (set DATABASE_URL)")
def test_the_counters_generic_plan_setting_does_not_outlive_its_statement():
    """The counter's prepared statement runs its generic plan by setting ``plan_cache_mode`` for
    its own EXECUTE; the claim and every other statement of the session must still be planned
    as PostgreSQL would (the setting is reset after the first run, which also prepares, and
    after later ones)."""
    project = make_project(overlap=1)
    make_comparisons(project, 3)
    (user,) = make_annotators(project, 1)
    with connection.cursor() as cur:
        cur.execute("SHOW plan_cache_mode")
        (before,) = cur.fetchone()
    for _ in range(2):
        assert queue.progress(user, project) == old_progress(user, project)
        with connection.cursor() as cur:
            cur.execute("SHOW plan_cache_mode")
            assert cur.fetchone() == (before,)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL (set DATABASE_URL)")
def test_a_huge_open_count_is_estimated_not_counted(monkeypatch):
    """Above ``ESTIMATE_ABOVE`` open comparisons (lowered to 10 here) PostgreSQL's estimate
    stands in for an exact count: at 10M the count took seconds in the first request of every web
    process. The estimate is never below what was counted, and after ANALYZE it is close."""
    monkeypatch.setattr(reads, "EXACT_COUNT_UP_TO", 3)
    monkeypatch.setattr(reads, "ESTIMATE_ABOVE", 10)
    project = make_project(overlap=1)
    make_comparisons(project, 60)
    (user,) = make_annotators(project, 1)
    with connection.cursor() as cur:
        cur.execute("ANALYZE annotate_comparison")
    executed = []

    def spy(execute, sql, params, many, context):
        executed.append(sql)
        return execute(sql, params, many, context)

    cache.clear()
    with connection.execute_wrapper(spy):
        remaining = queue.progress(user, project).remaining
    assert any(sql.startswith("EXPLAIN (FORMAT JSON)") for sql in executed)
    # no uncapped count of the comparisons (the annotator's own finished count is one of assignments)
    assert not any('FROM "annotate_comparison"' in sql and "__count" in sql for sql in executed)
    assert 11 <= remaining <= 120
    # A small project is still counted exactly.
    small = make_project(overlap=1)
    make_comparisons(small, 5)
    (other,) = make_annotators(small, 1)
    assert queue.progress(other, small) == old_progress(other, small)
