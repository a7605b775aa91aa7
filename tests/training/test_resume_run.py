"""Cancel asks first; a cancelled or failed run resumes from its last checkpoint, from the
run page and from the API (a real run of the tiny model, cancelled at step 3 and finished
after the resume without redoing steps 1-3)."""
from __future__ import annotations

from pathlib import Path

import pytest
from django.urls import reverse

from annotate.models import Role
from training import resume
from training.services.runs import cancel_run, launch_run
from training.models import RunStatus, TrainingMetric, TrainingRun

from .test_runs import _client, _running_run, no_send, scene, tiny_model_dir  # noqa: F401 - fixtures


def test_cancel_asks_for_confirmation_first(scene, client):
    run = _running_run(scene)
    url = reverse("training_run_cancel", args=[scene["project"].pk, run.pk])
    c = _client(client, scene["users"][Role.ADMIN])
    page = c.get(reverse("training_run", args=[scene["project"].pk, run.pk])).content.decode()
    assert f'href="{url}"' in page and "Cancel run…" in page  # a link to the question, not a one-click POST
    confirm = c.get(url)
    body = confirm.content.decode()
    assert confirm.status_code == 200 and "Yes, cancel the run" in body and "last checkpoint is kept" in body
    run.refresh_from_db()
    assert not run.cancel_requested  # asking changes nothing
    c.post(url, {"confirm": "yes"})
    run.refresh_from_db()
    assert run.cancel_requested


def test_only_cancelled_or_failed_runs_resume_and_only_by_admins(scene, client, no_send):
    running = _running_run(scene)
    api = reverse("training-api:run-resume", args=[scene["project"].pk, running.pk])
    c = _client(client, scene["users"][Role.ADMIN])
    r = c.post(api)
    assert r.status_code == 400 and "Only a cancelled or failed run" in str(r.json())
    failed = _running_run(scene, status=RunStatus.FAILED, error="CUDA out of memory")
    url = reverse("training_run_resume", args=[scene["project"].pk, failed.pk])
    assert _client(client, scene["users"][Role.RESEARCHER]).post(url).status_code == 403
    page = _client(client, scene["users"][Role.ADMIN]).get(reverse("training_run", args=[scene["project"].pk, failed.pk]))
    assert "Resume from the start" in page.content.decode()  # no checkpoint folder in this scene
    api = reverse("training-api:run-resume", args=[scene["project"].pk, failed.pk])
    r = _client(client, scene["users"][Role.ADMIN]).post(api)
    assert r.status_code == 200 and r.json()["status"] == "queued"
    failed.refresh_from_db()
    assert failed.error == "" and not failed.cancel_requested and "resume requested by" in failed.logs


@pytest.mark.django_db(transaction=True)
def test_a_cancelled_run_resumes_from_its_checkpoint(scene, no_send, monkeypatch, client):
    from training import tasks
    from training.worker.reporting import RunReporter

    run = launch_run(
        scene["project"],
        base_model=scene["base"],
        recipe="dpo",
        export=scene["export"],
        hyperparameters={"max_steps": 6, "batch_size": 2, "lr": 1e-3, "max_length": 48,
                         "checkpoint_every": 0, "eval_fraction": 0.0},
    )
    original = RunReporter.on_step

    def on_step(self, metrics):
        original(self, metrics)
        if metrics["step"] == 3 and not TrainingRun.objects.get(pk=self.run_id).logs.count("resume requested"):
            cancel_run(TrainingRun.objects.get(pk=self.run_id))

    monkeypatch.setattr(RunReporter, "on_step", on_step)
    assert tasks.run_training.apply(args=(run.pk,)).get() == RunStatus.CANCELLED
    run.refresh_from_db()
    ckpt = resume.last_checkpoint(run)
    assert ckpt is not None and (ckpt.phase, ckpt.step) == ("dpo", 3)

    page = _client(client, scene["users"][Role.ADMIN]).get(reverse("training_run", args=[scene["project"].pk, run.pk]))
    assert "Resume from step 3 (dpo)" in page.content.decode()
    _client(client, scene["users"][Role.ADMIN]).post(reverse("training_run_resume", args=[scene["project"].pk, run.pk]))
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED and "continues from the dpo checkpoint at step 3" in run.logs
    assert no_send == [run.pk, run.pk]  # sent at launch, and again once the resume committed

    assert tasks.run_training.apply(args=(run.pk,)).get() == RunStatus.SUCCEEDED
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED and run.step == 6 and run.output_model is not None
    steps = list(TrainingMetric.objects.filter(run=run).order_by("step").values_list("step", flat=True))
    assert steps == [1, 2, 3, 4, 5, 6]  # steps 1-3 were not trained again
    assert Path(run.out_dir, "checkpoints", "dpo").is_dir()
