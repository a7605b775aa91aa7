"""The unattended loop end to end on CPU with the tiny model and a real Celery worker.

``manage.py loop --synthetic 60 --rounds 2 --pairing head_to_head,reference`` creates a synthetic
project (round-0 pairs whose hidden utility varies), builds a tiny model for it, and runs two
rounds: simulated pools judge through the queue in this process, a ``celery worker -Q gpu,default``
subprocess trains sft+dpo and samples each round. Checked as a researcher would look at it:

* round 1 pairs the new model with its parent (head to head), round 2 with the fixed reference
  (the base model), each response from the model its pairing says;
* the hidden utility of the round-2 samples is higher than that of the round-0 responses to the
  same prompts;
* the simulated humans preferred the round-1 model over the round-0 model (win rate > 0.5, its
  bootstrap interval over prompts reported), and the report says what calibration recovered.

With SQLite the scenario runs in a child pytest whose test database is a file (see
``test_e2e_celery``).
"""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from annotate.models import Comparison
from training.models import JobStatus, LoopRun, Pairing, SamplingJob

from .test_e2e_celery import needs_child_process, run_in_child_pytest, start_worker, stop_worker, worker_env

pytestmark = pytest.mark.slow

SETTINGS = [
    "sft_max_steps=300", "max_steps=60", "sft_lr=5e-3", "lr=5e-4", "batch_size=8", "max_length=64",
    "cpu_threads=1", "checkpoint_every=0",
]


@pytest.mark.skipif(not needs_child_process(), reason="the database is reachable from a worker: runs directly")
def test_loop_through_a_worker_process(tmp_path):
    run_in_child_pytest(f"{__file__}::test_two_rounds_of_the_loop", tmp_path, timeout=900)


@pytest.mark.skipif(needs_child_process(), reason="in-memory test database: run through the child pytest above")
@pytest.mark.django_db(transaction=True)
def test_two_rounds_of_the_loop(tmp_path):
    log_path = tmp_path / "worker.log"
    worker = start_worker(log_path, worker_env())
    out = io.StringIO()
    try:
        args = ["--project", "Loop e2e", "--synthetic", "60", "--rounds", "2", "--pairing", "head_to_head,reference",
                "--n-prompts", "30", "--temperature", "0.7", "--seed", "0", "--timeout", "400"]
        for s in SETTINGS:
            args += ["--set", s]
        try:
            call_command("loop", *args, stdout=out)
        except Exception:
            print(out.getvalue())
            print(log_path.read_text(errors="replace")[-4000:])
            raise
    finally:
        stop_worker(worker)
    text = out.getvalue()
    print(text)  # the report, for the record (pytest -s)

    loop = LoopRun.objects.get()
    assert loop.status == JobStatus.SUCCEEDED, loop.error
    base = loop.base_model
    jobs = {job.round: job for job in SamplingJob.objects.filter(project=loop.project)}
    assert jobs[1].pairing == Pairing.HEAD_TO_HEAD and jobs[2].pairing == Pairing.REFERENCE
    v1, v2 = jobs[1].model_version, jobs[2].model_version
    assert v1.parent == base and v2.parent == v1 and loop.latest_model == v2
    for round_, pair in ((1, {v1.name, base.name}), (2, {v2.name, base.name})):
        rows = Comparison.objects.filter(project=loop.project, round=round_).select_related("response_a", "response_b")
        assert rows.count() == jobs[round_].n_created > 0
        for c in rows:
            assert {c.response_a.model_name, c.response_b.model_name} == pair
            assert c.response_a.model_name == jobs[round_].model_version.name  # the new model on side A

    rounds = {entry["round"]: entry for entry in loop.report["rounds"]}
    assert sorted(rounds) == [0, 1, 2]
    utility = rounds[2]["utility"]
    assert utility["by_model"][v2.name]["mean"] > utility["round0_same_prompts"]["mean"]
    verdict = rounds[1]["verdict"]
    assert verdict["model"] == v1.name and verdict["against"] == [base.name]
    overall = verdict["groups"][0]
    assert overall["name"] == "All annotators" and overall["win_rate"] > 0.5
    assert overall["low"] is not None and overall["low"] <= overall["win_rate"] <= overall["high"]
    assert f"win rate {overall['win_rate']:.3f} [{overall['low']:.3f}, {overall['high']:.3f}]" in text
    calibration = rounds[2]["calibration"]
    assert len(calibration["annotators"]) == 7 and calibration["accuracy_spearman"] is not None
    assert "calibration vs truth" in text and "hidden utility" in text

    # The worker measured each new version; the rounds page shows it, the verdicts and the leaderboard.
    for v in (v1, v2):
        v.refresh_from_db()
        assert {"preference_accuracy", "kl_to_parent", "mean_length", "length_change", "distinct_2"} <= set(v.metrics)
    from django.contrib.auth import get_user_model
    from django.test import Client

    from annotate.models import Membership, Role

    admin = get_user_model().objects.create_user("loop-admin")
    Membership.objects.create(project=loop.project, user=admin, role=Role.ADMIN)
    client = Client()
    client.force_login(admin)
    page = client.get(f"/projects/{loop.project.pk}/rounds/").content.decode()
    assert "Round 2" in page and "Model versions" in page and v2.name in page and "careful" in page


@pytest.mark.skipif(not needs_child_process(), reason="the database is reachable from a worker: runs directly")
def test_loop_from_the_api_through_a_worker_process(tmp_path):
    run_in_child_pytest(f"{__file__}::test_one_round_started_from_the_api", tmp_path, timeout=600)


@pytest.mark.skipif(needs_child_process(), reason="in-memory test database: run through the child pytest above")
@pytest.mark.django_db(transaction=True)
def test_one_round_started_from_the_api(tmp_path):
    """POST /api/projects/{id}/loops/: the worker's ``training.loop.advance`` task runs the simulated
    annotators, follows the run and the sampling job, and ends the loop with both rounds reported."""
    from django.contrib.auth import get_user_model
    from rest_framework.test import APIClient

    from annotate.models import Membership, Role
    from training.loop.seed import seed_project, synthetic_utility
    from training.services.registry import register_model
    from training.tiny_model import build_default_model

    from .test_e2e_celery import wait_for

    log_path = tmp_path / "worker.log"
    worker = start_worker(log_path, worker_env())
    try:
        project = seed_project("Loop API", 30, seed=1)
        texts = [c.response_a.text + " " + c.response_b.text + " " + c.prompt.text
                 for c in project.comparisons.select_related("prompt", "response_a", "response_b")]
        base = register_model("loop-api-base", build_default_model(tmp_path / "base", texts, vocab_size=384,
                                                                   hidden=32, layers=1, max_positions=128))
        admin = get_user_model().objects.create_user("loop-api-admin")
        Membership.objects.create(project=project, user=admin, role=Role.ADMIN)
        api = APIClient()
        api.force_authenticate(admin)
        u = synthetic_utility()
        r = api.post(f"/api/projects/{project.pk}/loops/", {
            "rounds": 1, "base_model": base.name, "pairings": ["two_samples"], "n_prompts": 10, "max_new_tokens": 12,
            "utility": {"known": sorted(u.known), "unknown_penalty": u.unknown_penalty},
            "pools": [{"name": "only", "n_annotators": 3, "accuracy": [0.9, 0.9]}],
            "hyperparameters": {"sft_max_steps": 10, "max_steps": 5, "batch_size": 4, "max_length": 64,
                                "cpu_threads": 1, "checkpoint_every": 0, "min_pairs": 4},
        }, format="json")
        assert r.status_code == 202, r.content
        url = f"/api/projects/{project.pk}/loops/{r.json()['id']}/"
        data = wait_for(lambda: (d := api.get(url).json())["status"] in ("succeeded", "failed") and d, 400,
                        "the loop to end", log_path)
    finally:
        stop_worker(worker)
    assert data["status"] == "succeeded", data["error"]
    assert [e["round"] for e in data["report"]["rounds"]] == [0, 1]
    job = SamplingJob.objects.get(project=project)
    assert job.pairing == Pairing.TWO_SAMPLES and job.compare_to is None
    for c in Comparison.objects.filter(project=project, round=1).select_related("response_a", "response_b"):
        assert c.response_a.model_name == c.response_b.model_name == data["latest_model"]
    assert data["report"]["rounds"][1]["judgments"] > 0
