"""Importing votes as judgments: the annotators (inactive users), their pools and memberships,
the comparisons (created or reused through ``write_pairs``), the judgments, and the
comparisons' counters, in one transaction; ``judgments_imported`` is sent after it commits.

Every vote is stored in the order of its comparison. A vote whose ``response_a``/``response_b``
are the stored comparison's ``response_b``/``response_a`` (an earlier line of the same file, or
a comparison imported before, listed them the other way round) is *re-oriented*: its label
``a``/``b`` and its display order are mapped to the stored order (ties and both-bad stay as
they are), and the import says how many votes were. ``write_votes`` is shared with
``import_comparisons(votes_source=...)``, which imports a TRL file's own preferences as votes.
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.db.models import BooleanField, ExpressionWrapper, F, Q

from ..models import Choice, Comparison, Judgment, Membership, Pool, Project, Role
from ..signals import judgments_imported
from . import bulk
from .comparisons import PairWrite, atomic_with_retry, write_pairs
from .reading import judgment_columns, read_records
from .results import Errors, JudgmentImportResult, LineError, Progress
from .validation import SOURCE_MAX, Pair, Vote, judgment_line

ON_DUPLICATE = ("error", "first", "last")

#: A vote's label in the other order of its two responses.
_FLIPPED = {Choice.A.value: Choice.B.value, Choice.B.value: Choice.A.value}


def import_judgments(
    project: Project,
    fileobj,
    *,
    filename: str = "",
    fmt: str | None = None,
    source: str = "",
    round: int | None = None,  # noqa: A002
    on_duplicate: str = "error",
    allow_empty_responses: bool = True,
    progress: Progress | None = None,
) -> JudgmentImportResult:
    """Import externally collected votes as judgments (see the package docstring for the lines).

    Each distinct ``annotator_id`` becomes (or reuses) a User with that username, an unusable
    password and ``is_active=False``, and an annotator Membership in ``project`` whose pool is the
    line's ``pool`` or, without one, a pool named after the source (created when missing).
    ``source`` (max 100 characters) overrides each line's ``source``; without either, the file
    name is used. Comparisons are created or reused exactly as :func:`import_comparisons` does;
    their ``n_judgments`` and ``slots_taken`` grow by the judgments added and ``is_open`` becomes
    ``slots_taken < project.overlap`` (gold comparisons stay open). A vote listing the two
    responses in the other order than the stored comparison is re-oriented (label and display
    order mapped to the stored order) and counted in ``reoriented``.

    One judgment per (annotator, comparison): two lines by the same annotator on the same
    comparison (in either order) are an error naming the later line unless ``on_duplicate`` is
    "first" or "last" (keep that one). A judgment already in the database is skipped and counted
    as a duplicate.
    """
    if on_duplicate not in ON_DUPLICATE:
        raise ValueError(f"on_duplicate must be one of {ON_DUPLICATE}, not {on_duplicate!r}")
    source = (source or "").strip()
    if len(source) > SOURCE_MAX:
        raise ValueError(f"source is longer than {SOURCE_MAX} characters")
    round_ = project.current_round if round is None else int(round)
    User = get_user_model()
    username_max = User._meta.get_field(User.USERNAME_FIELD).max_length or 150
    name = filename or getattr(fileobj, "name", "") or ""
    default_source = os.path.splitext(os.path.basename(name))[0][:SOURCE_MAX] or "import"

    errors = Errors()
    warnings: list[LineError] = []
    _fmt, records = read_records(fileobj, name, fmt, errors, csv_header=judgment_columns)
    votes: dict[tuple[str, str], Vote] = {}
    dropped = 0
    lines = 0
    for line, record in records:
        lines += 1
        vote = judgment_line(
            record,
            line,
            errors,
            warnings,
            source=source,
            default_source=default_source,
            username_max=username_max,
            allow_empty=allow_empty_responses,
        )
        if vote is None:
            continue
        key = (vote.annotator, vote.pair.key)
        earlier = votes.get(key)
        if earlier is None:
            votes[key] = vote
        elif on_duplicate == "error":
            errors.add(
                line,
                "annotator_id",
                f"'{vote.annotator}' already judged this comparison on line "
                f"{earlier.line}; one judgment per annotator and comparison",
            )
        else:
            dropped += 1
            if on_duplicate == "last":
                del votes[key]  # re-insert so file order follows the kept line
                votes[key] = vote
    if lines == 0 and not errors.items:
        errors.add(0, "", "the file has no judgments")
    errors.raise_if_any()

    vote_list = list(votes.values())
    pairs: dict[str, Pair] = {}
    for v in sorted(vote_list, key=lambda v: v.line):
        pairs.setdefault(v.pair.key, v.pair)

    written = atomic_with_retry(lambda: write_votes(project, round_, list(pairs.values()), vote_list, progress))
    result = JudgmentImportResult(
        lines=lines,
        judgments_created=written.judgments_created,
        duplicates=lines - written.judgments_created,
        comparisons_created=len(written.pairs.created),
        comparisons_reused=len(pairs) - len(written.pairs.created),
        annotators_created=written.annotators_created,
        memberships_created=written.memberships_created,
        pools_created=written.pools_created,
        prompts_created=written.pairs.prompts_created,
        responses_created=written.pairs.responses_created,
        display_unknown=written.display_unknown,
        reoriented=written.reoriented,
        warnings=warnings,
    )
    send_imported(project, result.judgments_created)
    return result


def send_imported(project: Project, count: int) -> None:
    if count:
        judgments_imported.send(sender=Judgment, project=project, count=count)


@dataclass
class VoteWrite:
    pairs: PairWrite
    judgments_created: int
    annotators_created: int
    memberships_created: int
    pools_created: int
    display_unknown: int
    reoriented: int


def _stored_side_a(pw: PairWrite, pairs: list[Pair]) -> dict[str, tuple[str, str]]:
    """``pair_hash -> (content hash, model)`` of each comparison's stored ``response_a``."""
    by_key = {p.key: p for p in pairs}
    side_a = {k: (by_key[k].hash_a, by_key[k].model_a) for k in pw.created}
    old: dict[int, list[str]] = {}  # several lines (model names) may share a stored comparison
    for p in pairs:
        if p.key not in pw.created:
            old.setdefault(pw.ids[p.key], []).append(p.key)
    for chunk in bulk.chunks(sorted(old)):
        for cid, h, m in Comparison.objects.filter(pk__in=chunk).values_list(
            "pk", "response_a__content_hash", "response_a__model_name"
        ):
            for key in old[cid]:
                side_a[key] = (h, m)
    return side_a


def write_votes(
    project: Project, round_: int, pairs: list[Pair], vote_list: list[Vote], progress: Progress | None
) -> VoteWrite:
    """Write ``pairs`` (unique by key) and the judgments of ``vote_list`` (one per annotator and
    pair), creating the annotators, pools and memberships they need. Runs inside the caller's
    transaction."""
    User = get_user_model()
    username_field = User.USERNAME_FIELD
    ticker: list[bulk.Ticker] = []

    def tick_factory(total: int) -> bulk.Ticker:
        # The comparison rows, plus users, memberships and judgments still to come.
        t = bulk.Ticker(total + 2 * len({v.annotator for v in vote_list}) + len(vote_list), progress)
        ticker.append(t)
        return t

    pw = write_pairs(project, round_, pairs, tick_factory)
    tick = ticker[0]
    side_a = _stored_side_a(pw, pairs)

    # Annotators
    usernames = list(dict.fromkeys(v.annotator for v in vote_list))
    user_ids: dict[str, int] = {}
    for chunk in bulk.chunks(usernames):
        user_ids.update(User.objects.filter(**{f"{username_field}__in": chunk}).values_list(username_field, "pk"))
    new_users = [
        User(**{username_field: u}, is_active=False, password=make_password(None))
        for u in usernames
        if u not in user_ids
    ]
    bulk.orm_create(User, new_users, tick)
    if new_users:
        for chunk in bulk.chunks([getattr(u, username_field) for u in new_users]):
            user_ids.update(
                User.objects.filter(**{f"{username_field}__in": chunk}).values_list(username_field, "pk")
            )
    tick(len(usernames) - len(new_users))

    # Pools (few) and memberships
    pool_names = list(dict.fromkeys(v.pool for v in vote_list))
    pool_ids = dict(Pool.objects.filter(project=project, name__in=pool_names).values_list("name", "pk"))
    pools_created = 0
    for pool_name in pool_names:
        if pool_name not in pool_ids:
            pool_ids[pool_name] = Pool.objects.create(project=project, name=pool_name).pk
            pools_created += 1
    member_of: dict[int, int] = {}
    for chunk in bulk.chunks(list(user_ids.values())):
        member_of.update(
            Membership.objects.filter(project=project, user_id__in=chunk).values_list("user_id", "pk")
        )
    first_pool: dict[str, str] = {}
    for v in vote_list:
        first_pool.setdefault(v.annotator, v.pool)
    new_members = [
        Membership(project=project, user_id=user_ids[u], role=Role.ANNOTATOR, pool_id=pool_ids[first_pool[u]])
        for u in usernames
        if user_ids[u] not in member_of
    ]
    bulk.orm_create(Membership, new_members, tick)
    tick(len(usernames) - len(new_members))

    # Judgments in the stored order; skip the ones already in the database.
    comparison_ids = sorted({pw.ids[p.key] for p in pairs})
    existing: set[tuple[int, int]] = set()
    for chunk in bulk.chunks(comparison_ids):
        existing.update(
            Judgment.objects.filter(comparison_id__in=chunk).values_list("annotator_id", "comparison_id")
        )
    judgments = []
    display_unknown = reoriented = 0
    for v in vote_list:
        uid, cid = user_ids[v.annotator], pw.ids[v.pair.key]
        if (uid, cid) in existing:
            continue
        existing.add((uid, cid))
        choice, a_on_left = v.choice, v.a_on_left
        stored_hash, stored_model = side_a[v.pair.key]
        # By text; by model name only when both responses have the same text.
        if v.pair.hash_a != v.pair.hash_b:
            swapped = v.pair.hash_a != stored_hash
        else:
            swapped = v.pair.model_a != stored_model
        if swapped:
            # The vote's response_a is the comparison's response_b.
            reoriented += 1
            choice = _FLIPPED.get(choice, choice)
            a_on_left = None if a_on_left is None else not a_on_left
        display_unknown += a_on_left is None
        judgments.append(
            (
                project.pk,
                cid,
                uid,
                pool_ids[v.pool],
                a_on_left,  # None: display order unknown, stored as NULL
                choice,
                v.strength,
                v.rationale,
                v.seconds,
                v.source,
            )
        )
    bulk.insert_rows(
        Judgment,
        ["project", "comparison", "annotator", "pool", "a_on_left", "choice", "strength", "rationale", "seconds", "source"],
        judgments,
        tick,
    )
    tick(len(vote_list) - len(judgments))

    # Counters: n_judgments and slots_taken grow by the judgments added; is_open follows.
    added: dict[int, int] = defaultdict(int)
    for j in judgments:
        added[j[1]] += 1
    by_count: dict[int, list[int]] = defaultdict(list)
    for cid, n in added.items():
        by_count[n].append(cid)
    for n, cids in by_count.items():
        for chunk in bulk.chunks(sorted(cids)):
            Comparison.objects.filter(pk__in=chunk).update(
                n_judgments=F("n_judgments") + n, slots_taken=F("slots_taken") + n
            )
    open_expr = ExpressionWrapper(Q(is_gold=True) | Q(slots_taken__lt=project.overlap), output_field=BooleanField())
    for chunk in bulk.chunks(sorted(added)):
        Comparison.objects.filter(pk__in=chunk).update(is_open=open_expr)

    return VoteWrite(
        pairs=pw,
        judgments_created=len(judgments),
        annotators_created=len(new_users),
        memberships_created=len(new_members),
        pools_created=pools_created,
        display_unknown=display_unknown,
        reoriented=reoriented,
    )
