"""The queue's hot path on PostgreSQL: a claim and a submit, each a fixed number of statements.

``annotate.queue`` calls these inside its transactions; the rules they follow are the ones in
its docstring. Here only *how* they are kept in few statements:

* ``claim``: one statement (a data-modifying CTE) that returns the annotator's held item, or
  picks the best open comparison they have not seen, locks it (``FOR NO KEY UPDATE SKIP
  LOCKED``: a row another request is claiming is passed over, not waited for), takes a slot
  on it, inserts (or revives their expired) assignment, and returns it with the prompt and
  both responses. The lock re-evaluates ``is_open`` and ``slots_taken < overlap`` on the
  row's latest version (PostgreSQL's EvalPlanQual re-check), so a slot is taken only where
  there is room. It runs after the caller locked the annotator's membership row, in its own
  snapshot, so it sees what the previous holder of that lock committed.
* ``lock_for_submit`` and ``write_judgment``: the annotator's membership and the assignment
  locked in one statement (membership first: the order a claim and a member's removal use),
  then the judgment, the assignment's status and the comparison's counts in one statement.
* ``lock_member``: the membership read and locked in one statement; a claim on its own (not
  with a judgment) commits asynchronously (see ``LOCK_MEMBER_SQL``).
* ``run_together``: statements sent in one round trip, one after another; ``submit_and_next``
  sends the progress counter's statement right after the claim's this way.

Rows come back as model instances built with ``from_db`` (unloaded fields stay deferred), so
callers and serializers use them as they would the ORM's.

The statements are prepared once per database connection (``PREPARE``, sent with their first
``EXECUTE`` in one round trip): planning the claim costs PostgreSQL more than running it. So
the web processes need their own sessions: connect directly or through a session-mode pooler
(a transaction-mode pooler would hand the statements to other clients' sessions).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime

from django.db import connection

from ..models import Assignment, Comparison, Judgment, Membership, Prompt, Response

DB = "default"

# ``set_config(…, true)``: this transaction (a claim, no judgment) commits without waiting for
# its WAL to reach the disk (``synchronous_commit`` off, for this transaction only). A claim
# lost in a database crash is an item served again, never a lost judgment; and a later
# judgment that depends on the claim flushes the WAL up to and including it when it commits.
LOCK_MEMBER_SQL = """
SELECT id, role, excluded, pool_id, set_config('synchronous_commit', 'off', true)
FROM annotate_membership
WHERE user_id = %(user)s AND project_id = %(project)s
FOR UPDATE
"""

# Candidates: the first ``window`` open comparisons in serving order (priority DESC, then id:
# the order of comparison_open_prio_idx, so this is a range scan of that index that stops after
# ``window`` rows) that the annotator has not judged, skipped or held; none while they hold an
# item, and none while the project has assignments past their deadline (the caller expires
# those first and then asks again with ignore_stale) so that returned slots are served before
# newer ones. The pick ranks them (``{rank}``, then priority DESC, then id) and locks the first
# that is free and has room.
CLAIM_SQL = """
WITH mine AS MATERIALIZED (
    SELECT a.id, a.comparison_id, a.a_on_left, a.status, a.created_at, a.expires_at, a.pool_id
    FROM annotate_assignment a
    WHERE a.annotator_id = %(user)s AND a.project_id = %(project)s AND a.status = 'active'
    ORDER BY a.created_at LIMIT 1
),
stale AS MATERIALIZED (
    SELECT 1 AS x FROM annotate_assignment s
    WHERE s.project_id = %(project)s AND s.status = 'active' AND s.expires_at < %(now)s
    LIMIT 1
),
cand AS MATERIALIZED (
    SELECT c.id FROM annotate_comparison c
    WHERE c.project_id = %(project)s AND c.is_gold = %(gold)s AND c.is_open
      AND NOT EXISTS (SELECT 1 FROM mine)
      AND (%(ignore_stale)s OR NOT EXISTS (SELECT 1 FROM stale))
      AND NOT EXISTS (
          SELECT 1 FROM annotate_assignment s
          WHERE s.annotator_id = %(user)s AND s.comparison_id = c.id AND s.status <> 'expired'
      )
    ORDER BY c.priority DESC, c.id
    LIMIT {window}
),
pick AS (
    SELECT c.id FROM annotate_comparison c
    WHERE c.id IN (SELECT id FROM cand) AND c.is_open AND (c.is_gold OR c.slots_taken < %(overlap)s)
    ORDER BY {rank}, c.priority DESC, c.id
    LIMIT 1
    FOR NO KEY UPDATE SKIP LOCKED
),
took AS (
    UPDATE annotate_comparison c
    SET slots_taken = c.slots_taken + 1, is_open = (c.is_gold OR c.slots_taken + 1 < %(overlap)s)
    FROM pick WHERE c.id = pick.id
    RETURNING c.id
),
revived AS (
    UPDATE annotate_assignment a
    SET project_id = %(project)s, pool_id = %(pool)s, a_on_left = %(a_on_left)s, status = 'active',
        created_at = %(now)s, expires_at = %(expires)s, finished_at = NULL
    FROM took WHERE a.annotator_id = %(user)s AND a.comparison_id = took.id
    RETURNING a.id, a.comparison_id, a.a_on_left, a.status, a.created_at, a.expires_at, a.pool_id
),
inserted AS (
    INSERT INTO annotate_assignment
        (project_id, comparison_id, annotator_id, pool_id, a_on_left, status, created_at, expires_at, finished_at)
    SELECT %(project)s, took.id, %(user)s, %(pool)s, %(a_on_left)s, 'active', %(now)s, %(expires)s, NULL
    FROM took
    WHERE NOT EXISTS (
        SELECT 1 FROM annotate_assignment x WHERE x.annotator_id = %(user)s AND x.comparison_id = took.id
    )
    RETURNING id, comparison_id, a_on_left, status, created_at, expires_at, pool_id
),
got AS (
    SELECT * FROM revived
    UNION ALL SELECT * FROM inserted
    UNION ALL SELECT * FROM mine WHERE expires_at >= %(now)s
)
SELECT n.candidates, n.stale, g.*
FROM (SELECT (SELECT count(*) FROM cand) AS candidates, EXISTS (SELECT 1 FROM stale) AS stale) n
LEFT JOIN (
    SELECT got.id, got.comparison_id, got.a_on_left, got.status, got.created_at, got.expires_at, got.pool_id,
           c.is_gold, c.prompt_id, p.text, p.messages, c.response_a_id, ra.text, c.response_b_id, rb.text
    FROM got
    JOIN annotate_comparison c ON c.id = got.comparison_id
    JOIN annotate_prompt p ON p.id = c.prompt_id
    JOIN annotate_response ra ON ra.id = c.response_a_id
    JOIN annotate_response rb ON rb.id = c.response_b_id
) g ON true
"""

# Ranks: regular items where the annotator's pool has the fewest live or finished assignments
# first (its deficit against its target share, see annotate.queue.orm._most_needed) when the pool
# has a target, then by priority; gold items in an order drawn from the caller's rng (the seed
# makes the md5 ties-free, so priority does not reorder gold).
# The pool's count is a FILTER over the comparison's own assignments (a few: one per annotator
# served it), not a WHERE on pool_id: with the pool in the WHERE, the generic plan of the
# prepared claim ANDed a bitmap of the pool's index, i.e. read every assignment the pool ever
# had for each of the 16 candidates (half the claim's time at 60k assignments, and growing).
POOL_RANK = """
    CASE WHEN (SELECT target_share > 0 FROM annotate_pool WHERE id = %(pool)s) THEN (
        SELECT count(*) FILTER (WHERE x.pool_id = %(pool)s AND x.status IN ('active', 'done'))
        FROM annotate_assignment x WHERE x.comparison_id = c.id
    ) ELSE 0 END"""
GOLD_RANK = "md5(%(seed)s || c.id::text)"


# Membership first (the sub-select locks it while the join is built), then the assignment
# (the outer lock, on the joined row); the assignment's status is read under its lock.
LOCK_FOR_SUBMIT_SQL = """
SELECT a.status, a.project_id, a.comparison_id, a.pool_id, a.a_on_left, a.created_at, m.id, m.role, m.excluded,
       m.pool_id
FROM annotate_assignment a,
     (SELECT id, role, excluded, pool_id FROM annotate_membership
      WHERE user_id = %(user)s
        AND project_id = (SELECT project_id FROM annotate_assignment WHERE id = %(assignment)s AND annotator_id = %(user)s)
      FOR UPDATE) m
WHERE a.id = %(assignment)s AND a.annotator_id = %(user)s
FOR UPDATE OF a
"""

# The judgment, and only if it was written (not a second one for the same comparison), the
# assignment done and the comparison's counts: ``retaken`` is 1 when an expired assignment's
# slot is taken again. The right-hand sides see the old row, hence ``slots_taken + retaken``.
WRITE_JUDGMENT_SQL = """
WITH j AS (
    INSERT INTO annotate_judgment
        (project_id, comparison_id, annotator_id, assignment_id, pool_id, a_on_left, choice, strength, rationale,
         seconds, source, created_at)
    VALUES (%(project)s, %(comparison)s, %(user)s, %(assignment)s, %(pool)s, %(a_on_left)s, %(choice)s, %(strength)s,
            %(rationale)s, %(seconds)s, '', %(created_at)s)
    ON CONFLICT DO NOTHING
    RETURNING id
),
a AS (
    UPDATE annotate_assignment SET status = 'done', finished_at = %(now)s
    WHERE id = %(assignment)s AND EXISTS (SELECT 1 FROM j)
),
c AS (
    UPDATE annotate_comparison
    SET slots_taken = slots_taken + %(retaken)s, n_judgments = n_judgments + 1,
        is_open = (is_gold OR slots_taken + %(retaken)s < %(overlap)s)
    WHERE id = %(comparison)s AND EXISTS (SELECT 1 FROM j)
)
SELECT id FROM j
"""


TYPES = {
    "user": "bigint", "project": "bigint", "pool": "bigint", "gold": "boolean", "now": "timestamptz",
    "expires": "timestamptz", "a_on_left": "boolean", "seed": "text",
    "ignore_stale": "boolean", "overlap": "integer", "assignment": "bigint", "comparison": "bigint",
    "choice": "text", "strength": "integer", "rationale": "text", "seconds": "double precision",
    "created_at": "timestamptz", "retaken": "integer", "key": "text",
}
_PARAM = re.compile(r"%\((\w+)\)s")


class Statement:
    """One of the statements above, prepared on a connection the first time it runs there."""

    def __init__(self, label: str, sql: str, *, generic: bool = False):
        """``generic``: always run the statement's generic plan (``plan_cache_mode`` set for its
        EXECUTE alone, in the same round trip). Left to itself PostgreSQL compares the generic
        plan's estimate with the custom plans' of the first five runs, and where those know the
        parameters to be selective it keeps planning every run: for the progress counter that
        planning took four times its execution (0.8 of 1.0 ms for a new annotator)."""
        self.names: list[str] = []

        def number(match) -> str:
            if match.group(1) not in self.names:
                self.names.append(match.group(1))
            return f"${self.names.index(match.group(1)) + 1}"

        body = _PARAM.sub(number, sql)
        self.name = f"prefloop_{label}_{hashlib.sha1(body.encode()).hexdigest()[:10]}"
        types = ", ".join(TYPES[n] for n in self.names)
        self.prepare = f"PREPARE {self.name} ({types}) AS {body}"
        self.execute = f"EXECUTE {self.name} ({', '.join(['%s'] * len(self.names))})"
        self.generic = generic
        if generic:
            # A failed EXECUTE rolls the SET back with its (implicit or enclosing) transaction.
            self.execute = (
                f"SET plan_cache_mode = force_generic_plan;\n{self.execute};\nRESET plan_cache_mode"
            )

    def run(self, cur, params: dict):
        """Execute on the cursor (a Django cursor: the statement is logged and counted)."""
        args = [params[n] for n in self.names]
        # The cursor's connection itself, not the ``connection`` proxy: each attribute read
        # through the proxy looks the connection up again (a thread-local read), and this runs
        # for every statement of every judgment.
        db = cur.db
        raw = db.connection
        if getattr(db, "_prefloop_prepared_on", None) is not raw:
            # A new database session: nothing prepared there yet.
            db._prefloop_prepared_on, db._prefloop_prepared = raw, {}
        prepared = db._prefloop_prepared
        state = prepared.get(self.name)
        if state == "unsure":  # a first run failed: was the PREPARE part of it done?
            cur.execute("SELECT count(*) FROM pg_prepared_statements WHERE name = %s", [self.name])
            state = "yes" if cur.fetchone()[0] else None
        if state == "yes":
            cur.execute(self.execute, args)
            if self.generic:
                cur.nextset()  # past the SET, to the EXECUTE's rows
            return
        try:
            cur.execute(self.prepare + ";\n" + self.execute, args)
        except Exception:
            prepared[self.name] = "unsure"
            raise
        prepared[self.name] = "yes"
        cur.nextset()  # the EXECUTE's rows
        if self.generic:
            cur.nextset()  # (past the SET)


def run_together(cur, runs: list[tuple[Statement, dict]]) -> list[tuple | None]:
    """Run the statements one after another in one round trip (one query string, as
    ``Statement.run`` sends a PREPARE with its first EXECUTE), and return each one's first row
    (None when it has none). Each sees what the ones before it wrote. On an error none of them
    counts as prepared for sure (``Statement.run`` checks the next time)."""
    db = cur.db
    raw = db.connection
    if getattr(db, "_prefloop_prepared_on", None) is not raw:
        db._prefloop_prepared_on, db._prefloop_prepared = raw, {}
    prepared = db._prefloop_prepared
    parts, args, rows_at, n = [], [], [], 0  # rows_at: the index of each statement's EXECUTE result
    for statement, params in runs:
        state = prepared.get(statement.name)
        if state == "unsure":
            cur.execute("SELECT count(*) FROM pg_prepared_statements WHERE name = %s", [statement.name])
            state = prepared[statement.name] = "yes" if cur.fetchone()[0] else None
        if state != "yes":
            parts.append(statement.prepare)
            n += 1
        parts.append(statement.execute)
        rows_at.append(n + (1 if statement.generic else 0))
        n += 3 if statement.generic else 1
        args += [params[name] for name in statement.names]
    try:
        cur.execute(";\n".join(parts), args)
    except Exception:
        for statement, _ in runs:
            if prepared.get(statement.name) != "yes":
                prepared[statement.name] = "unsure"
        raise
    for statement, _ in runs:
        prepared[statement.name] = "yes"
    rows, at = [], 0
    for index in rows_at:
        while at < index:
            cur.nextset()
            at += 1
        rows.append(cur.fetchone())
    return rows


LOCK_MEMBER = Statement("lock_member", LOCK_MEMBER_SQL)
# The window is written into the statement, not a parameter: with ``LIMIT $n`` a generic plan
# would assume a tenth of the table and could join the pick by scanning it.
_claims: dict[tuple[bool, int], Statement] = {}


def _claim_statement(gold: bool, window: int) -> Statement:
    key = (gold, window)
    if key not in _claims:
        sql = CLAIM_SQL.format(rank=GOLD_RANK if gold else POOL_RANK, window=int(window))
        _claims[key] = Statement(f"claim_{'gold' if gold else 'regular'}_{int(window)}", sql)
    return _claims[key]


LOCK_FOR_SUBMIT = Statement("lock_for_submit", LOCK_FOR_SUBMIT_SQL)
WRITE_JUDGMENT = Statement("write_judgment", WRITE_JUDGMENT_SQL)


@dataclass
class Claim:
    assignment: Assignment | None
    candidates: int  # open comparisons for this annotator in the window (0: none, or held, or gated by stale)
    stale: bool  # the project has active assignments past their deadline
    then_row: tuple | None = None  # the first row of the statement run beside the claim (``then``)


@dataclass
class SubmitLock:
    status: str
    project_id: int
    comparison_id: int
    pool_id: int | None
    a_on_left: bool
    created_at: datetime
    membership: Membership


def _instance(model, **values):
    """A model instance as the ORM would load it with only these fields (the rest deferred).
    ``from_db`` takes the values in the model's field order."""
    names = [f.attname for f in model._meta.concrete_fields if f.attname in values]
    return model.from_db(DB, names, [values[n] for n in names])


def lock_member(user_id: int, project_id: int) -> Membership | None:
    with connection.cursor() as cur:
        LOCK_MEMBER.run(cur, {"user": user_id, "project": project_id})
        row = cur.fetchone()
    if row is None:
        return None
    m_id, role, excluded, pool_id, _ = row
    return _instance(
        Membership, id=m_id, role=role, excluded=excluded, pool_id=pool_id, user_id=user_id, project_id=project_id
    )


def claim(
    *,
    user_id: int,
    project,
    pool_id: int | None,
    gold: bool,
    now: datetime,
    expires: datetime,
    a_on_left: bool,
    seed: str,
    window: int,
    ignore_stale: bool,
    then: tuple[Statement, dict] | None = None,
) -> Claim:
    """``then``: a statement (and its parameters) to run right after the claim in the same round
    trip; its first row is the answer's ``then_row``."""
    params = {
        "user": user_id, "project": project.pk, "pool": pool_id, "gold": gold, "now": now, "expires": expires,
        "a_on_left": a_on_left, "seed": seed, "ignore_stale": ignore_stale,
        "overlap": project.overlap,
    }
    then_row = None
    with connection.cursor() as cur:
        if then is None:
            _claim_statement(gold, window).run(cur, params)
            row = cur.fetchone()
        else:
            row, then_row = run_together(cur, [(_claim_statement(gold, window), params), then])
    candidates, stale, aid = row[0], row[1], row[2]
    if aid is None:
        return Claim(None, candidates, stale, then_row)
    (_, _, _, cid, left, status, created, expires_at, a_pool, is_gold, prompt_id, prompt_text, messages,
     ra_id, ra_text, rb_id, rb_text) = row
    messages_field = Prompt._meta.get_field("messages")
    prompt = _instance(
        Prompt, id=prompt_id, text=prompt_text, messages=messages_field.from_db_value(messages, None, connection)
    )
    ra = _instance(Response, id=ra_id, text=ra_text, prompt_id=prompt_id)
    rb = _instance(Response, id=rb_id, text=rb_text, prompt_id=prompt_id)
    comparison = _instance(
        Comparison, id=cid, project_id=project.pk, prompt_id=prompt_id, response_a_id=ra_id, response_b_id=rb_id,
        is_gold=is_gold,
    )
    comparison.prompt, comparison.response_a, comparison.response_b = prompt, ra, rb
    assignment = _instance(
        Assignment, id=aid, project_id=project.pk, comparison_id=cid, annotator_id=user_id, pool_id=a_pool,
        a_on_left=left, status=status, created_at=created, expires_at=expires_at, finished_at=None,
    )
    assignment.comparison = comparison
    assignment.project = project
    return Claim(assignment, candidates, stale, then_row)


def lock_for_submit(user_id: int, assignment_id: int) -> SubmitLock | None:
    with connection.cursor() as cur:
        LOCK_FOR_SUBMIT.run(cur, {"user": user_id, "assignment": assignment_id})
        row = cur.fetchone()
    if row is None:
        return None
    status, project_id, comparison_id, pool_id, a_on_left, created_at, m_id, m_role, m_excluded, m_pool = row
    membership = _instance(
        Membership, id=m_id, role=m_role, excluded=m_excluded, pool_id=m_pool, user_id=user_id, project_id=project_id
    )
    return SubmitLock(status, project_id, comparison_id, pool_id, a_on_left, created_at, membership)


def write_judgment(
    *,
    user_id: int,
    assignment_id: int,
    lock: SubmitLock,
    overlap: int,
    choice: str,
    strength: int | None,
    rationale: str,
    seconds: float,
    retaken: int,
    now: datetime,
    created_at: datetime,
) -> Judgment | None:
    """The judgment written, or None when one of this annotator's already exists for the comparison."""
    params = {
        "project": lock.project_id, "comparison": lock.comparison_id, "user": user_id, "assignment": assignment_id,
        "pool": lock.pool_id, "a_on_left": lock.a_on_left, "choice": choice, "strength": strength,
        "rationale": rationale, "seconds": seconds, "created_at": created_at, "now": now, "retaken": retaken,
        "overlap": overlap,
    }
    with connection.cursor() as cur:
        WRITE_JUDGMENT.run(cur, params)
        row = cur.fetchone()
    if row is None:
        return None
    return _instance(
        Judgment, id=row[0], project_id=lock.project_id, comparison_id=lock.comparison_id, annotator_id=user_id,
        assignment_id=assignment_id, pool_id=lock.pool_id, a_on_left=lock.a_on_left, choice=choice,
        strength=strength, rationale=rationale, seconds=seconds, source="", created_at=created_at,
    )
