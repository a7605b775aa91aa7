"""Quality services: recompute on a hand-made project, weights, exclusion, debouncing, own accuracy.

The hand-made project: six comparisons (four gold: A, A, B, B), three annotators who each judge
all six, with equal-length responses (no length signal) and balanced display order:

    annotator  pool   gold answers        right  gold accuracy (Beta(2, 1) prior)
    a1         north  A A B A  (+ A, B)   3/4    (3 + 2) / (4 + 3) = 5/7
    a2         south  B B A A  (+ B, A)   0/4    (0 + 2) / (4 + 3) = 2/7
    a3         north  A A B B  (+ A, B)   4/4    (4 + 2) / (4 + 3) = 6/7

With ``PREFLOOP_QUALITY_MIN_GOLD = 3`` the weight is ``clip(2 acc − 1, 0, 1)`` (no bias can be
demonstrated on six judgments): 3/7, 0, 5/7. On every item two of the three votes agree, so
raw agreement is 2 agreeing pairs of 6 = 1/3; without a2, a1 and a3 agree on 5 of 6 items.
"""

from __future__ import annotations

import pytest
from django.core.management import call_command
from scipy import stats

from annotate import queue
from annotate.models import Judgment, Membership, Pool, Project
from evaluation.models import AnnotatorQuality, JobStatus, QualityReport
from evaluation.quality.compute import recompute_quality
from evaluation.quality.scheduling import schedule_recompute
from evaluation.quality.selectors import annotator_own_accuracy, latest_report
from evaluation.quality.services import (
    NotAMember,
    aggregated_labels,
    effective_weight,
    effective_weights,
    set_excluded,
    set_weight_override,
)
from evaluation.quality.tasks import recompute_quality_task
from tests.evaluation.hand_made import VOTES, hand_comparison, hand_judgment, hand_made_project
from tests.factories import add_member, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def hand(settings):
    settings.PREFLOOP_AUTO_QUALITY = False
    settings.PREFLOOP_QUALITY_MIN_GOLD = 3
    settings.PREFLOOP_QUALITY_BOOTSTRAP = 50
    settings.PREFLOOP_QUALITY_BOOTSTRAP_TIME = 20
    settings.PREFLOOP_QUALITY_BOOTSTRAP_BT = 5
    project, users, comparisons = hand_made_project("hand-made")
    return project, users, comparisons


def quality(project, user) -> AnnotatorQuality:
    return AnnotatorQuality.objects.get(project=project, annotator=user)


def test_recompute_gives_the_hand_computed_numbers(hand):
    project, users, _ = hand
    report = recompute_quality(project)
    assert report.status == JobStatus.SUCCEEDED and report.progress == 1.0 and report.finished_at
    assert report.n_judgments == 18

    expected = {"a1": (3, 5 / 7, 3 / 7), "a2": (0, 2 / 7, 0.0), "a3": (4, 6 / 7, 5 / 7)}
    for name, (correct, acc, weight) in expected.items():
        q = quality(project, users[name])
        assert (q.n_judgments, q.n_gold, q.gold_correct) == (6, 4, correct)
        assert q.gold_accuracy == pytest.approx(acc)
        a, b = 2 + correct, 1 + 4 - correct
        assert q.gold_accuracy_low == pytest.approx(stats.beta.ppf(0.025, a, b))
        assert q.gold_accuracy_high == pytest.approx(stats.beta.ppf(0.975, a, b))
        assert q.weight == pytest.approx(weight)
        assert q.tie_rate == 0.0 and q.median_seconds == 20.0
        assert q.length_bias is None  # equal lengths: nothing to measure
        assert q.position_bias is not None  # both display orders were shown

    assert set(quality(project, users["a2"]).flags) == {"low_accuracy", "low_weight"}
    assert quality(project, users["a1"]).flags == []
    assert quality(project, users["a3"]).flags == []

    data = report.data
    overall = data["agreement"]["overall"]
    assert overall["raw_agreement"]["value"] == pytest.approx(1 / 3)
    assert overall["raw_agreement"]["low"] <= 1 / 3 <= overall["raw_agreement"]["high"]
    assert overall["n_items"] == 6
    assert {p["name"] for p in data["agreement"]["per_pool"]} == {"north", "south"}
    north = next(p for p in data["agreement"]["per_pool"] if p["name"] == "north")
    assert north["raw_agreement"]["value"] == pytest.approx(5 / 6)  # a1 and a3
    # Pool matrix: north × south pairs agree on (a1 or a3) == a2: g4 by a1 only -> 1 of 12 pairs.
    labels = data["pool_matrix"]["labels"]
    i, k = labels.index("north"), labels.index("south")
    assert data["pool_matrix"]["disagreement"][i][k] == pytest.approx(1 - 1 / 12)
    assert data["pool_matrix"]["disagreement"][i][i] == pytest.approx(1 / 6)
    assert data["over_time"]["points"] and data["over_time"]["unit"] == "items"
    assert data["rounds"][0]["round"] == 0
    assert {m["name"] for m in data["rounds"][0]["models"]} == {"model-x", "model-y"}
    assert data["aggregation"]["method"] == "dawid_skene"
    assert data["annotators"][str(users["a1"].pk)]["accuracy_source"] == "gold"

    # Recomputing updates the rows in place.
    recompute_quality(project)
    assert AnnotatorQuality.objects.filter(project=project).count() == 3


def test_position_bias_only_from_known_display_orders(hand):
    # "imp" is an imported annotator: six votes, display order never recorded (NULL).
    # "mix" has four known-order votes, 3 of them for the left response (bias 3/4 - 1/2 = 0.25),
    # and two unknown-order votes for A, which an "A on the left" default would count as two
    # more left picks (5/6).
    project, users, comparisons = hand
    north = Pool.objects.get(project=project, name="north")
    for name in ("imp", "mix"):
        users[name] = make_user(name)
        add_member(project, users[name], pool=north)
    for c, v in zip(comparisons, VOTES["a3"], strict=True):
        hand_judgment(users["imp"], c, v, a_on_left=None, pool=north)
    mix = [(True, "a"), (False, "b"), (True, "a"), (False, "a"), (None, "a"), (None, "a")]
    for c, (a_on_left, v) in zip(comparisons, mix, strict=True):
        hand_judgment(users["mix"], c, v, a_on_left=a_on_left, pool=north)

    report = recompute_quality(project)
    extras = report.data["annotators"]
    imp, mixed = quality(project, users["imp"]), quality(project, users["mix"])
    assert imp.position_bias is None and imp.position_bias_se is None  # n/a: nothing to measure
    assert "position_bias" not in imp.flags
    x = extras[str(users["imp"].pk)]
    assert x["order_known"] is False and x["position_low"] is None and x["position_high"] is None
    assert x["factors"]["position"] == 1.0
    assert mixed.position_bias == pytest.approx(0.25)
    assert mixed.position_bias_se == pytest.approx((0.75 * 0.25 / 4) ** 0.5)
    x = extras[str(users["mix"].pk)]
    z = stats.norm.ppf(0.975)
    denom = 1 + z * z / 4
    centre, half = (0.75 + z * z / 8) / denom, z * (0.75 * 0.25 / 4 + z * z / 64) ** 0.5 / denom
    assert x["order_known"] is True
    low, high = centre - half - 0.5, centre + half - 0.5
    assert (x["position_low"], x["position_high"]) == pytest.approx((low, high))
    for name in ("a1", "a2", "a3"):
        assert quality(project, users[name]).position_bias is not None

    # Debiased Dawid–Skene takes the unknown orders too.
    labels = aggregated_labels(project, "dawid_skene_debiased")
    assert len(labels) == 6 and all(0.0 <= lab["p_a"] <= 1.0 for lab in labels)


def test_default_min_gold_uses_dawid_skene_accuracy(hand, settings):
    project, users, _ = hand
    del settings.PREFLOOP_QUALITY_MIN_GOLD  # back to the default, 10 gold judgments
    recompute_quality(project)
    report = latest_report(project)
    assert report.data["annotators"][str(users["a1"].pk)]["accuracy_source"] == "dawid_skene"
    q = quality(project, users["a1"])
    assert 0 <= q.weight <= 1 and q.estimated_accuracy is not None


def test_empty_project_recomputes_to_an_empty_report(settings):
    settings.PREFLOOP_AUTO_QUALITY = False
    project = Project.objects.create(name="empty")
    report = recompute_quality(project)
    assert report.status == JobStatus.SUCCEEDED
    assert report.data["n_judgments"] == 0
    assert not AnnotatorQuality.objects.filter(project=project).exists()


def test_exclusion_zeroes_the_weight_keeps_judgments_and_the_queue_refuses(hand):
    project, users, comparisons = hand
    recompute_quality(project)
    a2 = users["a2"]
    # a2 could be served before (a fresh comparison is open).
    hand_comparison(project, 99)
    assert queue.next_assignment(a2, project) is not None

    membership = set_excluded(project, a2.pk, True)
    assert membership.excluded
    assert effective_weight(membership, quality(project, a2)) == 0.0
    with pytest.raises(queue.NotAnAnnotator):
        queue.next_assignment(a2, project)
    assert Judgment.objects.filter(annotator=a2, project=project).count() == 6

    report = recompute_quality(project)
    assert quality(project, a2).n_judgments == 6  # still measured
    assert "excluded" in quality(project, a2).flags
    overall = report.data["agreement"]["overall"]
    assert overall["n_workers"] == 2
    assert overall["raw_agreement"]["value"] == pytest.approx(5 / 6)
    assert effective_weights(project)[a2.pk] == 0.0

    set_excluded(project, a2.pk, False)
    membership.refresh_from_db()
    assert not membership.excluded
    assert effective_weight(membership, quality(project, a2)) == pytest.approx(0.0)  # computed weight is 0
    assert queue.next_assignment(a2, project) is not None


def test_weight_override_replaces_the_computed_weight(hand):
    project, users, _ = hand
    recompute_quality(project)
    a1 = users["a1"]
    m = set_weight_override(project, a1.pk, 0.25)
    assert effective_weight(m, quality(project, a1)) == 0.25
    with pytest.raises(ValueError):
        set_weight_override(project, a1.pk, 1.5)
    with pytest.raises(ValueError):
        set_weight_override(project, a1.pk, -0.1)
    m.refresh_from_db()
    assert m.weight_override == 0.25
    # Exclusion wins over an override.
    m = set_excluded(project, a1.pk, True)
    assert effective_weight(m, quality(project, a1)) == 0.0
    set_excluded(project, a1.pk, False)
    m = set_weight_override(project, a1.pk, None)
    assert effective_weight(m, quality(project, a1)) == pytest.approx(3 / 7)
    with pytest.raises(NotAMember):
        set_weight_override(project, 10**9, 0.5)


def test_effective_weight_rule():
    m = Membership(excluded=False, weight_override=None)
    q = AnnotatorQuality(weight=0.6)
    assert effective_weight(m, q) == 0.6
    assert effective_weight(m, None) == 1.0
    assert effective_weight(None, q) == 0.6
    assert effective_weight(Membership(excluded=False, weight_override=0.0), q) == 0.0
    assert effective_weight(Membership(excluded=True, weight_override=0.9), q) == 0.0


class _Sent(list):
    def __call__(self, args=(), kwargs=None, countdown=None, **options):
        self.append((args, countdown))


@pytest.fixture
def sent(monkeypatch):
    calls = _Sent()
    monkeypatch.setattr(recompute_quality_task, "apply_async", calls)
    return calls


def test_judgments_schedule_one_debounced_report(hand, settings, sent, django_capture_on_commit_callbacks):
    project, users, comparisons = hand
    settings.PREFLOOP_AUTO_QUALITY = True
    settings.PREFLOOP_QUALITY_DEBOUNCE_S = 45
    extra = [hand_comparison(project, 100 + i) for i in range(3)]
    with django_capture_on_commit_callbacks(execute=True):
        for c in extra:
            hand_judgment(users["a1"], c, "a", a_on_left=True)
    with django_capture_on_commit_callbacks(execute=True):
        hand_judgment(users["a3"], extra[0], "b", a_on_left=False)
    queued = QualityReport.objects.filter(project=project, status=JobStatus.QUEUED)
    assert queued.count() == 1
    assert sent == [((queued.get().pk,), 45)]

    # "Recompute now" reuses the queued report and sends it without waiting.
    with django_capture_on_commit_callbacks(execute=True):
        again = schedule_recompute(project, countdown=0)
    assert again.pk == queued.get().pk and sent[-1] == ((again.pk,), 0)

    # While it runs, a new judgment queues the next one (so the new judgment is covered).
    QualityReport.objects.filter(pk=again.pk).update(status=JobStatus.RUNNING)
    with django_capture_on_commit_callbacks(execute=True):
        hand_judgment(users["a2"], extra[1], "a", a_on_left=True)
    assert QualityReport.objects.filter(project=project, status=JobStatus.QUEUED).count() == 1
    assert QualityReport.objects.filter(project=project).count() == 2


def test_auto_quality_off_schedules_nothing(hand, sent, django_capture_on_commit_callbacks):
    project, users, _ = hand  # the fixture turns PREFLOOP_AUTO_QUALITY off
    c = hand_comparison(project, 200)
    with django_capture_on_commit_callbacks(execute=True):
        hand_judgment(users["a1"], c, "a", a_on_left=True)
    assert not QualityReport.objects.filter(project=project).exists()
    assert sent == []


def test_task_is_idempotent(hand, sent, django_capture_on_commit_callbacks):
    project, users, _ = hand
    assert recompute_quality_task.acks_late
    with django_capture_on_commit_callbacks(execute=True):
        report = schedule_recompute(project)
    assert recompute_quality_task(report.pk) == "succeeded"
    report.refresh_from_db()
    assert report.status == JobStatus.SUCCEEDED and report.progress == 1.0
    finished = report.finished_at
    # A redelivered message does nothing.
    assert recompute_quality_task(report.pk) == "skipped (succeeded)"
    report.refresh_from_db()
    assert report.finished_at == finished
    assert recompute_quality_task(10**9) == "missing"


def test_task_failure_is_recorded(hand, monkeypatch):
    project, _, _ = hand
    report = QualityReport.objects.create(project=project)

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("evaluation.quality.tasks.recompute_quality", boom)
    assert recompute_quality_task(report.pk) == "failed"
    report.refresh_from_db()
    assert report.status == JobStatus.FAILED and "disk on fire" in report.message


def test_own_accuracy_is_off_by_default(hand):
    project, users, _ = hand
    recompute_quality(project)
    own = annotator_own_accuracy(users["a1"], project)
    assert not own.enabled and not own.visible and own.accuracy is None


def test_own_accuracy_after_enough_gold_and_nothing_about_items(hand):
    project, users, comparisons = hand
    recompute_quality(project)
    project.show_accuracy_after = 5
    project.save()
    own = annotator_own_accuracy(users["a1"], project)
    assert own.enabled and not own.visible and own.accuracy is None  # only 4 gold judgments

    project.show_accuracy_after = 4
    project.save()
    own = annotator_own_accuracy(users["a1"], project)
    assert own.visible and own.accuracy == pytest.approx(round(5 / 7, 2))
    assert own.low < own.accuracy < own.high
    payload = own.as_dict()
    assert set(payload) == {"enabled", "visible", "accuracy", "low", "high", "computed_at", "reason"}
    assert not any(isinstance(v, (list, dict)) for v in payload.values())  # nothing per item


def test_aggregated_labels(hand):
    project, users, comparisons = hand
    labels = aggregated_labels(project, "majority")
    by_id = {lab["comparison"]: lab for lab in labels}
    assert len(labels) == 6
    assert by_id[comparisons[0].pk]["label"] == "a" and by_id[comparisons[0].pk]["is_gold"]
    assert by_id[comparisons[4].pk]["p_a"] == pytest.approx(2 / 3)  # r1: A, B, A
    assert by_id[comparisons[4].pk]["pool_disagreement"] == pytest.approx(1.0)  # north all A, south B
    # An excluded annotator is left out; majority weighs votes by effective weight.
    set_excluded(project, users["a2"].pk, True)
    labels = aggregated_labels(project, "majority")
    assert {lab["comparison"]: lab for lab in labels}[comparisons[4].pk]["p_a"] == pytest.approx(1.0)


def test_management_command(hand, capsys):
    project, _, _ = hand
    call_command("recompute_quality", project=str(project.pk), verbosity=0)
    out = capsys.readouterr().out
    assert "raw agreement" in out and "0.333" in out and "below threshold: a2" in out
    assert QualityReport.objects.filter(project=project, status=JobStatus.SUCCEEDED).exists()


def test_imported_votes_schedule_one_report(settings, sent, django_capture_on_commit_callbacks):
    import io
    import json

    from annotate.imports import import_judgments

    settings.PREFLOOP_AUTO_QUALITY = True
    project = Project.objects.create(name="votes", overlap=3)
    lines = [
        {"prompt": "p", "response_a": "x", "response_b": "y", "annotator_id": f"ext:{i}", "label": "a"}
        for i in range(3)
    ]
    data = "\n".join(json.dumps(line) for line in lines).encode()
    with django_capture_on_commit_callbacks(execute=True):
        import_judgments(project, io.BytesIO(data), filename="votes.jsonl")
    assert QualityReport.objects.filter(project=project, status=JobStatus.QUEUED).count() == 1
    assert len(sent) == 1
