"""``manage.py loop --project P --rounds N --recipe sft+dpo [--synthetic 60] [--pairing head_to_head,reference]
[--base tiny-default] [--set sft_max_steps=40 ...] [--pools pools.json] [--background]``.

Runs the unattended loop (``training.loop.service``): simulated annotators judge the open
comparisons through the queue, quality is recomputed, a fresh export trains the latest model on
the gpu worker, its samples become the next round, for N rounds. The simulated annotators work
in this process; training and sampling need a running worker (``celery -A prefloop worker -Q
gpu,default``). Each round's report is printed when the round has been judged. ``--background``
only queues the loop (as the API does) and exits.

``--synthetic N`` creates the project with N synthetic round-0 comparisons when it does not exist
and, without ``--base``, builds and registers a tiny model for it (tokenizer trained on its texts).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from annotate.models import Project
from training.loop.seed import seed_project, synthetic_utility
from training.loop.service import POLL_S, advance, polled, start_loop
from training.models import JobStatus, LoopRun, LoopStage, ModelVersion, Recipe, TrainingRun
from training.services.errors import TrainingError
from training.services.hyperparameters import parse_set_options


def _fmt(v, spec=".2f") -> str:
    return "–" if v is None else format(v, spec)


def print_round(write, entry: dict) -> None:
    """One round's report as text."""
    cal = entry["calibration"]
    write(f"\nRound {entry['round']}: {entry['judgments']} judgments ({entry['abandoned']} items abandoned and expired)")
    write(
        f"  calibration vs truth: accuracy Spearman {_fmt(cal['accuracy_spearman'])}, Pearson "
        f"{_fmt(cal['accuracy_pearson'])}, mean |error| {_fmt(cal['accuracy_mean_abs_error'], '.3f')}; position bias "
        f"Pearson {_fmt(cal['position_bias_pearson'])}; length bias Pearson {_fmt(cal['length_bias_pearson'])}; "
        f"weight Spearman {_fmt(cal['weight_spearman'])}"
    )
    write(f"  {'annotator':<16}{'pool':<10}{'n':>5}{'acc true':>10}{'DS':>7}{'gold':>7}"
          f"{'pos true':>10}{'est':>7}{'len set':>9}{'est':>7}{'weight':>8}")
    for r in cal["annotators"]:
        write(
            f"  {r['annotator'][-16:]:<16}{r['pool']:<10}{r['judgments']:>5}{_fmt(r['true_accuracy']):>10}"
            f"{_fmt(r['estimated_accuracy']):>7}{_fmt(r['gold_accuracy']):>7}{_fmt(r['true_position_bias'], '+.2f'):>10}"
            f"{_fmt(r['estimated_position_bias'], '+.2f'):>7}{_fmt(r['true_length_bias']):>9}"
            f"{_fmt(r['estimated_length_bias'], '+.2f'):>7}{_fmt(r['weight']):>8}"
        )
    u = entry["utility"]
    parts = [f"{m} {_fmt(v['mean'])} (n={v['n']})" for m, v in u["by_model"].items()]
    write(f"  hidden utility: {'; '.join(parts)}")
    if u["round0_same_prompts"]["mean"] is not None:
        write(f"    round-0 responses to the same {u['prompts']} prompts: {_fmt(u['round0_same_prompts']['mean'])}")
    v = entry.get("verdict")
    if v:
        write(f"  verdict: {v['model']} vs {', '.join(v['against'])}")
        for g in v["groups"]:
            write(f"    {g['name']:<16} win rate {_fmt(g['win_rate'], '.3f')} [{_fmt(g['low'], '.3f')}, "
                  f"{_fmt(g['high'], '.3f')}] over {g['n_prompts']} prompts, {g['n_judgments']} judgments")


class Command(BaseCommand):
    help = "Run the annotate → train → sample loop for N rounds with simulated annotators."

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True, help="Project id or name.")
        parser.add_argument("--synthetic", type=int, metavar="N",
                            help="Create the project with N synthetic round-0 comparisons when it does not exist.")
        parser.add_argument("--rounds", type=int, default=1)
        parser.add_argument("--recipe", default=Recipe.SFT_DPO)
        parser.add_argument("--base", help="Base model version (default tiny-default, or a new tiny model with --synthetic).")
        parser.add_argument("--pairing", default="head_to_head",
                            help="Comma-separated pairing per round: head_to_head, two_samples, reference (the last repeats).")
        parser.add_argument("--reference", help="The reference model of the 'reference' pairing (default: the base).")
        parser.add_argument("--pools", help="A JSON file (or inline JSON) with a list of pools (PoolSpec fields).")
        parser.add_argument("--utility", help="JSON (file or inline): KeywordUtility fields of the hidden utility "
                            "(default: the lexicon score; with --synthetic, gibberish costs too).")
        parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                            help="A TrainConfig field for every round's run (repeatable).")
        parser.add_argument("--n-prompts", type=int, default=20)
        parser.add_argument("--max-new-tokens", type=int, default=24)
        parser.add_argument("--temperature", type=float, default=0.8)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--timeout", type=float, default=3600, help="Seconds to wait for the worker, per stage.")
        parser.add_argument("--background", action="store_true", help="Queue the loop on the worker and exit.")

    def handle(self, *args, **o):
        project = self._project(o)
        base = self._base(project, o)
        reference = None
        if o["reference"]:
            reference = ModelVersion.objects.filter(name=o["reference"]).first()
            if reference is None:
                raise CommandError(f"no model version named {o['reference']!r}")
        pools = None
        if o["pools"]:
            text = Path(o["pools"]).read_text() if Path(o["pools"]).is_file() else o["pools"]
            try:
                pools = json.loads(text)
            except json.JSONDecodeError as exc:
                raise CommandError(f"--pools: not JSON ({exc})") from exc
        utility = None
        if o["utility"]:
            text = Path(o["utility"]).read_text() if Path(o["utility"]).is_file() else o["utility"]
            try:
                utility = json.loads(text)
            except json.JSONDecodeError as exc:
                raise CommandError(f"--utility: not JSON ({exc})") from exc
        elif o["synthetic"]:
            utility = synthetic_utility()
        try:
            loop = start_loop(
                project, base_model=base, rounds=o["rounds"], recipe=o["recipe"],
                pairings=[p.strip() for p in o["pairing"].split(",") if p.strip()], reference_model=reference,
                pools=pools, utility=utility, hyperparameters=parse_set_options(o["set"]), n_prompts=o["n_prompts"],
                max_new_tokens=o["max_new_tokens"], temperature=o["temperature"], seed=o["seed"],
                send=o["background"],
            )
        except TrainingError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"loop {loop.pk}: {loop.rounds} round(s) of {loop.recipe} on {project.name!r} from {base.name}")
        if o["background"]:
            self.stdout.write("queued; follow it on the Rounds page or GET /api/projects/{}/loops/{}/".format(project.pk, loop.pk))
            return
        self._follow(loop, o["timeout"])

    def _project(self, o) -> Project:
        ref = o["project"]
        project = Project.objects.filter(pk=int(ref)).first() if ref.isdigit() else Project.objects.filter(name=ref).first()
        if project is None:
            if not o["synthetic"]:
                raise CommandError(f"no project {ref!r} (give --synthetic N to create one)")
            project = seed_project(ref, o["synthetic"], seed=o["seed"])
            self.stdout.write(f"created project {project.name!r} with {project.comparisons.count()} synthetic comparisons")
        return project

    def _base(self, project: Project, o) -> ModelVersion:
        slug = re.sub(r"[^A-Za-z0-9._+-]+", "-", project.name).strip("-") or f"project-{project.pk}"
        name = o["base"] or ("tiny-default" if not o["synthetic"] else f"{slug}-tiny")
        base = ModelVersion.objects.filter(name=name).first()
        if base is not None:
            return base
        if o["base"] or not o["synthetic"]:
            raise CommandError(f"no model version named {name!r} (manage.py build_default_model makes tiny-default)")
        from training.services.registry import register_model
        from training.tiny_model import build_default_model

        texts = list(project.prompts.values_list("text", flat=True)) + [
            t for c in project.comparisons.select_related("response_a", "response_b")
            for t in (c.response_a.text, c.response_b.text)
        ]
        folder = build_default_model(Path(settings.PREFLOOP_MODELS_DIR) / name, texts, vocab_size=512, hidden=64,
                                     layers=2, max_positions=256)
        self.stdout.write(f"built the tiny model {name} in {folder}")
        return register_model(name, folder, project=project)

    def _follow(self, loop: LoopRun, timeout: float) -> None:
        printed = set()
        bar = None
        waited_since = time.monotonic()
        while True:
            loop.refresh_from_db()
            stage = loop.stage
            if stage == LoopStage.ANNOTATE:
                bar = tqdm(desc=f"round {loop.round}: judgments", unit="judgment", leave=False, mininterval=1.0)
                moved = advance(loop.pk, on_judgment=lambda n, b=bar: b.update(1))
                bar.close()
            else:
                moved = advance(loop.pk)
            loop.refresh_from_db()
            for entry in loop.report.get("rounds", []):
                if entry["round"] not in printed:
                    printed.add(entry["round"])
                    print_round(self.stdout.write, entry)
            if loop.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
                break
            if moved:
                waited_since = time.monotonic()
                if loop.stage == LoopStage.TRAIN:
                    self._follow_run(loop.pk, loop.current_run_id, timeout)
                continue
            if time.monotonic() - waited_since > timeout:
                raise CommandError(f"waited {timeout:.0f}s for the worker at stage {loop.stage}; is a worker running "
                                   f"(celery -A prefloop worker -Q gpu,default)?")
            time.sleep(POLL_S)
        if loop.status == JobStatus.FAILED:
            raise CommandError(f"loop {loop.pk} failed: {loop.error}")
        self.stdout.write(self.style.SUCCESS(f"\nloop {loop.pk} done: latest model {loop.latest_model.name}"))

    def _follow_run(self, loop_id: int, run_id: int, timeout: float) -> None:
        """A progress bar over the run's steps while the worker trains it."""
        started = time.monotonic()
        with tqdm(desc=f"run {run_id}: training", total=100, unit="%", leave=False, mininterval=1.0) as bar:
            while time.monotonic() - started < timeout:
                run = TrainingRun.objects.get(pk=run_id)
                bar.n = round(100 * run.progress)
                bar.set_postfix_str(f"step {run.step}/{run.total_steps or '?'}")
                bar.refresh()
                if run.is_finished:
                    return
                polled(loop_id)  # this command still follows the loop
                time.sleep(POLL_S)
