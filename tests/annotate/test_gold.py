"""Gold is one flag on one comparison (annotate.gold): set from the project's Gold page, the API and
an import (an existing pair becomes gold, never a second copy), kept consistent by the Django admin,
warned about on the settings page when a gold share has no gold items -- and never visible to an
annotator, whichever way the item became gold."""
from __future__ import annotations

import io
import json
import uuid

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from annotate.imports import import_comparisons
from annotate.models import Comparison, GoldAnswer, Role
from tests.factories import add_member, make_comparison, make_project, make_team, make_user

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def world():
    project = make_project("Fruit project", gold_rate=0.0, overlap=1)
    team = make_team(project, annotators=("ann1",))
    comparisons = [
        make_comparison(project, i, prompt=f"Which fruit {i}?", text_a=f"Apple {i}", text_b=f"Rock {i}",
                        model_a="m-apple", model_b="m-rock")
        for i in range(3)
    ]
    return {"project": project, "team": team, "comparisons": comparisons}


def _state(c: Comparison):
    c.refresh_from_db()
    answer = GoldAnswer.objects.filter(comparison=c).values_list("answer", flat=True).first()
    return c.is_gold, answer


# ---- the page ----------------------------------------------------------------------------------


def test_page_makes_selected_comparisons_gold_and_regular_again(client, world):
    project, (c0, c1, c2) = world["project"], world["comparisons"]
    client.force_login(world["team"].admin)
    url = reverse("project_gold", args=[project.pk])
    page = client.get(url).content.decode()
    assert "Apple 0" in page and f'name="comparisons" value="{c0.pk}"' in page
    before = Comparison.objects.count()
    response = client.post(url, {"comparisons": [c0.pk, c2.pk], "answer": "b"}, follow=True)
    assert "2 comparisons made gold" in response.content.decode()
    assert _state(c0) == (True, "b") and _state(c2) == (True, "b") and _state(c1) == (False, None)
    assert Comparison.objects.count() == before  # flagged in place, nothing copied
    assert c0.is_open  # gold items stay open: every annotator may be served them once
    gold_only = client.get(url + "?shown=gold").content.decode()
    assert "Apple 0" in gold_only and "Apple 1" not in gold_only and "B is better" in gold_only
    client.post(url, {"comparisons": [c2.pk], "answer": "none"})
    assert _state(c2) == (False, None) and _state(c0) == (True, "b")
    # bad input changes nothing and says why
    other = make_comparison(make_project("Other"), "x")
    response = client.post(url, {"comparisons": [c1.pk, other.pk], "answer": "a"}, follow=True)
    assert f"no comparison {other.pk} in this project" in response.content.decode()
    assert _state(c1) == (False, None) and _state(other) == (False, None)
    response = client.post(url, {"comparisons": [c1.pk], "answer": "maybe"}, follow=True)
    assert "must be one of a, b, tie" in response.content.decode() and _state(c1) == (False, None)


def test_only_admins_open_the_gold_page(client, world):
    url = reverse("project_gold", args=[world["project"].pk])
    team = world["team"]
    for user in (team.researcher, team.annotators[0], team.outsider):
        client.force_login(user)
        assert client.get(url).status_code in (403, 404)
        assert client.post(url, {"comparisons": [world["comparisons"][0].pk], "answer": "a"}).status_code in (403, 404)
    assert not GoldAnswer.objects.exists()


# ---- the API -----------------------------------------------------------------------------------


def test_api_sets_and_removes_gold(world):
    project, (c0, c1, _) = world["project"], world["comparisons"]
    url = reverse("annotate-api:gold-list", args=[project.pk])
    admin = APIClient()
    admin.force_login(world["team"].admin)
    r = admin.post(url, {"comparisons": [c0.pk, c1.pk], "answer": "a"}, format="json")
    assert r.status_code == 200 and r.json()["changed"] == 2
    assert r.json()["gold"] == [{"comparison": c0.pk, "answer": "a"}, {"comparison": c1.pk, "answer": "a"}]
    assert admin.get(url).json()["count"] == 2
    assert admin.post(url, {"comparisons": [c1.pk], "answer": "none"}, format="json").json()["changed"] == 1
    assert _state(c1) == (False, None)
    # a tie where the project allows none, an id of another project: 400 and nothing changed
    project.allow_ties = False
    project.save()
    r = admin.post(url, {"comparisons": [c1.pk], "answer": "tie"}, format="json")
    assert r.status_code == 400 and "does not allow ties" in r.json()["answer"][0]
    other = make_comparison(make_project("Other"), "y")
    r = admin.post(url, {"comparisons": [c1.pk, other.pk], "answer": "a"}, format="json")
    assert r.status_code == 400 and str(other.pk) in r.json()["comparisons"][0]
    assert _state(c1) == (False, None)
    for user in (world["team"].researcher, world["team"].annotators[0]):
        c = APIClient()
        c.force_login(user)
        assert c.post(url, {"comparisons": [c1.pk], "answer": "a"}, format="json").status_code == 403
        assert c.get(url).status_code == 403
    assert _state(c1) == (False, None)


# ---- imports -----------------------------------------------------------------------------------


def _jsonl(*lines) -> io.BytesIO:
    return io.BytesIO("".join(json.dumps(x) + "\n" for x in lines).encode())


def test_import_flags_the_existing_pair_never_a_copy(world):
    """The pair exists (round 0, with model names, Apple as A); the gold line lists it in round 1,
    without model names, Rock first, answering "b" (= Apple): the stored comparison becomes gold with
    answer "a", and no comparison is added."""
    project, (c0, c1, _) = world["project"], world["comparisons"]
    before = Comparison.objects.count()
    lines = [
        {"prompt": "Which fruit 0?", "response_a": "Rock 0", "response_b": "Apple 0", "gold": "b"},
        {"prompt": "Which fruit 1?", "response_a": "Apple 1", "response_b": "Rock 1", "model_a": "m-apple",
         "model_b": "m-rock", "gold": "tie"},
        {"prompt": "A new one?", "response_a": "Yes", "response_b": "No", "gold": "a"},
    ]
    result = import_comparisons(project, _jsonl(*lines), filename="gold.jsonl", round=1)
    assert (result.created, result.gold, result.gold_marked, result.duplicates) == (1, 1, 2, 2)
    assert Comparison.objects.count() == before + 1
    assert _state(c0) == (True, "a") and _state(c1) == (True, "tie")
    assert Comparison.objects.filter(prompt__text="Which fruit 0?").count() == 1
    # importing the same file again changes nothing more
    again = import_comparisons(project, _jsonl(*lines), filename="gold.jsonl", round=1)
    assert again.created == 0 and Comparison.objects.count() == before + 1 and _state(c0) == (True, "a")


def test_import_api_and_command_flag_existing_pairs(world, tmp_path):
    project, (c0, c1, _) = world["project"], world["comparisons"]
    before = Comparison.objects.count()
    admin = APIClient()
    admin.force_login(world["team"].admin)
    url = reverse("annotate-api:comparison-import", args=[project.pk])
    r = admin.post(url, {"lines": [{"prompt": "Which fruit 0?", "response_a": "Apple 0", "response_b": "Rock 0",
                                    "gold": "a"}]}, format="json")
    assert r.status_code == 201 and r.json()["gold_marked"] == 1 and r.json()["created"] == 0
    path = tmp_path / "gold.jsonl"
    path.write_text(json.dumps({"prompt": "Which fruit 1?", "response_a": "Rock 1", "response_b": "Apple 1",
                                "gold": "a"}) + "\n")
    out = io.StringIO()
    call_command("import_comparisons", str(path), "--project", project.name, stdout=out)
    assert "1 existing comparisons made gold" in out.getvalue()
    assert _state(c0) == (True, "a") and _state(c1) == (True, "b")  # Rock is the stored B
    assert Comparison.objects.count() == before


# ---- the admin ---------------------------------------------------------------------------------


def test_admin_gold_answer_flags_its_comparison(client, world):
    c0 = world["comparisons"][0]
    client.force_login(make_user("root", is_superuser=True, is_staff=True))
    r = client.post(reverse("admin:annotate_goldanswer_add"), {"comparison": c0.pk, "answer": "b"})
    assert r.status_code == 302
    assert _state(c0) == (True, "b") and c0.is_open
    answer = GoldAnswer.objects.get(comparison=c0)
    client.post(reverse("admin:annotate_goldanswer_delete", args=[answer.pk]), {"post": "yes"})
    assert _state(c0) == (False, None)
    # the comparison's own page shows the flag read-only: it follows the gold answer
    page = client.get(reverse("admin:annotate_comparison_change", args=[c0.pk])).content.decode()
    assert 'name="is_gold"' not in page


# ---- the settings page -------------------------------------------------------------------------


def test_settings_warn_about_a_gold_share_without_gold(client, world):
    project = world["project"]
    client.force_login(world["team"].admin)
    url = reverse("project_settings", args=[project.pk])
    assert 'id="gold-warning"' not in client.get(url).content.decode()  # share 0: nothing to warn about
    project.gold_rate = 0.1
    project.save()
    page = client.get(url).content.decode()
    assert 'id="gold-warning"' in page and "no gold comparisons" in page
    client.post(reverse("project_gold", args=[project.pk]), {"comparisons": [world["comparisons"][0].pk],
                                                             "answer": "a"})
    assert 'id="gold-warning"' not in client.get(url).content.decode()


# ---- annotators never see it -------------------------------------------------------------------


def test_a_comparison_made_gold_shows_no_trace_to_annotators(client, world):
    """Made gold through the page; served to an annotator on the page, as the HTMX partial and
    over the API: no answer, no flag, the same keys as a regular item."""
    project, (c0, c1, c2) = world["project"], world["comparisons"]
    admin = world["team"].admin
    client.force_login(admin)
    client.post(reverse("project_gold", args=[project.pk]), {"comparisons": [c0.pk, c1.pk, c2.pk],
                                                             "answer": "b"})
    project.gold_rate = 1.0
    project.save()
    annotator = Client()  # the annotator's own browser
    annotator.force_login(world["team"].annotators[0])
    for html in (annotator.get(reverse("annotate", args=[project.pk])).content.decode(),
                 annotator.get(reverse("annotate", args=[project.pk]), **HX).content.decode()):
        assert "Apple" in html  # the item is there
        lowered = html.lower()
        for word in ("gold", "is_gold", "b is better", "m-apple", "m-rock", "calibration"):
            assert word not in lowered, word
    api = APIClient()
    ann2 = make_user("ann2")
    add_member(project, ann2, Role.ANNOTATOR)
    api.force_login(ann2)
    item = api.get(reverse("annotate-api:next", args=[project.pk])).json()
    text = json.dumps(item).lower()
    assert "apple" in text and "gold" not in text and "answer" not in text
    # ... the same keys as a regular item of the same project
    Comparison.objects.filter(project=project).update(is_gold=False)
    GoldAnswer.objects.all().delete()
    project.gold_rate = 0.0
    project.save()
    plain = APIClient()
    ann3 = make_user("ann3")
    add_member(project, ann3, Role.ANNOTATOR)
    plain.force_login(ann3)
    assert set(plain.get(reverse("annotate-api:next", args=[project.pk])).json()) == set(item)


@hyp_settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(swap=st.booleans(), round_=st.integers(0, 3), with_models=st.booleans(), better=st.sampled_from(["Apple", "Rock"]))
def test_gold_import_property_one_comparison_right_answer(world, swap, round_, with_models, better):
    """For any listing of an existing pair as gold -- either order, any round, with or without model
    names -- the project keeps the same comparisons and the stored answer names the text the line
    said was better."""
    project, c0 = world["project"], world["comparisons"][0]
    GoldAnswer.objects.all().delete()
    Comparison.objects.filter(project=project).update(is_gold=False)
    before = Comparison.objects.count()
    first, second = ("Rock 0", "Apple 0") if swap else ("Apple 0", "Rock 0")
    line = {"prompt": "Which fruit 0?", "response_a": first, "response_b": second,
            "gold": "a" if better + " 0" == first else "b"}
    if with_models:
        line.update(model_a="x-" + first, model_b="x-" + second)
    result = import_comparisons(project, _jsonl(line), filename="g.jsonl", round=round_)
    assert Comparison.objects.count() == before and result.created == 0 and result.gold_marked == 1
    is_gold, answer = _state(c0)
    stored_better = c0.response_a.text if answer == "a" else c0.response_b.text
    assert is_gold and stored_better == better + " 0"


# ---- a regular line with a gold pair's texts ----------------------------------------------------


@hyp_settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(swap=st.booleans(), round_=st.integers(0, 3), models=st.sampled_from(["none", "other", "stored"]),
       answer=st.sampled_from(["a", "b"]))
def test_a_regular_line_of_a_gold_pair_joins_it_never_a_copy(world, swap, round_, models, answer):
    """The stored gold comparison (Apple 0 vs Rock 0, models m-apple / m-rock) listed again by a
    regular line -- either order, any round, with other model names, none, or its own -- stays the
    one comparison with these texts, still gold with its answer; the line counts as a duplicate and
    the summary names it."""
    from annotate.gold import set_gold, unset_gold

    project, c0 = world["project"], world["comparisons"][0]
    unset_gold(project, [c.pk for c in world["comparisons"]])
    set_gold(project, [c0.pk], answer)
    before = Comparison.objects.count()
    first, second = ("Rock 0", "Apple 0") if swap else ("Apple 0", "Rock 0")
    line = {"prompt": "Which fruit 0?", "response_a": first, "response_b": second}
    if models != "none":
        line.update(model_a=("x-" if models == "other" else "m-") + first.split()[0].lower(),
                    model_b=("x-" if models == "other" else "m-") + second.split()[0].lower())
    other = {"prompt": f"Which fruit {uuid.uuid4().hex}?", "response_a": "Pear", "response_b": "Sand"}
    result = import_comparisons(project, _jsonl(other, line), filename="regular.jsonl", round=round_)
    assert (result.created, result.duplicates) == (1, 1)
    assert Comparison.objects.count() == before + 1
    assert Comparison.objects.filter(prompt__text="Which fruit 0?").count() == 1
    assert _state(c0) == (True, answer)
    # named as joined to a gold pair; the line with the stored names may instead be a plain
    # duplicate of the stored key (the factory's pair_hash is not the import's)
    assert result.gold_twin_lines == [2] or (models == "stored" and result.gold_twin_lines == [])


@pytest.mark.parametrize("gold_first", [True, False])
@pytest.mark.parametrize("swap", [True, False])
def test_a_gold_line_and_a_regular_twin_in_one_file_make_one_gold_comparison(world, gold_first, swap):
    project = world["project"]
    gold_line = {"prompt": "New fruit?", "response_a": "Kiwi", "response_b": "Stone", "model_a": "m1",
                 "model_b": "m2", "gold": "a"}
    regular = {"prompt": "New fruit?", "response_a": "Stone" if swap else "Kiwi",
               "response_b": "Kiwi" if swap else "Stone", "model_a": "other-1", "model_b": "other-2"}
    lines = [gold_line, regular] if gold_first else [regular, gold_line]
    result = import_comparisons(project, _jsonl(*lines), filename="both.jsonl")
    assert (result.created, result.gold, result.duplicates) == (1, 1, 1)
    assert result.gold_twin_lines == [2 if gold_first else 1]
    (c,) = Comparison.objects.filter(prompt__text="New fruit?")
    is_gold, answer = _state(c)
    assert is_gold and (c.response_a.text if answer == "a" else c.response_b.text) == "Kiwi"


def test_the_command_and_the_api_name_the_regular_line_of_a_gold_pair(world, tmp_path):
    from annotate.gold import set_gold

    project, c1 = world["project"], world["comparisons"][1]
    set_gold(project, [c1.pk], "a")
    before = Comparison.objects.count()
    path = tmp_path / "regular.jsonl"
    path.write_text(json.dumps({"prompt": "Which fruit 1?", "response_a": "Rock 1", "response_b": "Apple 1",
                                "model_a": "new-rock", "model_b": "new-apple"}) + "\n")
    out = io.StringIO()
    call_command("import_comparisons", str(path), "--project", project.name, stdout=out)
    assert "0 comparisons created" in out.getvalue() and "1 duplicates skipped" in out.getvalue()
    assert "Line 1: the pair (prompt and response texts) of a gold comparison" in out.getvalue()
    admin = APIClient()
    admin.force_login(world["team"].admin)
    url = reverse("annotate-api:comparison-import", args=[project.pk])
    r = admin.post(url, {"lines": [{"prompt": "Which fruit 1?", "response_a": "Apple 1", "response_b": "Rock 1",
                                    "model_a": "api-a", "model_b": "api-b"}]}, format="json")
    assert r.status_code == 201 and r.json()["created"] == 0 and r.json()["gold_twin_lines"] == [1]
    assert Comparison.objects.count() == before and _state(c1) == (True, "a")


def test_votes_on_a_gold_pair_under_other_model_names_join_it_in_the_stored_order(world):
    """Two vote lines list the gold pair (Apple 0 vs Rock 0, stored with Apple as A) under two other
    pairs of model names, one in each order: both votes land on the stored gold comparison, mapped
    to its order (both say Apple is better), and no regular copy is made."""
    from annotate.gold import set_gold
    from annotate.imports import import_judgments
    from annotate.models import Judgment

    project, c0 = world["project"], world["comparisons"][0]
    set_gold(project, [c0.pk], "a")
    before = Comparison.objects.count()
    base = {"source": "ext", "prompt": "Which fruit 0?", "strength": None, "extra": {}}
    votes = [
        {**base, "item_id": "v1", "response_a": "Apple 0", "response_b": "Rock 0", "model_a": "v1-a",
         "model_b": "v1-b", "annotator_id": "ext:one", "label": "a"},
        {**base, "item_id": "v2", "response_a": "Rock 0", "response_b": "Apple 0", "model_a": "v2-a",
         "model_b": "v2-b", "annotator_id": "ext:two", "label": "b"},
    ]
    result = import_judgments(project, _jsonl(*votes), filename="votes.jsonl")
    assert result.judgments_created == 2 and result.comparisons_created == 0 and result.reoriented == 1
    assert Comparison.objects.count() == before
    assert sorted(Judgment.objects.filter(comparison=c0).values_list("choice", flat=True)) == ["a", "a"]
    assert _state(c0) == (True, "a")
