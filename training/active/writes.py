"""Writing priorities in bulk: one ``UPDATE … FROM (VALUES …)`` statement per chunk, never one
ORM save per comparison (a million-comparison project is a thousand statements).

Each chunk is one short transaction that first share-locks the project row and checks that the
project still has the job's pair order and that the job still belongs to this worker's claim
(fenced, :mod:`prefloop.jobs`): ``annotate.services.set_pair_order`` changes the order and zeroes
the priorities under an exclusive lock on the same row, so a computation for the old order can
never write after the change. Rows whose priority is already the value are not rewritten.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.db import connection, transaction

from annotate.models import Comparison, Project
from prefloop import jobs

#: Comparisons per UPDATE statement.
WRITE_CHUNK = 1000


class Stop(Exception):
    """The job must stop writing: its claim was taken over, or the project's order changed."""


def _share_lock_project(project_id: int) -> str | None:
    """The project's pair order, the row share-locked until the transaction ends (PostgreSQL;
    SQLite serializes writers anyway)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cur:
            cur.execute("SELECT pair_order FROM annotate_project WHERE id = %s FOR SHARE", [project_id])
            row = cur.fetchone()
        return row[0] if row else None
    return Project.objects.filter(pk=project_id).values_list("pair_order", flat=True).first()


def _update(project_id: int, ids: Sequence[int], values: Sequence[float]) -> int:
    table = Comparison._meta.db_table
    if connection.vendor == "postgresql":
        rows = ", ".join(["(%s::bigint, %s::double precision)"] + ["(%s, %s)"] * (len(ids) - 1))
        sql = (f"UPDATE {table} AS c SET priority = v.p FROM (VALUES {rows}) AS v(id, p) "
               f"WHERE c.id = v.id AND c.project_id = %s AND c.priority IS DISTINCT FROM v.p")
    elif connection.vendor == "sqlite":
        rows = ", ".join(["(?, ?)"] * len(ids))
        sql = (f"UPDATE {table} SET priority = v.column2 FROM (VALUES {rows}) AS v "
               f"WHERE {table}.id = v.column1 AND {table}.project_id = ? AND {table}.priority IS NOT v.column2")
        sql = sql.replace("?", "%s")
    else:  # any other database: Django's CASE WHEN, in the same chunks
        objs = [Comparison(pk=i, priority=float(p)) for i, p in zip(ids, values)]
        Comparison.objects.bulk_update(objs, ["priority"])
        return len(objs)
    params: list = []
    for i, p in zip(ids, values):
        params += [int(i), float(p)]
    params.append(project_id)
    with connection.cursor() as cur:
        cur.execute(sql, params)
        return cur.rowcount


def write_chunk(job, ids: Sequence[int], values: Sequence[float], **job_fields) -> int:
    """Write ``values`` as the priorities of comparisons ``ids`` of the job's project, and
    ``job_fields`` (progress, cursor...) into the job's row, in one transaction; raises
    :class:`Stop` (writing nothing) when the job may no longer write. Returns rows changed."""
    changed = 0
    with transaction.atomic():
        order = _share_lock_project(job.project_id)
        if order != job.pair_order:
            raise Stop(f"the project's pair order changed to {order!r}")
        mine = jobs.fenced(job)
        if not (mine.update(**job_fields) if job_fields else mine.exists()):
            raise Stop("another worker took the job over")
        for start in range(0, len(ids), WRITE_CHUNK):
            changed += _update(job.project_id, ids[start:start + WRITE_CHUNK], values[start:start + WRITE_CHUNK])
    return changed
