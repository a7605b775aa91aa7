"""Pairings when a round is sampled: new vs. previous model (head to head), two samples of the new
model, or new vs. a fixed reference model, from the service, the run page's form and the API;
empty and identical generations dropped and counted; and the annotator never sees which model
wrote a response or which round it belongs to (page, HTMX responses, API).

The generator is a stand-in that writes texts naming the model folder it was asked for, so that
each side's origin can be read off the stored comparisons; nothing here loads a model.
"""

from __future__ import annotations

import json

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from annotate.models import Comparison, Prompt, content_hash
from training.models import ModelVersion, Pairing, RunStatus, SamplingJob, TrainingRun
from training.services.errors import TrainingError
from training.services.sampling import queue_sample_round, run_sampling_job
from tests.factories import make_project, make_team

pytestmark = pytest.mark.django_db

SECRET = "zeta-secret-model"


def fake_generate(path, prompts, n, max_new_tokens, temperature, seed):
    """Distinct answers per model folder and sample; prompts containing "empty" or "same" get
    an empty answer or the same answer from every model and sample."""
    out = []
    for p in prompts:
        if "empty" in p:
            out.append(["  "] * n)
        elif "same" in p:
            out.append(["the same words"] * n)
        else:
            out.append([f"{path} says {k} to {p}" for k in range(n)])
    return out


def _prompt(project, text):
    return Prompt.objects.create(project=project, text=text, content_hash=content_hash(text))


@pytest.fixture
def scene(tmp_path):
    project = make_project("Pairings")
    team = make_team(project, annotators=("ann",))
    for i in range(6):
        _prompt(project, f"Prompt {i}?")
    ref = ModelVersion.objects.create(name=f"{SECRET}-reference", path=str(tmp_path / "ref"))
    old = ModelVersion.objects.create(name=f"{SECRET}-round1", path=str(tmp_path / "old"), parent=ref)
    new = ModelVersion.objects.create(name=f"{SECRET}-round2", path=str(tmp_path / "new"), parent=old)
    run = TrainingRun.objects.create(project=project, base_model=old, output_model=new, status=RunStatus.SUCCEEDED)
    return {"project": project, "team": team, "ref": ref, "old": old, "new": new, "run": run}


def _sides(project, round_):
    rows = Comparison.objects.filter(project=project, round=round_).select_related("response_a", "response_b")
    return [(c.response_a.model_name, c.response_b.model_name, c.response_a.text, c.response_b.text) for c in rows]


def _run(job):
    created = run_sampling_job(job, generate=fake_generate)
    job.refresh_from_db()
    return created


@pytest.mark.parametrize(
    "pairing, other",
    [(Pairing.HEAD_TO_HEAD, "old"), (Pairing.TWO_SAMPLES, "new"), (Pairing.REFERENCE, "ref")],
)
def test_each_pairing_puts_the_chosen_models_side_by_side(scene, pairing, other):
    project, new = scene["project"], scene["new"]
    job = queue_sample_round(
        project, new, n_prompts=6, pairing=pairing, compare_to=scene["ref"], send=False
    )
    assert job.pairing == pairing and job.round == 1
    assert _run(job) == 6
    expected_b = scene[other]
    for model_a, model_b, text_a, text_b in _sides(project, 1):
        assert (model_a, model_b) == (new.name, expected_b.name)
        assert text_a.startswith(new.path)
        assert text_b.startswith(expected_b.path)
        if pairing == Pairing.TWO_SAMPLES:
            assert text_a != text_b  # two different samples of the same model
    meta = Comparison.objects.filter(project=project, round=1).first().metadata
    assert meta["pairing"] == pairing and meta["sampling_job"] == job.pk


def test_pairings_that_cannot_be_made_are_refused_before_anything_is_queued(scene):
    project = scene["project"]
    with pytest.raises(TrainingError, match="no previous model"):
        queue_sample_round(project, scene["ref"], pairing=Pairing.HEAD_TO_HEAD, send=False)
    with pytest.raises(TrainingError, match="reference model"):
        queue_sample_round(project, scene["new"], pairing=Pairing.REFERENCE, compare_to=None, send=False)
    with pytest.raises(TrainingError, match="unknown pairing"):
        queue_sample_round(project, scene["new"], pairing="best_of_both", send=False)
    assert not SamplingJob.objects.exists()


def test_empty_identical_and_existing_pairs_are_dropped_and_counted(scene):
    project = scene["project"]
    _prompt(project, "an empty one")
    _prompt(project, "the same one")
    first = queue_sample_round(project, scene["new"], n_prompts=8, pairing=Pairing.HEAD_TO_HEAD, send=False)
    second = queue_sample_round(project, scene["new"], n_prompts=8, pairing=Pairing.HEAD_TO_HEAD, send=False)
    assert first.round == second.round == 1  # both queued before either ran
    assert _run(first) == 6
    assert (first.n_empty, first.n_identical, first.n_existing) == (1, 1, 0)
    assert _run(second) == 0
    assert (second.n_empty, second.n_identical, second.n_existing) == (1, 1, 6)
    assert Comparison.objects.filter(project=project, round=1).count() == 6


def test_every_pair_dropped_fails_the_job_with_the_counts(scene):
    project = make_project("All empty")
    _prompt(project, "empty")
    job = queue_sample_round(project, scene["new"], n_prompts=1, pairing=Pairing.TWO_SAMPLES, send=False)
    with pytest.raises(TrainingError, match="1 with an empty response, 0 with two identical"):
        run_sampling_job(job, generate=fake_generate)
    job.refresh_from_db()
    assert job.n_empty == 1 and not Comparison.objects.filter(project=project).exists()


def test_the_run_page_and_the_api_choose_the_pairing(scene, client):
    project, run, ref = scene["project"], scene["run"], scene["ref"]
    client.force_login(scene["team"].admin)
    r = client.post(
        reverse("training_run_sample_round", args=[project.pk, run.pk]),
        {"n_prompts": 3, "against": "model", "compare_model": ref.pk, "max_new_tokens": 8, "temperature": 1.0},
    )
    assert r.status_code == 302
    job = SamplingJob.objects.get()
    assert (job.pairing, job.compare_to) == (Pairing.REFERENCE, ref)
    page = client.get(reverse("training_run", args=[project.pk, run.pk])).content.decode()
    assert "head to head" in page and "fixed reference model" in page

    api = APIClient()
    api.force_authenticate(scene["team"].admin)
    base = f"/api/projects/{project.pk}/runs/{run.pk}/sample-round/"
    r = api.post(base, {"n_prompts": 3, "against": "self"}, format="json")
    assert r.status_code == 202, r.content
    assert r.json()["pairing"] == "two_samples" and r.json()["compare_to"] is None
    r = api.post(base, {"n_prompts": 3, "against": "model", "compare_model": ref.name}, format="json")
    assert r.status_code == 202 and r.json()["pairing"] == "reference" and r.json()["compare_to"] == ref.name
    r = api.post(base, {"n_prompts": 3, "against": "model"}, format="json")
    assert r.status_code == 400 and "compare_model" in r.json()
    r = api.post(base, {"n_prompts": 3, "against": "model", "compare_model": "no-such-model"}, format="json")
    assert r.status_code == 400 and "compare_model" in r.json()
    r = api.post(base, {"n_prompts": 3}, format="json")
    assert r.json()["pairing"] == "head_to_head" and r.json()["compare_to"] == scene["old"].name
    assert SamplingJob.objects.count() == 4


def _walk(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)
    else:
        yield value


def test_the_annotator_never_sees_model_names_or_rounds(scene, client):
    project, new = scene["project"], scene["new"]
    project.current_round = 6
    project.save()
    job = queue_sample_round(project, new, n_prompts=6, pairing=Pairing.HEAD_TO_HEAD, send=False)
    assert _run(job) == 6 and job.round == 7
    ann = scene["team"].annotators[0]
    secret_words = (SECRET, "head_to_head", "sampling_job", "round 7", "Round 7", "round-7", "round=7")

    def clean(text: str):
        for word in secret_words:
            assert word not in text, word

    client.force_login(ann)
    url = reverse("annotate", args=[project.pk])
    page = client.get(url).content.decode()
    assert "Prompt" in page  # an item is shown
    clean(page)
    clean(client.get(url, HTTP_HX_REQUEST="true").content.decode())
    assignment = ann.assignments.get(status="active")
    posted = client.post(url, {"assignment": assignment.pk, "choice": "left", "strength": 2},
                         HTTP_HX_REQUEST="true")
    assert posted.status_code == 200 and "Prompt" in posted.content.decode()
    clean(posted.content.decode())

    api = APIClient()
    api.force_authenticate(ann)
    item = api.get(f"/api/projects/{project.pk}/next/")
    assert item.status_code == 200
    submitted = api.post(f"/api/assignments/{item.json()['assignment_id']}/judgment/",
                         {"choice": "right", "strength": 1}, format="json")
    assert submitted.status_code == 201
    detail = api.get(f"/api/assignments/{submitted.json()['next']['assignment_id']}/")
    mine = api.get(f"/api/projects/{project.pk}/my-judgments/")
    for response in (item, submitted, detail, mine):
        body = response.json()
        clean(json.dumps(body))
        keys = {k for k in _walk(body) if isinstance(k, str)}
        assert not {"round", "model_name", "model_a", "model_b", "metadata"} & keys
