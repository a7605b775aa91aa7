"""What the annotator's requests read besides the claim: their progress counter, and their
assignment with its project and their membership (the API's permission check), one portable
statement each.

On PostgreSQL both are prepared statements (``annotate.queue.postgres.Statement``), like the
claim: every judgment through the API runs each of them once, and planning them cost the
database more than running them (at 1M comparisons: progress 0.16 ms planning against
0.02-0.37 ms execution; the owned assignment 0.10 ms planning against 0.02 ms execution).
"""
from __future__ import annotations

import json

from django.core.cache import cache
from django.db import DEFAULT_DB_ALIAS, connection, connections

from ..models import Assignment, Comparison, Membership, Project
from .postgres import Statement
from .rules import Progress

_statements: dict[str, Statement] = {}


def run_sql(cur, label: str, sql: str, params: dict, *, generic: bool = False) -> None:
    """Run ``sql`` (named parameters) on the cursor: prepared on PostgreSQL (``generic``: see
    ``Statement``), plain elsewhere."""
    if connection.vendor != "postgresql":
        cur.execute(sql, params)
        return
    statement(label, sql, generic=generic).run(cur, params)


def statement(label: str, sql: str, *, generic: bool = False) -> Statement:
    """The PostgreSQL prepared statement of ``sql`` (one per text)."""
    if sql not in _statements:
        _statements[sql] = Statement(label, sql, generic=generic)
    return _statements[sql]


def progress(annotator, project: Project) -> Progress:
    """Done and skipped by this annotator, and what remains for them: the open regular
    comparisons and the gold ones they have not finished, the item they hold included.

    Gold and regular items move the counter alike, so it never tells which item was gold.

    This runs once per judgment, and a crowd worker does thousands of them (issue 12: it used
    to join every assignment of theirs in the project to its comparison, 7.6 ms at 1,000). One
    statement, none of whose parts joins the annotator's history:

    * done and skipped: the count of one range each of ``assignment_annotator_idx`` (annotator,
      project, status), read from the index alone where the visibility map allows. This is the
      one part that still grows with the history, by an index entry per judgment (0.3 ms at
      5,000 on the measuring machine, against 8 ms for the old join); counters on the
      membership would make it constant, at the price of keeping them right in every path that
      finishes, imports or deletes assignments;
    * the held item whose comparison others have filled: the ``active`` range of that index,
      one entry at most, and its comparison;
    * while a kind (regular or gold) has at most ``EXACT_COUNT_UP_TO`` open comparisons, they
      are counted exactly (an index-range count that stops there), and how many of them the
      annotator has finished is read from the smaller side, at most ``EXACT_COUNT_UP_TO`` rows
      either way: their finished assignments when they have fewer, else one probe of the
      (annotator, comparison) unique index per open comparison.

    The numbers are exact whenever both kinds have at most ``EXACT_COUNT_UP_TO`` open
    comparisons, as before. Above that the open count is cached (``open_count_ttl``), and the
    annotator's finished count of that kind is too, moved by their own judgments meanwhile
    (``_finished_over_cap``): counted from their history once per lifetime of the open count.
    """
    query = ProgressQuery(annotator, project)
    with connection.cursor() as cur:
        run_sql(cur, query.label, query.sql, query.params, generic=True)
        row = cur.fetchone()
    return query.result(row)


class ProgressQuery:
    """``progress`` in two halves, so that its statement can run in another one's round trip
    (``submit_and_next`` sends it right after the claim, in the claim's transaction): the
    statement and its parameters, built from the cached counts it depends on, and the Progress
    from its row (``result``, which may read more when a count is above the exact cap)."""

    row: tuple | None = None  # the statement's row, where another function ran it

    def __init__(self, annotator, project: Project):
        self.annotator, self.project = annotator, project
        self.keys = {gold: _open_count_key(project, gold) for gold in (False, True)}
        cached = cache.get_many(list(self.keys.values()))
        self.open_counts = {gold: cached[key] for gold, key in self.keys.items() if key in cached}
        self.exact = tuple(gold for gold in (False, True) if gold not in self.open_counts)
        self.sql = _progress_sql(self.exact)
        self.label = f"progress_{len(self.exact)}"
        self.params = {"user": annotator.pk, "project": project.pk}

    def statement(self) -> tuple[Statement, dict]:
        """The prepared statement and its parameters (PostgreSQL). Its generic plan: every part
        is an index range or a probe whatever the parameters, and custom plans would be
        re-planned on every run (see ``Statement``)."""
        return statement(self.label, self.sql, generic=True), self.params

    def result(self, row) -> Progress:
        annotator, project, exact, open_counts = self.annotator, self.project, self.exact, dict(self.open_counts)
        done, skipped, held_full = (int(x or 0) for x in row[:3])
        finished: dict[bool, int] = {}  # finished by the annotator among the open ones, per kind counted exactly
        for i, gold in enumerate(exact):
            n, f = int(row[3 + 2 * i] or 0), int(row[4 + 2 * i] or 0)
            if n > EXACT_COUNT_UP_TO:
                n = _large_open_count(project, gold)
                cache.set(self.keys[gold], n, open_count_ttl(n))
            else:
                finished[gold] = f
            open_counts[gold] = n
        over_cap = tuple(gold for gold in (False, True) if gold not in finished)
        if over_cap:
            ttl = open_count_ttl(max(open_counts[gold] for gold in over_cap))
            finished_over_cap = _finished_over_cap(annotator, project, over_cap, done + skipped, finished, ttl)
        else:
            finished_over_cap = 0
        # A held item whose comparison others have meanwhile filled is still the annotator's.
        remaining = open_counts[False] + held_full + open_counts[True] - sum(finished.values())
        remaining -= finished_over_cap
        return Progress(done=done, skipped=skipped, remaining=max(remaining, 0))


_progress_sqls: dict[tuple, str] = {}


def _progress_sql(exact: tuple) -> str:
    """PROGRESS_SQL with the columns of the kinds (gold or not) whose open count is not cached."""
    key = (exact, EXACT_COUNT_UP_TO)
    if key not in _progress_sqls:
        _progress_sqls[key] = PROGRESS_SQL.format(
            columns="".join(
                KIND_COLUMNS_SQL.format(gold="TRUE" if gold else "FALSE", cap=EXACT_COUNT_UP_TO + 1, i=i)
                for i, gold in enumerate(exact)
            ),
            sources="".join(
                OPEN_COUNT_SQL.format(gold="TRUE" if gold else "FALSE", cap=EXACT_COUNT_UP_TO + 1, i=i)
                for i, gold in enumerate(exact)
            ),
        )
    return _progress_sqls[key]


def _large_open_count(project: Project, gold: bool) -> int:
    """The open comparisons of one kind, once more than ``EXACT_COUNT_UP_TO`` were seen.

    On PostgreSQL counted exactly up to ``ESTIMATE_ABOVE`` (an index-range count that stops
    there, milliseconds), and beyond that the planner's estimate: an exact count of 10M index
    entries takes seconds, and with a cache per web process the first request of every process
    would wait for it (measured: the first item took 8 s at 10M comparisons). The estimate comes
    from the table's statistics (autovacuum's ANALYZE); it is never below the exact cap, and it is
    shown where the counter is already an approximation (a count cached for n / 10,000 s).
    """
    if connection.vendor != "postgresql":
        return Comparison.objects.filter(project=project, is_gold=gold, is_open=True).order_by().count()
    params = {"project": project.pk}
    with connection.cursor() as cur:
        kind = "TRUE" if gold else "FALSE"
        cur.execute(f"SELECT COUNT(*) FROM ({_OPEN_SQL.format(gold=kind, cap=ESTIMATE_ABOVE + 1)}) o", params)
        n = int(cur.fetchone()[0])
        if n <= ESTIMATE_ABOVE:
            return n
        cur.execute(
            "EXPLAIN (FORMAT JSON) SELECT 1 FROM annotate_comparison "
            f"WHERE project_id = %(project)s AND is_gold = {kind} AND is_open",
            params,
        )
        plan = cur.fetchone()[0]
    if isinstance(plan, str):
        plan = json.loads(plan)
    return max(int(plan[0]["Plan"]["Plan Rows"]), n)


def _finished_over_cap(
    annotator, project: Project, kinds: tuple, finished_now: int, exact: dict, ttl: int
) -> int:
    """How many open comparisons of ``kinds`` (False: regular, True: gold; the kinds whose open
    count is above ``EXACT_COUNT_UP_TO``) the annotator has finished (judged or skipped).

    Counted from the annotator's side (their finished assignments joined to the comparisons,
    what every request used to read) once per ``ttl``, the lifetime of the open count it is
    subtracted from, and cached per annotator. Meanwhile it is moved by what the annotator has
    finished since (done + skipped now minus then), less what of that the exactly counted kind
    took (``exact``, its finished counts now), so the counter still drops by one per judgment.

    Error against an exact count, until the entry expires: at most the number of the project's
    comparisons whose ``is_open`` changed since it was counted (a finished comparison of theirs
    that another annotator's claim filled, or an expiry reopened) plus the items they held in a
    filled comparison and finished since. The cached open count it is subtracted from is off by
    as much or more: the project's comparisons that closed or opened in the same time.
    """
    born = int(project.created_at.timestamp() * 1e6) if project.created_at else 0
    key = f"prefloop:queue:finished:{project.pk}:{born}:{annotator.pk}:{''.join(str(int(g)) for g in kinds)}"
    exact_now = sum(exact.values())
    entry = cache.get(key)
    if entry is not None:
        value, finished_then, exact_then = entry
        return max(0, value + (finished_now - finished_then) - (exact_now - exact_then))
    value = Assignment.objects.filter(
        annotator=annotator, project=project, status__in=["done", "skipped"],
        comparison__is_open=True, comparison__is_gold__in=list(kinds),
    ).count()
    cache.set(key, (value, finished_now, exact_now), ttl)
    return value


# Counts of open comparisons are exact up to this many; above it they are cached briefly,
# since counting half a million index entries on every request is what would slow the queue.
EXACT_COUNT_UP_TO = 1_000
OPEN_COUNT_TTL_S = 10
# On PostgreSQL an open count above this is the planner's estimate (see _large_open_count).
ESTIMATE_ABOVE = 100_000
# ... and for longer the more there are: one uncapped count per n / OPEN_COUNT_ROWS_PER_S seconds.
OPEN_COUNT_ROWS_PER_S = 10_000


def open_count_ttl(n: int) -> int:
    """Seconds to keep a count of ``n`` open comparisons: ``OPEN_COUNT_TTL_S``, or n /
    ``OPEN_COUNT_ROWS_PER_S`` when that is longer. Counting costs time in proportion to n (at
    10M a parallel scan of seconds, in every web process with a per-process cache); caching it
    in proportion to n keeps the counting per second the same at any size, and a count that
    large moves by a tiny fraction meanwhile."""
    return max(OPEN_COUNT_TTL_S, n // OPEN_COUNT_ROWS_PER_S)


# Portable SQL (PostgreSQL and SQLite). Gold comparisons are always open.
# m: the annotator's own counts, each a count of one range of ``assignment_annotator_idx``
# (annotator, project, status): done and skipped never join the comparisons, and ``active`` holds
# one entry at most (the held item, counted when others have filled its comparison). Its LIMIT 1
# keeps PostgreSQL from flattening it into the outer query, which would count done and skipped
# again for each kind's CASE below.
PROGRESS_SQL = """
SELECT m.done, m.skipped, m.held_full{columns}
FROM (SELECT
    (SELECT COUNT(*) FROM annotate_assignment
     WHERE annotator_id = %(user)s AND project_id = %(project)s AND status = 'done') AS done,
    (SELECT COUNT(*) FROM annotate_assignment
     WHERE annotator_id = %(user)s AND project_id = %(project)s AND status = 'skipped') AS skipped,
    (SELECT COUNT(*) FROM annotate_assignment a JOIN annotate_comparison c ON c.id = a.comparison_id
     WHERE a.annotator_id = %(user)s AND a.project_id = %(project)s AND a.status = 'active'
       AND NOT c.is_gold AND NOT c.is_open) AS held_full
    LIMIT 1
) m{sources}
"""
# One kind's open comparisons, at most ``cap`` of them. In the queue's order (priority DESC, id),
# so that PostgreSQL walks the partial index of open comparisons: unordered, a LIMITed count may
# seq-scan from the start of the table, through every closed comparison (late in a project, the
# first half of the table) before it finds its open ones. Gold and the cap are written into the
# statement, the cap for the same reason as the claim's window (a generic plan does not know
# that ``LIMIT $n`` is small).
_OPEN_SQL = """SELECT id FROM annotate_comparison
        WHERE project_id = %(project)s AND is_gold = {gold} AND is_open ORDER BY priority DESC, id LIMIT {cap}"""
OPEN_COUNT_SQL = """,
    (SELECT COUNT(*) AS n FROM (""" + _OPEN_SQL + """) o) r{i}"""
# How many of that kind's open comparisons the annotator has finished, read from whichever side
# is smaller, both at most ``cap``: their finished assignments joined to the comparisons when
# they have finished fewer than the kind has open ones (a crowd worker's first items), else one
# probe of the (annotator, comparison) unique index per open comparison. Only the branch taken
# runs (a CASE evaluates its subqueries when it reaches them, on both databases). The probe's
# EXISTS sits inside a CASE so that it stays a per-row probe: as a WHERE it could become a
# semi-join that reads every assignment of the annotator, which is what this is here to avoid;
# likewise the history side probes each assignment's comparison by its key, where a join could
# be planned (for a generic plan, that knows nothing of how few they are) as a hash join over a
# scan of the comparisons.
# Discarded when the count is above the cap (``progress`` then counts and caches the table).
KIND_COLUMNS_SQL = """, r{i}.n,
    CASE WHEN m.done + m.skipped < r{i}.n THEN (
        SELECT SUM(CASE WHEN EXISTS (
            SELECT 1 FROM annotate_comparison c WHERE c.id = a.comparison_id AND c.is_gold = {gold} AND c.is_open
        ) THEN 1 ELSE 0 END) FROM annotate_assignment a
        WHERE a.annotator_id = %(user)s AND a.project_id = %(project)s AND a.status IN ('done', 'skipped')
    ) ELSE (
        SELECT SUM(CASE WHEN EXISTS (
            SELECT 1 FROM annotate_assignment f
            WHERE f.annotator_id = %(user)s AND f.comparison_id = o.id AND f.status IN ('done', 'skipped')
        ) THEN 1 ELSE 0 END) FROM (""" + _OPEN_SQL + """) o
    ) END"""


def _open_count_key(project: Project, gold: bool) -> str:
    # The creation time too: a project id can be reused (a restored database, SQLite tests).
    born = int(project.created_at.timestamp() * 1e6) if project.created_at else 0
    return f"prefloop:queue:open:{project.pk}:{born}:{int(gold)}"


# The assignment, its project and the annotator's membership in it, in one portable statement
# (the API's permission check of every submit and skip). The columns and joins are shared with
# the token lookup (``prefloop.authentication``), which reads them in its own statement when the
# URL names an assignment: one round trip for both.
OWNED_COLUMNS = "{a}, {p}, m.id, m.role, m.excluded, m.pool_id".format(
    a=", ".join(f"a.{f.column}" for f in Assignment._meta.concrete_fields),
    p=", ".join(f"p.{f.column}" for f in Project._meta.concrete_fields),
)
OWNED_JOINS = (
    "annotate_assignment a JOIN annotate_project p ON p.id = a.project_id "
    "LEFT JOIN annotate_membership m ON m.project_id = a.project_id AND m.user_id = a.annotator_id"
)
_OWNED_SQL = f"SELECT {OWNED_COLUMNS} FROM {OWNED_JOINS} WHERE a.id = %(assignment)s AND a.annotator_id = %(user)s"


def in_id_range(assignment_id: int) -> bool:
    """Whether a row could have this id (raw SQL, unlike the ORM, fails on one beyond 64 bits)."""
    return -(2**63) <= int(assignment_id) < 2**63


def owned_assignment(annotator, assignment_id: int) -> tuple[Assignment, Membership | None] | None:
    """The annotator's assignment (its ``project`` loaded) and their membership in its project
    (None when they have none), or None when the assignment is not theirs (an id beyond the
    database's 64-bit range included). One query."""
    if not in_id_range(assignment_id):
        return None
    with connection.cursor() as cur:
        run_sql(cur, "owned", _OWNED_SQL, {"assignment": assignment_id, "user": annotator.pk})
        row = cur.fetchone()
    return None if row is None else owned_from_row(row, annotator.pk)


def owned_from_row(row, user_id: int) -> tuple[Assignment, Membership | None] | None:
    """``owned_assignment``'s answer from the ``OWNED_COLUMNS`` of a row (None when they are
    empty: a LEFT JOIN that found no assignment of the user's)."""
    n_a, n_p = len(Assignment._meta.concrete_fields), len(Project._meta.concrete_fields)
    if row[0] is None:
        return None
    a_values, p_values, (m_id, role, excluded, pool_id) = row[:n_a], row[n_a:n_a + n_p], row[n_a + n_p:]
    assignment = from_row(Assignment, a_values)
    assignment.project = from_row(Project, p_values)
    membership = None
    if m_id is not None:
        membership = Membership(
            pk=m_id, project_id=assignment.project_id, user_id=user_id, role=role, pool_id=pool_id,
            excluded=bool(excluded),
        )
        membership._state.adding, membership._state.db = False, connection.alias
    return assignment, membership


_converters: dict = {}


def from_row(model, values):
    """A model instance from a row of all its concrete columns, with the database's converters
    applied (SQLite returns booleans as integers and datetimes as text)."""
    db = connections[DEFAULT_DB_ALIAS]  # once, not through the proxy per column (every judgment builds four)
    key = (db.vendor, model)
    if key not in _converters:
        cols = [f.get_col(model._meta.db_table) for f in model._meta.concrete_fields]
        _converters[key] = (
            [(col, db.ops.get_db_converters(col) + col.field.get_db_converters(db)) for col in cols],
            [f.attname for f in model._meta.concrete_fields],
        )
    columns, attnames = _converters[key]
    converted = []
    for (col, converters), value in zip(columns, values):
        for converter in converters:
            value = converter(value, col, db)
        converted.append(value)
    return model.from_db(db.alias, attnames, converted)
