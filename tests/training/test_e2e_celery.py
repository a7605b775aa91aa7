"""End to end through Celery with a real worker process, on the tiny model and CPU.

Import a synthetic task (the preferred response always starts with "Sure!"), simulate three
annotators judging it, launch a DPO run from the UI (admin, the launch form, a fresh export
built at launch), let a real ``celery worker -Q gpu,default -P solo`` subprocess train it, and
check: metrics streamed while it ran, the run page shows them, held-out DPO reward accuracy
> 0.9, the registered output model loads and generates, the "generate sample" box and
"sample next round" work through the worker.

The worker is another process, so it must reach the test's database and broker: PostgreSQL
(``DATABASE_URL``) or a file-based SQLite test database, and the file-system broker in a
temporary folder (or ``CELERY_BROKER_URL``). pytest-django's default SQLite test database
lives in memory, so in that case ``test_e2e_through_a_worker_process`` re-runs this file in a
child pytest with ``PREFLOOP_FILE_TEST_DB=1`` (settings.py then puts the test database in a
file) and ``PREFLOOP_DATA_DIR`` in a temporary folder, and the scenario runs there.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.urls import reverse

from annotate.imports import import_comparisons
from annotate.models import Comparison, Judgment, Membership, Project, Role
from training.models import GenerationSample, RunStatus, SamplingJob, TrainingMetric, TrainingRun
from training.services.registry import register_model

pytestmark = pytest.mark.slow
User = get_user_model()
ROOT = Path(__file__).resolve().parents[2]
WORDS = (
    "apple river stone cloud green table music light paper window garden silver quiet bright ocean forest"
).split()


def needs_child_process() -> bool:
    """True when the test database would be in memory (a worker process could not see it)."""
    db = settings.DATABASES["default"]
    return db["ENGINE"].endswith("sqlite3") and not (db.get("TEST") or {}).get("NAME")


def run_in_child_pytest(test_id: str, tmp_path: Path, timeout: int) -> None:
    env = {
        **os.environ,
        "PREFLOOP_FILE_TEST_DB": "1",
        "PREFLOOP_DATA_DIR": str(tmp_path / "data"),
        "CELERY_TASK_ALWAYS_EAGER": "0",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        test_id,
        "-q",
        "-x",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:xdist",
        "--no-migrations",
        "--basetemp",
        str(tmp_path / "child"),
    ]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"child pytest failed:\n{out.stdout[-6000:]}\n{out.stderr[-3000:]}"


# --------------------------------------------------------------------------- shared scaffolding


def worker_env(data_dir: Path | None = None) -> dict:
    """The environment of a worker that sees this test's database and broker."""
    db = connection.settings_dict
    env = {
        **os.environ,
        "CELERY_TASK_ALWAYS_EAGER": "0",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PREFLOOP_FILE_TEST_DB": "0",
    }
    if db["ENGINE"].endswith("sqlite3"):
        env["DATABASE_URL"] = f"sqlite:///{db['NAME']}"
    else:
        env["DATABASE_URL"] = (
            f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST'] or 'localhost'}:"
            f"{db['PORT'] or 5432}/{db['NAME']}"
        )
    if data_dir is not None:
        env["PREFLOOP_DATA_DIR"] = str(data_dir)
    return env


def start_worker(log_path: Path, env: dict) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "prefloop",
        "worker",
        "-Q",
        "gpu,default",
        "--concurrency",
        "1",
        "-P",
        "solo",
        "--loglevel",
        "INFO",
        "-n",
        f"test-{uuid.uuid4().hex[:8]}@%h",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    log = open(log_path, "ab")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def stop_worker(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(predicate, timeout: float, what: str, log_path: Path | None = None, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    tail = log_path.read_text(errors="replace")[-4000:] if log_path and log_path.exists() else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\nworker log:\n{tail}")


def synthetic_lines(n: int, seed: int = 0) -> list[dict]:
    """TRL-style lines: the chosen response always opens with "Sure!", the rejected never does."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        topic = rng.choice(WORDS)
        lines.append(
            {
                "prompt": f"Question {i}: tell me about the {topic}.",
                "chosen": "Sure! " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5))) + ".",
                "rejected": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5))) + ".",
            }
        )
    return lines


def judge(project: Project, annotators: list, *, agree: float = 1.0, seed: int = 0) -> int:
    """Every annotator judges every comparison: the source's preferred response with
    probability ``agree``; display order random, plausible times."""
    rng = random.Random(seed)
    rows = []
    comparisons = list(Comparison.objects.filter(project=project).values_list("pk", "source_preference"))
    for user in annotators:
        for pk, preferred in comparisons:
            other = "b" if preferred == "a" else "a"
            rows.append(
                Judgment(
                    project=project,
                    comparison_id=pk,
                    annotator=user,
                    a_on_left=rng.random() < 0.5,
                    choice=preferred if rng.random() < agree else other,
                    strength=2,
                    seconds=rng.uniform(15, 40),
                )
            )
    Judgment.objects.bulk_create(rows, batch_size=2000)
    Comparison.objects.filter(project=project).update(
        n_judgments=len(annotators), slots_taken=len(annotators), is_open=False
    )
    return len(rows)


def make_project(name: str, lines: list[dict]) -> tuple[Project, object, list]:
    project = Project.objects.create(name=name, overlap=3, gold_rate=0.0)
    admin = User.objects.create_user(f"admin-{uuid.uuid4().hex[:6]}")
    Membership.objects.create(project=project, user=admin, role=Role.ADMIN)
    annotators = []
    for k in range(3):
        user = User.objects.create_user(f"annot-{k}-{uuid.uuid4().hex[:6]}")
        Membership.objects.create(project=project, user=user, role=Role.ANNOTATOR)
        annotators.append(user)
    body = "".join(json.dumps(line) + "\n" for line in lines)
    import_comparisons(project, io.BytesIO(body.encode()), filename="synthetic.jsonl")
    return project, admin, annotators


# --------------------------------------------------------------------------- the tests


@pytest.mark.skipif(
    not needs_child_process(), reason="the database is reachable from a worker: runs directly"
)
def test_e2e_through_a_worker_process(tmp_path):
    run_in_child_pytest(f"{__file__}::test_e2e_ui_worker_dpo", tmp_path, timeout=400)


@pytest.mark.skipif(
    needs_child_process(), reason="in-memory test database: run through the child pytest above"
)
@pytest.mark.django_db(transaction=True)
def test_e2e_ui_worker_dpo(client, tmp_path):
    from training.tiny_model import build_default_model

    log_path = tmp_path / "worker.log"
    worker = start_worker(log_path, worker_env())  # starts while the data and the model are made
    try:
        lines = synthetic_lines(100)
        project, admin, annotators = make_project("E2E synthetic", lines)
        judge(project, annotators)
        model_dir = build_default_model(
            tmp_path / "tiny",
            [p.text for p in project.prompts.all()]
            + [line["chosen"] + " " + line["rejected"] for line in lines],
            vocab_size=384,
            hidden=64,
            layers=2,
            max_positions=256,
        )
        base = register_model("tiny-e2e", model_dir)

        client.force_login(admin)
        response = client.post(
            reverse("training_run_new", args=[project.pk]),
            {
                "recipe": "dpo",
                "base_model": base.pk,
                "export": "",  # a fresh export, built at launch
                "max_steps": 16,
                "lr": "0.001",
                "batch_size": 8,
                "beta": "0.1",
                "max_length": 64,
                "extra": json.dumps({"eval_fraction": 0.2, "checkpoint_every": 8, "seed": 1}),
            },
        )
        assert response.status_code == 302, response.content.decode()[-2000:]
        run = TrainingRun.objects.get(project=project)
        assert run.export.status == "succeeded" and run.export.n_rows == 100

        # metrics stream while it runs: the live fragment shows a partly filled run
        wait_for(
            lambda: TrainingMetric.objects.filter(run=run).count() >= 3, 240, "the first metrics", log_path
        )
        live = client.get(reverse("training_run_live", args=[project.pk, run.pk]), HTTP_HX_REQUEST="true")
        assert live.status_code == 200 and "<svg" in live.content.decode()

        wait_for(lambda: TrainingRun.objects.get(pk=run.pk).is_finished, 240, "the run to finish", log_path)
        run.refresh_from_db()
        assert run.status == RunStatus.SUCCEEDED, f"{run.status}: {run.error}\n{run.logs[-3000:]}"
        steps = list(TrainingMetric.objects.filter(run=run).values_list("step", flat=True))
        assert steps == list(range(1, 17)) and run.step == run.total_steps == 16
        assert run.summary["eval"]["dpo"]["eval_reward_accuracy"] > 0.9, run.summary
        first, last = (TrainingMetric.objects.get(run=run, step=s).data for s in (1, 16))
        assert last["loss"] < first["loss"] and last["reward_margin"] > first["reward_margin"]

        page = client.get(reverse("training_run", args=[project.pk, run.pk])).content.decode()
        assert page.count("<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"plot\"") == 7 and "Succeeded" in page and run.output_model.name in page
        assert (
            'hx-trigger="every 2s"' not in page.split('id="samples"')[0]
        )  # the run fragment stopped polling

        # the output model is registered, loads and generates
        from training.tiny_model import load_model_and_tokenizer

        version = run.output_model
        assert version.parent == base and version.training_run == run and version.project == project
        model, tokenizer = load_model_and_tokenizer(version.path)
        ids = tokenizer("Question 7: tell me about the river.", return_tensors="pt")["input_ids"]
        out = model.generate(input_ids=ids, max_new_tokens=6, min_new_tokens=1, do_sample=False)
        assert out.shape[1] > ids.shape[1]

        # "generate a sample" and "sample next round", answered by the worker
        client.post(
            reverse("training_run_sample", args=[project.pk, run.pk]),
            {"prompt": "Question 3: tell me about the stone.", "max_new_tokens": 8},
        )
        sample = GenerationSample.objects.get(run=run)
        wait_for(
            lambda: GenerationSample.objects.get(pk=sample.pk).status in ("succeeded", "failed"),
            90,
            "the sample",
            log_path,
        )
        sample.refresh_from_db()
        assert sample.status == "succeeded" and sample.output.strip(), sample.error
        client.post(
            reverse("training_run_sample_round", args=[project.pk, run.pk]),
            {"n_prompts": 4, "against": "parent", "max_new_tokens": 8, "temperature": 1.0},
        )
        job = SamplingJob.objects.get(run=run)
        wait_for(
            lambda: SamplingJob.objects.get(pk=job.pk).status in ("succeeded", "failed"),
            90,
            "the next round",
            log_path,
        )
        job.refresh_from_db()
        assert job.status == "succeeded", job.error
        new = Comparison.objects.filter(project=project, round=1)
        assert new.count() == job.n_created >= 1
        c = new.select_related("response_a", "response_b").first()
        assert {c.response_a.model_name, c.response_b.model_name} == {version.name, base.name}
        project.refresh_from_db()
        assert project.current_round == 1
    finally:
        stop_worker(worker)
