"""A labelled file's preferences imported as the votes of a named source (issue 10 item 3),
and the round trip on real HH-RLHF data: import, a shuffled and A/B-swapped copy as a second
source, export; every exported pair's chosen text is the file's chosen text."""

from __future__ import annotations

import io
import json
import random

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse
from rest_framework.test import APIClient

from annotate.imports import ImportValidationError, import_comparisons
from annotate.models import Comparison, Judgment, Membership, Pool, Project, Role
from evaluation.export.services import build_export, create_export
from tests.factories import add_member, make_pool, make_user

pytestmark = pytest.mark.django_db


def jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8")


TRL = [
    {"prompt": "Which is edible?", "chosen": "Apple", "rejected": "Rock"},
    {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
    {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Lyon"},
]


def exported_pairs(folder) -> list[dict]:
    """Every pair row of an export's JSONL file(s)."""
    from pathlib import Path

    rows = []
    for path in sorted(Path(folder).glob("*.jsonl")):
        if path.name != "judgments.jsonl":
            rows += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return rows


def source_choices(project, username) -> dict[int, str]:
    return dict(
        Judgment.objects.filter(project=project, annotator__username=username).values_list("comparison_id", "choice")
    )


# ------------------------------------------------------------------------------- real data


def test_hh_round_trip_through_the_commands(tmp_path, shared_data):
    """Import HH as comparisons with its preferences as the votes of one source; import a
    shuffled copy with A/B swapped per line as a second source; export. The two sources agree
    on every item and every exported chosen text is the file's chosen text."""
    path = shared_data / "hh_harmless_dev.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = io.StringIO()
    call_command(
        "import_comparisons", str(path), project="hh", create_project=True, allow_empty_responses=True,
        votes_source="hh-rlhf", stdout=out, verbosity=0,
    )
    assert f"Votes of source 'hh-rlhf' (annotator 'source:hh-rlhf', pool 'hh-rlhf'): {len(rows)} created" in out.getvalue()

    rng = random.Random(10)
    copy = []
    for r in rows:
        swap = rng.random() < 0.5
        a, b = (r["rejected"], r["chosen"]) if swap else (r["chosen"], r["rejected"])
        copy.append({"prompt": r["prompt"], "response_a": a, "response_b": b, "label": "b" if swap else "a",
                     "annotator_id": "copy"})
    rng.shuffle(copy)
    copy_path = tmp_path / "copy.jsonl"
    copy_path.write_bytes(jsonl(copy))
    out = io.StringIO()
    call_command("import_judgments", str(copy_path), project="hh", source="copy", stdout=out, verbosity=0)
    assert "1150 judgments created" in out.getvalue()

    project = Project.objects.get(name="hh")
    ours, theirs = source_choices(project, "source:hh-rlhf"), source_choices(project, "copy")
    assert len(ours) == len(theirs) == len(rows) == Comparison.objects.filter(project=project).count()
    assert ours == theirs  # 100% agreement between the two sources

    out = io.StringIO()
    call_command("export_preferences", project="hh", format="jsonl", out=str(tmp_path / "export"),
                 no_progress=True, stdout=out)
    exported = exported_pairs(tmp_path / "export")
    chosen_of = {(r["prompt"], frozenset((r["chosen"], r["rejected"]))): r["chosen"] for r in rows}
    assert len(exported) == len(rows)
    for row in exported:
        assert row["chosen"] == chosen_of[(row["prompt"], frozenset((row["chosen"], row["rejected"])))]
        assert row["p_chosen"] > 0.5 and row["weight"] > 0


# ------------------------------------------------------------------------------- the source


def test_source_is_a_pseudo_annotator_in_its_own_pool():
    project = Project.objects.create(name="src")
    result = import_comparisons(project, io.BytesIO(jsonl(TRL)), filename="t.jsonl", votes_source="ultra")
    assert (result.created, result.votes_source, result.votes_created, result.votes_reoriented) == (3, "ultra", 3, 0)
    m = Membership.objects.select_related("user", "pool").get(project=project)
    assert (m.user.username, m.user.is_active, m.role, m.pool.name) == ("source:ultra", False, Role.ANNOTATOR, "ultra")
    for j in Judgment.objects.filter(project=project).select_related("comparison__response_a", "comparison__response_b"):
        chosen = j.comparison.response_a if j.choice == "a" else j.comparison.response_b
        assert chosen.text in {"Apple", "4", "Paris"} and j.source == "ultra" and j.a_on_left is None
    # Importing the file again adds nothing; a second source adds its own votes.
    again = import_comparisons(project, io.BytesIO(jsonl(TRL)), filename="t.jsonl", votes_source="ultra")
    assert (again.created, again.votes_created) == (0, 0)
    other = import_comparisons(project, io.BytesIO(jsonl(TRL[:2])), filename="t.jsonl", votes_source="other")
    assert other.votes_created == 2 and Judgment.objects.filter(project=project).count() == 5


def test_source_votes_follow_a_comparison_stored_the_other_way_round():
    project = Project.objects.create(name="pre")
    import_comparisons(project, io.BytesIO(jsonl([{"prompt": p["prompt"], "response_a": p["rejected"],
                                                   "response_b": p["chosen"]} for p in TRL])), filename="ab.jsonl")
    result = import_comparisons(project, io.BytesIO(jsonl(TRL)), filename="t.jsonl", votes_source="s")
    assert result.votes_created == 3
    assert set(Judgment.objects.filter(project=project).values_list("choice", flat=True)) == {"b"}
    # The lines whose seeded coin put chosen on side a listed the pair against the stored order.
    fresh = Project.objects.create(name="fresh")
    import_comparisons(fresh, io.BytesIO(jsonl(TRL)), filename="t.jsonl")
    coin_a = Comparison.objects.filter(project=fresh, source_preference="a").count()
    assert result.votes_reoriented == coin_a


@pytest.mark.parametrize(
    "lines, message",
    [
        ([TRL[0], {"prompt": "p", "response_a": "x", "response_b": "y"}], "line 2, field 'chosen': is missing: votes of source"),
        ([TRL[0], {**TRL[0], "chosen": "Rock", "rejected": "Apple"}], "line 2, field 'chosen': contradicts line 1"),
    ],
)
def test_bad_source_lines_name_line_and_field_and_change_nothing(lines, message):
    project = Project.objects.create(name="bad")
    with pytest.raises(ImportValidationError) as info:
        import_comparisons(project, io.BytesIO(jsonl(lines)), filename="t.jsonl", votes_source="s")
    assert any(str(e).startswith(message) for e in info.value.errors), info.value.errors
    assert not Comparison.objects.exists() and not Judgment.objects.exists() and not Pool.objects.exists()


def test_a_source_never_joins_a_pool_of_people():
    project = Project.objects.create(name="people")
    crowd = make_pool(project, "crowd")
    add_member(project, make_user("alice"), pool=crowd)
    with pytest.raises(ImportValidationError) as info:
        import_comparisons(project, io.BytesIO(jsonl(TRL)), filename="t.jsonl", votes_source="crowd")
    assert "votes_source: the pool 'crowd' already has other annotators" in str(info.value)
    assert not Comparison.objects.exists()


def test_source_through_the_api_and_the_page(client):
    project = Project.objects.create(name="web")
    admin = make_user("boss")
    add_member(project, admin, Role.ADMIN)
    api = APIClient()
    api.force_authenticate(admin)
    url = reverse("annotate-api:comparison-import", args=[project.pk])
    r = api.post(url, {"lines": TRL[:2], "votes_source": "api-src"}, format="json")
    assert r.status_code == 201, r.content
    assert (r.json()["votes_source"], r.json()["votes_created"]) == ("api-src", 2)
    r = api.post(url, {"lines": [{"prompt": "p", "response_a": "x", "response_b": "y"}], "votes_source": "s"},
                 format="json")
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "chosen"

    client.force_login(admin)
    upload = io.BytesIO(jsonl(TRL))
    upload.name = "trl.jsonl"
    r = client.post(reverse("project_import", args=[project.pk]), {"file": upload, "votes_source": "page-src"})
    text = r.content.decode()
    assert r.status_code == 200 and "Votes of page-src" in text
    assert source_choices(project, "source:page-src") and len(source_choices(project, "source:page-src")) == 3


def test_excluding_a_source_leaves_it_out_of_exports(tmp_path):
    """The switch: exclude the source's annotator (quality page / API) and exports leave its
    votes out, like any excluded annotator."""
    project = Project.objects.create(name="switch")
    admin = make_user("boss")
    add_member(project, admin, Role.ADMIN)
    import_comparisons(project, io.BytesIO(jsonl(TRL)), filename="t.jsonl", votes_source="a-src")
    import_comparisons(project, io.BytesIO(jsonl(TRL[:1])), filename="t.jsonl", votes_source="b-src")
    api = APIClient()
    api.force_authenticate(admin)
    src = Membership.objects.get(project=project, user__username="source:a-src").user_id
    r = api.patch(reverse("quality-api:annotator-detail", args=[project.pk, src]), {"excluded": True}, format="json")
    assert r.status_code == 200, r.content
    export = build_export(create_export(project, admin, {"formats": ["jsonl"], "test_fraction": 0}, enqueue=False))
    assert export.stats["n_judgments"] == 1 and export.stats["n_pairs"] == 1


def test_a_rejected_file_leaves_no_created_project(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(jsonl([TRL[0], {"prompt": "p", "response_a": "x"}]))
    for command in ("import_comparisons", "import_judgments"):
        with pytest.raises(CommandError):
            call_command(command, str(path), project="brand-new", create_project=True, stderr=io.StringIO())
        assert not Project.objects.filter(name="brand-new").exists()
