"""Real text: Anthropic HH-RLHF (harmless) pairs from ../shared/data, through the whole loop.

Import all 1,150 pairs (``annotate.imports.import_comparisons``; the source preference is kept
as provenance), simulate three annotators who agree with the source 80 % of the time on a
seeded sample of the comparisons, build a calibrated export (``evaluation.export``: Dawid-Skene,
weights, by-prompt split), build the tiny default model with its tokenizer trained on that
text (``manage.py build_default_model``), and run ``sft+dpo`` through the training task on CPU.
The run must succeed and its training DPO reward accuracy must rise
above where it started.
"""

from __future__ import annotations

import random

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from annotate.imports import import_comparisons
from annotate.models import Comparison, Judgment, Membership, Project, Role
from evaluation.export.services import build_export, create_export
from training.models import ModelVersion, RunStatus, TrainingMetric
from training.services.rows import export_rows
from training.services.runs import launch_run

pytestmark = pytest.mark.slow
User = get_user_model()

N_JUDGED = 64  # comparisons the simulated annotators judge (the export's pairs)
AGREE = 0.8  # probability that an annotator agrees with the source preference


def simulate_judgments(project: Project, annotators: list, n: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    comparisons = list(
        Comparison.objects.filter(project=project).order_by("pk").values_list("pk", "source_preference")
    )
    chosen = rng.sample(comparisons, n)
    rows = []
    for pk, preferred in chosen:
        for user in annotators:
            other = "b" if preferred == "a" else "a"
            rows.append(
                Judgment(
                    project=project,
                    comparison_id=pk,
                    annotator=user,
                    a_on_left=rng.random() < 0.5,
                    choice=preferred if rng.random() < AGREE else other,
                    strength=2,
                    seconds=rng.uniform(20, 60),
                )
            )
    Judgment.objects.bulk_create(rows)
    Comparison.objects.filter(pk__in=[pk for pk, _ in chosen]).update(
        n_judgments=len(annotators), slots_taken=len(annotators), is_open=False
    )
    return len(rows)


@pytest.mark.django_db(transaction=True)
def test_hh_harmless_sft_dpo_on_cpu(shared_data, tmp_path):
    from training.tasks import run_training

    project = Project.objects.create(name="HH harmless", overlap=3, gold_rate=0.0)
    admin = User.objects.create_user("hh-admin")
    Membership.objects.create(project=project, user=admin, role=Role.ADMIN)
    annotators = [User.objects.create_user(f"hh-annot-{k}") for k in range(3)]
    for user in annotators:
        Membership.objects.create(project=project, user=user, role=Role.ANNOTATOR)
    with open(shared_data / "hh_harmless_dev.jsonl", "rb") as fh:
        result = import_comparisons(project, fh, filename="hh_harmless_dev.jsonl", allow_empty_responses=True)
    assert result.created == 1150
    assert simulate_judgments(project, annotators, N_JUDGED) == 3 * N_JUDGED

    export = create_export(project, admin, {"formats": ["jsonl"], "test_fraction": 0.1}, enqueue=False)
    export = build_export(export)
    train_rows, test_rows = export_rows(export)
    assert len(train_rows) + len(test_rows) <= N_JUDGED and len(train_rows) >= 48
    assert all(0 < r["weight"] <= 1 for r in train_rows)

    # the tokenizer is trained on the project's own text (all 1,150 prompts and their responses)
    call_command(
        "build_default_model",
        "--out",
        str(tmp_path / "tiny"),
        "--vocab-size",
        "2048",
        "--hidden",
        "64",
        "--layers",
        "2",
    )
    base = ModelVersion.objects.get(name="tiny-default")

    run = launch_run(
        project,
        base_model=base,
        recipe="sft+dpo",
        export=export,
        created_by=admin,
        send=False,
        hyperparameters={
            "sft_max_steps": 4,
            "sft_lr": 2e-3,
            "max_steps": 16,
            "lr": 2e-3,
            "batch_size": 8,
            "beta": 0.1,
            "max_length": 128,
            "max_prompt_length": 64,
            "eval_fraction": 0.0,
            "checkpoint_every": 0,
        },
    )
    assert run_training.apply(args=(run.pk,)).get() == RunStatus.SUCCEEDED
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED and run.step == run.total_steps == 20, run.error

    rows = [m.data for m in TrainingMetric.objects.filter(run=run).order_by("step")]
    assert [m["phase"] for m in rows] == ["sft"] * 4 + ["dpo"] * 16
    dpo_acc = [m["reward_accuracy"] for m in rows if m["phase"] == "dpo"]
    start, end = sum(dpo_acc[:3]) / 3, sum(dpo_acc[-3:]) / 3
    assert end > start and end > 0.6, dpo_acc
    assert run.output_model.parent == base
