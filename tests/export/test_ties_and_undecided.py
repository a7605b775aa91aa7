"""Ties are not preferences and no weight is no label (issue 10 items 5 and 6), through the
entry points a user touches: the export API and command, the quality page and labels API.

* Pair exports leave ties out by default; included, a tie row carries ``p_chosen`` = 0.5 and
  ``tie`` = true in every format (JSONL, CSV, Parquet, the datasets folder), and the card says so.
* A comparison whose only voters have weight 0 is undecided: never exported as a pair (not even
  as a tie), counted as undecided in the card, the dashboard and the labels API.
* JSONL is one file per split, loadable with ``load_dataset("json", data_files=...)``; a retried
  build has the same content hash.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from django.core.management import call_command
from django.urls import reverse
from rest_framework.test import APIClient

from annotate.models import Membership, Role
from evaluation.export.folder import PAIR_FIELDS, pair_jsonl_files
from evaluation.export.services import build_export, create_export
from evaluation.models import Export, JobStatus
from evaluation.quality.compute import recompute_quality
from tests.factories import make_comparison, make_judgment, make_pool, make_project, make_team

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _quick_bootstrap(settings):
    settings.PREFLOOP_EXPORT_BOOTSTRAP = 50
    settings.PREFLOOP_QUALITY_BOOTSTRAP = 50


class Scene:
    """Six comparisons with prompts of their own: four decided (3 votes agree), one tie (all
    three say tie), and one judged only by ``zero``, an annotator an admin set to weight 0."""

    def __init__(self):
        self.project = make_project("ties and zeros")
        pool = make_pool(self.project, "crowd")
        team = make_team(self.project, annotators=("ann1", "ann2", "ann3", "zero"), pool=pool)
        self.admin, self.researcher = team.admin, team.researcher
        ann, self.zero = team.annotators[:3], team.annotators[3]
        Membership.objects.filter(project=self.project, user=self.zero).update(weight_override=0.0)
        self.decided = []
        for i in range(4):
            c = make_comparison(self.project, f"d{i}", text_a=f"good {i}", text_b=f"bad {i}")
            for k, u in enumerate(ann):
                make_judgment(u, c, "a" if i % 2 == 0 else "b", a_on_left=(i + k) % 2 == 0, pool=pool)
            self.decided.append(c)
        self.tie = make_comparison(self.project, "tie", text_a="same one", text_b="same two")
        for k, u in enumerate(ann):
            make_judgment(u, self.tie, "tie", a_on_left=k % 2 == 0, pool=pool)
        self.nobody = make_comparison(self.project, "zero", text_a="zero a", text_b="zero b")
        make_judgment(self.zero, self.nobody, "a", pool=pool)

    def api(self, user=None) -> APIClient:
        client = APIClient()
        client.force_authenticate(user or self.admin)
        return client


@pytest.fixture
def scene():
    return Scene()


@pytest.fixture
def eager_celery():
    from prefloop.celery import app

    before = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = before


def pairs_of(folder: Path) -> list[dict]:
    return sorted(
        (json.loads(line) for f in pair_jsonl_files(folder) for line in f.read_text().splitlines()),
        key=lambda r: r["comparison_id"],
    )


def api_export(scene, capture, **options) -> Export:
    with capture(execute=True):
        r = scene.api().post(reverse("export-api:export-list", args=[scene.project.pk]), options, format="json")
    assert r.status_code in (201, 202), r.content
    export = Export.objects.get(pk=r.json()["id"])
    assert export.status == JobStatus.SUCCEEDED, export.error
    return export


def test_ties_are_left_out_by_default_and_marked_when_included(
    scene, eager_celery, django_capture_on_commit_callbacks
):
    capture = django_capture_on_commit_callbacks
    default = api_export(scene, capture, formats=["jsonl", "csv", "parquet", "hf"], test_fraction=0)
    rows = pairs_of(Path(default.path))
    assert {r["comparison_id"] for r in rows} == {c.pk for c in scene.decided}
    assert list(rows[0]) == list(PAIR_FIELDS)  # no tie column when no tie can be written
    assert default.stats["removed"]["ties"] == 1

    export = api_export(scene, capture, formats=["jsonl", "csv", "parquet", "hf"], include_ties=True, test_fraction=0)
    folder = Path(export.path)
    rows = pairs_of(folder)
    tie = next(r for r in rows if r["comparison_id"] == scene.tie.pk)
    assert (tie["label"], tie["tie"], tie["p_chosen"], tie["p_rejected"]) == ("tie", True, 0.5, 0.5)
    assert all(r["tie"] is False and r["p_chosen"] > 0.5 for r in rows if r["comparison_id"] != scene.tie.pk)
    assert list(rows[0])[:5] == ["prompt", "chosen", "rejected", "label", "tie"]
    # The same in every format.
    table = sorted(pq.read_table(folder / "preferences.parquet").to_pylist(), key=lambda r: r["comparison_id"])
    assert table == rows
    from datasets import load_from_disk

    hf = sorted(load_from_disk(str(folder / "hf"))["train"], key=lambda r: r["comparison_id"])
    assert hf == rows
    with open(folder / "preferences.csv", newline="", encoding="utf-8") as f:
        by_id = {int(r["comparison_id"]): r for r in csv.DictReader(f)}
    assert (by_id[scene.tie.pk]["tie"], float(by_id[scene.tie.pk]["p_chosen"])) == ("True", 0.5)
    assert by_id[scene.decided[0].pk]["tie"] == "False"
    card = (folder / "README.md").read_text()
    assert "| `tie` | True on a tie or both-bad row" in card and "`tie` = true (1 tie and 0 both-bad rows here)" in card
    assert 'filter(lambda r: not r["tie"])' in card
    meta = json.loads((folder / "metadata.json").read_text())
    assert "tie" in meta["pair_fields"] and "tie" not in json.loads(
        (Path(default.path) / "metadata.json").read_text()
    )["pair_fields"]


def test_a_comparison_with_only_weight_zero_voters_is_undecided_everywhere(scene, client, tmp_path):
    # Export (command): never a pair, not even as a tie; the card counts it.
    out = tmp_path / "export"
    call_command(
        "export_preferences", project=scene.project.name, format="jsonl", out=str(out), method="majority",
        include_ties=True, include_both_bad=True, test_fraction=0, no_progress=True, stdout=io.StringIO(),
    )
    rows = pairs_of(out)
    assert scene.nobody.pk not in {r["comparison_id"] for r in rows}
    assert {r["comparison_id"] for r in rows} == {c.pk for c in scene.decided} | {scene.tie.pk}
    export = Export.objects.latest("pk")
    assert export.stats["removed"]["undecided"] == 1
    assert "| undecided (every judgment by an annotator of weight 0; no label, never a pair) | 1 |" in (
        out / "README.md"
    ).read_text()
    # Dawid–Skene reads a label off any votes; undecided still wins.
    ds = build_export(create_export(scene.project, scene.admin, {"formats": ["jsonl"], "test_fraction": 0},
                                    enqueue=False))
    assert scene.nobody.pk not in {r["comparison_id"] for r in pairs_of(Path(ds.path))}

    # Labels API: no label, no probabilities.
    r = scene.api(scene.researcher).get(
        reverse("quality-api:labels", args=[scene.project.pk]), {"method": "majority"}
    )
    labels = {row["comparison"]: row for row in r.json()["results"]}
    assert labels[scene.nobody.pk]["undecided"] is True
    assert (labels[scene.nobody.pk]["label"], labels[scene.nobody.pk]["p_a"]) == (None, None)
    assert labels[scene.decided[0].pk]["label"] == "a" and labels[scene.decided[0].pk]["undecided"] is False

    # The dashboard counts it as undecided, not as an "a".
    report = recompute_quality(scene.project)
    assert report.data["aggregation"]["label_counts"] == {"a": 2, "b": 2, "tie": 1, "undecided": 1}
    client.force_login(scene.researcher)
    page = client.get(reverse("quality_dashboard", args=[scene.project.pk])).content.decode()
    assert "undecided 1" in page


def test_only_undecided_comparisons_is_a_clear_error(scene):
    from evaluation.export.options import ExportError

    Membership.objects.filter(project=scene.project).update(weight_override=0.0)
    export = create_export(scene.project, scene.admin, {"formats": ["jsonl"]}, enqueue=False)
    with pytest.raises(ExportError, match="undecided: every judgment on them is by an annotator whose weight is 0"):
        build_export(export)


def test_jsonl_is_one_file_per_split_for_load_dataset(scene, tmp_path):
    from datasets import load_dataset

    export = build_export(
        create_export(scene.project, scene.admin, {"formats": ["jsonl", "hf"], "test_fraction": 0.4, "seed": 2},
                      enqueue=False)
    )
    folder = Path(export.path)
    assert [f.name for f in pair_jsonl_files(folder)] == ["preferences-train.jsonl", "preferences-test.jsonl"]
    files = {"train": str(folder / "preferences-train.jsonl"), "test": str(folder / "preferences-test.jsonl")}
    ds = load_dataset("json", data_files=files, cache_dir=str(tmp_path / "cache"))
    assert len(ds["train"]) == export.stats["n_train"] and len(ds["test"]) == export.stats["n_test"] > 0
    assert set(ds["train"]["split"]) == {"train"} and set(ds["test"]["split"]) == {"test"}
    card = (folder / "README.md").read_text()
    assert (
        'load_dataset("json", data_files={"train": "preferences-train.jsonl", "test": "preferences-test.jsonl"})'
        in card
    )


def test_a_retried_build_has_the_same_content_hash(scene):
    export = create_export(
        scene.project, scene.admin, {"formats": ["jsonl", "csv", "parquet", "hf", "judgments"],
                                     "include_ties": True}, enqueue=False
    )
    first = build_export(export)
    digest, files = first.content_hash, {f["path"]: f["sha256"] for f in first.stats["files"]}
    # The worker died after the build (say): the row is failed and retried into a new folder.
    Export.objects.filter(pk=export.pk).update(status=JobStatus.FAILED)
    import shutil

    shutil.rmtree(first.path, ignore_errors=True)
    second = build_export(Export.objects.get(pk=export.pk))
    assert {f["path"]: f["sha256"] for f in second.stats["files"]} == files
    assert second.content_hash == digest
