"""What the annotator's requests read besides the claim: their progress counter, and their
assignment with its project and their membership (the API's permission check), one portable
statement each.

On PostgreSQL both are prepared statements (``annotate.queue.postgres.Statement``), like the
claim: every judgment through the API runs each of them once, and planning them cost the
database more than running them (at 1M comparisons: progress 0.16 ms planning against
0.02-0.37 ms execution; the owned assignment 0.10 ms planning against 0.02 ms execution).
"""
from __future__ import annotations

from django.core.cache import cache
from django.db import connection

from ..models import Assignment, Comparison, Membership, Project
from .postgres import Statement
from .rules import Progress

_statements: dict[str, Statement] = {}


def run_sql(cur, label: str, sql: str, params: dict) -> None:
    """Run ``sql`` (named parameters) on the cursor: prepared on PostgreSQL, plain elsewhere."""
    if connection.vendor != "postgresql":
        cur.execute(sql, params)
        return
    if sql not in _statements:
        _statements[sql] = Statement(label, sql)
    _statements[sql].run(cur, params)


def progress(annotator, project: Project) -> Progress:
    """Done and skipped by this annotator, and what remains for them: the open regular
    comparisons and the gold ones they have not finished, the item they hold included.

    Gold and regular items move the counter alike, so it never tells which item was gold.
    One statement: the annotator's own counts, and the project's open regular and gold
    comparisons counted exactly while there are at most ``EXACT_COUNT_UP_TO`` of them (an
    index-range count that stops there); above that a cached count is used instead (see
    ``open_count_ttl``), so no request but a cache miss counts a large table.
    """
    keys = {gold: _open_count_key(project, gold) for gold in (False, True)}
    cached = cache.get_many(list(keys.values()))
    open_counts = {gold: cached[key] for gold, key in keys.items() if key in cached}
    exact = [gold for gold in (False, True) if gold not in open_counts]
    counts = (CAPPED_COUNT_SQL.format(gold="TRUE" if gold else "FALSE", cap=EXACT_COUNT_UP_TO + 1) for gold in exact)
    sql = PROGRESS_SQL.format(counts="".join(counts))
    with connection.cursor() as cur:
        run_sql(cur, f"progress_{len(exact)}", sql, {"user": annotator.pk, "project": project.pk})
        row = cur.fetchone()
    done, skipped, finished_open, finished_gold, held_full = (int(x or 0) for x in row[:5])
    for gold, n in zip(exact, row[5:]):
        if n > EXACT_COUNT_UP_TO:
            n = Comparison.objects.filter(project=project, is_gold=gold, is_open=True).order_by().count()
            cache.set(keys[gold], n, open_count_ttl(n))
        open_counts[gold] = n
    # A held item whose comparison others have meanwhile filled is still the annotator's.
    remaining = (open_counts[False] - finished_open + held_full) + (open_counts[True] - finished_gold)
    return Progress(done=done, skipped=skipped, remaining=max(remaining, 0))


# Counts of open comparisons are exact up to this many; above it they are cached briefly,
# since counting half a million index entries on every request is what would slow the queue.
EXACT_COUNT_UP_TO = 1_000
OPEN_COUNT_TTL_S = 10
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
PROGRESS_SQL = """
SELECT
    SUM(CASE WHEN a.status = 'done' THEN 1 ELSE 0 END),
    SUM(CASE WHEN a.status = 'skipped' THEN 1 ELSE 0 END),
    SUM(CASE WHEN a.status IN ('done', 'skipped') AND NOT c.is_gold AND c.is_open THEN 1 ELSE 0 END),
    SUM(CASE WHEN a.status IN ('done', 'skipped') AND c.is_gold THEN 1 ELSE 0 END),
    SUM(CASE WHEN a.status = 'active' AND NOT c.is_gold AND NOT c.is_open THEN 1 ELSE 0 END)
    {counts}
FROM annotate_assignment a JOIN annotate_comparison c ON c.id = a.comparison_id
WHERE a.annotator_id = %(user)s AND a.project_id = %(project)s
"""
# In the queue's order (priority DESC, id), so that PostgreSQL walks the partial index of open
# comparisons: unordered, a LIMITed count may seq-scan from the start of the table, through
# every closed comparison (late in a project, the first half of the table) before it finds its
# open ones. Gold and the cap are written into the statement, the cap for the same reason as
# the claim's window (a generic plan does not know that ``LIMIT $n`` is small).
CAPPED_COUNT_SQL = """,
    (SELECT COUNT(*) FROM (
        SELECT 1 FROM annotate_comparison
        WHERE project_id = %(project)s AND is_gold = {gold} AND is_open ORDER BY priority DESC, id LIMIT {cap}
    ) capped)"""


def _open_count_key(project: Project, gold: bool) -> str:
    # The creation time too: a project id can be reused (a restored database, SQLite tests).
    born = int(project.created_at.timestamp() * 1e6) if project.created_at else 0
    return f"prefloop:queue:open:{project.pk}:{born}:{int(gold)}"


# The assignment, its project and the annotator's membership in it, in one portable statement
# (the API's permission check of every submit and skip).
_OWNED_SQL = (
    "SELECT {a}, {p}, m.id, m.role, m.excluded, m.pool_id FROM annotate_assignment a "
    "JOIN annotate_project p ON p.id = a.project_id "
    "LEFT JOIN annotate_membership m ON m.project_id = a.project_id AND m.user_id = a.annotator_id "
    "WHERE a.id = %(assignment)s AND a.annotator_id = %(user)s"
).format(
    a=", ".join(f"a.{f.column}" for f in Assignment._meta.concrete_fields),
    p=", ".join(f"p.{f.column}" for f in Project._meta.concrete_fields),
)


def owned_assignment(annotator, assignment_id: int) -> tuple[Assignment, Membership | None] | None:
    """The annotator's assignment (its ``project`` loaded) and their membership in its project
    (None when they have none), or None when the assignment is not theirs (an id beyond the
    database's 64-bit range included: raw SQL, unlike the ORM, would fail on it). One query."""
    if not -(2**63) <= int(assignment_id) < 2**63:
        return None
    with connection.cursor() as cur:
        run_sql(cur, "owned", _OWNED_SQL, {"assignment": assignment_id, "user": annotator.pk})
        row = cur.fetchone()
    if row is None:
        return None
    n_a, n_p = len(Assignment._meta.concrete_fields), len(Project._meta.concrete_fields)
    a_values, p_values, (m_id, role, excluded, pool_id) = row[:n_a], row[n_a:n_a + n_p], row[n_a + n_p:]
    assignment = from_row(Assignment, a_values)
    assignment.project = from_row(Project, p_values)
    membership = None
    if m_id is not None:
        membership = Membership(
            pk=m_id, project_id=assignment.project_id, user_id=annotator.pk, role=role, pool_id=pool_id,
            excluded=bool(excluded),
        )
        membership._state.adding, membership._state.db = False, connection.alias
    return assignment, membership


_converters: dict = {}


def from_row(model, values):
    """A model instance from a row of all its concrete columns, with the database's converters
    applied (SQLite returns booleans as integers and datetimes as text)."""
    key = (connection.vendor, model)
    if key not in _converters:
        cols = [f.get_col(model._meta.db_table) for f in model._meta.concrete_fields]
        _converters[key] = [
            (col, connection.ops.get_db_converters(col) + col.field.get_db_converters(connection)) for col in cols
        ]
    converted = []
    for (col, converters), value in zip(_converters[key], values):
        for converter in converters:
            value = converter(value, col, connection)
        converted.append(value)
    return model.from_db(connection.alias, [f.attname for f in model._meta.concrete_fields], converted)
