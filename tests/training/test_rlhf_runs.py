"""The RLHF recipes on the Django side: launch checks before any compute, an sft+rm+ppo run through
the task (reward model and policy registered, the run page's PPO plots, calibration diagram and
sample generations), the API and the command line with a reward model, head-to-head sampling."""

from __future__ import annotations

import json

import pytest
from django.core.management import call_command
from django.urls import reverse

from training.models import ModelKind, ModelVersion, RunStatus, SamplingJob, TrainingMetric, TrainingRun
from training.services.errors import TrainingError
from training.services.registry import register_model
from training.services.runs import launch_run
from training.services.sampling import queue_sample_round, request_sample

from .test_runs import make_export, no_send, scene, synthetic_rows, tiny_model_dir  # noqa: F401 - fixtures

RLHF_HP = {
    "sft_max_steps": 2, "rm_max_steps": 4, "rm_lr": 2e-3, "rm_norm_samples": 4, "ppo_iterations": 2,
    "ppo_batch_size": 4, "ppo_response_length": 6, "ppo_lr": 1e-3, "lr": 1e-3, "batch_size": 4,
    "max_length": 48, "checkpoint_every": 0, "ppo_samples_per_log": 2,
}


@pytest.fixture
def trained(transactional_db, scene, no_send):  # noqa: F811
    """An sft+rm+ppo run trained in this process through the Celery task. Transactional: the task
    closes its database connection when it ends, as a worker does, which on PostgreSQL would end a
    test wrapped in one transaction."""
    from training.tasks import run_training

    run = launch_run(scene["project"], base_model=scene["base"], recipe="sft+rm+ppo", export=scene["export"],
                     hyperparameters=RLHF_HP)
    assert run_training.apply(args=(run.pk,)).get() == RunStatus.SUCCEEDED, TrainingRun.objects.get(pk=run.pk).logs
    run.refresh_from_db()
    return {**scene, "run": run}


def test_launch_checks_the_reward_model_before_anything_is_created(scene, no_send, tmp_path):  # noqa: F811
    from training.tiny_model import build_default_model

    project, base = scene["project"], scene["base"]
    with pytest.raises(TrainingError, match="recipe ppo needs a reward model") as err:
        launch_run(project, base_model=base, recipe="ppo", export=scene["export"])
    assert err.value.field == "reward_model"
    with pytest.raises(TrainingError, match="no registered model is named 'nope'"):
        launch_run(project, base_model=base, recipe="ppo", export=scene["export"],
                   hyperparameters={"reward_model": "nope"})
    with pytest.raises(TrainingError, match="is a language model, not a reward model"):
        launch_run(project, base_model=base, recipe="ppo", export=scene["export"],
                   hyperparameters={"reward_model": base.name})
    # a reward model with another tokenizer: refused at launch, no run, no compute
    from transformers import AutoModelForSequenceClassification

    other = build_default_model(tmp_path / "other", ["other words entirely"] * 10, vocab_size=300, hidden=32,
                                layers=1, max_positions=64)
    rm = AutoModelForSequenceClassification.from_pretrained(other, num_labels=1, local_files_only=True)
    rm.save_pretrained(tmp_path / "other-rm")
    (tmp_path / "other-rm" / "tokenizer.json").write_text((other / "tokenizer.json").read_text())
    (tmp_path / "other-rm" / "tokenizer_config.json").write_text((other / "tokenizer_config.json").read_text())
    version = register_model("other-rm", tmp_path / "other-rm")
    assert version.kind == ModelKind.REWARD
    with pytest.raises(TrainingError, match="tokenizer differs from tiny-test's.*vocabulary sizes"):
        launch_run(project, base_model=base, recipe="ppo", export=scene["export"],
                   hyperparameters={"reward_model": "other-rm"})
    with pytest.raises(TrainingError, match="it scores, it does not generate"):
        launch_run(project, base_model=version, recipe="sft", export=scene["export"])
    assert not TrainingRun.objects.exists() and no_send == []


def test_sft_rm_ppo_run_registers_both_models_and_shows_ppo(trained, client):
    run, project = trained["run"], trained["project"]
    rows = list(TrainingMetric.objects.filter(run=run).order_by("step").values_list("step", "data"))
    assert [s for s, _ in rows] == list(range(1, 9)) and run.step == run.total_steps == 8
    assert [d["phase"] for _, d in rows] == ["sft"] * 2 + ["rm"] * 4 + ["ppo"] * 2
    assert len(rows[-1][1]["samples"]) == 2 and rows[5][1]["eval_calibration"]
    policy = run.output_model
    assert policy.kind == ModelKind.POLICY and policy.parent == trained["base"]
    rm = ModelVersion.objects.get(training_run=run, kind=ModelKind.REWARD)
    assert rm.name == f"{policy.name}.rm" and "rm_eval_reward_accuracy" in rm.metrics
    client.force_login(trained["users"]["admin"])
    page = client.get(reverse("training_run", args=[project.pk, run.pk])).content.decode()
    for text in ("PPO reward", "PPO KL to reference", "PPO clip fraction", "PPO approximate KL",
                 "PPO value loss", "PPO entropy", "PPO response length", "Reward model calibration",
                 "Sample generations", "Reward model pairwise accuracy"):
        assert text in page, text
    assert "DPO reward margin" not in page  # no DPO phase in this recipe
    # the launch form offers the new recipes and the reward model just trained
    form = client.get(reverse("training_run_new", args=[project.pk])).content.decode()
    assert "sft+rm+ppo" in form and "sft+dpo+ppo" in form and rm.name in form


def test_ppo_from_the_api_and_the_command_line_with_a_registered_reward_model(trained, client, no_send):  # noqa: F811
    from training.tasks import run_training

    project = trained["project"]
    rm = ModelVersion.objects.get(training_run=trained["run"], kind=ModelKind.REWARD)
    client.force_login(trained["users"]["admin"])
    response = client.post(f"/api/projects/{project.pk}/runs/", data=json.dumps({
        "recipe": "ppo", "base_model": trained["base"].name, "export": trained["export"].pk,
        "reward_model": rm.name, "hyperparameters": {**RLHF_HP, "ppo_value_model": "shared"}}),
        content_type="application/json")
    assert response.status_code == 201, response.content
    run = TrainingRun.objects.get(pk=response.json()["id"])
    assert run.hyperparameters["reward_model"] == rm.name
    assert run_training.apply(args=(run.pk,)).get() == RunStatus.SUCCEEDED
    run.refresh_from_db()
    assert run.step == 2 and run.output_model.kind == ModelKind.POLICY
    bad = client.post(f"/api/projects/{project.pk}/runs/", data=json.dumps({
        "recipe": "ppo", "base_model": trained["base"].name, "export": trained["export"].pk}),
        content_type="application/json")
    assert bad.status_code == 400 and "reward_model" in bad.json()
    call_command("train", "--project", str(project.pk), "--export", str(trained["export"].pk), "--recipe", "ppo",
                 "--base", trained["base"].name, "--reward-model", rm.name, "--set", "ppo_iterations=1",
                 "--set", "ppo_batch_size=2", "--set", "ppo_response_length=4", "--set", "max_length=48",
                 "--set", "ppo_value_model=policy")
    assert TrainingRun.objects.filter(recipe="ppo").count() == 2


def test_reward_models_do_not_generate_and_rounds_go_head_to_head(trained, client, no_send):  # noqa: F811
    project, run = trained["project"], trained["run"]
    rm = ModelVersion.objects.get(training_run=run, kind=ModelKind.REWARD)
    with pytest.raises(TrainingError, match="it scores responses, it does not write them"):
        request_sample(rm, "hello")
    with pytest.raises(TrainingError, match="it scores responses"):
        queue_sample_round(project, run.output_model, compare_to=rm, send=False)
    from annotate.models import Prompt

    for i in range(3):
        Prompt.objects.create(project=project, text=f"Question {i}: tell me.", content_hash=f"h{i}")
    other = register_model("tiny-other", trained["base"].path)
    client.force_login(trained["users"]["admin"])
    client.post(reverse("training_run_sample_round", args=[project.pk, run.pk]),
                {"n_prompts": 3, "against": "model", "compare_model": other.pk, "max_new_tokens": 4,
                 "temperature": 1.0})
    job = SamplingJob.objects.get(run=run)
    assert job.model_version == run.output_model and job.compare_to == other
