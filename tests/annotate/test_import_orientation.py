"""Votes are stored in the order of their comparison, whatever order a line lists the two
responses in (issue 10 item 1): the label of a vote listed B/A is mapped to the stored order,
and every entry point says how many votes were re-oriented."""

from __future__ import annotations

import io
import itertools
import json

import pytest
from django.core.management import call_command
from django.urls import reverse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from annotate.imports import import_comparisons, import_judgments
from annotate.models import Judgment, Project, Role
from tests.factories import make_user, add_member

pytestmark = pytest.mark.django_db

SWAP = {"a": "b", "b": "a"}


def jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8")


def vote_line(prompt, better, worse, annotator, *, label="a", swapped=False, display=None):
    """A vote preferring ``better`` (or a tie / both-bad when ``label`` says so), listing the
    two responses in the given order or swapped."""
    a, b = (worse, better) if swapped else (better, worse)
    if label in ("a", "b"):
        label = "b" if swapped else "a"
    row = {"prompt": prompt, "response_a": a, "response_b": b, "annotator_id": annotator, "label": label}
    if display is not None:
        row["display"] = display
    return row


def stored_preferences(project) -> dict:
    """``(prompt, {text, text}, annotator) -> the preferred text, or "tie" / "both_bad"``."""
    out = {}
    for j in Judgment.objects.filter(project=project).select_related(
        "comparison__prompt", "comparison__response_a", "comparison__response_b", "annotator"
    ):
        c = j.comparison
        pref = {"a": c.response_a.text, "b": c.response_b.text}.get(j.choice, j.choice)
        out[(c.prompt.text, frozenset((c.response_a.text, c.response_b.text)), j.annotator.username)] = pref
    return out


def test_apple_over_rock_is_one_agreement_not_a_disagreement():
    project = Project.objects.create(name="fruit")
    rows = [
        vote_line("Which is edible?", "Apple", "Rock", "ann1"),
        vote_line("Which is edible?", "Apple", "Rock", "ann2", swapped=True),
    ]
    result = import_judgments(project, io.BytesIO(jsonl(rows)), filename="v.jsonl")
    assert result.reoriented == 1
    choices = sorted(Judgment.objects.filter(project=project).values_list("choice", flat=True))
    assert choices == ["a", "a"]  # both prefer the stored response_a, "Apple"
    assert set(stored_preferences(project).values()) == {"Apple"}


def test_existing_comparison_sets_the_order_and_display_follows():
    project = Project.objects.create(name="existing")
    import_comparisons(
        project, io.BytesIO(jsonl([{"prompt": "p", "response_a": "Rock", "response_b": "Apple"}])), filename="c.jsonl"
    )
    rows = [
        vote_line("p", "Apple", "Rock", "ann1", display="a_left"),  # lists Apple first: swapped vs stored
        vote_line("p", "Apple", "Rock", "ann2", label="tie", display="b_left"),
        vote_line("p", "Apple", "Rock", "ann3", swapped=True),  # lists Rock first: the stored order
    ]
    result = import_judgments(project, io.BytesIO(jsonl(rows)), filename="v.jsonl")
    assert result.reoriented == 2
    j = {x.annotator.username: x for x in Judgment.objects.filter(project=project).select_related("annotator")}
    assert (j["ann1"].choice, j["ann1"].a_on_left) == ("b", False)  # Apple (stored b) was shown left
    assert (j["ann2"].choice, j["ann2"].a_on_left) == ("tie", True)  # a tie stays a tie
    assert (j["ann3"].choice, j["ann3"].a_on_left) == ("b", None)
    assert set(stored_preferences(project).values()) == {"Apple", "tie"}


def test_a_duplicate_in_the_other_order_is_still_a_duplicate():
    project = Project.objects.create(name="dup")
    rows = [vote_line("p", "x", "y", "ann1"), vote_line("p", "x", "y", "ann1", swapped=True)]
    result = import_judgments(project, io.BytesIO(jsonl(rows)), filename="v.jsonl", on_duplicate="last")
    assert (result.judgments_created, result.duplicates) == (1, 1)
    assert set(stored_preferences(project).values()) == {"x"}


# ------------------------------------------------------------------------------- the property

ITEMS = [("p1", "Apple", "Rock"), ("p1", "Apple", "Pear"), ("p2", "yes", "no"), ("p3", "same", "same!")]
ANNOTATORS = ["ann1", "ann2", "ann3"]
LABELS = ["a", "a", "tie", "both_bad"]  # "a": the first text of the item is preferred
_projects = itertools.count()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.data(),
    preimport=st.sampled_from([None, False, True]),
)
def test_line_order_and_ab_swaps_never_change_a_stored_preference(data, preimport):
    """For any shuffling of the lines and any A/B swap per line (and comparisons imported
    before in either order), the stored preference of every (prompt, text, text, annotator)
    is the one the line meant."""
    votes = [
        (item, ann, data.draw(st.sampled_from(LABELS), label=f"label {item} {ann}"))
        for item in range(len(ITEMS))
        for ann in ANNOTATORS
    ]
    order = data.draw(st.permutations(range(len(votes))), label="line order")
    swaps = data.draw(st.lists(st.booleans(), min_size=len(votes), max_size=len(votes)), label="swaps")
    project = Project.objects.create(name=f"prop-{next(_projects)}")
    if preimport is not None:
        pre = [
            {"prompt": p, "response_a": (y if preimport else x), "response_b": (x if preimport else y)}
            for p, x, y in ITEMS
        ]
        import_comparisons(project, io.BytesIO(jsonl(pre)), filename="pre.jsonl")
    rows = []
    for k in order:
        item, ann, label = votes[k]
        p, better, worse = ITEMS[item]
        rows.append(vote_line(p, better, worse, ann, label=label, swapped=swaps[k]))
    import_judgments(project, io.BytesIO(jsonl(rows)), filename="v.jsonl")
    expected = {
        (ITEMS[item][0], frozenset(ITEMS[item][1:]), ann): (ITEMS[item][1] if label == "a" else label)
        for item, ann, label in votes
    }
    assert stored_preferences(project) == expected


# ------------------------------------------------------------------------------- entry points


def _swapped_file():
    return jsonl([vote_line("q", "good", "bad", "ann1"), vote_line("q", "good", "bad", "ann2", swapped=True)])


def test_command_says_how_many_votes_were_reoriented(tmp_path):
    Project.objects.create(name="cmd")
    path = tmp_path / "votes.jsonl"
    path.write_bytes(_swapped_file())
    out = io.StringIO()
    call_command("import_judgments", str(path), project="cmd", stdout=out, verbosity=0)
    assert "1 votes re-oriented" in out.getvalue()


def test_api_says_how_many_votes_were_reoriented():
    project = Project.objects.create(name="api")
    admin = make_user("boss")
    add_member(project, admin, Role.ADMIN)
    api = APIClient()
    api.force_authenticate(admin)
    url = reverse("annotate-api:judgment-import", args=[project.pk])
    r = api.post(url, {"lines": [json.loads(line) for line in _swapped_file().decode().splitlines()]}, format="json")
    assert r.status_code == 201, r.content
    assert r.json()["reoriented"] == 1 and r.json()["judgments_created"] == 2
    assert sorted(Judgment.objects.filter(project=project).values_list("choice", flat=True)) == ["a", "a"]


def test_import_page_says_how_many_votes_were_reoriented(client):
    project = Project.objects.create(name="page")
    admin = make_user("boss")
    add_member(project, admin, Role.ADMIN)
    client.force_login(admin)
    upload = io.BytesIO(_swapped_file())
    upload.name = "votes.jsonl"
    r = client.post(reverse("project_import", args=[project.pk]), {"kind": "judgments", "file": upload})
    assert r.status_code == 200
    text = r.content.decode()
    assert "Re-oriented votes" in text and ">1<" in text.split("Re-oriented votes", 1)[1][:40]
    assert sorted(Judgment.objects.filter(project=project).values_list("choice", flat=True)) == ["a", "a"]


def test_same_text_from_two_models_is_oriented_by_model():
    """Tulu 1 has votes on two models that wrote the same text: the model names tell the sides."""
    project = Project.objects.create(name="twins")
    base = {"prompt": "p", "response_a": "same", "response_b": "same", "label": "a"}
    rows = [
        {**base, "model_a": "m1", "model_b": "m2", "annotator_id": "ann1"},  # prefers m1
        {**base, "model_a": "m2", "model_b": "m1", "label": "b", "annotator_id": "ann2"},  # prefers m1 too
    ]
    result = import_judgments(project, io.BytesIO(jsonl(rows)), filename="v.jsonl")
    assert result.reoriented == 1
    preferred = {
        j.comparison.response_a.model_name if j.choice == "a" else j.comparison.response_b.model_name
        for j in Judgment.objects.filter(project=project).select_related("comparison__response_a", "comparison__response_b")
    }
    assert preferred == {"m1"}
