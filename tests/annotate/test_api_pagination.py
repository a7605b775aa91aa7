"""Lists of the REST API page with ``?limit=`` and ``?offset=`` whatever the numbers: any
integer, of any size or sign, or any text gives a page (or a 400 naming the parameter), never
a server error, and the page is the slice of the whole list that the numbers name."""
from __future__ import annotations

import pytest
from django.urls import reverse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from annotate.models import Role
from tests.factories import make_comparison, make_project, make_team

pytestmark = pytest.mark.django_db

N = 7
DEFAULT_LIMIT = 100
numbers = st.one_of(
    st.integers(min_value=-(10**40), max_value=10**40),
    st.integers(min_value=-3, max_value=N + 3),
    st.text(max_size=6),
    st.just("9" * 5000),  # more digits than Python's int() accepts
)


@pytest.fixture
def site():
    project = make_project("paged")
    team = make_team(project)
    for i in range(N):
        make_comparison(project, i)
    client = APIClient()
    client.force_authenticate(team.admin)
    return project, client


def _as_count(value, default: int, *, positive: bool) -> int:
    """What DRF's limit/offset make of a parameter: a non-negative (limit: positive) integer,
    else the default."""
    try:
        number = int(value)
    except ValueError:
        return default
    if number < 0 or (positive and number == 0):
        return default
    return number


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(limit=numbers, offset=numbers, page=numbers)
def test_any_limit_offset_or_page_gives_the_named_slice(site, limit, offset, page):
    project, client = site
    url = reverse("annotate-api:comparison-list", args=[project.pk])
    everything = client.get(url).json()["results"]
    r = client.get(url, {"limit": limit, "offset": offset, "page": page})
    assert r.status_code == 200, r.content[:300]
    body = r.json()
    start = _as_count(offset, 0, positive=False)
    size = _as_count(limit, DEFAULT_LIMIT, positive=True)
    assert body["count"] == N
    assert body["results"] == everything[start : start + size]


@pytest.mark.parametrize(
    "name, args, params",
    [
        ("annotate-api:project-list", [], {}),
        ("annotate-api:membership-list", ["P"], {"pool": 10**30}),
        ("annotate-api:comparison-list", ["P"], {"round": 10**30}),
        ("annotate-api:comparison-list", ["P"], {"round": -(10**30)}),
        ("annotate-api:pool-list", ["P"], {}),
        ("annotate-api:gold-list", ["P"], {}),
        ("annotate-api:my-judgments", ["P"], {}),
        ("training-api:run-list", ["P"], {}),
        ("training-api:model-list", [], {}),
    ],
)
def test_huge_numbers_in_any_list_are_a_page_or_a_400(site, name, args, params):
    project, client = site
    url = reverse(name, args=[project.pk if a == "P" else a for a in args])
    for extra in ({"limit": 10**30}, {"offset": 10**30}, {"limit": -(10**30), "offset": -(10**30)}, {"page": 10**30}):
        r = client.get(url, {**params, **extra})
        assert r.status_code in (200, 400), (url, extra, r.content[:300])
        if r.status_code == 400:
            assert set(r.json()) <= set(params)


def test_an_annotator_pages_their_own_judgments_too(site):
    project, _ = site
    team_member = project.memberships.filter(role=Role.ANNOTATOR).first().user
    client = APIClient()
    client.force_authenticate(team_member)
    r = client.get(reverse("annotate-api:my-judgments", args=[project.pk]), {"offset": 10**30, "limit": 10**30})
    assert r.status_code == 200
    assert (r.json()["count"], r.json()["results"], r.json()["next"]) == (0, [], None)
