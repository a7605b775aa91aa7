"""``manage.py train --project P (--export ID | --fresh) --recipe sft+dpo --base tiny-default
[--set lr=1e-4 --set max_steps=200 ...] [--wait | --inline]``.

Launches a training run exactly as the UI and the API do (``training.services.runs.launch_run``:
everything is validated before any compute) and queues it on the ``gpu`` worker. ``--wait``
follows the run until it ends, printing progress; ``--inline`` runs it in this process instead
of a worker (handy on a GPU box without Celery). Other actions: ``--cancel RUN_ID`` and
``--resume-stale`` (re-queue runs whose worker died).
"""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandError

from annotate.management.commands.import_comparisons import find_project
from evaluation.models import Export
from training.services.errors import TrainingError
from training.services.hyperparameters import parse_set_options
from training.services.runs import cancel_run, launch_run, resume_stale_runs
from training.models import ModelVersion, Recipe, TrainingRun


class Command(BaseCommand):
    help = "Launch (or cancel, or recover) a training run."

    def add_arguments(self, parser):
        parser.add_argument("--project", help="Project id or name.")
        source = parser.add_mutually_exclusive_group()
        source.add_argument("--export", type=int, help="Id of a built export of the project.")
        source.add_argument("--fresh", action="store_true", help="Build a fresh export now (default).")
        parser.add_argument("--recipe", choices=Recipe.values, default=Recipe.SFT_DPO)
        parser.add_argument(
            "--base", default="tiny-default", help="Base model version name (default tiny-default)."
        )
        parser.add_argument(
            "--reward-model", help="Recipes ppo / sft+dpo+ppo: a registered reward model's name."
        )
        parser.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="A TrainConfig field, e.g. --set lr=1e-4 --set max_steps=200 (repeatable).",
        )
        follow = parser.add_mutually_exclusive_group()
        follow.add_argument("--wait", action="store_true", help="Follow the run until it ends.")
        follow.add_argument("--inline", action="store_true", help="Train in this process, not on a worker.")
        parser.add_argument("--cancel", type=int, metavar="RUN_ID", help="Ask run RUN_ID to stop.")
        parser.add_argument(
            "--resume-stale",
            action="store_true",
            help="Re-queue runs left 'running' by a dead worker, then exit.",
        )

    def handle(self, *args, **options):
        if options["resume_stale"]:
            ids = resume_stale_runs()
            self.stdout.write(f"re-queued runs: {ids}" if ids else "no stale runs")
            return
        if options["cancel"]:
            run = TrainingRun.objects.filter(pk=options["cancel"]).first()
            if run is None:
                raise CommandError(f"no run {options['cancel']}")
            try:
                cancel_run(run)
            except TrainingError as exc:
                raise CommandError(str(exc)) from exc
            self.stdout.write(f"cancel requested for run {run.pk}")
            return
        if not options["project"]:
            raise CommandError("--project is required")
        project = find_project(options["project"])
        base = ModelVersion.objects.filter(name=options["base"]).first()
        if base is None:
            raise CommandError(
                f"no model version named {options['base']!r} "
                f"(manage.py build_default_model makes tiny-default)"
            )
        export = None
        if options["export"] is not None:
            export = Export.objects.filter(pk=options["export"], project=project).first()
            if export is None:
                raise CommandError(f"no export {options['export']} in project {project.name!r}")
        try:
            hp = parse_set_options(options["set"])
            if options.get("reward_model"):
                hp["reward_model"] = options["reward_model"]
            run = launch_run(
                project,
                base_model=base,
                recipe=options["recipe"],
                export=export,
                hyperparameters=hp,
                send=not options["inline"],
            )
        except TrainingError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"run {run.pk}: {run.recipe} on export {run.export_id}, output in {run.out_dir}")
        if options["inline"]:
            from training.tasks import run_training

            run_training.apply(args=(run.pk,))
        elif options["wait"]:
            self._follow(run)
        else:
            self.stdout.write("queued on the gpu worker (celery -A prefloop worker -Q gpu --concurrency 1)")
            return
        run.refresh_from_db()
        self.stdout.write(
            f"run {run.pk} {run.status}"
            + (f": {run.error}" if run.error else "")
            + (f"; model {run.output_model.name}" if run.output_model else "")
        )
        if run.status != "succeeded":
            raise CommandError(f"run {run.pk} ended {run.status}")

    def _follow(self, run: TrainingRun) -> None:
        last = None
        while True:
            run.refresh_from_db()
            line = f"{run.status} step {run.step}/{run.total_steps or '?'}"
            if line != last:
                self.stdout.write(line)
                last = line
            if run.is_finished:
                return
            time.sleep(2)
