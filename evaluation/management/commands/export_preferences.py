"""``manage.py export_preferences``: build a calibrated preference export from the shell.

    manage.py export_preferences --project "My project" --format jsonl,parquet,hf --out exports/v1 \
        --method dawid_skene --min-confidence 0.6 --rounds 0,1 --judgments

The same service as the UI and the API (:func:`evaluation.export.services.build_export`), run in
this process instead of on a Celery worker: the export is recorded as an ``Export`` row (so
it is listed and downloadable in the app) whose folder is ``--out``. Texts are streamed in
batches, so memory stays flat however many comparisons there are; a tqdm bar per stage
goes to stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from annotate.models import Project
from evaluation.export.options import FORMATS, ExportError
from evaluation.export.progress import Progress
from evaluation.export.services import build_export, create_export
from evaluation.stats.aggregation import METHODS

STAGE_TEXT = {
    "load": "reading judgments into arrays",
    "aggregate": "aggregating labels and annotator weights",
    "hf": "writing the datasets folder (save_to_disk)",
    "card": "agreement with bootstrap intervals, dataset card, content hash",
}


class TqdmProgress(Progress):
    """One tqdm bar per stage (rows for the writing stages)."""

    def __init__(self, enabled: bool = True) -> None:
        super().__init__()
        self.enabled = enabled
        self.bar = None

    def stage(self, name: str, total: int = 0) -> None:
        self._close_bar()
        super().stage(name, total)
        if not self.enabled:
            return
        if total:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                desc=f"{name:>9}",
                unit=" rows",
                file=sys.stderr,
                dynamic_ncols=True,
                mininterval=0.5,
            )
        else:
            sys.stderr.write(f"{name:>9}: {STAGE_TEXT.get(name, '')}\n")

    def advance(self, n: int = 1) -> None:
        super().advance(n)
        if self.bar is not None:
            self.bar.update(n)

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        self._close_bar()


def _project(value: str) -> Project:
    project = Project.objects.filter(name=value).first()
    if project is None and value.isdigit():
        project = Project.objects.filter(pk=int(value)).first()
    if project is None:
        raise CommandError(f"no project named or numbered {value!r}")
    return project


class Command(BaseCommand):
    help = "Export a project's calibrated preference pairs (JSONL, Parquet, datasets, CSV, judgments)."
    requires_system_checks: list = []

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True, help="Project name or id.")
        parser.add_argument(
            "--format", default="jsonl", help=f"Comma-separated formats: {', '.join(FORMATS)}."
        )
        parser.add_argument(
            "--out", required=True, help="Folder to write (created; must be empty if it exists)."
        )
        parser.add_argument("--method", default="dawid_skene", choices=METHODS)
        parser.add_argument("--min-confidence", type=float, default=0.0)
        parser.add_argument("--rounds", default="", help="Comma-separated rounds (default: all).")
        parser.add_argument("--pools", default="", help="Comma-separated pool names or ids (default: all).")
        parser.add_argument(
            "--pool-balanced", action="store_true", help="Weight pools equally per comparison."
        )
        parser.add_argument("--include-ties", action="store_true")
        parser.add_argument("--include-both-bad", action="store_true")
        parser.add_argument("--judgments", action="store_true", help="Also write judgments.jsonl.")
        parser.add_argument(
            "--include-rationales", action="store_true", help="Rationales in judgments.jsonl."
        )
        parser.add_argument(
            "--include-excluded", action="store_true", help="Keep excluded annotators' judgments."
        )
        parser.add_argument("--test-fraction", type=float, default=0.1)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument(
            "--stable-pseudonyms",
            action="store_true",
            help="Same pseudonyms as the project's other stable-pseudonym exports.",
        )
        parser.add_argument("--style", default="auto", choices=("auto", "standard", "conversational"))
        parser.add_argument("--name", default="")
        parser.add_argument("--no-progress", action="store_true", help="No progress bars.")

    def handle(self, *args, **o):
        project = _project(o["project"])
        formats = [f.strip() for f in o["format"].split(",") if f.strip()]
        if o["judgments"] and "judgments" not in formats:
            formats.append("judgments")
        out = Path(o["out"]).expanduser()
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise CommandError(f"--out {out} exists and is not an empty folder")
        data = {
            "formats": formats,
            "method": o["method"],
            "min_confidence": o["min_confidence"],
            "rounds": o["rounds"],
            "pools": o["pools"],
            "pool_balanced": o["pool_balanced"],
            "include_ties": o["include_ties"],
            "include_both_bad": o["include_both_bad"],
            "include_rationales": o["include_rationales"],
            "include_excluded": o["include_excluded"],
            "test_fraction": o["test_fraction"],
            "seed": o["seed"],
            "stable_pseudonyms": o["stable_pseudonyms"],
            "style": o["style"],
        }
        try:
            export = create_export(project, None, data, name=o["name"], enqueue=False)
        except ExportError as exc:
            raise CommandError(str(exc)) from None
        progress = TqdmProgress(enabled=not o["no_progress"])
        try:
            export = build_export(export, out_dir=out, progress=progress)  # marks it failed on error
        except ExportError as exc:
            raise CommandError(str(exc)) from None
        s = export.stats
        self.stdout.write(
            f"export {export.pk}: {s['n_pairs']} pairs (train {s['n_train']}, test {s['n_test']}), "
            f"{s['n_judgments']} judgments, {s['n_annotators']} annotators -> {export.path}\n"
            f"content hash {export.content_hash}"
        )
