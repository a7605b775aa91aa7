"""Reads of a project's state for its pages and the API (HackSoft's "selectors": services
write, selectors read): the pools with their normalized target shares, the progress page's
report, and the API's progress totals."""
from __future__ import annotations

from django.db.models import Avg, Count, Max, Q

from .models import Assignment, AssignmentStatus, Comparison, Judgment, Membership, Pool, Project, Role


def project_totals(project: Project) -> dict:
    """Project-wide progress: comparisons, completion, and judgments per pool vs target."""
    regular = Comparison.objects.filter(project=project, is_gold=False).aggregate(
        comparisons=Count("pk"),
        complete=Count("pk", filter=Q(n_judgments__gte=project.overlap)),
        open=Count("pk", filter=Q(is_open=True)),
    )
    judgments = Judgment.objects.filter(project=project)
    counts = judgments.aggregate(total=Count("pk"), gold=Count("pk", filter=Q(comparison__is_gold=True)))
    by_pool = dict(
        judgments.filter(comparison__is_gold=False)
        .values("pool_id")
        .annotate(n=Count("pk"))
        .values_list("pool_id", "n")
    )
    regular_judgments = sum(by_pool.values())
    pools = list(Pool.objects.filter(project=project).order_by("name"))
    share_total = sum(p.target_share for p in pools if p.target_share > 0)
    return {
        "scope": "project",
        "overlap": project.overlap,
        "comparisons": regular["comparisons"],
        "gold_comparisons": Comparison.objects.filter(project=project, is_gold=True).count(),
        "complete": regular["complete"],
        "open": regular["open"],
        "judgments": counts["total"],
        "gold_judgments": counts["gold"],
        "active_assignments": Assignment.objects.filter(project=project, status=AssignmentStatus.ACTIVE).count(),
        "annotators": Membership.objects.filter(project=project, role=Role.ANNOTATOR).count(),
        "pools": [
            {
                "id": p.pk,
                "name": p.name,
                "target_share": (p.target_share / share_total) if share_total > 0 and p.target_share > 0 else 0.0,
                "judgments": by_pool.get(p.pk, 0),
                "share": by_pool.get(p.pk, 0) / regular_judgments if regular_judgments else 0.0,
            }
            for p in pools
        ],
        "unpooled_judgments": by_pool.get(None, 0),
    }


def pool_rows(project: Project):
    """The project's pools with ``n_members`` and ``normalized`` (the target share among the
    pools that have one), and the sum of the positive target shares."""
    pools = list(project.pools.annotate(n_members=Count("members", filter=Q(members__project=project))))
    total = sum(p.target_share for p in pools if p.target_share > 0)
    for p in pools:
        p.normalized = (p.target_share / total) if total > 0 and p.target_share > 0 else 0.0
    return pools, total


def progress_report(project: Project) -> dict:
    """The progress page: comparison counts, judgments per pool against the targets, and one
    row per annotator (done, skipped, held, average seconds, last judgment)."""
    regular = Comparison.objects.filter(project=project, is_gold=False)
    counts = regular.aggregate(
        total=Count("pk"),
        complete=Count("pk", filter=Q(n_judgments__gte=project.overlap)),
        open=Count("pk", filter=Q(is_open=True)),
        untouched=Count("pk", filter=Q(n_judgments=0)),
    )
    counts["waiting"] = counts["total"] - counts["complete"] - counts["open"]
    counts["gold"] = Comparison.objects.filter(project=project, is_gold=True).count()
    counts["share_complete"] = counts["complete"] / counts["total"] if counts["total"] else 0.0

    judgments = Judgment.objects.filter(project=project)
    n_judgments = judgments.count()
    n_gold_judgments = judgments.filter(comparison__is_gold=True).count()
    per_pool = dict(judgments.values("pool_id").annotate(n=Count("pk")).values_list("pool_id", "n"))
    pools, _ = pool_rows(project)
    pool_lines = []
    for p in pools:
        n = per_pool.get(p.pk, 0)
        pool_lines.append(
            {"name": p.name, "n": n, "share": n / n_judgments if n_judgments else 0.0, "target": p.normalized}
        )
    if per_pool.get(None):
        n = per_pool[None]
        pool_lines.append({"name": "No pool", "n": n, "share": n / n_judgments, "target": None})

    annotators = (
        Membership.objects.filter(project=project, role=Role.ANNOTATOR)
        .select_related("user", "pool")
        .annotate(
            done=Count(
                "user__assignments",
                filter=Q(user__assignments__project=project, user__assignments__status=AssignmentStatus.DONE),
            ),
            skipped=Count(
                "user__assignments",
                filter=Q(user__assignments__project=project, user__assignments__status=AssignmentStatus.SKIPPED),
            ),
            active=Count(
                "user__assignments",
                filter=Q(user__assignments__project=project, user__assignments__status=AssignmentStatus.ACTIVE),
            ),
        )
        .order_by("pool__name", "user__username")
    )
    timing = dict(
        (row["annotator_id"], row)
        for row in judgments.values("annotator_id").annotate(avg_seconds=Avg("seconds"), last=Max("created_at"))
    )
    annotator_rows = [
        {
            "username": m.user.username,
            "pool": m.pool.name if m.pool else "",
            "excluded": m.excluded,
            "done": m.done,
            "skipped": m.skipped,
            "active": m.active,
            "avg_seconds": (timing.get(m.user_id) or {}).get("avg_seconds"),
            "last": (timing.get(m.user_id) or {}).get("last"),
        }
        for m in annotators
    ]
    return {
        "counts": counts,
        "n_judgments": n_judgments,
        "n_gold_judgments": n_gold_judgments,
        "pool_rows": pool_lines,
        "annotator_rows": annotator_rows,
    }
