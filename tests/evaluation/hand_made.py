"""The hand-made project the quality tests share (its rows written with tests/factories.py).

Six comparisons (four gold: A, A, B, B), three annotators who each judge all six, with
equal-length responses (no length signal) and balanced display order; test_quality_services'
docstring works its numbers out by hand.
"""

from __future__ import annotations

from annotate.models import Role
from tests.factories import add_member, make_comparison, make_judgment, make_pool, make_project, make_user

GOLD = ["a", "a", "b", "b"]
VOTES = {
    "a1": ["a", "a", "b", "a", "a", "b"],
    "a2": ["b", "b", "a", "a", "b", "a"],
    "a3": ["a", "a", "b", "b", "a", "b"],
}
POOL_OF = {"a1": "north", "a2": "south", "a3": "north"}


def hand_comparison(project, i: int, *, gold: str | None = None, round: int = 0):
    """Comparison ``i`` of the hand-made project: model-x's answer A against model-y's answer
    B, the two of equal length."""
    return make_comparison(
        project,
        f"{i} round {round}",
        gold=gold,
        text_a=f"answer A {i:03d}",
        text_b=f"answer B {i:03d}",
        model_a="model-x",
        model_b="model-y",
        round=round,
    )


def hand_made_project(name: str, *, readers: bool = False):
    """``(project, users, comparisons)``: pools north and south, annotators a1–a3 (see
    :data:`VOTES`) and an admin; with ``readers`` also a researcher and an outsider."""
    project = make_project(name)
    pools = {p: make_pool(project, p) for p in ("north", "south")}
    users = {}
    for username, pool in POOL_OF.items():
        users[username] = make_user(username)
        add_member(project, users[username], Role.ANNOTATOR, pool=pools[pool])
    people = [("admin", Role.ADMIN)] + (
        [("researcher", Role.RESEARCHER), ("outsider", None)] if readers else []
    )
    for username, role in people:
        users[username] = make_user(username)
        if role is not None:
            add_member(project, users[username], role)
    comparisons = [hand_comparison(project, i, gold=GOLD[i] if i < 4 else None) for i in range(6)]
    for username, votes in VOTES.items():
        for i, (c, v) in enumerate(zip(comparisons, votes, strict=True)):
            hand_judgment(users[username], c, v, a_on_left=i % 2 == 0, pool=pools[POOL_OF[username]])
    return project, users, comparisons


def hand_judgment(user, comparison, choice: str, *, a_on_left: bool | None, pool=None):
    """A judgment like the hand-made project's: written directly, 20 seconds."""
    return make_judgment(user, comparison, choice, a_on_left=a_on_left, seconds=20.0, pool=pool)
