"""End to end through Celery: ``sft+rm+ppo`` and ``sft+dpo`` on one export, then head to head.

A real ``celery worker -Q gpu,default -P solo`` subprocess (see ``test_e2e_celery.py`` for how the
worker reaches the test database and broker) trains, from the launch form, an SFT -> reward model ->
PPO run and an SFT -> DPO run on the same calibrated export of a synthetic task (the preferred
response opens with "Sure!"). Checked: the reward model reaches a clear held-out accuracy and is
registered as a reward model; the PPO phase streams reward / KL / clip fraction and sample
generations to the run page, with the reward model's calibration diagram; the PPO model is
registered as a language model; and "sample next round" puts the PPO model against the DPO model
as the annotators' next comparisons.
"""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from annotate.models import Comparison
from training.models import ModelKind, ModelVersion, RunStatus, SamplingJob, TrainingMetric, TrainingRun
from training.services.registry import register_model

from .test_e2e_celery import (
    judge,
    make_project,
    needs_child_process,
    run_in_child_pytest,
    start_worker,
    stop_worker,
    synthetic_lines,
    wait_for,
    worker_env,
)

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not needs_child_process(), reason="the database is reachable from a worker: runs directly")
def test_e2e_ppo_through_a_worker_process(tmp_path):
    run_in_child_pytest(f"{__file__}::test_e2e_sft_rm_ppo_and_sft_dpo_head_to_head", tmp_path, timeout=700)


@pytest.mark.skipif(needs_child_process(), reason="in-memory test database: run through the child pytest above")
@pytest.mark.django_db(transaction=True)
def test_e2e_sft_rm_ppo_and_sft_dpo_head_to_head(client, tmp_path):
    from training.tiny_model import build_default_model

    log_path = tmp_path / "worker.log"
    worker = start_worker(log_path, worker_env())
    try:
        lines = synthetic_lines(80)
        project, admin, annotators = make_project("E2E PPO", lines)
        judge(project, annotators)
        model_dir = build_default_model(
            tmp_path / "tiny", [p.text for p in project.prompts.all()]
            + [line["chosen"] + " " + line["rejected"] for line in lines],
            vocab_size=384, hidden=64, layers=2, max_positions=256)
        base = register_model("tiny-ppo-e2e", model_dir)
        client.force_login(admin)
        common = {"base_model": base.pk, "lr": "0.001", "batch_size": 8, "beta": "0.1", "max_length": 64}

        def launch(recipe, export, extra):
            response = client.post(reverse("training_run_new", args=[project.pk]),
                                   {**common, "recipe": recipe, "export": export, "max_steps": 4,
                                    "extra": json.dumps(extra)})
            assert response.status_code == 302, response.content.decode()[-2000:]
            return TrainingRun.objects.filter(project=project).order_by("-pk").first()

        ppo_run = launch("sft+rm+ppo", "", {
            "eval_fraction": 0.2, "seed": 1, "sft_max_steps": 4, "rm_lr": 0.002, "rm_max_steps": 24,
            "rm_norm_samples": 8, "ppo_iterations": 3, "ppo_batch_size": 8, "ppo_response_length": 8,
            "ppo_lr": 0.001, "ppo_samples_per_log": 2})
        dpo_run = launch("sft+dpo", ppo_run.export_id, {"eval_fraction": 0.2, "seed": 1, "sft_max_steps": 4})
        assert dpo_run.export_id == ppo_run.export_id  # both on the same calibrated export

        for run in (ppo_run, dpo_run):
            wait_for(lambda: TrainingRun.objects.get(pk=run.pk).is_finished, 400, f"run {run.pk}", log_path)
            run.refresh_from_db()
            assert run.status == RunStatus.SUCCEEDED, f"{run.status}: {run.error}\n{run.logs[-3000:]}"

        # sft+rm+ppo: one step count over the three phases, PPO metrics and samples streamed
        rows = list(TrainingMetric.objects.filter(run=ppo_run).order_by("step").values_list("step", "data"))
        assert [s for s, _ in rows] == list(range(1, 4 + 24 + 3 + 1))
        assert [d["phase"] for _, d in rows] == ["sft"] * 4 + ["rm"] * 24 + ["ppo"] * 3
        last = rows[-1][1]
        for key in ("reward", "kl", "clip_fraction", "approx_kl", "value_loss", "entropy", "response_length"):
            assert isinstance(last[key], (int, float)), key
        assert len(last["samples"]) == 2
        assert ppo_run.summary["eval"]["rm"]["eval_reward_accuracy"] > 0.8, ppo_run.summary
        page = client.get(reverse("training_run", args=[project.pk, ppo_run.pk])).content.decode()
        for title in ("PPO reward", "PPO KL to reference", "PPO clip fraction", "PPO value loss",
                      "PPO entropy", "PPO response length", "Reward model calibration", "Sample generations"):
            assert title in page, title

        # the registry: the PPO policy (a language model) and its reward model
        policy = ppo_run.output_model
        assert policy.kind == ModelKind.POLICY and policy.parent == base
        rm = ModelVersion.objects.get(training_run=ppo_run, kind=ModelKind.REWARD)
        assert json.loads((__import__("pathlib").Path(rm.path) / "config.json").read_text())[
            "prefloop_reward_normalization"]["n"] == 8

        # head to head: the PPO model against the DPO model, as the annotators' next round
        client.post(reverse("training_run_sample_round", args=[project.pk, ppo_run.pk]),
                    {"n_prompts": 4, "against": "model", "compare_model": dpo_run.output_model.pk,
                     "max_new_tokens": 8, "temperature": 1.0})
        job = SamplingJob.objects.get(run=ppo_run)
        wait_for(lambda: SamplingJob.objects.get(pk=job.pk).status in ("succeeded", "failed"), 120,
                 "the next round", log_path)
        job.refresh_from_db()
        assert job.status == "succeeded", job.error
        c = Comparison.objects.filter(project=project, round=1).select_related("response_a", "response_b").first()
        assert {c.response_a.model_name, c.response_b.model_name} == {policy.name, dpo_run.output_model.name}
    finally:
        stop_worker(worker)
