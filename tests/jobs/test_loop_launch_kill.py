"""A loop process SIGKILLed between launching its round's run and recording it on the loop.

A real child process advances the loop (simulated judging, quality, the fresh export, the launch)
with ``launch_run`` wrapped to SIGKILL the process as soon as the real ``launch_run`` returns:
the loop has not recorded the run yet. The loop row is then what a killed worker leaves (running,
owned by a pid that is gone); the sweep re-queues it and the redelivered advance resumes the round
after its judging. The round must end with exactly one run -- the one the loop records -- and one
fresh export (the one the killed attempt built and recorded as its intent), not a second of each.

On SQLite the scenario runs in a child pytest with a file database (as tests/jobs/test_kill_worker.py),
so that the killed process sees the test's database.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation.models import Export
from prefloop import jobs
from tests.factories import make_team
from tests.jobs.test_kill_worker import e2e
from training.loop.seed import seed_project, synthetic_utility
from training.loop.service import LOOP_JOBS, advance, start_loop
from training.models import JobStatus, LoopStage, TrainingRun
from training.services import runs
from training.services.registry import register_model

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

#: The killed process: the real advance, with launch_run followed at once by SIGKILL.
CHILD = """
import os, signal, sys
import django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "prefloop.settings")
django.setup()
from training.loop import service

real_launch_run = service.launch_run

def launch_run_then_die(*args, **kwargs):
    run = real_launch_run(*args, **kwargs)
    print(f"launched run {run.pk}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

service.launch_run = launch_run_then_die
service.advance(int(sys.argv[1]))
print("advance returned", flush=True)
"""


@pytest.mark.skipif(not e2e.needs_child_process(), reason="the database is reachable from a child: runs directly")
def test_kill_between_launch_and_record_through_a_child_pytest(tmp_path):
    e2e.run_in_child_pytest(f"{__file__}::test_a_loop_killed_after_launching_launches_one_run", tmp_path,
                            timeout=600)


@pytest.mark.skipif(e2e.needs_child_process(), reason="in-memory test database: run through the child pytest")
@pytest.mark.django_db(transaction=True)
def test_a_loop_killed_after_launching_launches_one_run(tmp_path, settings, monkeypatch):
    from training.tiny_model import build_default_model

    project = seed_project("Loop launch kill", 8)
    make_team(project)
    folder = build_default_model(tmp_path / "tiny", ["a b c"], vocab_size=300, hidden=32, layers=1,
                                 max_positions=128)
    base = register_model("loop-kill-base", folder)
    loop = start_loop(project, base_model=base, send=False, utility=synthetic_utility(),
                      pools=[{"name": "solo", "n_annotators": 3, "accuracy": [0.8, 0.9]}],
                      hyperparameters={"min_pairs": 1, "max_steps": 1})

    env = {**e2e.worker_env(tmp_path / "child-data"), "CELERY_BROKER_URL": "memory://",
           "PREFLOOP_EXPORTS_DIR": str(settings.PREFLOOP_EXPORTS_DIR),
           "PREFLOOP_RUNS_DIR": str(settings.PREFLOOP_RUNS_DIR),
           "PREFLOOP_MODELS_DIR": str(settings.PREFLOOP_MODELS_DIR), "PREFLOOP_AUTO_QUALITY": "0"}
    child = subprocess.run([sys.executable, "-c", CHILD, str(loop.pk)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr
    assert "launched run" in child.stdout and "advance returned" not in child.stdout

    # What the kill leaves: the loop running under the dead pid, its judging done, no run recorded.
    loop.refresh_from_db()
    assert loop.status == JobStatus.RUNNING and jobs.owner_is_dead(loop)
    assert loop.stage == LoopStage.ANNOTATING and loop.report["annotated"]["round"] == 0
    assert loop.current_run_id is None

    # The sweep re-queues it; the redelivered advance resumes the round after its judging.
    assert jobs.recover(LOOP_JOBS)["requeued"] == [loop.pk]
    sent = []
    monkeypatch.setattr(runs, "send_run", sent.append)  # the gpu worker is not part of this test
    assert advance(loop.pk) is True
    loop.refresh_from_db()
    assert loop.stage == LoopStage.TRAIN and loop.status == JobStatus.QUEUED, loop.error
    assert list(TrainingRun.objects.filter(project=project).values_list("pk", flat=True)) == [loop.current_run_id]
    assert sent == [loop.current_run_id]
    assert Export.objects.filter(project=project).count() == 1  # the killed attempt's export, reused
    assert TrainingRun.objects.get(pk=loop.current_run_id).export_id == loop.report["launch"]["export"]

