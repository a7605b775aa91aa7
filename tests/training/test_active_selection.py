"""Active pair selection end to end on CPU with the tiny model: a project in margin order gets
its priorities from a really trained DPO model version (the worker task, run in-process), they
match margins computed independently by the trainer's own log-prob code, and the queue then
serves the smallest-margin comparison first. The disagreement order from two pools that
disagree; arrival order zeroes everything and a computation of the old order can no longer
write; a job whose worker died continues after its last chunk; admins set and recompute,
annotators never see any of it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from django.urls import reverse

from annotate import queue, services
from annotate.models import Comparison, PairOrder, Role
from prefloop import jobs
from tests.factories import add_member, make_comparison, make_judgment, make_pool, make_project, make_team, make_user
from training.active.services import PRIORITY_JOBS, request_priorities, run_priority_job
from training.active.writes import Stop, write_chunk
from training.models import JobStatus, PriorityJob, RunStatus, TrainingRun
from training.services.registry import register_model
from training.services.runs import launch_run

from .test_runs import make_export, synthetic_rows

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

WORDS = "apple river stone cloud green table music light paper window garden silver".split()


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from training.tiny_model import build_default_model

    texts = [r["prompt"] + r["chosen"] + r["rejected"] for r in synthetic_rows(40)]
    return build_default_model(tmp_path_factory.mktemp("tiny") / "model", texts, vocab_size=320, hidden=32,
                               layers=1, max_positions=128)


def _pairs(project, n: int) -> list[Comparison]:
    """Open comparisons whose margins under a "Sure!"-trained model differ: some pairs set a
    "Sure!" answer against a plain one (either side), some two plain ones, some two "Sure!" ones."""
    out = []
    for i in range(n):
        w = [WORDS[(i * 5 + k * 7) % len(WORDS)] for k in range(4)]
        kind = i % 4
        a = f" Sure! {w[0]} {w[1]}." if kind in (0, 3) else f" {w[0]} {w[1]}."
        b = f" Sure! {w[2]} {w[3]}." if kind in (1, 3) else f" {w[2]} {w[3]} {w[0]}."
        out.append(make_comparison(project, f"m{i}", prompt=f"Question {100 + i}: tell me about the {w[3]}.",
                                   text_a=a, text_b=b))
    return out


def _independent_margins(run: TrainingRun, comparisons: list[Comparison], beta: float) -> np.ndarray:
    """The margins from the trainer's own packed log-prob code (training.trainer.logps), not the
    task's: policy = the run's output, reference = its base model (recipe dpo)."""
    import torch

    from training.data import collate, tokenize_pair
    from training.tiny_model import load_model_and_tokenizer
    from training.trainer.logps import sequence_logps

    policy, tok = load_model_and_tokenizer(run.output_model.path)
    reference, _ = load_model_and_tokenizer(run.base_model.path)
    pairs = [tokenize_pair(tok, {"prompt": c.prompt.text, "chosen": c.response_a.text,
                                 "rejected": c.response_b.text}, i, max_length=48)
             for i, c in enumerate(comparisons)]
    batch = collate(pairs, tok.pad_token_id, pack=False)
    with torch.no_grad():
        lp_pi = sequence_logps(policy.eval(), batch).double().numpy()
        lp_ref = sequence_logps(reference.eval(), batch).double().numpy()
    return beta * ((lp_pi[:, 0] - lp_ref[:, 0]) - (lp_pi[:, 1] - lp_ref[:, 1]))


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_margin_order_from_a_trained_model_serves_the_smallest_margin_first(
        tiny_model_dir, tmp_path, celery_eager, settings):
    from evaluation.stats.active import sampled_priority, stable_uniform
    from training import tasks

    settings.PREFLOOP_MARGIN_SAMPLING_POWER = None  # strict order (the default) first; the draw below
    project = make_project("active margin", overlap=2)
    team = make_team(project, annotators=("ann1",))
    base = register_model("tiny-active", tiny_model_dir)
    export = make_export(project, synthetic_rows(24, test_every=6), tmp_path / "export")
    comparisons = _pairs(project, 12)
    gold = make_comparison(project, "gold", gold="a")

    # The admin chooses margin order before any model exists: the job runs and says so.
    assert services.set_pair_order(project, PairOrder.MARGIN, user=team.admin)
    first = PriorityJob.objects.get(project=project)
    assert first.status == JobStatus.SUCCEEDED and "no model trained with DPO yet" in first.message
    assert set(Comparison.objects.filter(project=project).values_list("priority", flat=True)) == {0.0}

    # A DPO run succeeds on the worker (in-process): the project's priorities follow its model.
    beta = 0.5
    run = launch_run(project, base_model=base, recipe="dpo", export=export, send=False, hyperparameters={
        "max_steps": 12, "batch_size": 4, "lr": 3e-3, "max_length": 48, "beta": beta, "checkpoint_every": 0})
    assert tasks.run_training.apply(args=(run.pk,)).get() == RunStatus.SUCCEEDED
    run.refresh_from_db()
    job = PriorityJob.objects.filter(project=project).latest("pk")
    assert job.pk != first.pk and job.reason == f"training run {run.pk} succeeded"
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.model_version == run.output_model and job.n_total == job.n_done == 12 and job.progress == 1.0
    assert f"β {beta:g}" in job.message

    margins = _independent_margins(run, comparisons, beta)
    stored = np.array([Comparison.objects.get(pk=c.pk).priority for c in comparisons])
    assert stored == pytest.approx([2 / (1 + math.exp(abs(m))) for m in margins], abs=2e-4)
    assert len({round(abs(m), 4) for m in margins}) > 6  # the model really tells the pairs apart
    assert list(np.argsort(-stored, kind="stable")) == list(np.argsort(np.abs(margins), kind="stable"))
    assert Comparison.objects.get(pk=gold.pk).priority == 0.0  # gold comparisons are not scored

    # Recomputing gives the same priorities (idempotent).
    again = request_priorities(project, reason="again")
    assert PriorityJob.objects.get(pk=again.pk).status == JobStatus.SUCCEEDED
    assert [Comparison.objects.get(pk=c.pk).priority for c in comparisons] == stored.tolist()

    # The queue serves the comparison whose margin is smallest first.
    assignment = queue.next_assignment(team.annotators[0], project)
    assert assignment.comparison_id == comparisons[int(np.argmin(np.abs(margins)))].pk

    # Stochastic acquisition (PREFLOOP_MARGIN_SAMPLING_POWER = p): each priority is the key
    # u^(1/priority^p) of a uniform number fixed by the model version and the comparison, so a
    # recomputation gives the same keys and the gold comparison stays at 0.
    settings.PREFLOOP_MARGIN_SAMPLING_POWER = 1.0
    ids = np.array([c.pk for c in comparisons])
    expected = sampled_priority(stored, stable_uniform(run.output_model.pk, ids), 1.0)
    for reason in ("sampled", "sampled again"):
        job = request_priorities(project, reason=reason)
        assert PriorityJob.objects.get(pk=job.pk).status == JobStatus.SUCCEEDED
        keys = [Comparison.objects.get(pk=c.pk).priority for c in comparisons]
        assert keys == pytest.approx(expected.tolist(), rel=1e-9, abs=1e-12)
    assert not np.allclose(expected, stored) and ((expected >= 0) & (expected < 1)).all()
    assert Comparison.objects.get(pk=gold.pk).priority == 0.0


def _independent_features(run: TrainingRun, comparisons: list[Comparison]) -> np.ndarray:
    """φ(A) − φ(B) one sequence at a time (no batching, no padding): the policy's final hidden
    state summed over the positions that predict each response's tokens."""
    import torch

    from training.data import tokenize_pair
    from training.tiny_model import load_model_and_tokenizer

    policy, tok = load_model_and_tokenizer(run.output_model.path)
    policy.eval()
    out = []
    for i, c in enumerate(comparisons):
        t = tokenize_pair(tok, {"prompt": c.prompt.text, "chosen": c.response_a.text,
                                "rejected": c.response_b.text}, i, max_length=48)
        phi = []
        for resp in (t.chosen_ids, t.rejected_ids):
            with torch.no_grad():
                hidden = policy(input_ids=torch.tensor([t.prompt_ids + resp]), output_hidden_states=True).hidden_states[-1]
            start = len(t.prompt_ids) - 1
            phi.append(hidden[0, start:start + len(resp)].sum(0).double().numpy())
        out.append(phi[0] - phi[1])
    return np.array(out)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_information_order_from_a_trained_model_and_a_job_that_resumes(tiny_model_dir, tmp_path, celery_eager):
    """The expected-information order: the job's priorities equal the greedy order computed here
    from independently computed features and margins (votes counted per decided judgment, ties
    not), the queue serves its first pair first, and a job whose worker died after some chunks
    writes the rest identically."""
    from evaluation.stats.active import fisher_weight, information_priority
    from training import tasks
    from training.active import services as active

    from annotate.models import Membership

    project = make_project("active information", overlap=3)
    team = make_team(project, annotators=("ann1", "ann2", "ann3"))
    excluded = make_user("excluded")
    add_member(project, excluded, Role.ANNOTATOR)
    Membership.objects.filter(project=project, user=excluded).update(excluded=True)
    base = register_model("tiny-information", tiny_model_dir)
    export = make_export(project, synthetic_rows(24, test_every=6), tmp_path / "export")
    comparisons = _pairs(project, 12)
    ann1, ann2, ann3 = team.annotators
    # votes so far (open comparisons, overlap 3): two for A on 0, one for B on 1, a tie on 2, and
    # one on 3 by an annotator the admin excluded
    make_judgment(ann1, comparisons[0], "a")
    make_judgment(ann2, comparisons[0], "a")
    make_judgment(ann1, comparisons[1], "b")
    make_judgment(ann1, comparisons[2], "tie")
    make_judgment(excluded, comparisons[3], "a")  # an excluded annotator's vote is not trained on
    assert services.set_pair_order(project, PairOrder.INFORMATION, user=team.admin)
    assert "no model trained with DPO yet" in PriorityJob.objects.get(project=project).message

    beta = 0.5
    run = launch_run(project, base_model=base, recipe="dpo", export=export, send=False, hyperparameters={
        "max_steps": 12, "batch_size": 4, "lr": 3e-3, "max_length": 48, "beta": beta, "checkpoint_every": 0})
    assert tasks.run_training.apply(args=(run.pk,)).get() == RunStatus.SUCCEEDED
    run.refresh_from_db()
    job = PriorityJob.objects.filter(project=project).latest("pk")
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.pair_order == "information" and job.model_version == run.output_model
    assert job.n_total == job.n_done == 12 and "2 judged pairs known" in job.message

    x = _independent_features(run, comparisons)
    w = fisher_weight(_independent_margins(run, comparisons, beta))
    expected = information_priority(x, w, x[:2], w[:2] * np.array([2.0, 1.0]))
    stored = np.array([Comparison.objects.get(pk=c.pk).priority for c in comparisons])
    assert stored == pytest.approx(expected, abs=1e-6)
    assert len(set(stored.tolist())) == 12 and stored.max() == 1.0
    # the judged directions count: without the votes the order differs
    assert not np.allclose(information_priority(x, w), expected)

    first = queue.next_assignment(ann3, project)
    assert first.comparison_id == comparisons[int(np.argmax(stored))].pk

    # The worker died after writing the first six: the job is taken up again and writes the rest
    # (computing the order again from the same model and votes), leaving the six as written.
    Comparison.objects.filter(pk__in=[c.pk for c in comparisons[:6]]).update(priority=0.123)
    dead = PriorityJob.objects.create(project=project, pair_order="information", status=JobStatus.RUNNING,
                                      worker="elsewhere:1", heartbeat_at=None, attempts=1, n_done=6,
                                      cursor=comparisons[5].pk, model_version=run.output_model)
    sent, send = [], PRIORITY_JOBS.send
    PRIORITY_JOBS.send = lambda pk, countdown=0: sent.append(pk)
    try:
        assert active.latest_job(project).status == JobStatus.QUEUED  # recovered when shown
    finally:
        PRIORITY_JOBS.send = send
    assert active.run_priority_job(dead.pk, progress_bar=False) == "succeeded"
    dead.refresh_from_db()
    assert dead.n_done == 12 and dead.attempts == 2
    after = [Comparison.objects.get(pk=c.pk).priority for c in comparisons]
    assert after[:6] == [0.123] * 6
    assert after[6:] == pytest.approx(expected[6:].tolist(), abs=1e-6)


@pytest.fixture
def two_pools(db):
    """Comparisons 0..3 of a project with pools north and south (two annotators each): nobody
    voted on 0, only north on 1, both pools agree on 2 (A), and they disagree on 3 (north A,
    south B). So arrival order would serve 0 first, disagreement order 3."""
    project = make_project("active disagreement", overlap=5)
    team = make_team(project, annotators=())
    north, south = make_pool(project, "north"), make_pool(project, "south")
    people = {}
    for pool in (north, south):
        for k in range(2):
            user = make_user(f"{pool.name}{k}")
            add_member(project, user, Role.ANNOTATOR, pool=pool)
            people.setdefault(pool.name, []).append(user)
    cs = [make_comparison(project, f"d{i}") for i in range(4)]
    for user in people["north"]:
        make_judgment(user, cs[1], "b")
        make_judgment(user, cs[2], "a")
        make_judgment(user, cs[3], "a")
    for user in people["south"]:
        make_judgment(user, cs[2], "a")
        make_judgment(user, cs[3], "b")
    newcomer = make_user("newcomer")
    add_member(project, newcomer, Role.ANNOTATOR, pool=north)
    return {"project": project, "team": team, "cs": cs, "newcomer": newcomer}


def test_disagreement_order_serves_what_the_pools_disagree_on_first(two_pools, celery_eager,
                                                                    django_capture_on_commit_callbacks):
    project, cs = two_pools["project"], two_pools["cs"]
    with django_capture_on_commit_callbacks(execute=True):
        services.set_pair_order(project, PairOrder.DISAGREEMENT)
    job = PriorityJob.objects.get(project=project)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.n_done == 4 and job.pair_order == "disagreement"
    p = [Comparison.objects.get(pk=c.pk).priority for c in cs]
    disagree = (2 + 1) / (2 + 2) - (0 + 1) / (2 + 2)  # north's shrunk P(A) 3/4, south's 1/4
    agree = 0.0  # both pools 3/4
    neutral = (disagree + agree) / 2  # the median of the measured comparisons
    assert p == pytest.approx([neutral, neutral, agree, disagree])
    assignment = queue.next_assignment(two_pools["newcomer"], project)
    assert assignment.comparison_id == cs[3].pk


def test_imported_comparisons_are_scored_in_an_active_order_not_in_arrival_order(
        two_pools, celery_eager, django_capture_on_commit_callbacks):
    import io
    import json

    from annotate.imports import import_comparisons

    project, cs = two_pools["project"], two_pools["cs"]
    line = {"prompt": "A new question?", "response_a": "One answer.", "response_b": "Another answer."}
    with django_capture_on_commit_callbacks(execute=True):
        import_comparisons(project, io.BytesIO(json.dumps(line).encode() + b"\n"), filename="new.jsonl")
    assert not PriorityJob.objects.filter(project=project).exists()  # arrival order: nothing to score

    with django_capture_on_commit_callbacks(execute=True):
        services.set_pair_order(project, PairOrder.DISAGREEMENT)
    neutral = Comparison.objects.get(pk=cs[0].pk).priority
    assert neutral > 0
    again = {**line, "prompt": "Yet another question?"}
    with django_capture_on_commit_callbacks(execute=True):
        result = import_comparisons(project, io.BytesIO(json.dumps(again).encode() + b"\n"), filename="more.jsonl")
    assert result.created == 1
    job = PriorityJob.objects.filter(project=project).latest("pk")
    assert job.reason == "1 comparison imported" and job.status == JobStatus.SUCCEEDED, job.error
    new = Comparison.objects.get(project=project, prompt__text="Yet another question?")
    assert new.priority == pytest.approx(neutral)  # no votes yet: the neutral value, not 0
    # importing only duplicates creates nothing and queues nothing
    with django_capture_on_commit_callbacks(execute=True):
        import_comparisons(project, io.BytesIO(json.dumps(again).encode() + b"\n"), filename="same.jsonl")
    assert PriorityJob.objects.filter(project=project).latest("pk").pk == job.pk


def test_a_new_statistics_report_recomputes_disagreement_priorities(two_pools, celery_eager,
                                                                   django_capture_on_commit_callbacks):
    from evaluation.quality.compute import recompute_quality

    project = two_pools["project"]
    with django_capture_on_commit_callbacks(execute=True):
        services.set_pair_order(project, PairOrder.DISAGREEMENT)
    with django_capture_on_commit_callbacks(execute=True):
        report = recompute_quality(project)
    latest = PriorityJob.objects.filter(project=project).latest("pk")
    assert latest.reason == f"statistics report {report.pk}" and latest.status == JobStatus.SUCCEEDED


def test_arrival_order_zeroes_priorities_and_stops_a_computation_of_the_old_order(
        two_pools, celery_eager, django_capture_on_commit_callbacks):
    project, cs = two_pools["project"], two_pools["cs"]
    with django_capture_on_commit_callbacks(execute=True):
        services.set_pair_order(project, PairOrder.DISAGREEMENT)
    assert Comparison.objects.filter(project=project).exclude(priority=0).exists()
    # a computation of the disagreement order, claimed by a worker, is still writing when ...
    job = PriorityJob.objects.create(project=project, pair_order="disagreement", status=JobStatus.QUEUED)
    job = jobs.claim(PRIORITY_JOBS, job.pk)
    # ... the admin goes back to arrival order: every priority is 0 at once
    with django_capture_on_commit_callbacks(execute=True):
        assert services.set_pair_order(project, PairOrder.ARRIVAL)
    assert set(Comparison.objects.filter(project=project).values_list("priority", flat=True)) == {0.0}
    with pytest.raises(Stop, match="pair order changed"):
        write_chunk(job, [cs[0].pk], [0.9], n_done=1)
    assert set(Comparison.objects.filter(project=project).values_list("priority", flat=True)) == {0.0}
    assert run_priority_job(job.pk) == "skipped"  # running, on this live process
    assert request_priorities(project) is None  # arrival order: nothing to compute
    assert not services.set_pair_order(project, PairOrder.ARRIVAL)  # no change, no signal


def test_a_job_whose_worker_died_continues_after_its_last_chunk(two_pools):
    project, cs = two_pools["project"], two_pools["cs"]
    services.set_pair_order(project, PairOrder.DISAGREEMENT)
    # The job had written comparisons 0 and 1 (cursor at 1) when its worker was killed.
    Comparison.objects.filter(pk__in=[cs[0].pk, cs[1].pk]).update(priority=0.123)
    job = PriorityJob.objects.create(project=project, pair_order="disagreement", status=JobStatus.RUNNING,
                                     worker="elsewhere:1", heartbeat_at=None, attempts=1, cursor=cs[1].pk,
                                     n_done=2)
    sent = []
    PRIORITY_JOBS_send = PRIORITY_JOBS.send
    PRIORITY_JOBS.send = lambda pk, countdown=0: sent.append(pk)
    try:
        from training.active.services import latest_job

        shown = latest_job(project)  # a page or the API shows it: recovered (re-queued) first
    finally:
        PRIORITY_JOBS.send = PRIORITY_JOBS_send
    assert shown.status == JobStatus.QUEUED and "worker was lost" in shown.message
    assert run_priority_job(job.pk, progress_bar=False) == "succeeded"
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 2 and job.n_done == 4 and job.n_total == 4
    priorities = [Comparison.objects.get(pk=c.pk).priority for c in cs]
    assert priorities[:2] == [0.123, 0.123]  # not recomputed: written before the worker died
    assert priorities[2:] == pytest.approx([0.0, 0.5])  # written by the resumed job: agree, disagree


# --------------------------------------------------------------------------- pages and API


def _api(client, user):
    client.force_login(user)
    return client


def test_admins_set_the_pair_order_and_recompute_annotators_see_nothing(db, client, celery_eager, settings,
                                                                        django_capture_on_commit_callbacks):
    project = make_project("active api", overlap=2)
    team = make_team(project, annotators=("ann1",))
    make_comparison(project, "x")
    url = f"/api/projects/{project.pk}/"
    prio_url = f"/api/projects/{project.pk}/priorities/"

    _api(client, team.researcher)
    assert client.get(url).json()["pair_order"] == "arrival"
    assert client.patch(url, {"pair_order": "margin"}, content_type="application/json").status_code == 403
    assert client.post(prio_url).status_code == 403
    assert client.get(prio_url).json() == {"pair_order": "arrival", "job": None}

    _api(client, team.admin)
    assert client.post(prio_url).status_code == 409  # arrival order: nothing to compute
    bad = client.patch(url, {"pair_order": "loudest"}, content_type="application/json")
    assert bad.status_code == 400 and "pair_order" in bad.json()
    with django_capture_on_commit_callbacks(execute=True):
        ok = client.patch(url, {"pair_order": "disagreement"}, content_type="application/json")
    assert ok.status_code == 200 and ok.json()["pair_order"] == "disagreement"
    body = client.get(prio_url).json()
    assert body["pair_order"] == "disagreement" and body["job"]["status"] == "succeeded"
    assert body["job"]["reason"] == "pair order set to disagreement" and body["job"]["n_done"] == 1
    with django_capture_on_commit_callbacks(execute=True):
        again = client.post(prio_url)
    assert again.status_code == 202 and again.json()["job"]["reason"] == "on demand"

    # the settings page has the field and the panel with the button; the panel shows the job
    page = client.get(reverse("project_settings", args=[project.pk])).content.decode()
    assert 'name="pair_order"' in page and reverse("training_priorities", args=[project.pk]) in page
    panel = client.get(reverse("training_priorities", args=[project.pk])).content.decode()
    assert "Recompute priorities" in panel and "1 comparisons scored by the pools" in panel
    with django_capture_on_commit_callbacks(execute=True):
        clicked = client.post(reverse("training_priorities", args=[project.pk]), HTTP_HX_REQUEST="true")
    assert clicked.status_code == 200 and "asked for: on demand" in clicked.content.decode()
    assert PriorityJob.objects.filter(project=project, reason="on demand").count() == 2
    with django_capture_on_commit_callbacks(execute=True):
        posted = client.post(reverse("project_settings", args=[project.pk]), {
            "name": project.name, "instructions": "", "overlap": 2, "gold_rate": 0, "assignment_timeout_s": 600,
            "license": "", "pair_order": "arrival"})
    assert posted.status_code == 302
    project.refresh_from_db()
    assert project.pair_order == "arrival"
    assert set(Comparison.objects.filter(project=project).values_list("priority", flat=True)) == {0.0}

    # an annotator: no pair order in the project, no priority in the item, no panel, no API
    _api(client, team.annotators[0])
    assert "pair_order" not in client.get(url).json()
    item = client.get(f"/api/projects/{project.pk}/next/").json()
    assert "priority" not in str(item)
    assert client.get(prio_url).status_code == 403
    assert client.get(reverse("training_priorities", args=[project.pk])).status_code == 403


def test_which_model_and_reference_the_margins_use(db, tmp_path, tiny_model_dir):
    from training.active.scoring import margin_model
    from training.models import ModelVersion

    project = make_project("active which model")
    base = register_model("tiny-which", tiny_model_dir)

    def version(name, recipe, status=RunStatus.SUCCEEDED, **hp):
        run = TrainingRun.objects.create(project=project, base_model=base, recipe=recipe, status=status,
                                         hyperparameters=hp, out_dir=str(tmp_path / name))
        return ModelVersion.objects.create(name=name, path=str(tmp_path / name / "final"), project=project,
                                           parent=base, training_run=run)

    assert margin_model(project) is None  # no model yet
    version("sft-only", "sft")
    version("failed-dpo", "dpo", status=RunStatus.FAILED)
    assert margin_model(project) is None  # neither has an implicit reward
    dpo = version("plain-dpo", "dpo", beta=0.3, max_length=96)
    mm = margin_model(project)
    assert (mm.version, mm.reference_path, mm.beta, mm.max_length) == (dpo, base.path, 0.3, 96)
    both = version("sft-then-dpo", "sft+dpo")
    with pytest.raises(ValueError, match="SFT model"):
        margin_model(project)  # its SFT phase's folder (the DPO reference) is gone
    (tmp_path / "sft-then-dpo" / "sft").mkdir(parents=True)
    (tmp_path / "sft-then-dpo" / "sft" / ".complete").touch()
    mm = margin_model(project)
    assert mm.version == both and mm.reference_path == str(tmp_path / "sft-then-dpo" / "sft") and mm.beta == 0.1
    version("ppo-after", "sft+dpo+ppo")
    assert margin_model(project).version == both  # a PPO policy has no implicit reward


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_an_order_change_during_a_chunk_write_waits_for_it_and_then_zeroes_it(run_at_once, monkeypatch):
    """PostgreSQL: a chunk of the old order being written when the admin switches to arrival
    order. The switch waits for the chunk's transaction (the project row is share-locked by the
    chunk, locked by the switch) and then zeroes what it wrote: no priority survives the switch."""
    import time

    from django.db import connection

    from training.active import writes

    if connection.vendor != "postgresql":
        pytest.skip("the row locks under test are PostgreSQL's")
    project = make_project("active race", overlap=2)
    cs = [make_comparison(project, f"r{i}") for i in range(3)]
    services.set_pair_order(project, PairOrder.DISAGREEMENT)
    job = PriorityJob.objects.create(project=project, pair_order="disagreement", status=JobStatus.QUEUED)
    job = jobs.claim(PRIORITY_JOBS, job.pk)
    slow_update = writes._update

    def update_slowly(*args):
        time.sleep(0.5)  # the chunk holds its transaction while the switch arrives
        return slow_update(*args)

    monkeypatch.setattr(writes, "_update", update_slowly)

    def switch():
        time.sleep(0.2)
        return services.set_pair_order(project, PairOrder.ARRIVAL)

    wrote, switched = run_at_once([lambda: write_chunk(job, [c.pk for c in cs], [0.7, 0.8, 0.9], n_done=3), switch])
    assert wrote == 3 and switched
    assert set(Comparison.objects.filter(project=project).values_list("priority", flat=True)) == {0.0}
    with pytest.raises(Stop):
        write_chunk(job, [cs[0].pk], [0.5])


def test_a_sampled_round_queues_the_margins_of_its_new_comparisons(db, tiny_model_dir, celery_eager,
                                                                   django_capture_on_commit_callbacks):
    from training.services.sampling import sample_next_round

    project = make_project("active sampled round")
    make_comparison(project, "seed")
    base = register_model("tiny-sampled", tiny_model_dir)
    with django_capture_on_commit_callbacks(execute=True):
        services.set_pair_order(project, PairOrder.MARGIN)

    def generate(path, prompts, n, max_new_tokens, temperature, seed):
        return [[f"first answer {i}", f"second answer {i}"] for i in range(len(prompts))]

    with django_capture_on_commit_callbacks(execute=True):
        job = sample_next_round(base, project, n_prompts=1, generate=generate)
    assert job.status == JobStatus.SUCCEEDED and job.n_created == 1
    latest = PriorityJob.objects.filter(project=project).latest("pk")
    assert latest.reason == f"sampling job {job.pk} added round 1"
    assert latest.status == JobStatus.SUCCEEDED  # no DPO model yet: nothing to score, priorities stay 0
