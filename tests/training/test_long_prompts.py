"""Long prompts on real data: Anthropic HH-RLHF pairs (../shared/data) whose conversations run to
hundreds of tokens. A launch with the default settings (no ``max_prompt_length``) is accepted the
same way by the page, the API and ``manage.py train``, and the run trains: each long pair keeps
its prompt's last tokens (``training.data.prompt_keep``), the run's log says how many were cut.
Before, the page / API / command refused prompts over 8 characters per token of ``max_length``
and let the rest through to fail at step 0 on the worker ("the prompt has 650 tokens ...").
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.urls import reverse

from annotate.imports import import_comparisons
from annotate.models import Membership, Project, Role
from evaluation.export.services import build_export, create_export
from training.data import prompt_keep, tokenize_pairs, tokenize_sft
from training.models import ModelVersion, RunStatus, TrainingRun
from training.services import runs
from training.services.rows import export_rows

User = get_user_model()
N_LINES = 40  # the first HH lines: most of their prompts are longer than 128 tiny-model tokens
N_LONGEST = 4  # and the file's longest conversations (about 3,000 characters: over 512 tokens)


def test_prompt_keep_rules():
    # fits: the prompt is kept whole
    assert prompt_keep(30, 20, 64, None) == 30
    # does not fit: the prompt gives up its earliest tokens as far as the response needs ...
    assert prompt_keep(50, 20, 64, None) == 44
    # ... but never below half of max_length (the response is then cut: keep_start)
    assert prompt_keep(500, 200, 64, None) == 32
    assert prompt_keep(20, 500, 64, None) == 20  # a short prompt is never cut for a long response
    # max_prompt_length set: TRL's rule, the prompt keeps its last max_prompt_length tokens
    assert prompt_keep(50, 5, 64, 16) == 16 and prompt_keep(10, 5, 64, 16) == 10


@pytest.fixture
def hh_lines(shared_data) -> list[bytes]:
    with open(shared_data / "hh_harmless_dev.jsonl", "rb") as fh:
        lines = fh.readlines()
    longest = sorted(lines[N_LINES:], key=lambda line: -len(json.loads(line)["prompt"]))[:N_LONGEST]
    return lines[:N_LINES] + longest


@pytest.fixture
def hh(db, hh_lines, tmp_path):
    """A project holding the first HH lines with their preferences as votes, a built export and the
    tiny default model with a tokenizer trained on the project's text."""
    import io

    project = Project.objects.create(name="HH long prompts")
    admin = User.objects.create_user("hh-admin")
    Membership.objects.create(project=project, user=admin, role=Role.ADMIN)
    result = import_comparisons(project, io.BytesIO(b"".join(hh_lines)), filename="hh.jsonl",
                                allow_empty_responses=True, votes_source="hh-rlhf")
    assert result.created == N_LINES + N_LONGEST
    export = create_export(project, admin, {"formats": ["jsonl"], "test_fraction": 0.1}, enqueue=False)
    export = build_export(export)
    call_command("build_default_model", "--out", str(tmp_path / "tiny"), "--vocab-size", "2048",
                 "--hidden", "32", "--layers", "1")
    return {"project": project, "admin": admin, "export": export,
            "base": ModelVersion.objects.get(name="tiny-default")}


@pytest.fixture
def no_send(monkeypatch):
    sent = []
    monkeypatch.setattr(runs, "send_run", sent.append)
    return sent


def test_real_hh_prompts_are_longer_than_max_length_and_train_on_their_last_tokens(hh):
    from training.tiny_model import load_tokenizer

    tok = load_tokenizer(hh["base"].path)
    train, test = export_rows(hh["export"])
    rows = train + test
    whole = [len(tok(r["prompt"])["input_ids"]) for r in rows]
    assert max(whole) > 512 and sum(n >= 128 for n in whole) >= 10  # the data is the point
    pairs = tokenize_pairs(tok, rows, max_length=128)
    for row, pair, n in zip(rows, pairs, whole):
        assert len(pair.prompt_ids) + max(len(pair.chosen_ids), len(pair.rejected_ids)) <= 128
        assert pair.chosen_ids and pair.rejected_ids
        if n >= 128:  # a long conversation keeps its latest turn: the prompt's last tokens
            assert pair.truncated and 64 <= len(pair.prompt_ids) < n
            assert tok.decode(pair.prompt_ids).rstrip().endswith("Assistant:")
    assert len(tokenize_sft(tok, rows, max_length=128)) == len(rows)


def test_page_api_and_command_accept_a_real_hh_export_with_default_settings(hh, no_send, client):
    project, export = hh["project"], hh["export"]
    client.force_login(hh["admin"])
    page = client.post(reverse("training_run_new", args=[project.pk]),
                       {"recipe": "dpo", "base_model": hh["base"].pk, "export": export.pk})
    assert page.status_code == 302, page.content.decode()[:2000]
    api = client.post(reverse("training-api:run-list", args=[project.pk]),
                      {"recipe": "dpo", "base_model": "tiny-default", "export": export.pk,
                       "hyperparameters": {"max_length": 128}}, content_type="application/json")
    assert api.status_code == 201, api.content
    call_command("train", "--project", project.name, "--export", str(export.pk), "--recipe", "sft+dpo",
                 "--set", "max_length=128")
    assert TrainingRun.objects.filter(status=RunStatus.QUEUED).count() == 3


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("one_cpu_thread")
def test_a_default_launch_on_real_hh_runs_through_the_worker(hh):
    """The user's path: default max_length (512), no max_prompt_length; the run goes through the
    training task and succeeds, where it used to fail at step 0 on the worker's first long prompt."""
    from training.tasks import run_training

    run = runs.launch_run(hh["project"], base_model=hh["base"], recipe="dpo", export=hh["export"],
                          send=False, hyperparameters={"max_steps": 2, "batch_size": 2, "lr": 1e-3,
                                                       "checkpoint_every": 0, "device": "cpu"})
    assert run_training.apply(args=(run.pk,)).get() == RunStatus.SUCCEEDED
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED and run.step == run.total_steps == 2, run.error
    assert "rows truncated to fit max_length=512" in run.logs
    config = json.loads((Path(run.out_dir) / "config.json").read_text())["config"]
    assert config["max_length"] == 512 and config["max_prompt_length"] is None
