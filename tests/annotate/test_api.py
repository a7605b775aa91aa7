"""The annotate REST API: every endpoint's happy path and its validation errors."""
from __future__ import annotations

import io
import json
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotate import queue
from annotate.models import Assignment, AssignmentStatus, Choice, Comparison, Judgment, Membership, Pool
from annotate.models import Project, Role
from tests.factories import TEST_PASSWORD, make_comparison, make_pool, make_project, make_team, make_user

pytestmark = pytest.mark.django_db

User = get_user_model()
ITEM_KEYS = {"assignment_id", "prompt", "prompt_messages", "left", "right", "allow_ties", "expires_at", "progress"}


def url(name, *args):
    return reverse(f"annotate-api:{name}", args=args)


class World:
    """A project with an admin, a researcher, two annotators, an outsider and some comparisons."""

    def __init__(self, n=4, **project_kwargs):
        self.staff = make_user("staff", password=TEST_PASSWORD, is_staff=True)
        self.project = make_project(**{"name": "Helpfulness", "overlap": 2, "allow_ties": True, **project_kwargs})
        self.pool = make_pool(self.project, "EU", target_share=0.5)
        team = make_team(self.project, pool=self.pool, password=TEST_PASSWORD)
        self.admin, self.researcher, self.outsider = team.admin, team.researcher, team.outsider
        self.ann1, self.ann2 = team.annotators
        self.comparisons = [make_comparison(self.project, i, model_a="m-a", model_b="m-b") for i in range(n)]

    def client(self, user=None) -> APIClient:
        c = APIClient()
        if user is not None:
            c.force_authenticate(user)
        return c


@pytest.fixture
def world():
    return World()


# --- auth ------------------------------------------------------------------------------------


def test_token_endpoint_and_token_auth(world):
    anon = APIClient()
    r = anon.post(url("token"), {"username": "ann1", "password": TEST_PASSWORD}, format="json")
    assert r.status_code == 200
    token = r.json()["token"]
    assert Token.objects.get(user=world.ann1).key == token
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    r = client.get(url("project-list"))
    assert r.status_code == 200
    assert [p["name"] for p in r.json()["results"]] == ["Helpfulness"]


def test_token_endpoint_rejects_wrong_password(world):
    r = APIClient().post(url("token"), {"username": "ann1", "password": "nope"}, format="json")
    assert r.status_code == 400


def test_anonymous_gets_401(world):
    r = APIClient().get(url("project-list"))
    assert r.status_code == 401
    assert r["WWW-Authenticate"].startswith("Token")


def test_session_auth_works(world):
    c = APIClient()
    assert c.login(username="researcher", password=TEST_PASSWORD)
    assert c.get(url("project-detail", world.project.pk)).status_code == 200


# --- projects --------------------------------------------------------------------------------


def test_staff_creates_project_and_becomes_admin(world):
    r = world.client(world.staff).post(
        url("project-list"), {"name": "Safety", "overlap": 3, "gold_rate": 0.2, "allow_ties": False}, format="json"
    )
    assert r.status_code == 201, r.json()
    body = r.json()
    assert body["name"] == "Safety" and body["overlap"] == 3 and body["role"] == "admin"
    project = Project.objects.get(name="Safety")
    assert project.created_by == world.staff
    assert Membership.objects.get(project=project, user=world.staff).role == Role.ADMIN


def test_non_staff_cannot_create_project(world):
    r = world.client(world.admin).post(url("project-list"), {"name": "Nope"}, format="json")
    assert r.status_code == 403
    assert not Project.objects.filter(name="Nope").exists()


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"name": "X", "gold_rate": 1.5}, "gold_rate"),
        ({"name": "X", "overlap": 0}, "overlap"),
        ({"name": "Helpfulness"}, "name"),
        ({"overlap": 2}, "name"),
        ({"name": "X", "assignment_timeout_s": 1}, "assignment_timeout_s"),
    ],
)
def test_create_project_validation(world, payload, field):
    r = world.client(world.staff).post(url("project-list"), payload, format="json")
    assert r.status_code == 400
    assert field in r.json()


def test_project_list_only_projects_with_a_role(world):
    Project.objects.create(name="Secret")
    names = lambda u: [p["name"] for p in world.client(u).get(url("project-list")).json()["results"]]  # noqa: E731
    assert names(world.ann1) == ["Helpfulness"]
    assert names(world.outsider) == []
    superuser = User.objects.create_superuser("root", password="pw-root")
    assert names(superuser) == ["Helpfulness", "Secret"]


def test_annotator_sees_short_project(world):
    body = world.client(world.ann1).get(url("project-detail", world.project.pk)).json()
    assert set(body) == {"id", "name", "instructions", "allow_ties", "role", "created_at"}
    assert body["role"] == "annotator"
    full = world.client(world.researcher).get(url("project-detail", world.project.pk)).json()
    assert full["gold_rate"] == 0.0 and full["overlap"] == 2 and full["role"] == "researcher"


def test_project_retrieve_errors(world):
    assert world.client(world.outsider).get(url("project-detail", world.project.pk)).status_code == 403
    assert world.client(world.admin).get(url("project-detail", 99999)).status_code == 404


def test_admin_updates_project_and_overlap_reopens(world):
    c = world.comparisons[0]
    Comparison.objects.filter(pk=c.pk).update(slots_taken=2, n_judgments=2, is_open=False)
    r = world.client(world.admin).patch(url("project-detail", world.project.pk), {"overlap": 3}, format="json")
    assert r.status_code == 200 and r.json()["overlap"] == 3
    assert Comparison.objects.get(pk=c.pk).is_open
    r = world.client(world.admin).patch(url("project-detail", world.project.pk), {"overlap": 1}, format="json")
    assert r.status_code == 200
    assert not Comparison.objects.get(pk=c.pk).is_open


def test_researcher_and_annotator_cannot_update_project(world):
    for user in (world.researcher, world.ann1, world.outsider):
        r = world.client(user).patch(url("project-detail", world.project.pk), {"overlap": 5}, format="json")
        assert r.status_code == 403
    assert Project.objects.get(pk=world.project.pk).overlap == 2


# --- pools -----------------------------------------------------------------------------------


def test_pools_crud(world):
    admin = world.client(world.admin)
    r = admin.post(
        url("pool-list", world.project.pk),
        {"name": "US", "attributes": {"region": "us", "language": "en"}, "target_share": 0.3},
        format="json",
    )
    assert r.status_code == 201, r.json()
    pool_id = r.json()["id"]
    listed = world.client(world.researcher).get(url("pool-list", world.project.pk)).json()["results"]
    assert [(p["name"], p["members"]) for p in listed] == [("EU", 2), ("US", 0)]
    r = admin.patch(url("pool-detail", world.project.pk, pool_id), {"target_share": 0.5}, format="json")
    assert r.status_code == 200 and r.json()["target_share"] == 0.5
    assert world.client(world.researcher).get(url("pool-detail", world.project.pk, pool_id)).status_code == 200


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"name": "EU", "target_share": 0.1}, "name"),
        ({"name": "US", "target_share": 0.6}, "target_share"),
        ({"name": "US", "target_share": -0.1}, "target_share"),
        ({"name": "US", "attributes": [1, 2]}, "attributes"),
    ],
)
def test_pool_validation(world, payload, field):
    r = world.client(world.admin).post(url("pool-list", world.project.pk), payload, format="json")
    assert r.status_code == 400
    assert field in r.json()


def test_pool_writes_are_admin_only(world):
    r = world.client(world.researcher).post(url("pool-list", world.project.pk), {"name": "X"}, format="json")
    assert r.status_code == 403
    assert world.client(world.ann1).get(url("pool-list", world.project.pk)).status_code == 403


def test_pool_of_another_project_is_404(world):
    other = Project.objects.create(name="Other")
    pool = Pool.objects.create(project=other, name="Elsewhere")
    assert world.client(world.admin).get(url("pool-detail", world.project.pk, pool.pk)).status_code == 404


def test_delete_unused_pool_is_204_then_404(world):
    admin = world.client(world.admin)
    spare = Pool.objects.create(project=world.project, name="Spare")
    r = admin.delete(url("pool-detail", world.project.pk, spare.pk))
    assert r.status_code == 204 and not r.content
    assert not Pool.objects.filter(pk=spare.pk).exists()
    assert admin.delete(url("pool-detail", world.project.pk, spare.pk)).status_code == 404


def test_delete_pool_with_members_is_409_and_deletes_nothing(world):
    r = world.client(world.admin).delete(url("pool-detail", world.project.pk, world.pool.pk))
    assert r.status_code == 409
    detail = r.json()["detail"]
    assert "it has 2 members" in detail and "Move its 2 members to another pool" in detail
    assert Pool.objects.filter(pk=world.pool.pk).exists()
    assert Membership.objects.filter(pool=world.pool).count() == 2


def test_delete_pool_with_judgments_is_409_even_without_members(world):
    a = queue.next_assignment(world.ann1, world.project)
    queue.submit_judgment(world.ann1, a.pk, choice="left")
    Membership.objects.filter(pool=world.pool).update(pool=None)
    r = world.client(world.admin).delete(url("pool-detail", world.project.pk, world.pool.pk))
    assert r.status_code == 409
    assert "it has 1 judgment" in r.json()["detail"] and "A pool with judgments is kept" in r.json()["detail"]
    assert Judgment.objects.get(assignment=a).pool_id == world.pool.pk


def test_delete_pool_is_admin_only(world):
    spare = Pool.objects.create(project=world.project, name="Spare")
    path = url("pool-detail", world.project.pk, spare.pk)
    for user in (world.researcher, world.ann1, world.outsider, world.staff):
        assert world.client(user).delete(path).status_code == 403
    assert world.client().delete(path).status_code == 401
    assert Pool.objects.filter(pk=spare.pk).exists()


# --- memberships -----------------------------------------------------------------------------


def test_add_member_by_username_and_exclude(world):
    User.objects.create_user("newbie")
    admin = world.client(world.admin)
    r = admin.post(
        url("membership-list", world.project.pk),
        {"username": "newbie", "role": "annotator", "pool": world.pool.pk},
        format="json",
    )
    assert r.status_code == 201, r.json()
    body = r.json()
    assert body["username"] == "newbie" and body["pool"] == world.pool.pk and body["excluded"] is False
    r = admin.patch(url("membership-detail", world.project.pk, body["id"]), {"excluded": True}, format="json")
    assert r.status_code == 200 and r.json()["excluded"] is True
    listed = admin.get(url("membership-list", world.project.pk), {"excluded": "true"}).json()["results"]
    assert [m["username"] for m in listed] == ["newbie"]
    listed = admin.get(url("membership-list", world.project.pk), {"role": "annotator"}).json()["results"]
    assert sorted(m["username"] for m in listed) == ["ann1", "ann2", "newbie"]


def test_excluded_annotator_is_not_served_then_included_again(world):
    m = Membership.objects.get(user=world.ann1, project=world.project)
    admin = world.client(world.admin)
    admin.patch(url("membership-detail", world.project.pk, m.pk), {"excluded": True}, format="json")
    r = world.client(world.ann1).get(url("next", world.project.pk))
    assert r.status_code == 403
    assert "paused" in r.json()["detail"]
    admin.patch(url("membership-detail", world.project.pk, m.pk), {"excluded": False}, format="json")
    assert world.client(world.ann1).get(url("next", world.project.pk)).status_code == 200


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"username": "ghost", "role": "annotator"}, "username"),
        ({"username": "ann1", "role": "annotator"}, "username"),
        ({"username": "outsider", "role": "boss"}, "role"),
        ({"username": "outsider", "role": "annotator", "weight_override": 2}, "weight_override"),
    ],
)
def test_membership_validation(world, payload, field):
    r = world.client(world.admin).post(url("membership-list", world.project.pk), payload, format="json")
    assert r.status_code == 400
    assert field in r.json()


def test_membership_pool_must_belong_to_project(world):
    other = Project.objects.create(name="Other")
    pool = Pool.objects.create(project=other, name="Elsewhere")
    r = world.client(world.admin).post(
        url("membership-list", world.project.pk),
        {"username": "outsider", "role": "annotator", "pool": pool.pk},
        format="json",
    )
    assert r.status_code == 400 and "pool" in r.json()


def test_membership_cannot_change_user_or_drop_last_admin(world):
    admin = world.client(world.admin)
    m = Membership.objects.get(user=world.ann1, project=world.project)
    r = admin.patch(url("membership-detail", world.project.pk, m.pk), {"username": "ann2"}, format="json")
    assert r.status_code == 400 and "username" in r.json()
    me = Membership.objects.get(user=world.admin, project=world.project)
    r = admin.patch(url("membership-detail", world.project.pk, me.pk), {"role": "annotator"}, format="json")
    assert r.status_code == 400 and "role" in r.json()


def test_memberships_are_admin_only(world):
    for user in (world.researcher, world.ann1, world.outsider):
        assert world.client(user).get(url("membership-list", world.project.pk)).status_code == 403


def test_delete_membership_releases_held_item_and_keeps_judgments(world):
    world.project.overlap = 1
    world.project.save()
    first = queue.next_assignment(world.ann1, world.project)
    judgment = queue.submit_judgment(world.ann1, first.pk, choice="left")
    held = queue.next_assignment(world.ann1, world.project)
    assert Comparison.objects.get(pk=held.comparison_id).slots_taken == 1
    m = Membership.objects.get(user=world.ann1, project=world.project)
    r = world.client(world.admin).delete(url("membership-detail", world.project.pk, m.pk))
    assert r.status_code == 204
    assert not Membership.objects.filter(pk=m.pk).exists()
    assert Judgment.objects.filter(pk=judgment.pk).exists()
    released = Comparison.objects.get(pk=held.comparison_id)
    assert (released.slots_taken, released.is_open) == (0, True)
    assert Assignment.objects.get(pk=held.pk).status == AssignmentStatus.EXPIRED
    # ann1 lost the project; ann2 is served both open items, the released one among them.
    ann1 = world.client(world.ann1)
    assert ann1.get(url("next", world.project.pk)).status_code == 403
    assert ann1.get(url("project-detail", world.project.pk)).status_code == 403
    assert ann1.get(url("assignment-detail", held.pk)).status_code == 403
    assert ann1.post(url("submit-judgment", held.pk), {"choice": "left"}, format="json").status_code == 403
    assert ann1.get(url("project-list")).json()["results"] == []
    served = []
    ann2 = world.client(world.ann2)
    while (r := ann2.get(url("next", world.project.pk))).status_code == 200:
        assignment = Assignment.objects.get(pk=r.json()["assignment_id"])
        served.append(assignment.comparison_id)
        ann2.post(url("skip", assignment.pk))
    assert r.status_code == 204
    assert held.comparison_id in served and judgment.comparison_id not in served
    assert world.client(world.admin).delete(url("membership-detail", world.project.pk, m.pk)).status_code == 404


def test_delete_last_admin_membership_is_409(world):
    me = Membership.objects.get(user=world.admin, project=world.project)
    r = world.client(world.admin).delete(url("membership-detail", world.project.pk, me.pk))
    assert r.status_code == 409
    assert "You are the last admin of this project" in r.json()["detail"]
    assert Membership.objects.filter(pk=me.pk, role=Role.ADMIN).exists()
    # With a second admin, leaving is allowed, and the former admin is shut out.
    other = Membership.objects.get(user=world.researcher, project=world.project)
    r = world.client(world.admin).patch(
        url("membership-detail", world.project.pk, other.pk), {"role": "admin"}, format="json"
    )
    assert r.status_code == 200
    assert world.client(world.admin).delete(url("membership-detail", world.project.pk, me.pk)).status_code == 204
    assert world.client(world.admin).get(url("membership-list", world.project.pk)).status_code == 403
    r = world.client(world.researcher).delete(url("membership-detail", world.project.pk, other.pk))
    assert r.status_code == 409 and "last admin" in r.json()["detail"]


def test_delete_membership_is_admin_only(world):
    m = Membership.objects.get(user=world.ann2, project=world.project)
    path = url("membership-detail", world.project.pk, m.pk)
    for user in (world.researcher, world.ann1, world.ann2, world.outsider, world.staff):
        assert world.client(user).delete(path).status_code == 403
    assert world.client().delete(path).status_code == 401
    assert Membership.objects.filter(pk=m.pk).exists()


def test_delete_membership_of_another_project_is_404(world):
    other = Project.objects.create(name="Other")
    foreign = Membership.objects.create(project=other, user=world.outsider, role=Role.ADMIN)
    r = world.client(world.admin).delete(url("membership-detail", world.project.pk, foreign.pk))
    assert r.status_code == 404
    assert Membership.objects.filter(pk=foreign.pk).exists()


# --- import ----------------------------------------------------------------------------------

GOOD_LINES = [
    {"prompt": "Say hi.", "response_a": "Hi!", "response_b": "Hello there.", "model_a": "m1", "model_b": "m2"},
    {"prompt": "2+2?", "response_a": "4", "response_b": "5", "gold": "a"},
    {"prompt": "Best fruit?", "chosen": "Mango.", "rejected": "Rocks."},
]


def jsonl(lines) -> bytes:
    return "\n".join(json.dumps(line) for line in lines).encode()


def test_import_json_lines(world):
    before = Comparison.objects.count()
    r = world.client(world.admin).post(
        url("comparison-import", world.project.pk), {"lines": GOOD_LINES}, format="json"
    )
    assert r.status_code == 201, r.json()
    assert r.json() == {
        "lines": 3, "created": 3, "duplicates": 0, "gold": 1, "gold_marked": 0, "prompts_created": 3,
        "responses_created": 6, "votes_source": "", "votes_created": 0, "votes_reoriented": 0,
        "gold_twin_lines": [],
    }
    assert Comparison.objects.count() == before + 3
    # The same lines again are duplicates; a bare list body works too.
    r = world.client(world.admin).post(url("comparison-import", world.project.pk), GOOD_LINES, format="json")
    assert r.status_code == 201 and r.json()["created"] == 0 and r.json()["duplicates"] == 3


def test_import_multipart_jsonl_and_csv_files(world):
    admin = world.client(world.admin)
    upload = io.BytesIO(jsonl(GOOD_LINES))
    upload.name = "data.jsonl"
    r = admin.post(url("comparison-import", world.project.pk), {"file": upload, "round": 2}, format="multipart")
    assert r.status_code == 201, r.json()
    assert r.json()["created"] == 3
    assert Comparison.objects.filter(project=world.project, round=2).count() == 3
    csv_file = io.BytesIO(b"prompt,response_a,response_b\nWhy?,Because.,No idea.\n")
    csv_file.name = "data.csv"
    r = admin.post(url("comparison-import", world.project.pk), {"file": csv_file}, format="multipart")
    assert r.status_code == 201, r.json()
    assert r.json()["created"] == 1


def test_import_errors_name_line_and_field_and_import_nothing(world):
    before = Comparison.objects.count()
    bad = [GOOD_LINES[0], {"prompt": "x", "response_a": "y"}, {"prompt": "", "response_a": "a", "response_b": "b"},
           {"prompt": "p", "response_a": "a", "response_b": "b", "gold": "maybe"}]
    r = world.client(world.admin).post(url("comparison-import", world.project.pk), {"lines": bad}, format="json")
    assert r.status_code == 400
    errors = r.json()["errors"]
    where = {(e["line"], e["field"]) for e in errors}
    assert {(2, "response_b"), (3, "prompt"), (4, "gold")} <= where
    assert all(e["message"] for e in errors)
    assert Comparison.objects.count() == before


def test_import_bad_json_file_names_the_line(world):
    upload = io.BytesIO(jsonl(GOOD_LINES[:1]) + b"\n{not json\n")
    upload.name = "bad.jsonl"
    r = world.client(world.admin).post(
        url("comparison-import", world.project.pk), {"file": upload}, format="multipart"
    )
    assert r.status_code == 400
    assert r.json()["errors"][0]["line"] == 2
    assert "JSON" in r.json()["errors"][0]["message"]


def test_import_non_object_line_is_reported_by_line(world):
    r = world.client(world.admin).post(
        url("comparison-import", world.project.pk), {"lines": [GOOD_LINES[0], "just text"]}, format="json"
    )
    assert r.status_code == 400
    assert r.json()["errors"][0]["line"] == 2


@pytest.mark.parametrize(
    "payload, fmt, field",
    [({}, "json", "lines"), ({"lines": []}, "json", "lines"), ({"round": -1, "lines": GOOD_LINES}, "json", "round")],
)
def test_import_request_errors(world, payload, fmt, field):
    r = world.client(world.admin).post(url("comparison-import", world.project.pk), payload, format=fmt)
    assert r.status_code == 400
    assert any(e["field"] == field and e["line"] == 0 for e in r.json()["errors"]), r.json()


def test_import_is_admin_only(world):
    for user in (world.researcher, world.ann1, world.outsider):
        r = world.client(user).post(url("comparison-import", world.project.pk), {"lines": GOOD_LINES}, format="json")
        assert r.status_code == 403
    assert not Comparison.objects.filter(prompt__text="Say hi.").exists()


# --- comparisons and gold --------------------------------------------------------------------


def test_comparison_list_for_readers_without_gold_answers(world):
    make_comparison(world.project, 100, gold="b", source_preference="a")
    for user in (world.admin, world.researcher):
        body = world.client(user).get(url("comparison-list", world.project.pk)).json()
        assert body["count"] == 5
        first = body["results"][0]
        assert first["response_a"]["model_name"] == "m-a" and first["prompt"]["text"] == "prompt 0"
        for row in body["results"]:
            assert "gold" not in row and "answer" not in row and "source_preference" not in row
    gold_only = world.client(world.researcher).get(url("comparison-list", world.project.pk), {"is_gold": "true"})
    assert [c["prompt"]["text"] for c in gold_only.json()["results"]] == ["prompt 100"]
    bad = world.client(world.researcher).get(url("comparison-list", world.project.pk), {"round": "x"})
    assert bad.status_code == 400


def test_gold_endpoint_admin_only(world):
    c = make_comparison(world.project, 100, gold="tie")
    r = world.client(world.admin).get(url("gold-list", world.project.pk))
    assert r.status_code == 200
    assert r.json()["results"] == [{"comparison": c.pk, "answer": "tie"}]
    for user in (world.researcher, world.ann1, world.outsider):
        assert world.client(user).get(url("gold-list", world.project.pk)).status_code == 403


# --- the annotator's queue -------------------------------------------------------------------


def test_next_submit_flow(world):
    ann = world.client(world.ann1)
    r = ann.get(url("next", world.project.pk))
    assert r.status_code == 200
    item = r.json()
    assert set(item) == ITEM_KEYS
    assert set(item["left"]) == {"text"} and set(item["right"]) == {"text"}
    assert item["prompt"] == "prompt 0" and item["allow_ties"] is True
    assert item["progress"] == {"done": 0, "remaining": 4}
    # Asking again returns the same held item.
    assert ann.get(url("next", world.project.pk)).json()["assignment_id"] == item["assignment_id"]

    r = ann.post(
        url("submit-judgment", item["assignment_id"]),
        {"choice": "left", "strength": 2, "rationale": "  clearer  ", "seconds": 0.5},
        format="json",
    )
    assert r.status_code == 201, r.json()
    body = r.json()
    assert body["judgment"]["choice"] == "left" and body["judgment"]["strength"] == 2
    assert body["judgment"]["rationale"] == "clearer"
    assert body["judgment"]["assignment_id"] == item["assignment_id"]
    assert set(body["next"]) == ITEM_KEYS
    assert body["next"]["assignment_id"] != item["assignment_id"]
    assert body["next"]["prompt"] == "prompt 1"
    assert body["progress"] == {"done": 1, "remaining": 3}

    judgment = Judgment.objects.get(annotator=world.ann1)
    assignment = Assignment.objects.get(pk=item["assignment_id"])
    assert judgment.a_on_left == assignment.a_on_left
    assert judgment.choice == (Choice.A if assignment.a_on_left else Choice.B)
    left_text = item["left"]["text"]
    assert left_text == ("response A0" if assignment.a_on_left else "response B0")


def test_double_submit_returns_same_judgment_and_next_without_second_row(world):
    ann = world.client(world.ann1)
    item = ann.get(url("next", world.project.pk)).json()
    first = ann.post(url("submit-judgment", item["assignment_id"]), {"choice": "right"}, format="json")
    assert first.status_code == 201
    again = ann.post(url("submit-judgment", item["assignment_id"]), {"choice": "left"}, format="json")
    assert again.status_code == 200
    assert again.json()["judgment"] == first.json()["judgment"]
    assert again.json()["next"]["assignment_id"] == first.json()["next"]["assignment_id"]
    assert Judgment.objects.filter(annotator=world.ann1).count() == 1


def test_skip_then_next(world):
    ann = world.client(world.ann1)
    item = ann.get(url("next", world.project.pk)).json()
    r = ann.post(url("skip", item["assignment_id"]))
    assert r.status_code == 200
    body = r.json()
    assert body["assignment_id"] == item["assignment_id"] and body["status"] == "skipped"
    assert body["next"]["prompt"] == "prompt 1"
    assert Assignment.objects.get(pk=item["assignment_id"]).status == AssignmentStatus.SKIPPED


def test_empty_queue_is_204_and_submit_carries_null_next():
    project = Project.objects.create(name="Tiny", overlap=1, gold_rate=0)
    ann = User.objects.create_user("solo")
    Membership.objects.create(project=project, user=ann, role=Role.ANNOTATOR)
    make_comparison(project, 1)
    client = APIClient()
    client.force_authenticate(ann)
    item = client.get(url("next", project.pk)).json()
    r = client.post(url("submit-judgment", item["assignment_id"]), {"choice": "both_bad", "strength": 3},
                    format="json")
    assert r.status_code == 201
    assert r.json()["next"] is None
    assert r.json()["judgment"]["strength"] is None  # no strength for both_bad
    r = client.get(url("next", project.pk))
    assert r.status_code == 204 and r.content == b""


@pytest.mark.parametrize(
    "payload, field",
    [({"choice": "a"}, "choice"), ({}, "choice"), ({"choice": "left", "strength": 7}, "strength"),
     ({"choice": "left", "seconds": -1}, "seconds")],
)
def test_submit_validation(world, payload, field):
    ann = world.client(world.ann1)
    item = ann.get(url("next", world.project.pk)).json()
    r = ann.post(url("submit-judgment", item["assignment_id"]), payload, format="json")
    assert r.status_code == 400
    assert field in r.json()
    assert not Judgment.objects.exists()


def test_tie_refused_when_not_allowed(world):
    Project.objects.filter(pk=world.project.pk).update(allow_ties=False)
    ann = world.client(world.ann1)
    item = ann.get(url("next", world.project.pk)).json()
    assert item["allow_ties"] is False
    r = ann.post(url("submit-judgment", item["assignment_id"]), {"choice": "tie"}, format="json")
    assert r.status_code == 400 and "Ties" in r.json()["detail"]


def test_submitting_a_skipped_item_is_refused(world):
    ann = world.client(world.ann1)
    item = ann.get(url("next", world.project.pk)).json()
    ann.post(url("skip", item["assignment_id"]))
    r = ann.post(url("submit-judgment", item["assignment_id"]), {"choice": "left"}, format="json")
    assert r.status_code == 400
    assert not Judgment.objects.exists()


def test_late_submit_on_filled_item_is_409_with_next(world):
    Project.objects.filter(pk=world.project.pk).update(overlap=1, assignment_timeout_s=60)
    world.project.refresh_from_db()
    ann1 = world.client(world.ann1)
    item = ann1.get(url("next", world.project.pk)).json()
    Assignment.objects.filter(pk=item["assignment_id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    other = world.client(world.ann2).get(url("next", world.project.pk)).json()
    assert other["prompt"] == item["prompt"]
    world.client(world.ann2).post(url("submit-judgment", other["assignment_id"]), {"choice": "left"}, format="json")
    r = ann1.post(url("submit-judgment", item["assignment_id"]), {"choice": "left"}, format="json")
    assert r.status_code == 409
    assert r.json()["next"]["prompt"] != item["prompt"]
    assert Judgment.objects.filter(annotator=world.ann1).count() == 0


def test_assignment_detail_own_only(world):
    item = world.client(world.ann1).get(url("next", world.project.pk)).json()
    r = world.client(world.ann1).get(url("assignment-detail", item["assignment_id"]))
    assert r.status_code == 200
    assert r.json()["status"] == "active" and r.json()["left"] == item["left"]
    assert world.client(world.ann2).get(url("assignment-detail", item["assignment_id"])).status_code == 404


def test_my_judgments_lists_own_only_in_shown_terms(world):
    for user, choice in ((world.ann1, "left"), (world.ann2, "right")):
        c = world.client(user)
        item = c.get(url("next", world.project.pk)).json()
        c.post(url("submit-judgment", item["assignment_id"]), {"choice": choice, "rationale": f"by {user}"},
               format="json")
    body = world.client(world.ann1).get(url("my-judgments", world.project.pk)).json()
    assert body["count"] == 1
    row = body["results"][0]
    assert row["choice"] == "left" and row["rationale"] == "by ann1"
    assert set(row) == {"id", "assignment_id", "prompt", "left", "right", "choice", "strength", "rationale",
                        "seconds", "created_at"}
    assert world.client(world.researcher).get(url("my-judgments", world.project.pk)).json()["count"] == 0


def test_progress_for_annotator_and_for_readers(world):
    other_pool = Pool.objects.create(project=world.project, name="US", target_share=0.5)
    ann3 = User.objects.create_user("ann3")
    Membership.objects.create(project=world.project, user=ann3, role=Role.ANNOTATOR, pool=other_pool)
    for user in (world.ann1, ann3):
        c = world.client(user)
        item = c.get(url("next", world.project.pk)).json()
        c.post(url("submit-judgment", item["assignment_id"]), {"choice": "left"}, format="json")
    mine = world.client(world.ann1).get(url("progress", world.project.pk)).json()
    assert mine == {"scope": "annotator", "done": 1, "skipped": 0, "remaining": 3}
    totals = world.client(world.researcher).get(url("progress", world.project.pk)).json()
    assert totals["scope"] == "project"
    assert totals["comparisons"] == 4 and totals["judgments"] == 2 and totals["complete"] == 1
    # Both submit responses claimed each annotator's next item: comparison 1 holds two live
    # assignments, so only comparisons 2 and 3 still take new ones.
    assert totals["active_assignments"] == 2 and totals["open"] == 2 and totals["annotators"] == 3
    pools = {p["name"]: p for p in totals["pools"]}
    assert pools["EU"]["judgments"] == 1 and pools["US"]["judgments"] == 1
    assert pools["EU"]["share"] == 0.5 and pools["EU"]["target_share"] == 0.5
    assert world.client(world.outsider).get(url("progress", world.project.pk)).status_code == 403


def test_admin_cannot_use_the_queue(world):
    assert world.client(world.admin).get(url("next", world.project.pk)).status_code == 403
    assert world.client(world.researcher).get(url("next", world.project.pk)).status_code == 403


def test_gold_items_look_like_regular_items(world):
    Project.objects.filter(pk=world.project.pk).update(gold_rate=1.0)
    make_comparison(world.project, 100, gold="a", model_a="gm-a", model_b="gm-b")
    item = world.client(world.ann1).get(url("next", world.project.pk)).json()
    assert item["prompt"] == "prompt 100"
    assert set(item) == ITEM_KEYS


def test_service_and_api_agree(world):
    """The API serves exactly what the queue service holds for the annotator."""
    item = world.client(world.ann1).get(url("next", world.project.pk)).json()
    held = queue.current_assignment(world.ann1, world.project)
    assert held.pk == item["assignment_id"]
    left, right = queue.shown_pair(held)
    assert (item["left"]["text"], item["right"]["text"]) == (left.text, right.text)


# --- schema ----------------------------------------------------------------------------------


def test_schema_generates_and_validates_without_warnings(tmp_path):
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    text = out.read_text()
    for path in ("/api/projects/{project_pk}/next/", "/api/assignments/{assignment_pk}/judgment/",
                 "/api/projects/{project_pk}/comparisons/import/", "/api/auth/token/"):
        assert path in text


def test_schema_and_docs_are_served(world):
    c = world.client(world.researcher)
    r = c.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert r.status_code == 200
    schema = json.loads(r.content)
    assert "/api/projects/{project_pk}/progress/" in schema["paths"]
    for kind in ("pools", "memberships"):
        (detail,) = [p for p in schema["paths"] if p.startswith(f"/api/projects/{{project_pk}}/{kind}/{{")]
        delete = schema["paths"][detail]["delete"]
        assert set(delete["responses"]) >= {"204", "403", "404", "409"}, (kind, delete["responses"])
    assert c.get("/api/docs/").status_code == 200
