"""The unattended loop (training.loop) is a background job of prefloop.jobs: a loop whose process
died is left as that process leaves it (running, owned by a pid that has exited) and then the
sweep, the API or the next advance resumes it from its stage, or fails it with the reason."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from annotate.models import Judgment
from prefloop import jobs
from tests.jobs.test_recovery import lost
from tests.factories import make_team
from training.loop.seed import seed_project, synthetic_utility
from training.loop.service import LOOP_JOBS, MAX_ATTEMPTS, advance, start_loop
from training.models import JobStatus, LoopRun, LoopStage, ModelVersion, RunStatus, TrainingRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def scene(tmp_path):
    project = seed_project("Loop jobs", 8)
    team = make_team(project)
    base = ModelVersion.objects.create(name="loop-base", path=str(tmp_path / "base"))
    loop = start_loop(project, base_model=base, send=False, utility=synthetic_utility(),
                      pools=[{"name": "solo", "n_annotators": 3, "accuracy": [0.8, 0.9]}])
    return project, team, base, loop


def waiting_for_a_run(loop: LoopRun, base: ModelVersion) -> TrainingRun:
    run = TrainingRun.objects.create(project=loop.project, base_model=base, status=RunStatus.RUNNING)
    LoopRun.objects.filter(pk=loop.pk).update(stage=LoopStage.TRAIN, current_run=run, message="round 0: training")
    return run


def test_a_loop_lost_while_polling_its_run_is_resumed_from_its_stage(scene, django_capture_on_commit_callbacks):
    project, _, base, loop = scene
    waiting_for_a_run(loop, base)
    lost(loop)
    with django_capture_on_commit_callbacks() as sent:
        assert jobs.recover_all()["unattended loop"]["requeued"] == [loop.pk]
    assert len(sent) == 1  # its advance is sent again
    loop.refresh_from_db()
    assert (loop.status, loop.stage, loop.worker) == (JobStatus.QUEUED, LoopStage.TRAIN, "")
    assert "resumed" in loop.message
    # The re-sent advance claims it, finds the run still training, and lets go of it (queued,
    # polled again): nothing is ever left "running" without a live owner.
    assert advance(loop.pk) is False
    loop.refresh_from_db()
    assert (loop.status, loop.stage, loop.worker, loop.attempts) == (JobStatus.QUEUED, LoopStage.TRAIN, "", 0)


def test_a_loop_lost_while_judging_is_failed_with_the_reason_when_the_api_shows_it(scene):
    project, team, _, loop = scene
    lost(loop, stage=LoopStage.ANNOTATING)
    api = APIClient()
    api.force_authenticate(team.researcher)
    data = api.get(f"/api/projects/{project.pk}/loops/{loop.pk}/").json()
    assert data["status"] == "failed"
    assert "stopped while the simulated annotators were judging round 0" in data["error"]
    assert "start a new loop" in data["error"]
    assert advance(loop.pk) is False  # a failed loop stays failed


def test_a_loop_lost_after_its_annotators_finished_is_resumed_without_judging_again(
    scene, django_capture_on_commit_callbacks
):
    project, team, _, loop = scene
    # Round 0 is this loop's last: the annotate stage ends the loop.
    LoopRun.objects.filter(pk=loop.pk).update(report={"rounds": [], "start_round": -1})
    assert advance(loop.pk) is True
    loop.refresh_from_db()
    assert loop.status == JobStatus.SUCCEEDED, loop.error
    judged = Judgment.objects.filter(project=project).count()
    assert judged > 0 and loop.report["annotated"]["judgments"] == loop.report["rounds"][0]["judgments"]
    # As a process killed after the judging, before the round's report was written, leaves it:
    LoopRun.objects.filter(pk=loop.pk).update(
        stage=LoopStage.ANNOTATING, finished_at=None, report={**loop.report, "rounds": []}
    )
    lost(loop)
    api = APIClient()
    api.force_authenticate(team.researcher)
    with django_capture_on_commit_callbacks() as sent:
        assert api.get(f"/api/projects/{project.pk}/loops/").json()["results"][0]["status"] == "queued"
    assert len(sent) == 1
    assert advance(loop.pk) is True
    loop.refresh_from_db()
    assert loop.status == JobStatus.SUCCEEDED, loop.error
    assert Judgment.objects.filter(project=project).count() == judged  # nobody judged twice
    assert [r["round"] for r in loop.report["rounds"]] == [0] and loop.report["rounds"][0]["judgments"] == judged


def test_a_loop_lost_too_many_times_is_failed(scene):
    _, _, base, loop = scene
    waiting_for_a_run(loop, base)
    lost(loop, attempts=MAX_ATTEMPTS)
    assert jobs.recover(LOOP_JOBS)["failed"] == [loop.pk]
    loop.refresh_from_db()
    assert loop.status == JobStatus.FAILED and f"lost {MAX_ATTEMPTS} times" in loop.error


def test_a_live_owner_keeps_the_loop_and_a_stale_owner_cannot_write(scene):
    _, _, base, loop = scene
    waiting_for_a_run(loop, base)
    LoopRun.objects.filter(pk=loop.pk).update(status=JobStatus.RUNNING, worker="other-host:77",
                                              heartbeat_at=timezone.now(), attempts=1)
    assert advance(loop.pk) is False  # another process holds it: left alone
    assert jobs.recover(LOOP_JOBS) == {"requeued": [], "failed": [], "resent": []}
    loop.refresh_from_db()
    assert (loop.status, loop.worker) == (JobStatus.RUNNING, "other-host:77")

    # Its heartbeat stops: the next claim takes it over; the old owner's writes are refused.
    LoopRun.objects.filter(pk=loop.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=jobs.stale_s() + 1))
    stale = LoopRun.objects.get(pk=loop.pk)
    mine = jobs.claim(LOOP_JOBS, loop.pk)
    assert mine is not None and mine.attempts == 2
    assert not jobs.finish(stale, status=JobStatus.FAILED, error="late write")
    loop.refresh_from_db()
    assert (loop.status, loop.worker, loop.error) == (JobStatus.RUNNING, jobs.worker_id(), "")


def test_a_waiting_loop_whose_poll_was_lost_is_sent_again(scene, django_capture_on_commit_callbacks):
    _, _, base, loop = scene
    waiting_for_a_run(loop, base)
    LoopRun.objects.filter(pk=loop.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=jobs.resend_s() + 1))
    with django_capture_on_commit_callbacks() as sent:
        assert jobs.recover_all()["unattended loop"]["resent"] == [loop.pk]
    assert len(sent) == 1
