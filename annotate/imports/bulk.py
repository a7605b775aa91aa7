"""Writing many rows fast: one multi-row INSERT per batch (``insert_rows``: ``unnest`` arrays on
PostgreSQL, a ``VALUES`` list elsewhere, ``RETURNING`` where the database has it), chunked
``__in`` lookups (``chunks``), and the progress ticker that counts rows written. Knows
nothing of comparisons or judgments."""
from __future__ import annotations

import json
from typing import Iterator

from django.db import connections, router
from django.db.models import JSONField
from django.utils import timezone

from .results import Progress

#: Rows per INSERT statement (fewer where the database limits bound parameters).
BATCH_SIZE = 2000
#: Values per ``__in`` lookup: below SQLite's 999 bound parameters.
LOOKUP_CHUNK = 900


def chunks(items: list, size: int = LOOKUP_CHUNK) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Ticker:
    def __init__(self, total: int, progress: Progress | None):
        self.total, self.done, self.progress = total, 0, progress

    def __call__(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(self.done, self.total)


def orm_create(model, objs: list, tick: Ticker) -> None:
    """The ORM's bulk_create, for the few rows (users, memberships) where speed does not matter."""
    for part in chunks(objs, BATCH_SIZE):
        model.objects.bulk_create(part, batch_size=BATCH_SIZE)
        tick(len(part))


def finish(tickers: list[Ticker], progress: Progress | None) -> None:
    """Make the last progress report ``(total, total)`` even when no batch was written."""
    if progress is None:
        return
    last = tickers[-1] if tickers else None
    if last is None or last.done == 0:
        total = last.total if last is not None else 0
        progress(total, total)


def _max_rows(conn, n_columns: int) -> int:
    """Rows per multi-row INSERT: BATCH_SIZE, fewer where bound parameters are limited."""
    limit = conn.features.max_query_params
    if conn.vendor == "sqlite":
        import sqlite3

        conn.ensure_connection()
        try:  # the real limit (32766 since SQLite 3.32), not Django's conservative 999
            limit = conn.connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        except AttributeError:  # Python < 3.11
            pass
    if not limit:
        return BATCH_SIZE
    return max(1, min(BATCH_SIZE, limit // n_columns))


def insert_rows(model, columns: list[str], rows: list[tuple], tick: Ticker, returning: tuple[str, ...] = ()):
    """INSERT ``rows`` (tuples of values for ``columns``, named by field or attname) in batches.

    Django's ``bulk_create`` spends most of a large import compiling values one by one; this
    writes the same rows with one statement per batch: ``INSERT … SELECT … FROM unnest(array,
    …)`` on PostgreSQL (one parameter per column, so psycopg has no giant query to parse) and a
    multi-row ``VALUES`` list elsewhere. Columns not given get their field default
    (``auto_now_add`` fields the current time). JSON values are Python objects, adapted here.
    With ``returning`` (and ``INSERT … RETURNING``: PostgreSQL, SQLite >= 3.35) the returned
    rows come back in any order; without database support the result is None and the caller
    re-reads what it needs.
    """
    if not rows:
        return []
    conn = connections[router.db_for_write(model)]
    ops = conn.ops
    meta = model._meta
    fields = [f for f in meta.concrete_fields if not f.primary_key]
    given = {meta.get_field(c).attname: i for i, c in enumerate(columns)}
    now = timezone.now()
    # (field, index in the row or None, prepared constant for a field not given)
    plan = []
    for f in fields:
        if f.attname in given:
            plan.append((f, given[f.attname], None))
        elif getattr(f, "auto_now_add", False) or getattr(f, "auto_now", False):
            plan.append((f, None, f.get_db_prep_save(now, conn)))
        else:
            plan.append((f, None, f.get_db_prep_save(f.get_default(), conn)))
    names = ", ".join(ops.quote_name(f.column) for f in fields)
    can_return = bool(returning) and conn.features.can_return_rows_from_bulk_insert
    ret_sql = ""
    if can_return:
        ret_sql = " RETURNING " + ", ".join(ops.quote_name(meta.get_field(c).column) for c in returning)
    table = ops.quote_name(meta.db_table)

    def json_text(value, encoder):
        return None if value is None else json.dumps(value, cls=encoder)

    out: list[tuple] = []
    with conn.cursor() as cursor:
        if conn.vendor == "postgresql":
            given_plan = [(f, i) for f, i, _ in plan if i is not None]
            select = []
            const_params = []
            for f, i, const in plan:
                if i is None:
                    select.append(f"%s::{f.db_type(conn)}")
                    const_params.append(const)
                else:
                    select.append(f"_u.c{i}")
            arrays_sql = ", ".join(
                f"%s::{'text' if isinstance(f, JSONField) else f.db_type(conn)}[]" for f, _ in given_plan
            )
            aliases = ", ".join(f"c{i}" for _, i in given_plan)
            select_sql = ", ".join(
                f"_u.c{i}::jsonb" if i is not None and isinstance(f, JSONField) else s
                for (f, i, _), s in zip(plan, select)
            )
            sql = (
                f"INSERT INTO {table} ({names}) SELECT {select_sql}"
                f" FROM unnest({arrays_sql}) AS _u({aliases})"
                f"{ret_sql}"
            )
            for part in chunks(rows, BATCH_SIZE):
                arrays = []
                for f, i in given_plan:
                    column = [row[i] for row in part]
                    if isinstance(f, JSONField):
                        column = [json_text(v, f.encoder) for v in column]
                    arrays.append(column)
                cursor.execute(sql, const_params + arrays)
                if can_return:
                    out.extend(cursor.fetchall())
                tick(len(part))
        else:
            json_positions = [
                (n, f.encoder)
                for n, (f, i, _) in enumerate(plan)
                if i is not None and isinstance(f, JSONField)
            ]
            order = [(i, const) for _, i, const in plan]
            row_sql = "(" + ", ".join(["%s"] * len(fields)) + ")"
            head = f"INSERT INTO {table} ({names}) VALUES "
            for part in chunks(rows, _max_rows(conn, len(fields))):
                params: list = []
                for row in part:
                    values = [row[i] if i is not None else const for i, const in order]
                    for pos, encoder in json_positions:
                        values[pos] = json_text(values[pos], encoder)
                    params.extend(values)
                cursor.execute(head + ", ".join([row_sql] * len(part)) + ret_sql, params)
                if can_return:
                    out.extend(cursor.fetchall())
                tick(len(part))
    return out if can_return or not returning else None
