"""API token authentication (prefloop.authentication): the token's user is the request's user;
an unknown token and an inactive user's token are refused with DRF's messages."""
from __future__ import annotations

import pytest
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotate.models import Role
from tests.factories import add_member, make_project, make_user

pytestmark = pytest.mark.django_db


def client_with(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def test_a_token_signs_in_its_user_only():
    project = make_project(name="mine")
    ann = make_user("ann")
    add_member(project, ann, Role.ANNOTATOR)
    make_project(name="not mine")
    r = client_with(Token.objects.create(user=ann).key).get(reverse("annotate-api:project-list"))
    assert r.status_code == 200
    assert [p["name"] for p in r.json()["results"]] == ["mine"]


def test_unknown_and_inactive_tokens_are_refused():
    r = client_with("0" * 40).get(reverse("annotate-api:project-list"))
    assert r.status_code == 401 and r.json()["detail"] == "Invalid token."
    gone = make_user("gone", is_active=False)
    r = client_with(Token.objects.create(user=gone).key).get(reverse("annotate-api:project-list"))
    assert r.status_code == 401 and r.json()["detail"] == "User inactive or deleted."
