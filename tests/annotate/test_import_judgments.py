"""Externally collected votes imported as judgments (annotate.imports.import_judgments)."""

from __future__ import annotations

import io
import itertools
import json
from collections import Counter, defaultdict

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from annotate.imports import ImportValidationError, import_comparisons, import_judgments
from annotate.models import Comparison, Judgment, Membership, Pool, Project, Role

pytestmark = pytest.mark.django_db
User = get_user_model()


@pytest.fixture
def project():
    return Project.objects.create(name="votes", overlap=3)


def jsonl(*rows) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode("utf-8")


def vote(**kw):
    row = {
        "source": "ext",
        "item_id": "i1",
        "prompt": "p",
        "response_a": "x",
        "response_b": "y",
        "model_a": "m1",
        "model_b": "m2",
        "annotator_id": "ext:ann1",
        "label": "a",
        "strength": None,
        "extra": {},
    }
    row.update(kw)
    return row


def run(project, data, **kwargs):
    return import_judgments(
        project, io.BytesIO(data), filename=kwargs.pop("filename", "votes.jsonl"), **kwargs
    )


def errors_of(project, data, **kwargs):
    before = (
        Judgment.objects.count(),
        Comparison.objects.count(),
        User.objects.count(),
        Pool.objects.count(),
    )
    with pytest.raises(ImportValidationError) as info:
        run(project, data, **kwargs)
    after = (Judgment.objects.count(), Comparison.objects.count(), User.objects.count(), Pool.objects.count())
    assert after == before
    return [str(e) for e in info.value.errors]


# ------------------------------------------------------------------------------- real files


def test_pandalm_votes(project, shared_data):
    path = shared_data / "pandalm_votes.jsonl"
    with path.open("rb") as fh:
        result = import_judgments(project, fh, filename=path.name)
    assert (result.lines, result.judgments_created, result.duplicates) == (2997, 2997, 0)
    assert (result.comparisons_created, result.annotators_created, result.pools_created) == (999, 3, 1)
    assert result.display_unknown == 2997
    assert result.reoriented == 0  # the file lists every item's responses in one order
    # PandaLM did not record the display order: every judgment stores it as unknown (NULL).
    assert Judgment.objects.filter(project=project, a_on_left__isnull=True).count() == 2997
    # 54 items have an empty response; 6 have the JSON value true as a response (3 votes each).
    warned = Counter(w.message for w in result.warnings)
    assert warned == {"empty response imported as it is": 162, "a boolean taken as the text 'true'": 18}

    assert Comparison.objects.filter(project=project).count() == 999
    assert set(Comparison.objects.values_list("n_judgments", "slots_taken", "is_open")) == {(3, 3, False)}
    users = User.objects.filter(username__startswith="pandalm:")
    assert sorted(users.values_list("username", flat=True)) == [f"pandalm:annotator{i}" for i in (1, 2, 3)]
    assert not any(u.is_active or u.has_usable_password() for u in users)
    pool = Pool.objects.get(project=project)
    assert pool.name == "pandalm_testset_v1"
    assert set(Membership.objects.filter(project=project).values_list("role", "pool")) == {
        (Role.ANNOTATOR, pool.pk)
    }
    assert set(Judgment.objects.values_list("source", flat=True)) == {"pandalm_testset_v1"}
    assert set(Judgment.objects.values_list("strength", flat=True)) == {None}
    assert Counter(Judgment.objects.values_list("choice", flat=True)) == {"b": 1416, "a": 1255, "tie": 326}
    c = Comparison.objects.get(metadata__item_id="pandalm:0")
    assert (c.response_a.model_name, c.response_b.model_name) == ("bloom-7b", "llama-7b")

    # The data README's fact: raw pairwise agreement over these votes is 0.92.
    by_item = defaultdict(list)
    for cid, choice in Judgment.objects.values_list("comparison_id", "choice"):
        by_item[cid].append(choice)
    pairs = [x == y for v in by_item.values() for x, y in itertools.combinations(v, 2)]
    assert round(sum(pairs) / len(pairs), 2) == 0.92

    # Importing the file again changes nothing.
    with path.open("rb") as fh:
        again = import_judgments(project, fh, filename=path.name)
    assert (again.judgments_created, again.duplicates, again.comparisons_created) == (0, 2997, 0)
    assert Judgment.objects.count() == 2997
    assert set(Comparison.objects.values_list("n_judgments", flat=True)) == {3}


def test_tulu1_votes(project, shared_data):
    path = shared_data / "tulu1_votes.jsonl"
    # Nine lines are a second vote by the same evaluator on the same pair: an error by default.
    with path.open("rb") as fh, pytest.raises(ImportValidationError) as info:
        import_judgments(project, fh, filename=path.name)
    errors = info.value.errors
    assert [e.line for e in errors] == [323, 640, 810, 899, 900, 901, 903, 904, 906]
    assert str(errors[0]) == (
        "line 323, field 'annotator_id': 'tulu1:yu' already judged this comparison on line 322; "
        "one judgment per annotator and comparison"
    )
    assert Judgment.objects.count() == 0

    with path.open("rb") as fh:
        result = import_judgments(project, fh, filename=path.name, on_duplicate="last")
    assert (result.lines, result.judgments_created, result.duplicates) == (1150, 1141, 9)
    assert (result.comparisons_created, result.annotators_created) == (996, 16)
    assert result.warnings == [] and result.reoriented == 0  # one order per item in the file
    assert Judgment.objects.count() == 1141
    # The kept vote of a repeated pair is the file's last one; strengths map slight->1, clear->2.
    last = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        last[(row["annotator_id"], row["item_id"])] = row
    strength = {None: None, "slight": 1, "clear": 2}
    expected = Counter((r["annotator_id"], r["label"], strength[r["strength"]]) for r in last.values())
    got = Counter(Judgment.objects.values_list("annotator__username", "choice", "strength"))
    assert got == expected
    # Two models that gave the same text: one comparison of two distinct responses.
    same = [
        c
        for c in Comparison.objects.select_related("response_a", "response_b")
        if c.response_a.text == c.response_b.text
    ]
    assert len(same) == len({(r["item_id"]) for r in last.values() if r["response_a"] == r["response_b"]}) > 0
    assert all(c.response_a_id != c.response_b_id for c in same)
    for n, slots, is_open in Comparison.objects.values_list("n_judgments", "slots_taken", "is_open"):
        assert n == slots and is_open == (n < 3)


# ------------------------------------------------------------------------------- fields


def test_fields_map_onto_the_judgment(project):
    result = run(
        project,
        jsonl(
            vote(
                annotator_id="ext:ann1",
                label="b",
                strength="clear",
                seconds=12.5,
                rationale=" clearer ",
                display="b_left",
                pool="EU experts",
            ),
            vote(annotator_id="ext:ann2", label="tie", display="a_left"),
            vote(annotator_id="ext:ann3", label=None, choice="both_bad"),
            vote(annotator_id="ext:ann4", label="a", strength="slight", item_id="i2", prompt="q"),
        ),
        source="vendor-x",
    )
    assert (result.judgments_created, result.comparisons_created, result.display_unknown) == (4, 2, 2)
    j1 = Judgment.objects.get(annotator__username="ext:ann1")
    assert (j1.choice, j1.strength, j1.seconds, j1.rationale, j1.a_on_left, j1.source) == (
        "b",
        2,
        12.5,
        "clearer",
        False,
        "vendor-x",
    )
    assert j1.pool.name == "EU experts" and j1.assignment is None
    assert Judgment.objects.get(annotator__username="ext:ann2").a_on_left is True
    j3 = Judgment.objects.get(annotator__username="ext:ann3")
    assert (j3.choice, j3.strength, j3.a_on_left) == ("both_bad", None, None)  # no display: unknown
    assert Judgment.objects.get(annotator__username="ext:ann4").strength == 1
    assert Judgment.objects.get(annotator__username="ext:ann4").a_on_left is None
    # Without a "pool", the annotator's pool is named after the source.
    assert Membership.objects.get(user__username="ext:ann2").pool.name == "vendor-x"
    assert Membership.objects.get(user__username="ext:ann1").pool.name == "EU experts"
    c = Comparison.objects.get(metadata__item_id="i1")
    assert (c.n_judgments, c.slots_taken, c.is_open) == (3, 3, False)
    assert c.metadata == {"item_id": "i1", "source": "ext"}
    assert Comparison.objects.get(metadata__item_id="i2").is_open


def test_display_order_is_stored_or_null(project):
    # Without "display" the order is unknown: NULL, not a made-up "A on the left".
    result = run(
        project,
        jsonl(
            vote(annotator_id="ext:none", label="a"),
            vote(annotator_id="ext:aleft", label="a", display="a_left"),
            vote(annotator_id="ext:bleft", label="a", display="b_left"),
            vote(annotator_id="ext:null", label="b", display=None),
        ),
    )
    assert (result.judgments_created, result.display_unknown) == (4, 2)
    stored = dict(Judgment.objects.values_list("annotator__username", "a_on_left"))
    assert stored == {"ext:none": None, "ext:aleft": True, "ext:bleft": False, "ext:null": None}
    assert Judgment.objects.filter(a_on_left__isnull=True).count() == 2


def test_only_unknown_orders_import_as_null(project):
    # A batch whose every row lacks a display (the NULL-only column on PostgreSQL's unnest path).
    result = run(project, jsonl(*(vote(annotator_id=f"ext:u{i}", label="b") for i in range(3))))
    assert result.display_unknown == 3
    assert list(Judgment.objects.values_list("a_on_left", flat=True)) == [None, None, None]


def test_unknown_display_order_in_serializer_and_admin(project, client):
    from annotate.serializers import OwnJudgmentDetailSerializer

    run(
        project,
        jsonl(
            vote(annotator_id="ext:ann1", label="a"),
            vote(annotator_id="ext:ann2", label="tie"),
            vote(annotator_id="ext:ann3", label="a", display="b_left"),
        ),
    )
    by_user = {j.annotator.username: j for j in Judgment.objects.select_related("comparison__prompt")}
    unknown = OwnJudgmentDetailSerializer(by_user["ext:ann1"]).data
    # Which side was picked is unknown: null, not a guess; the pair is given in stored order.
    assert unknown["choice"] is None
    assert (unknown["left"]["text"], unknown["right"]["text"]) == ("x", "y")
    assert OwnJudgmentDetailSerializer(by_user["ext:ann2"]).data["choice"] == "tie"
    known = OwnJudgmentDetailSerializer(by_user["ext:ann3"]).data
    assert known["choice"] == "right" and (known["left"]["text"], known["right"]["text"]) == ("y", "x")

    admin = User.objects.create(username="root", is_superuser=True, is_staff=True)
    client.force_login(admin)
    page = client.get("/admin/annotate/judgment/")
    assert page.status_code == 200
    body = page.content.decode()
    assert body.count(">unknown<") == 2 and body.count(">B left<") == 1
    only_unknown = client.get("/admin/annotate/judgment/", {"a_on_left__isnull": "True"})
    assert only_unknown.status_code == 200 and only_unknown.content.decode().count(">unknown<") == 2
    assert ">B left<" not in only_unknown.content.decode()
    change = client.get(f"/admin/annotate/judgment/{by_user['ext:ann1'].pk}/change/")
    assert change.status_code == 200 and "Unknown" in change.content.decode()


def test_a_judgment_made_through_an_assignment_always_knows_the_order(project):
    from datetime import timedelta

    from django.db import IntegrityError, transaction
    from django.utils import timezone

    from annotate.models import Assignment

    run(project, jsonl(vote()))
    comparison = Comparison.objects.get(project=project)
    user = User.objects.create(username="app-user")
    assignment = Assignment.objects.create(
        project=project,
        comparison=comparison,
        annotator=user,
        a_on_left=False,
        expires_at=timezone.now() + timedelta(minutes=5),
    )
    fields = dict(project=project, comparison=comparison, annotator=user, assignment=assignment, choice="a")
    with pytest.raises(IntegrityError), transaction.atomic():
        Judgment.objects.create(a_on_left=None, **fields)
    assert Judgment.objects.create(a_on_left=False, **fields).a_on_left is False


def test_votes_attach_to_comparisons_imported_before(project):
    import_comparisons(
        project,
        io.BytesIO(
            jsonl({"prompt": "p", "response_a": "y", "response_b": "x", "model_a": "m2", "model_b": "m1"})
        ),
    )
    existing = Comparison.objects.get()
    result = run(project, jsonl(vote()))
    assert (result.comparisons_created, result.comparisons_reused, result.judgments_created) == (0, 1, 1)
    j = Judgment.objects.get()
    assert j.comparison_id == existing.pk
    # The vote prefers x (its response_a, model m1); the stored comparison has x as its
    # response_b, so the stored label is "b" and the import says it re-oriented one vote.
    assert j.choice == "b" and existing.response_b.text == "x"
    assert result.reoriented == 1
    existing.refresh_from_db()
    assert (existing.n_judgments, existing.slots_taken, existing.is_open) == (1, 1, True)


def test_existing_users_and_memberships_are_reused(project):
    user = User.objects.create_user("ext:ann1", password="secret-pass-123")
    pool = Pool.objects.create(project=project, name="mine")
    Membership.objects.create(project=project, user=user, role=Role.ANNOTATOR, pool=pool)
    result = run(project, jsonl(vote()))
    assert (result.annotators_created, result.memberships_created, result.pools_created) == (0, 0, 1)
    user.refresh_from_db()
    assert user.is_active and user.has_usable_password()
    assert Membership.objects.get(user=user).pool == pool


@pytest.mark.parametrize(
    "row, expected",
    [
        (
            vote(label="left"),
            "line 2, field 'label': must be one of 'a', 'b', 'tie', 'both_bad' (got \"left\")",
        ),
        (vote(label=None), "line 2, field 'label': is missing"),
        (vote(label="a", choice="b"), "line 2, field 'choice': contradicts label 'a'"),
        (vote(annotator_id=""), "line 2, field 'annotator_id': must be a non-empty string"),
        (vote(annotator_id=None), "line 2, field 'annotator_id': is missing"),
        (vote(annotator_id="x" * 151), "line 2, field 'annotator_id': is longer than 150 characters"),
        (
            vote(strength="huge"),
            "line 2, field 'strength': must be null, 'slight', 'clear', 'much' or 1, 2, 3 (got \"huge\")",
        ),
        (
            vote(label="tie", strength="clear"),
            "line 2, field 'strength': must be null when the label is 'tie'",
        ),
        (vote(seconds=-1), "line 2, field 'seconds': must be a number of seconds >= 0 (got -1)"),
        (vote(display="left"), "line 2, field 'display': must be 'a_left' or 'b_left' (got \"left\")"),
        (vote(extra=[1]), "line 2, field 'extra': must be a JSON object, not a list"),
        (vote(prompt=" "), "line 2, field 'prompt': must be a non-empty string"),
        (vote(response_a=None), "line 2, field 'response_a': must be a string, not null"),
        (
            vote(response_b="x", model_b="m1"),
            "line 2, field 'response_b': is identical to response_a "
            "(give model_a and model_b if two models said the same)",
        ),
        ('{"annotator_id": ', "line 2: invalid JSON: Expecting value (column 18)"),
    ],
)
def test_bad_vote_lines(project, row, expected):
    good = vote(annotator_id="ext:ok")
    assert errors_of(project, jsonl(good, row, good | {"item_id": "i9", "prompt": "other"})) == [expected]


def test_same_text_from_two_models_is_accepted(project):
    run(project, jsonl(vote(response_b="x", label="tie")))
    c = Comparison.objects.get()
    assert c.response_a.text == c.response_b.text == "x"
    assert c.response_a_id != c.response_b_id


def test_empty_responses_can_be_refused(project):
    assert errors_of(project, jsonl(vote(response_a="")), allow_empty_responses=False) == [
        "line 1, field 'response_a': must be a non-empty string"
    ]
    assert run(project, jsonl(vote(response_a=""))).judgments_created == 1


def test_duplicate_votes_in_a_file(project):
    # Line 2 has another item_id but the same content: the same comparison.
    data = jsonl(vote(label="a"), vote(label="b", item_id="again"), vote(annotator_id="ext:ann2"))
    assert errors_of(project, data) == [
        "line 2, field 'annotator_id': 'ext:ann1' already judged this comparison on line 1; "
        "one judgment per annotator and comparison"
    ]
    first = run(project, data, on_duplicate="first")
    assert (first.judgments_created, first.duplicates) == (2, 1)
    assert Judgment.objects.get(annotator__username="ext:ann1").choice == "a"
    other = Project.objects.create(name="other")
    last = run(other, data, on_duplicate="last")
    assert (last.judgments_created, last.duplicates) == (2, 1)
    assert Judgment.objects.get(project=other, annotator__username="ext:ann1").choice == "b"


def test_csv_votes(project):
    data = (
        "annotator_id,prompt,response_a,response_b,label,strength,seconds,display,extra\n"
        'ext:c1,p,x,y,b,slight,3.5,b_left,"{""k"": 1}"\n'
        "ext:c2,p,x,y,tie,,,,\n"
    ).encode()
    result = run(project, data, filename="votes.csv")
    assert (result.judgments_created, result.comparisons_created) == (2, 1)
    j = Judgment.objects.get(annotator__username="ext:c1")
    assert (j.choice, j.strength, j.seconds, j.a_on_left, j.source) == ("b", 1, 3.5, False, "votes")
    assert Judgment.objects.get(annotator__username="ext:c2").a_on_left is None  # empty display cell
    assert errors_of(project, data.replace(b"3.5", b"soon"), filename="votes.csv") == [
        "line 2, field 'seconds': must be a number of seconds >= 0 (got \"soon\")"
    ]


def test_progress_reaches_its_total(project):
    calls = []
    run(project, jsonl(vote(), vote(annotator_id="ext:ann2")), progress=lambda d, t: calls.append((d, t)))
    assert calls[-1][0] == calls[-1][1] > 0


# ------------------------------------------------------------------------------- the command


def test_command(tmp_path, project):
    path = tmp_path / "votes.jsonl"
    path.write_bytes(jsonl(vote(), vote(annotator_id="ext:ann2", label="b")))
    out = io.StringIO()
    call_command(
        "import_judgments",
        str(path),
        "--project",
        project.name,
        "--source",
        "vendor",
        stdout=out,
        stderr=io.StringIO(),
    )
    assert out.getvalue().splitlines() == [
        "Imported votes.jsonl into project 'votes': 2 lines, 2 judgments created, 0 duplicates skipped; "
        "1 comparisons created, 0 reused; 2 annotators and 1 pools created; 0 votes re-oriented "
        "(listed B/A against the stored comparison: label mapped to the stored order).",
        "2 judgments have no 'display': stored with a_on_left=NULL (display order unknown).",
    ]
    assert set(Judgment.objects.values_list("source", flat=True)) == {"vendor"}


def test_command_error_exit(tmp_path, project):
    path = tmp_path / "votes.jsonl"
    path.write_bytes(jsonl(vote(), vote()))
    err = io.StringIO()
    with pytest.raises(CommandError, match=r"^votes.jsonl was not imported: 1 error; nothing was written.$"):
        call_command(
            "import_judgments", str(path), "--project", project.name, stdout=io.StringIO(), stderr=err
        )
    assert err.getvalue().startswith("line 2, field 'annotator_id': 'ext:ann1' already judged")
    call_command(
        "import_judgments",
        str(path),
        "--project",
        project.name,
        "--on-duplicate",
        "last",
        stdout=io.StringIO(),
        stderr=io.StringIO(),
    )
    assert Judgment.objects.count() == 1
