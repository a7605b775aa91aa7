"""Export pages and REST API: who may list, create, poll and download; the HTMX progress
partial; errors as 400s; the endpoints in the OpenAPI schema."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from annotate.models import Judgment, Project, Role
from evaluation.export.services import create_export
from evaluation.models import Export, JobStatus
from tests.factories import add_member, make_comparison, make_pool, make_project, make_team

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _quick_bootstrap(settings):
    settings.PREFLOOP_EXPORT_BOOTSTRAP = 100


@pytest.fixture
def eager_celery():
    """Tasks run in-process when sent (no broker files written by the tests)."""
    from prefloop.celery import app

    before = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = before


class Scene:
    def __init__(self):
        self.project = make_project("Web export project", license="mit")
        self.pool = make_pool(self.project, "crowd")
        team = make_team(
            self.project,
            admin="web-admin",
            researcher="web-researcher",
            annotators=tuple(f"web-annotator-{i}" for i in range(3)),
            outsider="web-outsider",
            pool=self.pool,
        )
        self.admin, self.researcher, self.outsider = team.admin, team.researcher, team.outsider
        self.annotators = team.annotators
        judgments = []
        for i in range(12):
            c = make_comparison(
                self.project,
                f"wp{i}",
                prompt=f"web prompt {i}",
                text_a=f"web answer a {i}",
                text_b=f"web answer b {i}",
                model_a="ma",
                model_b="mb",
                n_judgments=3,
                slots_taken=3,
            )
            for k, u in enumerate(self.annotators):
                judgments.append(
                    Judgment(
                        project=self.project,
                        comparison=c,
                        annotator=u,
                        pool=self.pool,
                        a_on_left=(i + k) % 2 == 0,
                        choice="a" if i % 2 else "b",
                        seconds=5.0,
                    )
                )
        Judgment.objects.bulk_create(judgments)

    def client(self, user=None) -> APIClient:
        client = APIClient()
        if user is not None:
            client.force_authenticate(user)
        return client

    def web(self, client, user=None):
        if user is not None:
            client.force_login(user)
        return client


@pytest.fixture
def scene():
    return Scene()


def _built(scene, user=None, **options) -> Export:
    from evaluation.export.tasks import build_export_task

    export = create_export(scene.project, user, options or {"formats": ["jsonl", "hf"]}, enqueue=False)
    assert build_export_task.apply(args=(export.pk,)).get() == "succeeded"
    export.refresh_from_db()
    return export


# --------------------------------------------------------------------------- REST API


def test_api_researcher_creates_polls_and_downloads(scene, eager_celery, django_capture_on_commit_callbacks):
    api = scene.client(scene.researcher)
    url = reverse("export-api:export-list", args=[scene.project.pk])
    with django_capture_on_commit_callbacks(execute=True):
        r = api.post(
            url,
            {
                "name": "v1",
                "formats": ["jsonl", "parquet", "judgments"],
                "method": "majority",
                "min_confidence": 0.5,
                "test_fraction": 0.25,
                "seed": 4,
            },
            format="json",
        )
    assert r.status_code == 201, r.content
    body = r.json()
    assert r["Location"] == body["url"] and body["name"] == "v1" and body["created_by"] == "web-researcher"
    export = Export.objects.get(pk=body["id"])
    assert export.params["method"] == "majority" and export.params["formats"] == [
        "jsonl",
        "parquet",
        "judgments",
    ]

    polled = api.get(body["url"]).json()  # the eager task has built it
    assert polled["status"] == "succeeded" and polled["progress"] == 1.0 and polled["n_rows"] == 12
    assert polled["content_hash"] == export.content_hash and len(polled["content_hash"]) == 64
    assert polled["stats"]["n_pairs"] == 12 and polled["stats"]["n_annotators"] == 3
    assert set(polled["downloads"]) == {
        "jsonl", "jsonl-test", "parquet", "judgments", "card", "metadata", "zip", "tar.gz"
    }

    rows = []
    for what, split in (("jsonl", "train"), ("jsonl-test", "test")):  # one file per split
        r = api.get(polled["downloads"][what])
        assert r.status_code == 200 and r["Content-Disposition"].startswith("attachment")
        part = [json.loads(line) for line in b"".join(r.streaming_content).decode().splitlines()]
        assert part and {row["split"] for row in part} == {split}
        rows += part
    assert len(rows) == 12 and {"prompt", "chosen", "rejected", "weight", "p_chosen", "split"} <= set(rows[0])
    r = api.get(polled["downloads"]["zip"])
    assert r.status_code == 200
    with zipfile.ZipFile(io.BytesIO(b"".join(r.streaming_content))) as z:
        meta = json.loads(z.read(f"prefloop-export-{export.pk}/metadata.json"))
    assert meta["content_hash"] == export.content_hash
    assert (
        api.get(reverse("export-api:export-download", args=[scene.project.pk, export.pk, "hf"])).status_code
        == 404
    )

    listed = api.get(url).json()
    assert (
        listed["count"] == 1
        and listed["results"][0]["id"] == export.pk
        and "stats" not in listed["results"][0]
    )


def test_api_bad_options_and_empty_filters_are_400(scene):
    api = scene.client(scene.researcher)
    url = reverse("export-api:export-list", args=[scene.project.pk])
    r = api.post(url, {"rounds": [5]}, format="json")
    assert r.status_code == 400 and "no comparisons match: rounds=[5]" in r.json()["rounds"][0]
    r = api.post(url, {"pools": ["nowhere"]}, format="json")
    assert r.status_code == 400 and "no pool 'nowhere'" in r.json()["pools"][0]
    r = api.post(url, {"method": "coin"}, format="json")
    assert r.status_code == 400 and "method" in r.json()
    r = api.post(url, {"include_gold": True}, format="json")
    assert r.status_code == 400 and "only project admins" in r.json()["include_gold"][0]
    assert Export.objects.count() == 0


def test_api_a_build_that_fails_reports_failed_with_the_reason(scene):
    from evaluation.export.tasks import build_export_task

    api = scene.client(scene.researcher)
    r = api.post(
        reverse("export-api:export-list", args=[scene.project.pk]), {"method": "majority"}, format="json"
    )
    assert r.status_code == 201  # queued (no eager worker here); the data goes away before the build runs
    Judgment.objects.filter(project=scene.project).delete()
    assert build_export_task.apply(args=(r.json()["id"],)).get() == "failed"
    body = api.get(r.json()["url"]).json()
    assert body["status"] == "failed" and body["error"].startswith("no comparisons match")
    assert body["downloads"] == {} and body["content_hash"] == ""


def test_api_permissions(scene):
    export = _built(scene)
    p = scene.project.pk
    urls = [
        ("get", reverse("export-api:export-list", args=[p])),
        ("post", reverse("export-api:export-list", args=[p])),
        ("get", reverse("export-api:export-detail", args=[p, export.pk])),
        ("get", reverse("export-api:export-download", args=[p, export.pk, "jsonl"])),
        ("get", reverse("export-api:export-download", args=[p, export.pk, "zip"])),
    ]
    for method, url in urls:
        assert getattr(scene.client(), method)(url, {}, format="json").status_code == 401, url  # anonymous
        for user in (*scene.annotators, scene.outsider):
            assert getattr(scene.client(user), method)(url, {}, format="json").status_code == 403, (user, url)
    for user in (scene.researcher, scene.admin):
        api = scene.client(user)
        assert api.get(urls[2][1]).status_code == 200 and api.get(urls[3][1]).status_code == 200
    # Exports are immutable: no update or delete.
    api = scene.client(scene.admin)
    for method in ("put", "patch", "delete"):
        assert getattr(api, method)(urls[2][1], {"name": "x"}, format="json").status_code == 405
    # Researchers cannot change project data (the annotate API enforces it; exports add no such route).
    researcher = scene.client(scene.researcher)
    assert researcher.patch(f"/api/projects/{p}/", {"name": "renamed"}, format="json").status_code == 403
    assert Project.objects.get(pk=p).name == "Web export project"
    # An export with gold answers: admins only.
    gold = _built(scene, scene.admin, formats=["jsonl"], include_gold=True)
    url = reverse("export-api:export-download", args=[p, gold.pk, "jsonl"])
    assert scene.client(scene.researcher).get(url).status_code == 403
    assert scene.client(scene.admin).get(url).status_code == 200
    assert (
        scene.client(scene.researcher)
        .get(reverse("export-api:export-detail", args=[p, gold.pk]))
        .json()["downloads"]
    )  # listed, but the download itself is refused
    # Another project's export is not reachable through this project.
    other = make_project("Other")
    add_member(other, scene.researcher, Role.RESEARCHER)
    assert (
        scene.client(scene.researcher)
        .get(reverse("export-api:export-detail", args=[other.pk, export.pk]))
        .status_code
        == 404
    )


def test_openapi_schema_has_the_export_endpoints():
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    paths = schema["paths"]
    lst = paths["/api/projects/{project_pk}/exports/"]
    assert {"get", "post"} <= set(lst)
    assert "get" in paths["/api/projects/{project_pk}/exports/{export_pk}/"]
    download = paths["/api/projects/{project_pk}/exports/{export_pk}/download/{what}/"]["get"]
    assert "200" in download["responses"] and download["tags"] == ["exports"]
    body = lst["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    props = schema["components"]["schemas"][body]["properties"]
    assert {
        "rounds",
        "pools",
        "method",
        "min_confidence",
        "include_ties",
        "include_judgments",
        "test_fraction",
        "seed",
        "stable_pseudonyms",
        "include_rationales",
        "formats",
    } <= set(props)


# --------------------------------------------------------------------------- pages


def test_pages_researcher_creates_and_follows_progress(
    scene, client, eager_celery, django_capture_on_commit_callbacks
):
    scene.web(client, scene.researcher)
    list_url = reverse("export_list", args=[scene.project.pk])
    r = client.get(list_url)
    assert r.status_code == 200 and b"New export" in r.content and b"No exports yet" in r.content
    assert b"include_gold" not in r.content  # an admin-only option
    with django_capture_on_commit_callbacks(execute=True):
        r = client.post(
            list_url,
            {
                "name": "from the page",
                "method": "dawid_skene",
                "min_confidence": "0",
                "test_fraction": "0.25",
                "seed": "1",
                "formats": ["jsonl", "csv"],
                "include_judgments": "on",
                "style": "auto",
            },
        )
    export = Export.objects.get()
    assert r.status_code == 302 and r["Location"] == reverse(
        "export_detail", args=[scene.project.pk, export.pk]
    )
    assert export.status == JobStatus.SUCCEEDED and export.params["formats"] == ["jsonl", "csv", "judgments"]
    r = client.get(r["Location"])
    assert r.status_code == 200
    page = r.content.decode()
    assert "Succeeded" in page and export.content_hash in page and "Dataset card" in page
    assert reverse("export_download", args=[scene.project.pk, export.pk, "zip"]) in page
    assert 'hx-trigger="every 1s"' not in page  # finished: no more polling
    r = client.get(reverse("export_download", args=[scene.project.pk, export.pk, "csv"]))
    assert r.status_code == 200 and b"prompt,chosen,rejected" in b"".join(r.streaming_content)
    assert (
        client.get(reverse("export_download", args=[scene.project.pk, export.pk, "parquet"])).status_code
        == 404
    )
    r = client.get(list_url)
    assert b"from the page" in r.content


def test_progress_partial_polls_while_running(scene, client):
    scene.web(client, scene.researcher)
    export = create_export(scene.project, scene.researcher, {}, enqueue=False)
    Export.objects.filter(pk=export.pk).update(status=JobStatus.RUNNING, progress=0.42, step="pairs 420/1000")
    url = reverse("export_status", args=[scene.project.pk, export.pk])
    r = client.get(url, HTTP_HX_REQUEST="true")
    page = r.content.decode()
    assert (
        r.status_code == 200
        and 'hx-trigger="every 1s"' in page
        and "42%" in page
        and "pairs 420/1000" in page
    )
    assert 'aria-valuenow="42"' in page and "<html" not in page
    Export.objects.filter(pk=export.pk).update(status=JobStatus.FAILED, error="no comparisons match: because")
    page = client.get(url, HTTP_HX_REQUEST="true").content.decode()
    assert "every 1s" not in page and "no comparisons match: because" in page and "Try again" in page
    r = client.post(reverse("export_retry", args=[scene.project.pk, export.pk]))
    assert r.status_code == 302 and Export.objects.get(pk=export.pk).status == JobStatus.QUEUED


def test_page_form_errors_name_the_filter(scene, client):
    scene.web(client, scene.admin)
    r = client.post(
        reverse("export_list", args=[scene.project.pk]),
        {
            "method": "majority",
            "min_confidence": "0",
            "test_fraction": "0.1",
            "seed": "0",
            "formats": ["jsonl"],
            "style": "auto",
            "include_rationales": "on",
        },
    )
    assert r.status_code == 400 and b"add the judgments format" in r.content
    r = client.post(
        reverse("export_list", args=[scene.project.pk]),
        {
            "method": "majority",
            "min_confidence": "3",
            "test_fraction": "0.1",
            "seed": "0",
            "formats": ["jsonl"],
            "style": "auto",
        },
    )
    assert r.status_code == 400 and Export.objects.count() == 0


def test_page_permissions(scene, client):
    export = _built(scene)
    p = scene.project.pk
    urls = [
        reverse("export_list", args=[p]),
        reverse("export_detail", args=[p, export.pk]),
        reverse("export_status", args=[p, export.pk]),
        reverse("export_download", args=[p, export.pk, "jsonl"]),
        reverse("export_download", args=[p, export.pk, "zip"]),
    ]
    for url in urls:
        r = client.get(url)
        assert r.status_code == 302 and r["Location"].startswith(reverse("login")), url
    for user in (scene.annotators[0], scene.outsider):
        client.force_login(user)
        for url in urls:
            assert client.get(url).status_code == 403, (user, url)
        assert client.post(urls[0], {"method": "majority"}).status_code == 403
    client.force_login(scene.researcher)
    for url in urls:
        assert client.get(url).status_code == 200, url
    assert Export.objects.count() == 1
