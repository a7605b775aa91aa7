"""Huge numbers anywhere in a URL never give a server error (issue 11, item 9).

Every page and API endpoint the URL configuration names is requested with its integer path
parameters set to a real object, to a number beyond the database's 64-bit range, and with
``?page=``, ``?limit=``, ``?offset=`` (and the other numeric filters) set to huge numbers; each
answers a page, a redirect, 4xx -- never 5xx. On PostgreSQL an OFFSET past bigint is the error
this guards against (``bigint out of range``); on SQLite an OverflowError.
"""

from __future__ import annotations

import re

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from annotate.models import Role
from tests.factories import add_member, make_comparison, make_project, make_team, make_user

pytestmark = pytest.mark.django_db

HUGE = 10**30
PARAMS = {"page": HUGE, "limit": HUGE, "offset": HUGE, "round": HUGE, "pool": HUGE, "since": HUGE}


def _routes(patterns=None, prefix=""):
    """Every route of the URL configuration as a string with ``<int:name>`` placeholders."""
    for p in patterns if patterns is not None else get_resolver().url_patterns:
        if isinstance(p, URLResolver):
            yield from _routes(p.url_patterns, prefix + str(p.pattern))
        elif isinstance(p, URLPattern):
            yield prefix + str(p.pattern)


def _fill(route: str, project_pk: int, other: int) -> str | None:
    if route.startswith(("admin/", "^")) or "(?P" in route:
        return None
    route = route.replace("<int:pk>", str(project_pk)).replace("<int:project_pk>", str(project_pk))
    route = re.sub(r"<int:\w+>", str(other), route)
    route = re.sub(r"<(str|slug):\w+>", "csv", route)
    route = re.sub(r"<path:\w+>", "x", route)
    return "/" + route


@pytest.fixture
def site():
    project = make_project("numbers")
    team = make_team(project)
    for i in range(3):
        make_comparison(project, i)
    boss = make_user("boss", is_superuser=True, is_staff=True)
    add_member(project, boss, Role.ADMIN)
    return project, team, boss


@pytest.mark.parametrize("who", ["boss", "annotator"])
def test_no_url_gives_a_server_error_for_huge_numbers(site, client, who):
    project, team, boss = site
    client.force_login(boss if who == "boss" else team.annotators[0])
    checked = 0
    for route in sorted(set(_routes())):
        for pk, other in ((project.pk, 1), (project.pk, HUGE), (HUGE, HUGE)):
            url = _fill(route, pk, other)
            if url is None:
                continue
            response = client.get(url, PARAMS)
            assert response.status_code < 500, (url, response.status_code, response.content[:300])
            checked += 1
    assert checked > 100


def test_the_export_list_page_clamps_its_page_number(site, client):
    project, team, _ = site
    client.force_login(team.admin)
    for page in (HUGE, -HUGE, "x", 0):
        response = client.get(f"/projects/{project.pk}/exports/", {"page": page})
        assert response.status_code == 200, (page, response.content[:300])


def test_an_annotator_posting_a_huge_assignment_id_gets_no_server_error(site, client):
    """The annotator's page and the API submit and skip a huge assignment id as 'not yours'."""
    from rest_framework.test import APIClient

    from annotate import queue

    project, team, _ = site
    annotator = team.annotators[0]
    assert queue.next_assignment(annotator, project) is not None  # holds an item
    client.force_login(annotator)
    for path in ("annotate/", "annotate/skip/", "annotate/revise/"):
        response = client.post(f"/projects/{project.pk}/{path}",
                               {"assignment": HUGE, "judgment": HUGE, "choice": "left"})
        assert response.status_code < 500, (path, response.content[:300])
    api = APIClient()
    api.force_authenticate(annotator)
    for path in (f"/api/assignments/{HUGE}/judgment/", f"/api/assignments/{HUGE}/skip/", f"/api/assignments/{2**63}/"):
        response = api.post(path, {"choice": "left"}, format="json") if "judgment" in path or "skip" in path \
            else api.get(path)
        assert response.status_code in (400, 403, 404), (path, response.content[:300])
    with pytest.raises(Exception) as err:
        queue.submit_judgment(annotator, HUGE, choice="left")
    assert type(err.value).__name__ == "DoesNotExist"


def test_huge_comparison_ids_on_the_gold_page_and_api_name_no_comparison(site, client):
    from rest_framework.test import APIClient

    project, team, _ = site
    client.force_login(team.admin)
    response = client.post(f"/projects/{project.pk}/gold/", {"comparisons": [str(HUGE)], "answer": "a"})
    assert response.status_code == 302
    api = APIClient()
    api.force_authenticate(team.admin)
    response = api.post(f"/api/projects/{project.pk}/gold/", {"comparisons": [HUGE], "answer": "a"}, format="json")
    assert response.status_code == 400 and "comparisons" in response.json()
    from annotate import gold

    with pytest.raises(gold.GoldError, match=f"no comparison {HUGE}"):
        gold.set_gold(project, [HUGE], "a")
