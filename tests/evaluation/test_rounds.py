"""Per-pool verdicts on model rounds (evaluation.rounds): a fine-tune that one pool likes and the
other dislikes shows as a win in one pool and a loss in the other, in the round win rates, the
leaderboard and on the rounds page (chart with 12 px text and its table, no inline script or
style); only admins and researchers see the page."""

import re

import pytest
from django.urls import reverse

from annotate.models import Membership, Role
from evaluation.rounds import verdicts
from tests.factories import add_member, make_comparison, make_judgment, make_pool, make_project, make_team, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def split():
    """Round 1: model "v1" (A) vs. "base" on 8 prompts; round 2: "v2" (A) vs. "v1" on 8 more.
    North prefers the newer model on every prompt, south the older one on 6 of 8."""
    project = make_project("Split verdict")
    team = make_team(project, annotators=())
    north, south = make_pool(project, "north"), make_pool(project, "south")
    people = {}
    for pool in (north, south):
        people[pool.name] = [make_user(f"{pool.name}{k}") for k in range(2)]
        for user in people[pool.name]:
            add_member(project, user, Role.ANNOTATOR, pool=pool)
    for rnd, (new, old) in enumerate([("v1", "base"), ("v2", "v1")], start=1):
        for i in range(8):
            c = make_comparison(project, f"{rnd}-{i}", model_a=new, model_b=old, round=rnd)
            for user in people["north"]:
                make_judgment(user, c, "a", pool=north)
            for user in people["south"]:
                make_judgment(user, c, "b" if i < 6 else "a", pool=south)
    return project, team


def test_round_win_rates_overall_and_per_pool(split):
    project, _ = split
    by_round = verdicts.round_verdicts(project)
    assert [(r["round"], r["model"], r["against"]) for r in by_round] == [(1, "v1", ["base"]), (2, "v2", ["v1"])]
    for r in by_round:
        groups = {g["name"]: g for g in r["groups"]}
        assert set(groups) == {"All annotators", "north", "south"}
        assert groups["north"]["win_rate"] == 1.0
        assert groups["south"]["win_rate"] == pytest.approx(2 / 8)
        assert groups["All annotators"]["win_rate"] == pytest.approx((8 + 2) / 16)
        assert groups["All annotators"]["n_prompts"] == 8 and groups["All annotators"]["n_judgments"] == 32
        south = groups["south"]
        assert south["low"] < south["win_rate"] < south["high"]


def test_leaderboard_per_pool_orders_the_models_each_pool_prefers(split):
    project, _ = split
    boards = {b["name"]: [m["name"] for m in b["models"]] for b in verdicts.leaderboard(project)}
    assert boards["north"] == ["v2", "v1", "base"]
    assert boards["south"] == ["base", "v1", "v2"]
    overall = verdicts.leaderboard(project)[0]
    assert overall["name"] == "All annotators"
    for m in overall["models"]:
        assert m["low"] <= m["strength"] <= m["high"]


def test_an_excluded_annotator_does_not_count(split):
    project, _ = split
    Membership.objects.filter(project=project, pool__name="south").update(excluded=True)
    (r1, _) = verdicts.round_verdicts(project)
    names = [g["name"] for g in r1["groups"] if g["n_judgments"]]
    assert names == ["All annotators", "north"] and r1["groups"][0]["win_rate"] == 1.0


def test_the_rounds_page(split, client):
    project, team = split
    client.force_login(team.admin)
    page = client.get(reverse("rounds", args=[project.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert "Win rate by round" in html and "Leaderboard" in html
    assert html.count("<svg") == 1 and "Show as a table" in html
    for name in ("north", "south", "v1", "v2", "base", "Round 2"):
        assert name in html
    sizes = {int(s) for s in re.findall(r'font-size="(\d+)"', html)}
    assert sizes and min(sizes) >= 12
    assert "<script>" not in html and " style=" not in html  # CSP: no inline script or style
    client.force_login(team.researcher)
    assert client.get(reverse("rounds", args=[project.pk])).status_code == 200
    for user in (team.outsider, make_user("someone")):
        client.force_login(user)
        assert client.get(reverse("rounds", args=[project.pk])).status_code in (403, 404)


def test_the_rounds_page_without_rounds_says_what_to_do(client):
    project = make_project("Nothing yet")
    team = make_team(project)
    client.force_login(team.admin)
    html = client.get(reverse("rounds", args=[project.pk])).content.decode()
    assert "No model-vs-model judgments yet" in html
