"""Who sees which model versions (issue 11, item 5), and the add-member form's one answer.

A researcher or admin sees the shared base models (no project) and the models of the projects
in which they are an admin or a researcher -- on ``/models/``, on ``/api/models/``, in the parent
choice of the registration form, in the head-to-head choice of the run page -- and can name no
other; a superuser sees every model. Adding a member answers alike for an unknown username, an
inactive account and an existing member, so usernames cannot be probed.
"""

from __future__ import annotations

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from annotate.models import Membership, Role
from tests.factories import add_member, make_project, make_user
from training.models import ModelVersion, TrainingRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def world():
    ours, theirs = make_project("ours"), make_project("theirs")
    users = {
        "admin": make_user("our-admin"),
        "researcher": make_user("our-researcher"),
        "annotator-there": make_user("annotator-there"),
        "their-admin": make_user("their-admin"),
        "root": make_user("root", is_superuser=True, is_staff=True),
    }
    add_member(ours, users["admin"], Role.ADMIN)
    add_member(ours, users["researcher"], Role.RESEARCHER)
    add_member(theirs, users["their-admin"], Role.ADMIN)
    add_member(ours, users["annotator-there"], Role.RESEARCHER)
    add_member(theirs, users["annotator-there"], Role.ANNOTATOR)  # annotators do not see a project's models
    models = {
        "shared": ModelVersion.objects.create(name="shared-base", path="/nowhere/shared"),
        "ours": ModelVersion.objects.create(name="our-model", path="/nowhere/ours", project=ours),
        "theirs": ModelVersion.objects.create(name="their-secret-model", path="/nowhere/theirs", project=theirs),
    }
    return {"ours": ours, "theirs": theirs, "users": users, "models": models}


def _names_on_page(client, user) -> set[str]:
    client.force_login(user)
    page = client.get(reverse("model_registry"))
    assert page.status_code == 200
    text = page.content.decode()
    return {name for name in ("shared-base", "our-model", "their-secret-model") if name in text}


def _names_in_api(user) -> set[str]:
    api = APIClient()
    api.force_authenticate(user)
    response = api.get(reverse("training-api:model-list"), {"limit": 1000})
    assert response.status_code == 200
    return {row["name"] for row in response.json()["results"]}


@pytest.mark.parametrize("who", ["admin", "researcher", "annotator-there"])
def test_members_see_their_projects_models_and_the_shared_ones(world, client, who):
    user = world["users"][who]
    assert _names_on_page(client, user) == {"shared-base", "our-model"}
    assert _names_in_api(user) == {"shared-base", "our-model"}


def test_the_other_projects_admin_sees_only_theirs(world, client):
    user = world["users"]["their-admin"]
    assert _names_on_page(client, user) == {"shared-base", "their-secret-model"}
    assert _names_in_api(user) == {"shared-base", "their-secret-model"}


def test_a_superuser_sees_every_model(world, client):
    everything = {"shared-base", "our-model", "their-secret-model"}
    assert _names_on_page(client, world["users"]["root"]) == everything
    assert _names_in_api(world["users"]["root"]) == everything


def test_an_invisible_model_cannot_be_named_as_a_parent(world, client):
    admin = world["users"]["admin"]
    api = APIClient()
    api.force_authenticate(admin)
    response = api.post(reverse("training-api:model-list"),
                        {"name": "child", "path": "/nowhere/child", "parent": "their-secret-model"}, format="json")
    assert response.status_code == 400 and "parent" in response.json()
    client.force_login(admin)
    page = client.post(reverse("model_registry"),
                       {"name": "child", "path": "/nowhere/child", "parent": world["models"]["theirs"].pk})
    assert page.status_code == 400 and "Select a valid choice" in page.content.decode()
    assert not ModelVersion.objects.filter(name="child").exists()


def test_an_invisible_model_cannot_be_sampled_against(world, client):
    """The run page's head-to-head choice offers, and accepts, only this project's and shared models."""
    from training.forms import SampleRoundForm

    form = SampleRoundForm(project=world["ours"])
    offered = set(form.fields["compare_model"].queryset.values_list("name", flat=True))
    assert offered == {"shared-base", "our-model"}
    posted = SampleRoundForm({"n_prompts": 2, "against": "model", "compare_model": world["models"]["theirs"].pk,
                              "max_new_tokens": 8, "temperature": 0.5}, project=world["ours"])
    assert not posted.is_valid() and "compare_model" in posted.errors


# --------------------------------------------------------------------------- add a member


@pytest.mark.parametrize("surface", ["page", "api"])
def test_adding_a_member_answers_alike_whatever_the_reason(world, client, surface):
    ours = world["ours"]
    make_user("sleeper", is_active=False)
    make_user("bystander")
    answers = {}
    for username in ("nobody-by-that-name", "sleeper", "our-researcher"):
        if surface == "page":
            client.force_login(world["users"]["admin"])
            r = client.post(reverse("project_members", args=[ours.pk]), {"username": username, "role": "annotator"})
            assert r.status_code == 200
            text = r.content.decode()
            start = text.index("cannot be added")
            answers[username] = (r.status_code, text[start - len(username) - 10 : start + 120].replace(username, "U"))
        else:
            api = APIClient()
            api.force_authenticate(world["users"]["admin"])
            r = api.post(reverse("annotate-api:membership-list", args=[ours.pk]),
                         {"username": username, "role": "annotator"}, format="json")
            answers[username] = (r.status_code, str(r.json()).replace(username, "U"))
    assert len(set(answers.values())) == 1, answers
    assert not Membership.objects.filter(project=ours, user__username__in=["sleeper", "nobody-by-that-name"]).exists()
    # an active account that is not a member is added
    if surface == "api":
        api = APIClient()
        api.force_authenticate(world["users"]["admin"])
        ok = api.post(reverse("annotate-api:membership-list", args=[ours.pk]),
                      {"username": "bystander", "role": "annotator"}, format="json")
        assert ok.status_code == 201
    assert not TrainingRun.objects.exists()
