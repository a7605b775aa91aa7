"""Background jobs whose worker died (prefloop.jobs), in one process: the states a killed worker
leaves behind are written as it leaves them (a row still "running" under a pid that has exited,
a half-written hidden folder), then the pages, the sweep and the tasks recover them.
tests/jobs/test_kill_worker.py kills real workers.
"""

from __future__ import annotations

import socket
from datetime import timedelta
from pathlib import Path

import pytest
from django.urls import reverse
from django.utils import timezone

from annotate.models import Role
from evaluation.export.folder import default_folder, verify_folder
from evaluation.export.services import EXPORT_JOBS, MAX_ATTEMPTS, build_export, check_export, create_export
from evaluation.export.tasks import build_export_task
from evaluation.models import Export, JobStatus, QualityReport
from evaluation.quality.compute import recompute_quality
from evaluation.quality.scheduling import QUALITY_JOBS, check_report
from evaluation.quality.tasks import recompute_quality_task
from prefloop import jobs
from tests.factories import add_member, make_user
from tests.jobs.scene import dead_pid, judged_project

pytestmark = pytest.mark.django_db
HX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def scene(client):
    project = judged_project(24)
    admin = make_user("boss")
    add_member(project, admin, Role.ADMIN)
    client.force_login(admin)
    return project, client


def lost(job, *, attempts: int = 1, **fields) -> None:
    """Leave ``job`` as a worker killed mid-job does: running, owned by a pid that is gone."""
    type(job).objects.filter(pk=job.pk).update(
        status=JobStatus.RUNNING,
        worker=f"{socket.gethostname()}:{dead_pid()}",
        heartbeat_at=timezone.now(),
        attempts=attempts,
        **fields,
    )
    job.refresh_from_db()


def half_written(export: Export, attempt: int = 1) -> Path:
    folder = default_folder(export)
    partial = folder.parent / f".{folder.name}.building-{attempt}"
    partial.mkdir(parents=True)
    (partial / "preferences.jsonl").write_text('{"prompt": "half a li')
    return partial


def test_export_page_recovers_a_dead_build_which_then_succeeds(scene, celery_eager, django_capture_on_commit_callbacks):
    project, client = scene
    export = create_export(project, None, {"formats": ["jsonl", "hf"]}, enqueue=False)
    lost(export, path=str(default_folder(export)))
    partial = half_written(export)

    with django_capture_on_commit_callbacks(execute=True):  # the re-sent build runs (eagerly)
        page = client.get(reverse("export_status", args=[project.pk, export.pk]), **HX).content.decode()
    assert "export-status-running" not in page and "export-status-queued" in page
    assert not partial.exists()
    export.refresh_from_db()
    assert export.status == JobStatus.SUCCEEDED and export.attempts == 2, export.error
    assert verify_folder(Path(export.path))
    assert sorted(p.name for p in Path(export.path).parent.iterdir()) == [str(export.pk)]


def test_a_job_that_keeps_losing_its_worker_fails_then_retry_rebuilds_it(
    scene, celery_eager, django_capture_on_commit_callbacks
):
    project, client = scene
    export = create_export(project, None, {"formats": ["jsonl"]}, enqueue=False)
    lost(export, attempts=MAX_ATTEMPTS, path=str(default_folder(export)))
    partial = half_written(export, MAX_ATTEMPTS)

    assert check_export(export) == "failed"
    assert export.status == JobStatus.FAILED and f"lost {MAX_ATTEMPTS} times" in export.error
    assert not partial.exists() and export.path == ""
    page = client.get(reverse("export_detail", args=[project.pk, export.pk])).content.decode()
    assert "Try again" in page

    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("export_retry", args=[project.pk, export.pk]))
    export.refresh_from_db()
    assert export.status == JobStatus.SUCCEEDED and export.attempts == 1 and export.error == ""
    assert verify_folder(Path(export.path))


def test_a_live_owner_is_left_alone_and_a_stale_heartbeat_is_not(scene):
    project, _ = scene
    export = create_export(project, None, {"formats": ["jsonl"]}, enqueue=False)
    alive = timezone.now() - timedelta(seconds=jobs.stale_s() - 30)
    Export.objects.filter(pk=export.pk).update(
        status=JobStatus.RUNNING, worker="another-host:4242", heartbeat_at=alive, attempts=1
    )
    export.refresh_from_db()
    assert check_export(export) == "" and export.status == JobStatus.RUNNING
    # A second delivery of its message leaves it to the worker that holds it.
    assert build_export_task.apply(args=(export.pk,)).get() == "skipped (running)"
    assert Export.objects.get(pk=export.pk).worker == "another-host:4242"

    Export.objects.filter(pk=export.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=jobs.stale_s() + 1))
    export.refresh_from_db()
    assert check_export(export) == "requeued"
    assert export.status == JobStatus.QUEUED and export.worker == "" and export.step.startswith("queued again")


def test_writes_of_a_worker_presumed_dead_are_fenced_off(scene):
    project, _ = scene
    export = create_export(project, None, {"formats": ["jsonl"]}, enqueue=False)
    mine = jobs.claim(EXPORT_JOBS, export.pk)
    assert mine is not None and mine.worker == jobs.worker_id() and mine.attempts == 1
    assert jobs.claim(EXPORT_JOBS, export.pk) is None  # held by a live owner (this process)
    # Presumed lost and taken over by another worker: the first owner can no longer end it.
    Export.objects.filter(pk=export.pk).update(worker="another-host:1", attempts=2)
    assert not jobs.finish(mine, status=JobStatus.SUCCEEDED)
    assert Export.objects.get(pk=export.pk).status == JobStatus.RUNNING


def test_a_queued_job_whose_message_was_lost_is_sent_again(scene, celery_eager, django_capture_on_commit_callbacks):
    project, _ = scene
    export = create_export(project, None, {"formats": ["jsonl"]}, enqueue=False)  # never sent
    assert jobs.recover(EXPORT_JOBS)["resent"] == []  # recently queued: its message is on its way
    Export.objects.filter(pk=export.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=jobs.resend_s() + 1))
    with django_capture_on_commit_callbacks(execute=True):
        assert jobs.recover_all()["export"]["resent"] == [export.pk]
    export.refresh_from_db()
    assert export.status == JobStatus.SUCCEEDED


def test_a_build_elsewhere_refuses_while_a_live_worker_builds(scene):
    project, _ = scene
    export = create_export(project, None, {"formats": ["jsonl"]}, enqueue=False)
    Export.objects.filter(pk=export.pk).update(
        status=JobStatus.RUNNING, worker="another-host:4242", heartbeat_at=timezone.now(), attempts=1
    )
    with pytest.raises(Exception, match="being built by another worker"):
        build_export(export)
    assert Export.objects.get(pk=export.pk).status == JobStatus.RUNNING


# --------------------------------------------------------------------------- quality reports


def test_a_dead_recompute_is_re_run(scene, celery_eager, django_capture_on_commit_callbacks):
    project, _ = scene
    report = QualityReport.objects.create(project=project)
    lost(report, progress=0.4, message="Computing agreement")
    # Redelivery of its message (reject_on_worker_lost, a re-send) claims it again at once.
    assert recompute_quality_task(report.pk) == "succeeded"
    report.refresh_from_db()
    assert report.status == JobStatus.SUCCEEDED and report.attempts == 2 and report.n_judgments == 72

    second = QualityReport.objects.create(project=project)
    lost(second)
    with django_capture_on_commit_callbacks(execute=True):
        assert check_report(second) == "requeued"
    second.refresh_from_db()
    assert second.status == JobStatus.SUCCEEDED


def test_dashboard_shows_the_newest_report_not_a_dead_one(scene):
    project, client = scene
    dead = QualityReport.objects.create(project=project)
    lost(dead, progress=0.4, message="Computing agreement")
    newer = recompute_quality(project)  # a later recompute succeeded

    poll = client.get(reverse("quality_progress", args=[project.pk, dead.pk]), **HX)
    assert poll["HX-Refresh"] == "true"
    assert f'data-report="{newer.pk}"' in poll.content.decode() and 'data-status="succeeded"' in poll.content.decode()
    dashboard = client.get(reverse("quality_dashboard", args=[project.pk])).content.decode()
    assert 'hx-trigger="every 2s"' not in dashboard  # nothing left to poll
    dead.refresh_from_db()
    assert dead.status == JobStatus.FAILED and f"superseded by the newer report {newer.pk}" in dead.message
    api = client.get(f"/api/projects/{project.pk}/quality/").json()
    assert api["id"] == newer.pk and api["pending"] is None


def test_a_dead_report_with_a_newer_one_queued_polls_the_newer(scene):
    project, client = scene
    dead = QualityReport.objects.create(project=project)
    lost(dead)
    queued = QualityReport.objects.create(project=project, heartbeat_at=timezone.now())
    poll = client.get(reverse("quality_progress", args=[project.pk, dead.pk]), **HX).content.decode()
    assert f'data-report="{queued.pk}"' in poll and 'hx-trigger="every 2s"' in poll
    assert QualityReport.objects.get(pk=dead.pk).status == JobStatus.FAILED
    assert QUALITY_JOBS.superseded(QualityReport.objects.get(pk=dead.pk)) == f"superseded by the newer report {queued.pk}"


# --------------------------------------------------------------------------- training's worker jobs


def test_sampling_jobs_share_the_mechanism(scene, django_capture_on_commit_callbacks):
    from training.models import GenerationSample, ModelVersion, SamplingJob
    from training.services.sampling import ROUND_JOBS, answer_sample, run_queued_round

    project, _ = scene
    version = ModelVersion.objects.create(name="tiny", path="/models/tiny")
    job = SamplingJob.objects.create(project=project, model_version=version, round=1, heartbeat_at=timezone.now())
    lost(job, progress=0.5)
    with django_capture_on_commit_callbacks() as sent:
        assert jobs.recover(ROUND_JOBS)["requeued"] == [job.pk]
    assert len(sent) == 1  # the task is sent again once the transaction commits
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED and job.progress == 0.0

    lost(job, attempts=2)
    assert jobs.recover_all()["sampling job"]["failed"] == [job.pk]
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and "lost 2 times" in job.error
    assert run_queued_round(job.pk) == "skipped"

    sample = GenerationSample.objects.create(model_version=version, prompt="Hi", heartbeat_at=timezone.now())
    GenerationSample.objects.filter(pk=sample.pk).update(
        status=JobStatus.RUNNING, worker="gpu-host:77", heartbeat_at=timezone.now(), attempts=1
    )
    assert answer_sample(sample.pk) == "skipped"  # a live worker holds it
