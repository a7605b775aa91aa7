"""Simulated annotators of texts: the pure behaviour (evaluation.stats.simulation) and the driver
that lets them judge through the queue (evaluation.simulated).

The driver is checked for what a project would notice with real people: every regular
comparison ends with exactly ``overlap`` judgments, gold items are mixed in and judged at most
once per person, abandoned items expire and are judged by someone else, and a perfectly
accurate annotator's stored choice is the higher-utility response whatever side it was shown on.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from annotate.models import Assignment, AssignmentStatus, Comparison, Judgment, Membership
from evaluation.simulated import annotate, enroll
from evaluation.stats.simulation import KeywordUtility, PoolSpec, SimulatedAnnotator, draw_annotators
from tests.factories import make_comparison, make_project

U = KeywordUtility()


def test_keyword_utility_counts_lexicon_words_and_penalises_length():
    assert U("Sure, glad to help!") == 3.0
    assert U("No. That is a stupid question.") == -2.0
    assert U("") == 0.0
    long = " ".join(["sure"] + ["word"] * 31)  # 32 words: 20 past the free 12
    assert U(long) == pytest.approx(1 - 0.05 * 20)


def test_pool_spec_rejects_impossible_behaviour():
    with pytest.raises(ValueError, match="accuracy"):
        PoolSpec("x", accuracy=(0.9, 0.5))
    with pytest.raises(ValueError, match="left_bias \\+ length_bias"):
        PoolSpec("x", left_bias=0.7, length_bias=0.5)
    with pytest.raises(ValueError, match="unknown pool field"):
        PoolSpec.from_dict({"name": "x", "accuracyy": 0.9})
    assert PoolSpec.from_dict({"name": "x", "accuracy": 0.8}).accuracy == (0.8, 0.8)


def test_the_same_pools_and_seed_give_the_same_people():
    pools = [PoolSpec("a", n_annotators=3, accuracy=(0.6, 0.9)), PoolSpec("b", n_annotators=2)]
    first, again = draw_annotators(pools, seed=4), draw_annotators(pools, seed=4)
    assert first == again and len(first) == 5
    assert all(0.6 <= p.accuracy <= 0.9 for p in first[:3])
    assert draw_annotators(pools, seed=5) != first


def _person(**kw) -> SimulatedAnnotator:
    base = dict(pool="p", index=0, accuracy=0.8, left_bias=0.0, length_bias=0.0, tie_rate=0.0, seconds=10.0,
                abandon_rate=0.0)
    return SimulatedAnnotator(**{**base, **kw})


def test_judging_follows_the_configured_rates():
    rng = np.random.default_rng(0)
    good, bad = "sure, glad to help", "no"
    n = 4000
    person = _person(accuracy=0.8, left_bias=0.2, tie_rate=0.1)
    picks = [person.judge(bad, good, U, rng) for _ in range(n)]  # the better text on the right
    choice = np.array([d.choice for d in picks])
    assert (choice == "left").mean() == pytest.approx(0.2 + 0.8 * 0.9 * 0.2, abs=0.025)
    assert (choice == "tie").mean() == pytest.approx(0.8 * 0.1, abs=0.02)
    assert (choice == "right").mean() == pytest.approx(0.8 * 0.9 * 0.8, abs=0.025)
    longer = _person(length_bias=1.0)
    assert {longer.judge(good, bad, U, rng).choice for _ in range(50)} == {"left"}
    assert {longer.judge(bad, good, U, rng).choice for _ in range(50)} == {"right"}
    seconds = np.array([d.seconds for d in picks])
    assert np.median(seconds) == pytest.approx(10.0, rel=0.1)


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=60), st.text(max_size=60), st.integers(0, 2**32 - 1))
def test_a_perfect_annotator_never_picks_the_worse_text(left, right, seed):
    decision = _person(accuracy=1.0).judge(left, right, U, np.random.default_rng(seed))
    if U(left) > U(right):
        assert decision.choice == "left"
    elif U(left) < U(right):
        assert decision.choice == "right"


def _project_with_items(n_regular=12, n_gold=3, **fields):
    project = make_project(overlap=3, gold_rate=0.3, assignment_timeout_s=60, **fields)
    for i in range(n_regular):
        good, bad = f"Sure, glad to help with {i}.", f"No. {i} is a bad question."
        a, b = (good, bad) if i % 2 else (bad, good)
        make_comparison(project, f"r{i}", text_a=a, text_b=b)
    for i in range(n_gold):
        make_comparison(project, f"g{i}", text_a=f"Thanks, happy to help {i}.", text_b=f"never {i}", gold="a")
    return project


@pytest.mark.django_db
def test_simulated_annotators_work_through_the_queue():
    project = _project_with_items()
    people = draw_annotators(
        [
            PoolSpec("careful", n_annotators=3, accuracy=(1.0, 1.0)),
            PoolSpec("hasty", n_annotators=3, accuracy=(0.6, 0.6), left_bias=0.5, abandon_rate=0.3, seconds=5),
        ],
        seed=1,
    )
    team = enroll(project, people)
    assert enroll(project, people)[0][0] == team[0][0]  # enrolling again finds the same people
    assert set(Membership.objects.filter(project=project).values_list("pool__name", flat=True)) == {
        "careful", "hasty"}

    session = annotate(project, team, seed=3)

    regular = Comparison.objects.filter(project=project, is_gold=False)
    assert sorted(set(regular.values_list("n_judgments", flat=True))) == [3]  # overlap, never more
    assert Judgment.objects.filter(comparison__in=regular).count() == 12 * 3
    gold_judgments = Judgment.objects.filter(project=project, comparison__is_gold=True)
    assert gold_judgments.exists()  # gold is mixed in
    per_person_gold = gold_judgments.values_list("annotator_id", "comparison_id")
    assert len(per_person_gold) == len(set(per_person_gold))
    # Abandoned items expired and went back to the queue.
    assert session.abandoned > 0
    # (An expired assignment served again to the same person becomes theirs again, hence "done".)
    left = Assignment.objects.filter(pk__in=session.abandoned_assignments)
    assert set(left.values_list("status", flat=True)) <= {AssignmentStatus.EXPIRED, AssignmentStatus.DONE}
    assert not Assignment.objects.filter(project=project, status=AssignmentStatus.ACTIVE).exists()
    assert session.judgments == Judgment.objects.filter(project=project).count()
    assert session.ended > session.started
    # The careful annotators' stored choices are the higher-utility response, whichever side it was on.
    careful = [user for user, person in team if person.pool == "careful"]
    for j in Judgment.objects.filter(annotator__in=careful).select_related(
        "comparison__response_a", "comparison__response_b"
    ):
        ua, ub = U(j.comparison.response_a.text), U(j.comparison.response_b.text)
        assert j.choice == ("a" if ua > ub else "b")
    worked = {w.username: w for w in session.workers}
    assert all(w.true_accuracy == 1.0 for w in worked.values() if w.person.pool == "careful")
    hasty = [w for w in worked.values() if w.person.pool == "hasty"]
    assert sum(w.left_clicks for w in hasty) > sum(w.judgments for w in hasty) / 2
    assert hasty[0].as_dict()["true_position_bias"] == 0.25


@pytest.mark.django_db
def test_max_judgments_stops_early_and_a_second_call_carries_on():
    project = _project_with_items(n_gold=0)
    team = enroll(project, draw_annotators([PoolSpec("p", n_annotators=3)], seed=0))
    first = annotate(project, team, max_judgments=10)
    assert first.judgments == 10 == Judgment.objects.filter(project=project).count()
    annotate(project, team, start=first.ended)
    assert Judgment.objects.filter(project=project).count() == 36
