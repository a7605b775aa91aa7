"""Test data: projects with users and roles, pools, comparisons, assignments, judgments, gold.

One place for the set-ups the tests of every app share, so a test names what it needs
(``make_team(project)``, ``make_comparison(project, 3, gold="b")``) instead of writing out
the model rows. Each function writes real rows through the ORM and returns them; none
mocks anything. Texts and hashes derive from a ``tag``, so two calls with different tags
never collide on the unique constraints (``pair_hash`` per project and round, usernames).

* ``make_user``, ``make_project``, ``make_pool``, ``add_member``: one row each.
* ``make_team``: a project's admin, researcher and annotators (and an outsider) at once.
* ``make_comparison`` (one, with optional gold answer) and ``make_comparisons`` (many, in
  three bulk inserts).
* ``make_annotators``: n annotator users with their memberships.
* ``make_assignment``, ``make_judgment``, ``judge``: a judgment written directly, or through
  the queue the way an annotator's submit writes it.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.utils import timezone

from annotate.models import Assignment, AssignmentStatus, Comparison, GoldAnswer, Judgment, Membership, Pool
from annotate.models import Project, Prompt, Response, Role, content_hash

User = get_user_model()
TEST_PASSWORD = "pw-for-tests-123"
_serial = itertools.count(1)


def make_user(username: str, *, password: str | None = None, **fields):
    """A user; with ``password`` one that can sign in (``create_user`` hashes it)."""
    if password is None:
        return User.objects.create(username=username, **fields)
    return User.objects.create_user(username, password=password, **fields)


def make_project(name: str | None = None, **fields) -> Project:
    """A project with the tests' usual defaults: overlap 3, no gold served unless asked."""
    values = {"overlap": 3, "gold_rate": 0.0, **fields}
    return Project.objects.create(name=name or f"project-{next(_serial)}", **values)


def make_pool(project: Project, name: str, **fields) -> Pool:
    return Pool.objects.create(project=project, name=name, **fields)


def add_member(
    project: Project, user, role: str = Role.ANNOTATOR, *, pool: Pool | None = None, **fields
) -> Membership:
    return Membership.objects.create(project=project, user=user, role=role, pool=pool, **fields)


@dataclass
class Team:
    """The people of a project (see ``make_team``)."""

    project: Project
    admin: object
    researcher: object
    annotators: list
    outsider: object
    pool: Pool | None = None
    memberships: dict = field(default_factory=dict)  # username -> Membership

    @property
    def users(self) -> dict:
        """Every user by username."""
        people = [self.admin, self.researcher, *self.annotators, self.outsider]
        return {u.username: u for u in people if u is not None}


def make_team(
    project: Project,
    *,
    admin: str | None = "admin",
    researcher: str | None = "researcher",
    annotators: tuple[str, ...] = ("ann1", "ann2"),
    outsider: str | None = "outsider",
    pool: Pool | None = None,
    password: str | None = None,
) -> Team:
    """An admin, a researcher and annotators (in ``pool``) of ``project``, and an outsider with
    no role. Give ``password`` for users that sign in through the login form or the token
    endpoint; ``None`` for a role leaves it out."""
    memberships = {}

    def person(username, role):
        if username is None:
            return None
        user = make_user(username, password=password)
        if role is not None:
            in_pool = pool if role == Role.ANNOTATOR else None
            memberships[username] = add_member(project, user, role, pool=in_pool)
        return user

    return Team(
        project=project,
        admin=person(admin, Role.ADMIN),
        researcher=person(researcher, Role.RESEARCHER),
        annotators=[person(name, Role.ANNOTATOR) for name in annotators],
        outsider=person(outsider, None),
        pool=pool,
        memberships=memberships,
    )


def make_annotators(project: Project, n: int, pool: Pool | None = None, prefix: str = "ann") -> list:
    """``n`` annotators of ``project`` (in ``pool``), named ``{prefix}{pool}{i}-{project id}``."""
    users = []
    for i in range(n):
        user = User.objects.create(username=f"{prefix}{pool.name if pool else ''}{i}-{project.pk}")
        add_member(project, user, Role.ANNOTATOR, pool=pool)
        users.append(user)
    return users


def _response(prompt: Prompt, text: str, model: str, round: int) -> Response:
    return Response.objects.create(
        prompt=prompt, text=text, model_name=model, round=round, content_hash=content_hash(text)
    )


def make_comparison(
    project: Project,
    tag,
    *,
    gold: str | None = None,
    prompt: str | None = None,
    text_a: str | None = None,
    text_b: str | None = None,
    model_a: str = "",
    model_b: str = "",
    metadata: dict | None = None,
    source_preference: str = "",
    round: int = 0,
    **fields,
) -> Comparison:
    """One comparison of two responses to one prompt, the texts derived from ``tag`` unless
    given; with ``gold`` ("a", "b" or "tie") a calibration comparison with its answer."""
    prompt_text = prompt if prompt is not None else f"prompt {tag}"
    a_text = text_a if text_a is not None else f"response A{tag}"
    b_text = text_b if text_b is not None else f"response B{tag}"
    p = Prompt.objects.create(project=project, text=prompt_text, content_hash=content_hash(prompt_text))
    a = _response(p, a_text, model_a, round)
    b = _response(p, b_text, model_b, round)
    c = Comparison.objects.create(
        project=project,
        prompt=p,
        response_a=a,
        response_b=b,
        round=round,
        pair_hash=content_hash(f"pair {tag}"),
        is_gold=gold is not None,
        metadata=metadata or {},
        source_preference=source_preference,
        **fields,
    )
    if gold is not None:
        GoldAnswer.objects.create(comparison=c, answer=gold)
    return c


def make_comparisons(
    project: Project, n: int, *, gold: bool = False, tag: str = "", round: int = 0
) -> list[Comparison]:
    """``n`` comparisons in three bulk inserts (gold ones answer "a"), re-read in id order
    (ascending in creation order), for tests that need many."""
    tag = f"{project.pk}-{tag}{'g' if gold else 'r'}"
    prompts = Prompt.objects.bulk_create(
        [
            Prompt(project=project, text=f"prompt {tag}{i}", content_hash=content_hash(f"{tag}{i}"))
            for i in range(n)
        ]
    )
    responses = Response.objects.bulk_create(
        [
            Response(
                prompt=p, text=f"{side} {tag}{i}", round=round, content_hash=content_hash(f"{side}{tag}{i}")
            )
            for i, p in enumerate(prompts)
            for side in ("A", "B")
        ]
    )
    comparisons = Comparison.objects.bulk_create(
        [
            Comparison(
                project=project,
                prompt=p,
                response_a=responses[2 * i],
                response_b=responses[2 * i + 1],
                round=round,
                pair_hash=content_hash(f"pair {tag}{i}"),
                is_gold=gold,
            )
            for i, p in enumerate(prompts)
        ]
    )
    if gold:
        GoldAnswer.objects.bulk_create([GoldAnswer(comparison=c, answer="a") for c in comparisons])
    return list(Comparison.objects.filter(pk__in=[c.pk for c in comparisons]).order_by("pk"))


def make_assignment(
    annotator, comparison: Comparison, *, pool: Pool | None = None, a_on_left: bool = True, **fields
) -> Assignment:
    """An active assignment that the queue did not hand out (it takes no slot)."""
    values = {"status": AssignmentStatus.ACTIVE, "expires_at": timezone.now() + timedelta(hours=1), **fields}
    return Assignment.objects.create(
        project=comparison.project,
        comparison=comparison,
        annotator=annotator,
        pool=pool,
        a_on_left=a_on_left,
        **values,
    )


def make_judgment(annotator, comparison: Comparison, choice: str = "a", **fields) -> Judgment:
    """A judgment row written directly (as an import writes one): no assignment, and the
    comparison's counters are not touched."""
    values = {"a_on_left": True, **fields}
    return Judgment.objects.create(
        project=comparison.project, comparison=comparison, annotator=annotator, choice=choice, **values
    )


def judge(
    annotator, comparison: Comparison, choice: str = "left", *, pool: Pool | None = None, **fields
) -> Judgment:
    """A judgment submitted through the queue on an assignment made for it (A shown left), as
    the annotator's page or the API would: the counters, the slot and the overlap rule apply."""
    from annotate import queue

    assignment = make_assignment(annotator, comparison, pool=pool)
    Comparison.objects.filter(pk=comparison.pk).update(slots_taken=comparison.slots_taken + 1)
    comparison.refresh_from_db()
    return queue.submit_judgment(annotator, assignment.pk, choice=choice, **fields)
