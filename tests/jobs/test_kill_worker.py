"""A real Celery worker SIGKILLed in the middle of an export and of a quality recomputation.

Start ``celery worker -Q default -P solo``, send the job, SIGKILL the worker once the job is
half done (an export with its hidden building folder on disk; a recomputation past loading the
judgments), check that the kill left what a crash leaves (the row still "running"), start a new
worker, and check what prefloop.jobs promises: the job ends succeeded or failed -- never
"running" --, no partial folder remains, a failed one can be retried, and the export's content
hash is the one an uninterrupted build of the same export gives.

The file-system broker (SQLite runs) never redelivers the message the dead worker had taken, and
Redis only after its one-hour visibility timeout, so what recovers the job is the new worker's
start (``worker_ready`` in prefloop/celery.py: the dead pid on this host).

A message an earlier run left in a shared Redis database is harmless: the job is claimed by one
delivery only. The worker must reach the test's database: see tests/training/test_e2e_celery.py, whose
scaffolding this file shares (on SQLite the tests run in a child pytest with a file database).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.urls import reverse
from django.utils import timezone

from annotate.models import Role
from evaluation.export.folder import verify_folder
from evaluation.export.services import build_export, create_export, enqueue_build, retry_export
from evaluation.models import AnnotatorQuality, Export, JobStatus, QualityReport
from evaluation.quality.scheduling import schedule_recompute
from tests.factories import add_member, make_user
from tests.jobs.scene import judged_project

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED)
#: Generous limits for a busy machine; nothing here asserts on time.
WAIT_S = 240


def _e2e():
    """The worker scaffolding of tests/training/test_e2e_celery.py (test folders are not packages)."""
    path = ROOT / "tests" / "training" / "test_e2e_celery.py"
    spec = importlib.util.spec_from_file_location("_jobs_e2e_scaffolding", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


e2e = _e2e()


def start_worker(log_path: Path, env: dict) -> subprocess.Popen:
    """A worker of the default queue (exports, statistics), one task at a time in its own process."""
    cmd = [
        sys.executable, "-m", "celery", "-A", "prefloop", "worker", "-Q", "default",
        "--concurrency", "1", "-P", "solo", "--loglevel", "INFO",
        "-n", f"jobs-{uuid.uuid4().hex[:8]}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    log = open(log_path, "ab")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()  # reaped: its pid is gone, as when a supervisor restarts a worker


def worker_env(exports: Path) -> dict:
    return {**e2e.worker_env(), "PREFLOOP_EXPORTS_DIR": str(exports), "PREFLOOP_AUTO_QUALITY": "0"}


def forget_build(export: Export) -> None:
    """Put a built export back to queued, its folder removed (so the same export is built again)."""
    folder = Path(export.path)
    for root, dirs, files in os.walk(folder):
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)
    shutil.rmtree(folder)
    Export.objects.filter(pk=export.pk).update(
        status=JobStatus.QUEUED, path="", content_hash="", n_rows=0, stats={}, progress=0.0, step="",
        attempts=0, worker="", heartbeat_at=timezone.now(), started_at=None, finished_at=None,
    )  # fmt: skip


# --------------------------------------------------------------------------- SQLite: child pytest


@pytest.mark.skipif(not e2e.needs_child_process(), reason="the database is reachable from a worker: runs directly")
@pytest.mark.parametrize("test", ["test_kill_worker_mid_export", "test_kill_worker_mid_recompute"])
def test_kill_through_worker_processes(tmp_path, test):
    e2e.run_in_child_pytest(f"{__file__}::{test}", tmp_path, timeout=600)


# --------------------------------------------------------------------------- the scenarios


@pytest.mark.skipif(e2e.needs_child_process(), reason="in-memory test database: run through the child pytest")
@pytest.mark.django_db(transaction=True)
def test_kill_worker_mid_export(tmp_path, settings):
    exports = Path(settings.PREFLOOP_EXPORTS_DIR)
    log_path = tmp_path / "worker.log"
    first = start_worker(log_path, worker_env(exports))  # starts while the data is made
    second = None
    try:
        project = judged_project(3000, name="Killed export")
        options = {"formats": ["jsonl", "parquet", "csv", "hf"], "include_judgments": True, "test_fraction": 0.1}
        export = create_export(project, None, options, enqueue=False)
        # An uninterrupted build of this very export gives the content hash to expect.
        reference = build_export(export)
        expected_hash, expected_files = reference.content_hash, reference.stats["files"]
        forget_build(export)

        enqueue_build(export)  # no transaction is open: sent now
        partial = f".{export.pk}.building-*"

        def half_written():
            row = Export.objects.get(pk=export.pk)
            return row.status == JobStatus.RUNNING and any(exports.glob(partial))

        e2e.wait_for(half_written, WAIT_S, "the build to be half-written", log_path, interval=0.02)
        kill(first)
        killed = Export.objects.get(pk=export.pk)
        assert killed.status == JobStatus.RUNNING and killed.worker.endswith(f":{first.pid}")
        assert any(exports.glob(partial)), "the kill left no partial folder: the scenario did not happen"

        second = start_worker(log_path, worker_env(exports))
        e2e.wait_for(lambda: Export.objects.get(pk=export.pk).status in FINISHED, WAIT_S, "the export", log_path)
        export.refresh_from_db()
        if export.status == JobStatus.FAILED:  # allowed by the promise; then a retry must work
            assert retry_export(export), export.error
            e2e.wait_for(lambda: Export.objects.get(pk=export.pk).status in FINISHED, WAIT_S, "the retry", log_path)
            export.refresh_from_db()
        assert export.status == JobStatus.SUCCEEDED, f"{export.error}\n{log_path.read_text()[-3000:]}"
        assert export.attempts == 2 and "lost" not in export.error
        assert sorted(os.listdir(exports)) == [str(export.pk)]  # no hidden partial folder left
        assert export.content_hash == expected_hash and export.stats["files"] == expected_files
        assert verify_folder(Path(export.path))
    finally:
        e2e.stop_worker(first)
        if second is not None:
            e2e.stop_worker(second)


@pytest.mark.skipif(e2e.needs_child_process(), reason="in-memory test database: run through the child pytest")
@pytest.mark.django_db(transaction=True)
def test_kill_worker_mid_recompute(tmp_path, settings, client):
    log_path = tmp_path / "worker.log"
    env = worker_env(Path(settings.PREFLOOP_EXPORTS_DIR))
    first = start_worker(log_path, env)
    second = None
    try:
        project = judged_project(3000, name="Killed recompute")
        admin = make_user("boss")
        add_member(project, admin, Role.ADMIN)
        report = schedule_recompute(project, countdown=0)  # no transaction is open: sent now

        def computing():
            row = QualityReport.objects.get(pk=report.pk)
            return row.status == JobStatus.RUNNING and 0.1 <= row.progress < 0.95

        e2e.wait_for(computing, WAIT_S, "the recomputation to be under way", log_path, interval=0.02)
        kill(first)
        killed = QualityReport.objects.get(pk=report.pk)
        assert killed.status == JobStatus.RUNNING and killed.worker.endswith(f":{first.pid}")

        second = start_worker(log_path, env)
        e2e.wait_for(
            lambda: QualityReport.objects.get(pk=report.pk).status in FINISHED, WAIT_S, "the report", log_path
        )
        report.refresh_from_db()
        assert report.status == JobStatus.SUCCEEDED, f"{report.message}\n{log_path.read_text()[-3000:]}"
        assert report.attempts == 2 and report.n_judgments == 9000
        assert AnnotatorQuality.objects.filter(project=project).count() == 3
        # The dashboard shows the finished report and polls nothing.
        client.force_login(admin)
        page = client.get(reverse("quality_dashboard", args=[project.pk])).content.decode()
        assert 'hx-trigger="every 2s"' not in page and "No quality figures yet" not in page
    finally:
        e2e.stop_worker(first)
        if second is not None:
            e2e.stop_worker(second)
