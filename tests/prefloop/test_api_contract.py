"""What the schema promises is what the API answers (issue 11, item 10), and numbers stay in range.

* ``parent``, ``output_model``, ``compare_to`` (and a run's ``created_by``) are null in answers
  where nothing is set, and the schema says they may be.
* The import endpoint answers a body that is not JSON in its documented ``{"errors": [...]}``.
* A download's media type is one the schema lists for it (``application/zip`` for ``zip``).
* Project numbers that later arithmetic grows (the round, the assignment timeout) are bounded:
  a huge value is a 400 naming the field, never a stored number that overflows later.
"""

from __future__ import annotations

import io
import json

import pytest
import yaml
from django.urls import reverse
from rest_framework.test import APIClient

from annotate.models import MAX_ASSIGNMENT_TIMEOUT_S, MAX_ROUND, Comparison, Project
from tests.factories import make_comparison, make_project, make_team
from training.models import ModelVersion, RunStatus, SamplingJob, TrainingRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def schema(client):
    return yaml.safe_load(client.get("/api/schema/").content)


@pytest.fixture
def site():
    project = make_project("contract")
    team = make_team(project)
    api = APIClient()
    api.force_authenticate(team.admin)
    return project, team, api


@pytest.mark.parametrize(
    "component, field",
    [("ModelVersion", "parent"), ("TrainingRun", "output_model"), ("TrainingRun", "created_by"),
     ("SamplingJob", "compare_to")],
)
def test_fields_that_can_be_null_are_nullable_in_the_schema(schema, component, field):
    prop = schema["components"]["schemas"][component]["properties"][field]
    nullable = prop.get("nullable") or any(p.get("nullable") for p in prop.get("allOf", []) + prop.get("oneOf", []))
    assert nullable, prop


def test_the_answers_carry_those_nulls(site):
    project, team, api = site
    base = ModelVersion.objects.create(name="contract-base", path="/nowhere")
    run = TrainingRun.objects.create(project=project, base_model=base, recipe="dpo", status=RunStatus.QUEUED)
    SamplingJob.objects.create(project=project, model_version=base, run=run, n_prompts=1, round=1)
    models = api.get(reverse("training-api:model-list")).json()["results"]
    assert models[0]["parent"] is None
    body = api.get(reverse("training-api:run-detail", args=[project.pk, run.pk])).json()
    assert body["output_model"] is None and body["created_by"] is None
    job = SamplingJob.objects.get()
    got = api.get(reverse("training-api:sampling-job-detail", args=[project.pk, job.pk])).json()
    assert got["compare_to"] is None


def test_the_import_answers_a_body_that_is_not_json_in_its_error_shape(site):
    project, team, api = site
    url = reverse("annotate-api:comparison-import", args=[project.pk])
    response = api.generic("POST", url, '{"lines": [{"prompt": "x",', content_type="application/json")
    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"errors"} and body["errors"][0]["line"] == 0 and "JSON" in body["errors"][0]["message"]
    assert not Comparison.objects.filter(project=project).exists()


def test_each_download_has_a_documented_media_type(site, schema, settings):
    from evaluation.export.downloads import DOWNLOADS
    from evaluation.export.services import create_export
    from evaluation.export.tasks import build_export_task
    from tests.factories import make_judgment

    project, team, api = site
    settings.PREFLOOP_EXPORT_BOOTSTRAP = 100
    for i in range(4):
        c = make_comparison(project, f"c{i}")
        for user in team.annotators:
            make_judgment(user, c, "a")
    export = create_export(project, team.admin, {"formats": ["jsonl", "csv"]}, enqueue=False)
    assert build_export_task.apply(args=(export.pk,)).get() == "succeeded"
    path = "/api/projects/{project_pk}/exports/{export_pk}/download/{what}/"
    content = schema["paths"][path]["get"]["responses"]["200"]["content"]
    documented = set(content)
    assert {ctype for _, ctype in DOWNLOADS.values()} <= documented
    assert content["application/json"]["schema"]["type"] == "object"  # metadata.json
    assert content["application/zip"]["schema"] == {"type": "string", "format": "binary"}
    for what in ("zip", "csv", "jsonl", "card", "metadata"):
        response = api.get(reverse("export-api:export-download", args=[project.pk, export.pk, what]))
        assert response.status_code == 200
        ctype = response["Content-Type"].split(";")[0]
        assert ctype == DOWNLOADS[what][1] and ctype in documented, (what, ctype)


@pytest.mark.parametrize(
    "field, value",
    [("current_round", MAX_ROUND + 1), ("current_round", 2**31 - 1), ("assignment_timeout_s", MAX_ASSIGNMENT_TIMEOUT_S + 1),
     ("assignment_timeout_s", 2**62), ("overlap", 10**6), ("show_accuracy_after", 2**40)],
)
def test_project_numbers_are_bounded(site, field, value):
    project, team, api = site
    before = Project.objects.filter(pk=project.pk).values().get()
    response = api.patch(reverse("annotate-api:project-detail", args=[project.pk]), {field: value}, format="json")
    assert response.status_code == 400 and field in response.json()
    assert Project.objects.filter(pk=project.pk).values().get() == before


def test_the_settings_page_bounds_the_timeout(site, client):
    project, team, _ = site
    client.force_login(team.admin)
    data = {"name": project.name, "instructions": "", "overlap": 3, "gold_rate": 0.1, "allow_ties": "on",
            "assignment_timeout_s": 2**62, "license": ""}
    response = client.post(reverse("project_settings", args=[project.pk]), data)
    assert response.status_code in (200, 400) and "At most" in response.content.decode()
    project.refresh_from_db()
    assert project.assignment_timeout_s != 2**62


def test_an_import_round_is_bounded(site):
    project, team, api = site
    url = reverse("annotate-api:comparison-import", args=[project.pk])
    line = {"prompt": "p?", "response_a": "a", "response_b": "b"}
    response = api.post(url, {"lines": [line], "round": 2**40}, format="json")
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "round"
    upload = io.BytesIO((json.dumps(line) + "\n").encode())
    upload.name = "x.jsonl"
    response = api.post(url, {"file": upload, "round": 2**40}, format="multipart")
    assert response.status_code == 400
    assert not Comparison.objects.filter(project=project).exists()
