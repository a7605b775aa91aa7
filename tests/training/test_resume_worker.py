"""A worker killed mid-run (SIGKILL) loses nothing but the steps since the last checkpoint.

Start a real worker, launch a run, SIGKILL the worker as soon as the run is past a checkpoint,
start a new worker. The embedded file-system broker does not redeliver the message a dead worker
had taken, so the recovery path is ``training.services.runs.resume_stale_runs`` (run at
``worker_ready``): the run, left 'running' by a dead pid on this host, is re-queued; the new
worker claims it, the trainer resumes from the last checkpoint with the same data order, and the
run finishes with the planned step count, one metric row per step. Two runs:

- ``dpo``: 30 DPO steps, a checkpoint every 3, killed past the first;
- ``sft+rm+ppo``: 2 SFT steps, 4 reward-model steps, 60 PPO iterations with a checkpoint after
  every iteration, killed past the second PPO checkpoint (60, not fewer: a PPO iteration of this
  tiny model takes tens of milliseconds, and a shorter run could finish before the kill); the finished SFT and reward-model phases
  are skipped on resume and PPO continues from its last checkpoint (each iteration's prompts,
  samples and minibatches are a pure function of the seed and the iteration).

Needs a database the worker can reach: see test_e2e_celery.py, whose worker scaffolding this
file shares.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest

from annotate.models import Project
from evaluation.models import Export, JobStatus
from training.models import RunStatus, TrainingMetric, TrainingRun
from training.services.registry import register_model
from training.services.runs import launch_run, owner_is_dead

pytestmark = pytest.mark.slow


def _e2e():
    """The worker scaffolding of test_e2e_celery.py (test folders are not packages)."""
    spec = importlib.util.spec_from_file_location(
        "_training_e2e_scaffolding", Path(__file__).with_name("test_e2e_celery.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


e2e = _e2e()


@dataclass(frozen=True)
class Scenario:
    recipe: str
    hyperparameters: dict
    checkpoints: str  # below the run's folder
    kill_after: tuple[int, int]  # (step reached, checkpoint folder complete)
    steps: int
    resumed: str  # the log line's prefix
    resumed_min: int  # the checkpoint it must resume from, at least
    offset: int  # steps before the checkpointed phase
    timeout: int


SCENARIOS = {
    "dpo": Scenario(
        recipe="dpo",
        hyperparameters={"max_steps": 30, "batch_size": 4, "lr": 1e-3, "max_length": 48,
                         "checkpoint_every": 3, "eval_fraction": 0.0},
        checkpoints="checkpoints/dpo", kill_after=(4, 3), steps=30, resumed="resumed from ",
        resumed_min=3, offset=0, timeout=240,
    ),
    "sft+rm+ppo": Scenario(
        recipe="sft+rm+ppo",
        hyperparameters={"sft_max_steps": 2, "rm_max_steps": 4, "rm_lr": 2e-3, "rm_norm_samples": 4,
                         "ppo_iterations": 60, "ppo_batch_size": 4, "ppo_response_length": 6,
                         "ppo_lr": 1e-3, "batch_size": 4, "lr": 1e-3, "max_length": 48,
                         "checkpoint_every": 0, "eval_fraction": 0.0},
        checkpoints="ppo/checkpoints/ppo", kill_after=(2 + 4 + 3, 2), steps=2 + 4 + 60,
        resumed="ppo: resumed from ", resumed_min=2, offset=2 + 4, timeout=400,
    ),
}


@pytest.mark.skipif(
    not e2e.needs_child_process(), reason="the database is reachable from a worker: runs directly"
)
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_resume_through_worker_processes(tmp_path, name):
    e2e.run_in_child_pytest(
        f"{__file__}::test_kill_worker_mid_run_and_resume[{name}]",
        tmp_path,
        timeout=3 * SCENARIOS[name].timeout,
    )


@pytest.mark.skipif(
    e2e.needs_child_process(), reason="in-memory test database: run through the child pytest above"
)
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_kill_worker_mid_run_and_resume(tmp_path, name):
    from training.tiny_model import build_default_model

    case = SCENARIOS[name]
    log_path = tmp_path / "worker.log"
    env = e2e.worker_env()
    first = e2e.start_worker(log_path, env)
    second = None
    try:
        project = Project.objects.create(name=f"Resume {name}")
        rows = [
            {**line, "label": "preference", "weight": 1.0, "split": "train"}
            for line in e2e.synthetic_lines(48)
        ]
        folder = tmp_path / "export"
        folder.mkdir()
        (folder / "preferences.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        export = Export.objects.create(
            project=project, status=JobStatus.SUCCEEDED, path=str(folder), n_rows=48
        )
        model_dir = build_default_model(
            tmp_path / "tiny",
            [r["prompt"] + r["chosen"] + r["rejected"] for r in rows],
            vocab_size=320,
            hidden=32,
            layers=1,
            max_positions=128,
        )
        base = register_model(f"tiny-resume-{name}", model_dir)
        run = launch_run(project, base_model=base, recipe=case.recipe, export=export,
                         hyperparameters=case.hyperparameters)
        checkpoints = Path(run.out_dir) / case.checkpoints
        at_step, at_checkpoint = case.kill_after

        def past_a_checkpoint():
            # any complete checkpoint at or after ``at_checkpoint``: older ones are pruned as newer
            # ones are written, so waiting for that one alone can miss a fast run's window
            r = TrainingRun.objects.get(pk=run.pk)
            done = [int(p.parent.name.split("-")[1]) for p in checkpoints.glob("step-*/.complete")]
            return r.status == RunStatus.RUNNING and r.step >= at_step and any(n >= at_checkpoint for n in done)

        # kill as soon as the run is past the checkpoint, so most of it is still ahead
        e2e.wait_for(past_a_checkpoint, case.timeout, "the run to pass a checkpoint", log_path, interval=0.05)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()  # reaped: its pid is gone, as it is when a supervisor restarts a worker
        killed = TrainingRun.objects.get(pk=run.pk)
        assert killed.status == RunStatus.RUNNING, killed.status
        assert at_step <= killed.step < case.steps, killed.step
        assert owner_is_dead(killed)

        second = e2e.start_worker(log_path, env)
        e2e.wait_for(
            lambda: TrainingRun.objects.get(pk=run.pk).is_finished, case.timeout, "the resumed run", log_path
        )
        run.refresh_from_db()
        assert run.status == RunStatus.SUCCEEDED, f"{run.error}\n{run.logs[-3000:]}"
        assert run.step == run.total_steps == case.steps and run.summary["steps"] == case.steps
        assert run.attempts == 2
        assert "was lost; re-queued" in run.logs and case.resumed in run.logs
        resumed_at = int(run.logs.split(case.resumed)[1].split("step-")[1][:6])
        assert case.resumed_min <= resumed_at <= killed.step - case.offset
        assert list(TrainingMetric.objects.filter(run=run).values_list("step", flat=True)) == list(
            range(1, case.steps + 1)
        )
        result = json.loads((Path(run.out_dir) / "result.json").read_text())
        assert result["steps"] == result["total_steps"] == case.steps
        assert run.output_model is not None and (Path(run.output_model.path) / "config.json").exists()
    finally:
        e2e.stop_worker(first)
        if second is not None:
            e2e.stop_worker(second)
