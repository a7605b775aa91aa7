"""A labelled file's own preferences as the votes of a named *source*.

A TRL / HH-RLHF file (``{"prompt", "chosen", "rejected"}``) already says which response is
better. ``import_comparisons(..., votes_source="hh-rlhf")`` imports that preference as the vote of
one pseudo-annotator per source: the inactive user ``source:<name>`` (a name no sign-up form
accepts, so it never collides with a person), an annotator member of the project in its own
pool ``<name>``. From there it is an annotator like any other: the quality statistics give it a
reliability from gold and agreement, the export weighs its votes by it, and excluding it on the
quality page (or the API) leaves its votes out of exports. No database writes here: the votes
go through :func:`annotate.imports.judgments.write_votes`.
"""
from __future__ import annotations

from django.contrib.auth import get_user_model

from ..models import Membership, Pool, Project
from .results import Errors, ImportValidationError, LineError
from .validation import SOURCE_MAX, Pair, Vote

#: The username of a source's pseudo-annotator is this prefix + the source name.
SOURCE_USER_PREFIX = "source:"


def source_username(name: str) -> str:
    return SOURCE_USER_PREFIX + name


def clean_source(project: Project, name: str) -> str:
    """The validated source name; raises :class:`ImportValidationError` (field ``votes_source``)
    when it is empty, too long, or its pool already holds other annotators."""
    name = (name or "").strip()

    def refuse(message: str):
        raise ImportValidationError([LineError(0, "votes_source", message)])

    if not name:
        refuse("votes_source: the source needs a name")
    if len(name) > SOURCE_MAX:
        refuse(f"votes_source: the source name is longer than {SOURCE_MAX} characters")
    username = source_username(name)
    User = get_user_model()
    user = User.objects.filter(**{User.USERNAME_FIELD: username}).first()
    if user is not None and user.is_active:
        refuse(f"votes_source: '{username}' is an active user, not a source; choose another name")
    pool = Pool.objects.filter(project=project, name=name).first()
    if pool is not None:
        others = Membership.objects.filter(pool=pool).exclude(user__username=username)
        if others.exists():
            refuse(
                f"votes_source: the pool '{name}' already has other annotators; a source gets a pool of "
                "its own, so choose another name"
            )
    return name


def source_votes(name: str, pairs: dict[str, Pair], lines: list[tuple[Pair, int]], errors: Errors) -> list[Vote]:
    """One vote of source ``name`` per distinct pair: the preference of its first line.

    ``lines`` are every valid line's (pair, line number), in file order. A line without a
    preference (``response_a``/``response_b``) is an error; a later line on the same pair that
    prefers the other response contradicts the first and is an error naming both lines.
    """
    first: dict[str, tuple[tuple[str, str], int]] = {}
    for pair, line in lines:
        if not pair.source_preference:
            errors.add(
                line,
                "chosen",
                f"is missing: votes of source '{name}' come from chosen/rejected lines, and this line "
                "has response_a/response_b with no preference",
            )
            continue
        preferred = (pair.hash_a, pair.model_a) if pair.source_preference == "a" else (pair.hash_b, pair.model_b)
        earlier = first.get(pair.key)
        if earlier is None:
            first[pair.key] = (preferred, line)
        elif earlier[0] != preferred:
            errors.add(
                line,
                "chosen",
                f"contradicts line {earlier[1]}: the same two responses with the other one chosen "
                f"(one vote of source '{name}' per comparison)",
            )
    username = source_username(name)
    votes = []
    for key, (_, line) in first.items():
        pair = pairs[key]
        votes.append(
            Vote(
                line=line,
                pair=pair,
                annotator=username,
                choice=pair.source_preference,
                strength=None,
                pool=name,
                source=name,
                seconds=None,
                rationale="",
                a_on_left=None,
            )
        )
    return votes
