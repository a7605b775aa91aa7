"""``manage.py recompute_quality --project NAME_OR_ID [--all] [--queue]``.

Computes annotator quality and agreement now (synchronously, with a progress line) and prints
the headline figures; ``--queue`` sends it to the Celery worker instead.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from annotate.models import Project
from evaluation.quality.compute import recompute_quality
from evaluation.quality.scheduling import schedule_recompute
from evaluation.quality.selectors import annotator_rows


def _project(value: str) -> Project:
    qs = Project.objects.filter(pk=int(value)) if value.isdigit() else Project.objects.filter(name=value)
    project = qs.first()
    if project is None:
        raise CommandError(f"No project {value!r} (give an id or an exact name).")
    return project


def _fmt(stat: dict | None) -> str:
    stat = stat or {}
    v, lo, hi = stat.get("value"), stat.get("low"), stat.get("high")
    if v is None:
        return "—"
    return f"{v:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else "")


class Command(BaseCommand):
    help = "Recompute annotator quality, agreement and model win rates of a project."

    def add_arguments(self, parser):
        parser.add_argument("--project", help="project id or name")
        parser.add_argument("--all", action="store_true", help="every project")
        parser.add_argument(
            "--queue", action="store_true", help="queue a Celery task instead of computing here"
        )

    def handle(self, *args, **options):
        if options["all"]:
            projects = list(Project.objects.order_by("pk"))
        elif options["project"]:
            projects = [_project(options["project"])]
        else:
            raise CommandError("Give --project NAME_OR_ID or --all.")
        verbose = options["verbosity"] > 0
        for project in projects:
            if options["queue"]:
                report = schedule_recompute(project, countdown=0)
                self.stdout.write(f"{project.name}: queued quality report {report.pk}")
                continue

            def progress(fraction: float, message: str) -> None:
                if verbose:
                    self.stderr.write(f"\r  {fraction * 100:5.1f}%  {message:<50}", ending="")

            report = recompute_quality(project, progress=progress)
            if verbose:
                self.stderr.write("")
            data = report.data
            overall = (data.get("agreement") or {}).get("overall") or {}
            self.stdout.write(
                self.style.SUCCESS(
                    f"{project.name}: report {report.pk}, {data.get('n_judgments', 0)} judgments, "
                    f"{data.get('n_items', 0)} comparisons, {data.get('n_annotators', 0)} annotators"
                )
            )
            if overall:
                self.stdout.write(f"  raw agreement      {_fmt(overall.get('raw_agreement'))}")
                self.stdout.write(f"  Krippendorff alpha {_fmt(overall.get('krippendorff_alpha'))}")
                self.stdout.write(f"  Fleiss kappa       {_fmt(overall.get('fleiss_kappa'))}")
                self.stdout.write(f"  mean Cohen kappa   {_fmt(overall.get('cohen_kappa'))}")
            rows = annotator_rows(project, report, sort="weight", descending=True)
            below = [r.username for r in rows if r.below_threshold]
            if rows:
                self.stdout.write(
                    "  weights: "
                    + ", ".join(f"{r.username} {r.weight:.2f}" for r in rows[:10])
                    + (" …" if len(rows) > 10 else "")
                )
            if below:
                self.stdout.write(self.style.WARNING(f"  below threshold: {', '.join(below)}"))
