"""Who may see and do what, across the whole URL space.

An annotator sees only their own assignments and judgments and never a gold answer, a
comparison's provenance, its metadata, model names or anybody else's judgment: not in the
REST API, not in HTML, not in an HTMX partial. The exhaustive test walks every URL pattern of
the project (``django.urls.get_resolver``), fills its parameters with the ids of the objects
that must stay hidden, and GETs it as an annotator, an outsider and anonymously, looking for
distinctive marker strings planted in the hidden data.
"""
from __future__ import annotations

import itertools
import json
import re

import pytest
from django.contrib.auth import get_user_model
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.urls.resolvers import RegexPattern, RoutePattern
from rest_framework.test import APIClient

from annotate import queue
from annotate.models import Assignment, AssignmentStatus, Comparison, GoldAnswer, Judgment, Membership, Pool
from annotate.models import Project, Role
from tests import factories
from tests.factories import add_member, judge, make_pool, make_project, make_team

pytestmark = pytest.mark.django_db

User = get_user_model()

# Planted in data an annotator must never receive.
SECRET_MARKERS = (
    "MODELNAME-SECRET-7Q",  # model names of a regular comparison
    "GOLDMODEL-SECRET-3K",  # model names of the gold comparison
    "METADATA-SECRET-5W",  # comparison metadata
    "GOLDMETA-SECRET-9X",  # gold comparison metadata
    "OTHER-RATIONALE-SECRET-2M",  # another annotator's rationale (regular comparison)
    "OTHER-GOLD-RATIONALE-SECRET-8P",  # another annotator's rationale (gold comparison)
)
# JSON keys that would carry hidden data; none may appear in an API answer to an annotator.
FORBIDDEN_KEYS = {
    "gold", "is_gold", "answer", "source_preference", "a_on_left", "model_name", "model_a", "model_b",
    "response_a", "response_b", "metadata", "annotator", "pool", "comparison", "comparison_id",
}
# Substrings that name hidden fields; none may appear in any page an annotator gets.
FORBIDDEN_TEXT = ("is_gold", "source_preference", "GoldAnswer", "a_on_left")
# Endpoints whose answers describe the API itself (field names), not data.
SCHEMA_PATHS = ("/api/schema/", "/api/docs/")


def make_comparison(project, tag, *, model="", **kwargs):
    return factories.make_comparison(project, tag, model_a=f"{model}-a", model_b=f"{model}-b", **kwargs)


class Scene:
    def __init__(self):
        self.project = make_project("Secret project")
        self.other_project = make_project("Other project")
        self.pool = make_pool(self.project, "pool-x", target_share=1.0)
        team = make_team(
            self.project, admin="boss", researcher="sci", annotators=("ann1", "ann2"), outsider="stranger",
            pool=self.pool,
        )
        self.admin, self.researcher, self.outsider = team.admin, team.researcher, team.outsider
        self.ann1, self.ann2 = team.annotators
        self.m1, self.m2 = team.memberships["ann1"], team.memberships["ann2"]
        add_member(self.other_project, self.ann2)

        self.regular = make_comparison(
            self.project, "r1", model="MODELNAME-SECRET-7Q", metadata={"note": "METADATA-SECRET-5W"},
            source_preference="a",
        )
        self.gold = make_comparison(
            self.project, "g1", gold="b", model="GOLDMODEL-SECRET-3K", metadata={"note": "GOLDMETA-SECRET-9X"}
        )
        self.spare = [make_comparison(self.project, f"s{i}", model="MODELNAME-SECRET-7Q") for i in range(3)]
        make_comparison(self.other_project, "o1", model="MODELNAME-SECRET-7Q", metadata={"n": "METADATA-SECRET-5W"})

        # ann2 judged the regular and the gold comparison and holds an active assignment.
        self.ann2_judgments = [
            self._judge(self.ann2, self.regular, "OTHER-RATIONALE-SECRET-2M"),
            self._judge(self.ann2, self.gold, "OTHER-GOLD-RATIONALE-SECRET-8P"),
        ]
        self.ann2_active = queue.next_assignment(self.ann2, self.project)
        assert self.ann2_active is not None
        # ann1 judged the regular comparison too (own rationale may be shown to ann1).
        self.ann1_judgment = self._judge(self.ann1, self.regular, "my own words")

    def _judge(self, user, comparison, rationale):
        return judge(user, comparison, pool=self.pool, rationale=rationale)

    def ids(self) -> dict[str, list[int]]:
        comparisons = [self.gold.pk, self.regular.pk]
        # Parameters of unknown kind (exports, runs…): ids that also name hidden objects here.
        everything = sorted({self.gold.pk, self.ann2_active.pk, self.ann2_judgments[1].pk})
        return {
            "project": [self.project.pk, self.other_project.pk],
            "assignment": [self.ann2_active.pk, *[j.assignment_id for j in self.ann2_judgments]],
            "judgment": [j.pk for j in self.ann2_judgments],
            "comparison": comparisons,
            "gold": comparisons,
            "pool": [self.pool.pk],
            "membership": [self.m2.pk],
            "user": [self.ann2.pk],
            "annotator": [self.ann2.pk],
            "*": everything,
        }


@pytest.fixture
def scene():
    return Scene()


def client_for(user) -> APIClient:
    c = APIClient()
    if user is not None:
        c.force_login(user)
    return c


# --- walking the URL space -------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"<(?:(?P<conv>\w+):)?(?P<name>\w+)>")


def _pattern_text(pattern) -> str | None:
    """A route string with ``<conv:name>`` placeholders, or None if the regex is too complex."""
    if isinstance(pattern, RoutePattern):
        return str(pattern)
    if isinstance(pattern, RegexPattern):
        text = str(pattern.regex.pattern).lstrip("^").rstrip("$").replace("\\Z", "")
        text = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"<str:\1>", text)
        if re.search(r"[\\()\[\]*+?|{}]", text):
            return None
        return text
    return None


def iter_routes(resolver=None, prefix=""):
    resolver = resolver or get_resolver()
    for entry in resolver.url_patterns:
        text = _pattern_text(entry.pattern)
        if text is None:
            continue
        if isinstance(entry, URLResolver):
            if entry.app_name == "admin" or entry.namespace == "admin":
                continue  # Django admin: staff only, checked separately
            yield from iter_routes(entry, prefix + text)
        elif isinstance(entry, URLPattern):
            yield "/" + prefix + text


# A parameter's kind, from its name or else from the path segment before it.
_SEGMENT_KINDS = {
    "projects": "project", "assignments": "assignment", "judgments": "judgment", "comparisons": "comparison",
    "pools": "pool", "members": "membership", "memberships": "membership", "users": "user", "gold": "gold",
}


def _candidates(name: str, conv: str | None, segment: str, ids: dict[str, list[int]]) -> list[str]:
    if conv == "uuid":
        return []
    if conv in ("str", "slug", "path"):
        return [name, "1"]
    for key, values in ids.items():
        if key != "*" and key in name.lower():
            return [str(v) for v in values]
    kind = _SEGMENT_KINDS.get(segment)
    if kind is not None:
        return [str(v) for v in ids[kind]]
    return [str(v) for v in ids["*"]]


def expand(route: str, ids) -> list[str]:
    slots = list(_PLACEHOLDER.finditer(route))
    if not slots:
        return [route]
    choices = []
    for m in slots:
        before = route[: m.start()].rstrip("/").rsplit("/", 1)[-1]
        choices.append(_candidates(m["name"], m["conv"], before, ids))
    urls = []
    for combo in itertools.product(*choices):
        out, last = [], 0
        for m, value in zip(slots, combo):
            out.append(route[last:m.start()])
            out.append(value)
            last = m.end()
        out.append(route[last:])
        urls.append("".join(out))
    return urls


def _body(response) -> bytes:
    if getattr(response, "streaming", False):
        data = b"".join(response.streaming_content)
        response.close()
        return data
    return response.content


def _keys(value) -> set[str]:
    if isinstance(value, dict):
        return set(value) | set().union(*(_keys(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_keys(v) for v in value)) if value else set()
    return set()


VARIANTS = (
    {},  # the API's default: JSON
    {"HTTP_ACCEPT": "text/html"},  # browsable API and HTML pages
    {"HTTP_ACCEPT": "text/html", "HTTP_HX_REQUEST": "true"},  # HTMX partials
)


def _all_gets(scene, user):
    ids = scene.ids()
    client = client_for(user)
    routes = sorted(set(iter_routes()))
    assert "/api/projects/<int:project_pk>/next/" in routes  # the walk reaches the API
    # ... and the removal pages, with ids of hidden objects for their parameters.
    assert "/projects/<int:pk>/members/<int:membership_id>/remove/" in routes
    assert "/projects/<int:pk>/pools/<int:pool_id>/delete/" in routes
    for route in routes:
        for path in expand(route, ids):
            for headers in VARIANTS:
                response = client.get(path, **headers)
                yield route, path, headers, response, _body(response)


@pytest.mark.parametrize("who", ["ann1", "outsider", "anonymous"])
def test_no_url_leaks_hidden_data(scene, who):
    user = None if who == "anonymous" else getattr(scene, who)
    checked = 0
    for route, path, headers, response, body in _all_gets(scene, user):
        checked += 1
        text = body.decode("utf-8", errors="replace")
        where = f"GET {path} {headers} as {who} -> {response.status_code}"
        for marker in SECRET_MARKERS:
            assert marker not in text, f"{where} leaks {marker}"
        if path.startswith(SCHEMA_PATHS):
            continue
        for word in FORBIDDEN_TEXT:
            assert word not in text, f"{where} names {word!r}"
        if response.get("Content-Type", "").startswith("application/json") and body:
            keys = _keys(json.loads(body))
            assert not keys & FORBIDDEN_KEYS, f"{where} has keys {sorted(keys & FORBIDDEN_KEYS)}"
        if who == "anonymous" and path.startswith("/api/") and not path.startswith("/api/auth/"):
            assert response.status_code in (401, 403), where
        if who == "outsider" and "project" in route and f"/{scene.project.pk}/" in path:
            assert response.status_code in (302, 401, 403, 404, 405), where
    assert checked > 50


def _state():
    return {
        "projects": Project.objects.count(),
        "pools": Pool.objects.count(),
        "memberships": sorted(Membership.objects.values_list("pk", "role", "pool_id", "excluded")),
        "judgments": Judgment.objects.count(),
        "assignments": sorted(Assignment.objects.values_list("pk", "status")),
        "slots": sorted(Comparison.objects.values_list("pk", "slots_taken", "is_open")),
        "gold": GoldAnswer.objects.count(),
    }


@pytest.mark.parametrize("who", ["researcher", "ann1", "outsider", "anonymous"])
def test_no_url_deletes_anything_for_non_admins(scene, who):
    """DELETE on every URL (the same walk as above): only project admins may remove members
    and pools, so for anybody else the API refuses and nothing changes anywhere."""
    user = None if who == "anonymous" else getattr(scene, who)
    client = client_for(user)
    before = _state()
    for route in sorted(set(iter_routes())):
        for path in expand(route, scene.ids()):
            response = client.delete(path)
            _body(response)
            if path.startswith("/api/"):
                where = f"DELETE {path} as {who} -> {response.status_code}"
                assert response.status_code in (401, 403, 404, 405), where
    assert _state() == before


def test_annotator_sees_own_judgment_but_nobody_elses(scene):
    c = client_for(scene.ann1)
    body = c.get(reverse("annotate-api:my-judgments", args=[scene.project.pk])).json()
    assert [j["rationale"] for j in body["results"]] == ["my own words"]


def test_admin_pages_redirect_annotators(scene):
    r = client_for(scene.ann1).get("/admin/annotate/goldanswer/")
    assert r.status_code == 302 and "/admin/login/" in r["Location"]


# --- role gates ------------------------------------------------------------------------------


def api(name, *args):
    return reverse(f"annotate-api:{name}", args=args)


def reader_only_urls(scene):
    p = scene.project.pk
    return [api("comparison-list", p), api("pool-list", p), api("pool-detail", p, scene.pool.pk)]


def admin_only_urls(scene):
    p = scene.project.pk
    return [api("gold-list", p), api("membership-list", p), api("membership-detail", p, scene.m2.pk)]


def test_reader_endpoints_refuse_annotators_outsiders_and_anonymous(scene):
    for path in reader_only_urls(scene) + admin_only_urls(scene):
        assert client_for(scene.ann1).get(path).status_code == 403, path
        assert client_for(scene.outsider).get(path).status_code == 403, path
        assert APIClient().get(path).status_code == 401, path
    for path in reader_only_urls(scene):
        assert client_for(scene.researcher).get(path).status_code == 200, path
        assert client_for(scene.admin).get(path).status_code == 200, path


def test_admin_endpoints_refuse_researchers(scene):
    for path in admin_only_urls(scene):
        assert client_for(scene.researcher).get(path).status_code == 403, path
        assert client_for(scene.admin).get(path).status_code == 200, path
    lines = {"lines": [{"prompt": "p", "response_a": "a", "response_b": "b"}]}
    path = api("comparison-import", scene.project.pk)
    for user in (scene.researcher, scene.ann1, scene.outsider):
        assert client_for(user).post(path, lines, format="json").status_code == 403
    assert APIClient().post(path, lines, format="json").status_code == 401


def test_writes_refused_to_non_admins(scene):
    p = scene.project.pk
    writes = [
        ("patch", api("project-detail", p), {"gold_rate": 0.9}),
        ("post", api("pool-list", p), {"name": "new"}),
        ("patch", api("pool-detail", p, scene.pool.pk), {"target_share": 0.1}),
        ("post", api("membership-list", p), {"username": "stranger", "role": "admin"}),
        ("patch", api("membership-detail", p, scene.m1.pk), {"role": "admin"}),
        ("delete", api("membership-detail", p, scene.m2.pk), None),
        ("delete", api("pool-detail", p, scene.pool.pk), None),
    ]
    for user in (scene.researcher, scene.ann1, scene.outsider):
        for method, path, data in writes:
            r = getattr(client_for(user), method)(path, data, format="json")
            assert r.status_code == 403, (user, method, path, r.status_code)
    for method, path, data in writes:
        assert getattr(APIClient(), method)(path, data, format="json").status_code == 401, (method, path)
    assert Membership.objects.get(pk=scene.m1.pk).role == Role.ANNOTATOR
    assert not Membership.objects.filter(user=scene.outsider).exists()
    assert Membership.objects.filter(pk=scene.m2.pk).exists() and Pool.objects.filter(pk=scene.pool.pk).exists()


def test_removal_pages_refuse_non_admins(scene):
    """The members' "Remove from project" and the pools' "Delete" pages: admins only, for the
    confirm page (GET) and the removal itself (POST)."""
    p = scene.project.pk
    paths = [
        reverse("project_member_remove", args=[p, scene.m2.pk]),
        reverse("project_pool_delete", args=[p, scene.pool.pk]),
    ]
    for user in (scene.researcher, scene.ann1, scene.ann2, scene.outsider):
        for path in paths:
            assert client_for(user).get(path).status_code == 403, (user, path)
            assert client_for(user).post(path).status_code == 403, (user, path)
    for path in paths:
        r = APIClient().post(path)
        assert r.status_code == 302 and "/accounts/login/" in r["Location"], path
    assert Membership.objects.filter(pk=scene.m2.pk).exists() and Pool.objects.filter(pk=scene.pool.pk).exists()
    for path in paths:
        assert client_for(scene.admin).get(path).status_code == 200, path


def test_member_endpoints_refuse_outsiders(scene):
    p = scene.project.pk
    for path in (api("project-detail", p), api("progress", p), api("my-judgments", p), api("next", p)):
        assert client_for(scene.outsider).get(path).status_code == 403, path
        assert APIClient().get(path).status_code == 401, path
    assert client_for(scene.ann1).get(api("project-detail", 987654)).status_code == 404


def test_annotator_progress_is_their_own(scene):
    body = client_for(scene.ann1).get(api("progress", scene.project.pk)).json()
    assert body["scope"] == "annotator" and set(body) == {"scope", "done", "skipped", "remaining"}
    assert body["done"] == 1


# --- other annotators' assignments -----------------------------------------------------------


def test_cannot_fetch_submit_or_skip_another_annotators_assignment(scene):
    target = scene.ann2_active
    for user in (scene.ann1, scene.admin, scene.researcher, scene.outsider):
        c = client_for(user)
        assert c.get(api("assignment-detail", target.pk)).status_code == 404
        assert c.post(api("submit-judgment", target.pk), {"choice": "left"}, format="json").status_code == 404
        assert c.post(api("skip", target.pk)).status_code == 404
    assert APIClient().post(api("skip", target.pk)).status_code == 401
    target.refresh_from_db()
    assert target.status == AssignmentStatus.ACTIVE
    assert not Judgment.objects.filter(assignment=target).exists()


def test_cannot_resubmit_another_annotators_finished_assignment(scene):
    done = scene.ann2_judgments[0].assignment_id
    r = client_for(scene.ann1).post(api("submit-judgment", done), {"choice": "right"}, format="json")
    assert r.status_code == 404
    assert "OTHER-RATIONALE" not in r.content.decode()


def test_removed_annotator_cannot_submit_own_assignment(scene):
    item = client_for(scene.ann1).get(api("next", scene.project.pk)).json()
    Membership.objects.filter(pk=scene.m1.pk).update(role=Role.RESEARCHER)
    r = client_for(scene.ann1).post(api("submit-judgment", item["assignment_id"]), {"choice": "left"}, format="json")
    assert r.status_code == 403
    Membership.objects.filter(pk=scene.m1.pk).update(role=Role.ANNOTATOR, excluded=True)
    r = client_for(scene.ann1).post(api("submit-judgment", item["assignment_id"]), {"choice": "left"}, format="json")
    assert r.status_code == 403
    assert not Judgment.objects.filter(assignment_id=item["assignment_id"]).exists()


def test_gold_item_served_to_annotator_carries_no_gold_hint(scene):
    Project.objects.filter(pk=scene.project.pk).update(gold_rate=1.0)
    c = client_for(scene.ann1)
    item = c.get(api("next", scene.project.pk)).json()
    assert item["prompt"] == "prompt g1"
    regular_keys = set(item)
    text = json.dumps(item)
    for marker in SECRET_MARKERS:
        assert marker not in text
    r = c.post(api("submit-judgment", item["assignment_id"]), {"choice": "right"}, format="json")
    assert r.status_code == 201
    assert set(r.json()["judgment"]) == {"id", "assignment_id", "choice", "strength", "rationale", "seconds",
                                         "created_at"}
    assert set(r.json()["next"]) == regular_keys
