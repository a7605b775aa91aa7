"""Starting an unattended loop (training.loop): bad settings are refused naming the field and
create nothing, from the service, the command and the API; only project admins start one;
readers follow it. (The loop itself runs in test_loop_e2e, through a worker.)"""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from training.loop.seed import seed_project, synthetic_lines, synthetic_utility
from training.loop.service import pairing_for, start_loop
from training.models import LoopRun, ModelVersion
from training.services.errors import TrainingError
from tests.factories import make_project, make_team

pytestmark = pytest.mark.django_db


@pytest.fixture
def scene(tmp_path):
    project = seed_project("Loop project", 12)
    team = make_team(project)
    base = ModelVersion.objects.create(name="loop-base", path=str(tmp_path / "base"))
    return project, team, base


def test_the_synthetic_round_zero_has_pairs_of_different_utility_and_gold_by_utility():
    u = synthetic_utility()
    lines = synthetic_lines(200, gold_fraction=0.2, seed=3)
    diffs = [u(line["response_a"]) - u(line["response_b"]) for line in lines]
    assert sum(d != 0 for d in diffs) > 180 and any(d > 0 for d in diffs) and any(d < 0 for d in diffs)
    gold = [(line["gold"], d) for line, d in zip(lines, diffs) if "gold" in line]
    assert 20 < len(gold) < 60 and all((g == "a") == (d > 0) for g, d in gold)
    assert u("Sure, glad to help with the river.") == 3.0
    assert u("Qxzv glad") == pytest.approx(1 - 0.25)  # gibberish costs


@pytest.mark.parametrize(
    "options, field",
    [
        ({"rounds": 0}, "rounds"),
        ({"recipe": "rm"}, "recipe"),
        ({"pairings": ["head_to_head", "best_of"]}, "pairings"),
        ({"pools": [{"name": "p", "accuracy": [0.9, 0.2]}]}, "pools"),
        ({"pools": [{"name": "p", "speed": 3}]}, "pools"),
        ({"hyperparameters": {"no_such_field": 1}}, "hyperparameters"),
        ({"utility": {"sweetness": 1}}, "utility"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(scene, options, field):
    project, _, base = scene
    with pytest.raises(TrainingError) as info:
        start_loop(project, base_model=base, send=False, **options)
    assert info.value.field == field
    assert not LoopRun.objects.exists()


def test_a_loop_needs_comparisons_to_start_from(scene):
    _, _, base = scene
    with pytest.raises(TrainingError, match="no comparisons"):
        start_loop(make_project("Empty"), base_model=base, send=False)


def test_a_started_loop_records_its_settings(scene):
    project, _, base = scene
    loop = start_loop(project, base_model=base, rounds=3, pairings=["head_to_head", "two_samples"], send=False,
                      utility=synthetic_utility())
    assert (loop.stage, loop.round, loop.reference_model, loop.latest_model) == ("annotate", 0, base, base)
    assert [pairing_for(loop, i) for i in range(3)] == ["head_to_head", "two_samples", "two_samples"]
    assert [p["name"] for p in loop.pools] == ["careful", "hasty", "verbose"]
    assert loop.utility["unknown_penalty"] == 0.25 and "river" in loop.utility["known"]


def test_the_command_refuses_what_it_cannot_run(scene):
    with pytest.raises(CommandError, match="no project"):
        call_command("loop", "--project", "nope")
    with pytest.raises(CommandError, match="no model version"):
        call_command("loop", "--project", "Loop project", "--base", "nope")
    with pytest.raises(CommandError, match="unknown pairing"):
        call_command("loop", "--project", "Loop project", "--base", "loop-base", "--pairing", "sideways")
    assert not LoopRun.objects.exists()


def test_the_api_starts_and_shows_a_loop_for_the_right_roles(scene):
    project, team, base = scene
    url = f"/api/projects/{project.pk}/loops/"
    body = {"rounds": 2, "base_model": base.name, "pairings": ["head_to_head", "reference"],
            "pools": [{"name": "solo", "n_annotators": 3, "accuracy": [0.8, 0.9]}],
            "hyperparameters": {"max_steps": 2}}
    for user, code in ((team.annotators[0], 403), (team.researcher, 403), (team.outsider, 403)):
        api = APIClient()
        api.force_authenticate(user)
        assert api.post(url, body, format="json").status_code in (code, 404)
    api = APIClient()
    api.force_authenticate(team.admin)
    bad = api.post(url, {**body, "pools": [{"name": "x", "left_bias": 2}]}, format="json")
    assert bad.status_code == 400 and "pools" in bad.json()
    assert api.post(url, {**body, "base_model": "nope"}, format="json").status_code == 400
    assert not LoopRun.objects.exists()
    made = api.post(url, body, format="json")
    assert made.status_code == 202, made.content
    data = made.json()
    assert data["rounds"] == 2 and data["pairings"] == ["head_to_head", "reference"] and data["stage"] == "annotate"
    reader = APIClient()
    reader.force_authenticate(team.researcher)
    assert reader.get(url).json()["results"][0]["id"] == data["id"]
    assert reader.get(f"{url}{data['id']}/").json()["base_model"] == base.name
    outsider = APIClient()
    outsider.force_authenticate(team.outsider)
    assert outsider.get(f"{url}{data['id']}/").status_code in (403, 404)


def test_the_rounds_page_lists_the_loops(scene, client):
    project, team, base = scene
    start_loop(project, base_model=base, rounds=2, pairings=["reference"], send=False)
    client.force_login(team.admin)
    html = client.get(f"/projects/{project.pk}/rounds/").content.decode()
    assert "Unattended loops" in html and "reference" in html and "Annotating (simulated)" in html
