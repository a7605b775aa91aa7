"""A judged project for the background-job tests: ``n`` comparisons, each judged by three
annotators (mostly agreeing, deterministic), written in bulk."""

from __future__ import annotations

import random
import subprocess
import sys

from annotate.models import Comparison, Judgment
from tests.factories import make_annotators, make_comparisons, make_project


def judged_project(n: int, *, name: str = "jobs", seed: int = 0):
    project = make_project(name)
    annotators = make_annotators(project, 3)
    comparisons = make_comparisons(project, n)
    rng = random.Random(seed)
    rows = []
    for c in comparisons:
        preferred = rng.choice("ab")
        for user in annotators:
            choice = preferred if rng.random() < 0.85 else rng.choice(["a", "b", "tie"])
            rows.append(
                Judgment(
                    project=project,
                    comparison=c,
                    annotator=user,
                    a_on_left=rng.random() < 0.5,
                    choice=choice,
                    strength=2 if choice != "tie" else None,
                    seconds=rng.uniform(10, 40),
                )
            )
    Judgment.objects.bulk_create(rows, batch_size=5000)
    Comparison.objects.filter(project=project).update(n_judgments=3, slots_taken=3, is_open=False)
    return project


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped): a worker that was killed."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid
