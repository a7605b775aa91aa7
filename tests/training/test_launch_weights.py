"""A launch whose export's weights leave almost nothing to learn is refused -- through the service,
the page, the API and ``manage.py train`` -- naming the cause and the fix; the weight sum and the
effective sample size are shown on the launch form and the run page; a run that reaches the worker
anyway is failed there before any compute.

The weights are real: annotators with an admin's weight override of 0 (and one near 0) decide most
pairs, and the export is built from their judgments by the export service, as at a real launch.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from django.core.management import CommandError, call_command
from django.urls import reverse

from annotate.models import Membership, Role
from evaluation.export.services import build_export, create_export
from tests.factories import add_member, make_comparisons, make_judgment, make_project, make_user
from training.models import RunStatus, TrainingRun
from training.services import runs
from training.services.errors import TrainingError
from training.services.registry import register_model
from training.services.runs import launch_run
from training.weighting import effective_sample_size, weight_stats

pytestmark = pytest.mark.django_db


def test_effective_sample_size_by_hand():
    assert effective_sample_size([1, 1, 1, 1]) == 4  # equal weights: n, whatever their size
    assert effective_sample_size([0.01] * 4) == pytest.approx(4)
    assert effective_sample_size([1, 0, 0, 0]) == 1  # one pair carries everything
    assert effective_sample_size([0, 0, 0]) == 0 and effective_sample_size([]) == 0
    # (1 + 0.5)^2 / (1 + 0.25) = 2.25 / 1.25 = 1.8
    assert effective_sample_size([1, 0.5]) == pytest.approx(1.8)
    stats = weight_stats([{"weight": 0.0}, {"weight": 0.0}, {}], use_weights=True)
    assert (stats.pairs, stats.weight_sum, stats.effective_size) == (3, 1.0, 1.0)
    assert weight_stats([{"weight": 0.0}] * 3, use_weights=False).effective_size == 3


@given(st.lists(st.floats(0, 1), max_size=50), st.floats(1e-3, 1e3))
def test_effective_sample_size_properties(weights, scale):
    """Between 0 and n (n exactly for equal weights, >= 1 when any weight is positive), blind to
    the weights' scale: (sum w)^2 / sum w^2 <= n by Cauchy-Schwarz."""
    n_eff = effective_sample_size(weights)
    assert 0 <= n_eff <= len(weights) * (1 + 1e-9)
    if any(w > 1e-150 for w in weights):
        assert n_eff >= 1 - 1e-9
        assert effective_sample_size([w * scale for w in weights]) == pytest.approx(n_eff, rel=1e-6)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from training.tiny_model import build_default_model

    texts = [f"prompt {i} A {i} B {i}" for i in range(40)]
    return build_default_model(tmp_path_factory.mktemp("tiny") / "model", texts, vocab_size=300, hidden=32,
                               layers=1, max_positions=128)


@pytest.fixture
def muted(db, tiny_model_dir, settings, tmp_path):
    """20 pairs: 2 decided by a full-weight annotator, 18 by one whose override is 0 and one whose
    override is 0.02. The export keeps all 20 pairs, but 18 weigh about 0.01: an effective sample
    size near 2, below the default min_pairs of 8."""
    settings.PREFLOOP_RUNS_DIR = str(tmp_path / "runs")
    project = make_project("Muted")
    admin = make_user("admin-m")
    add_member(project, admin, Role.ADMIN)
    full, zero, faint = (make_user(n) for n in ("full", "zero", "faint"))
    for user, override in ((full, 1.0), (zero, 0.0), (faint, 0.02)):
        add_member(project, user, Role.ANNOTATOR, weight_override=override)
    comparisons = make_comparisons(project, 20)
    for i, c in enumerate(comparisons):
        if i < 2:
            make_judgment(full, c, "a")
        else:
            make_judgment(zero, c, "a")
            make_judgment(faint, c, "a")
    base = register_model("tiny-w", tiny_model_dir)
    return {"project": project, "admin": admin, "base": base, "zero": zero, "faint": faint}


@pytest.fixture
def no_send(monkeypatch):
    sent = []
    monkeypatch.setattr(runs, "send_run", sent.append)
    return sent


def built_export(project):
    export = create_export(project, None, {"formats": ["jsonl"], "test_fraction": 0.1}, enqueue=False)
    build_export(export)
    export.refresh_from_db()
    return export


REFUSAL = r"effective sample size of \d\.\d .* below min_pairs=8.*weight rule.*weight overrides.*use_weights=false"


def test_service_refuses_and_leaves_nothing(muted, no_send):
    from evaluation.models import Export

    with pytest.raises(TrainingError, match=REFUSAL) as info:
        launch_run(muted["project"], base_model=muted["base"], recipe="dpo", export=None)
    assert info.value.field == "export"
    assert not TrainingRun.objects.exists() and no_send == []
    assert not Export.objects.filter(project=muted["project"]).exists()  # the fresh export is discarded


def test_page_shows_the_numbers_and_refuses(muted, no_send, client):
    export = built_export(muted["project"])
    client.force_login(muted["admin"])
    url = reverse("training_run_new", args=[muted["project"].pk])
    form = client.get(url).content.decode()
    from evaluation.export.folder import JSONL_SPLIT_FILES

    train_rows = [json.loads(line) for line in open(f"{export.path}/{JSONL_SPLIT_FILES['train']}")]
    ess = effective_sample_size(r["weight"] for r in train_rows)
    assert ess < 8
    assert f"{len(train_rows)} training pairs, weight sum" in form and f"effective size {ess:.1f}" in form
    response = client.post(url, {"recipe": "dpo", "base_model": muted["base"].pk, "export": export.pk})
    page = response.content.decode()
    assert response.status_code == 400 and "below min_pairs=8" in page and "use_weights=false" in page
    assert not TrainingRun.objects.exists()
    # the fix it names: without the weights the run is accepted, and its page says so
    ok = client.post(url, {"recipe": "dpo", "base_model": muted["base"].pk, "export": export.pk,
                           "extra": '{"use_weights": false}'})
    assert ok.status_code == 302
    run = TrainingRun.objects.get()
    assert run.summary["data"]["weighted"] is False and run.summary["data"]["effective_size"] == len(train_rows)
    detail = client.get(reverse("training_run", args=[muted["project"].pk, run.pk])).content.decode()
    assert "weights not used (every pair counts 1)" in detail


def test_api_refuses(muted, no_send, client):
    client.force_login(muted["admin"])
    url = reverse("training-api:run-list", args=[muted["project"].pk])
    bad = client.post(url, {"recipe": "dpo", "base_model": "tiny-w"}, content_type="application/json")
    assert bad.status_code == 400
    assert "below min_pairs=8" in bad.json()["export"][0] and "use_weights=false" in bad.json()["export"][0]
    assert not TrainingRun.objects.exists()
    # raising the zero override (the other fix) makes it a healthy launch, numbers in the run's summary
    Membership.objects.filter(user__in=[muted["zero"], muted["faint"]]).update(weight_override=0.9)
    ok = client.post(url, {"recipe": "dpo", "base_model": "tiny-w"}, content_type="application/json")
    assert ok.status_code == 201, ok.content
    data = ok.json()["summary"]["data"]
    assert data["weighted"] and data["effective_size"] >= 8 and data["weight_sum"] > 0
    page = client.get(reverse("training_run", args=[muted["project"].pk, ok.json()["id"]])).content.decode()
    assert f"effective size {data['effective_size']:.1f}" in page


def test_command_refuses(muted, no_send):
    with pytest.raises(CommandError, match=REFUSAL):
        call_command("train", "--project", muted["project"].name, "--recipe", "sft+dpo", "--base", "tiny-w")
    assert not TrainingRun.objects.exists()
    # recipe ppo trains on the export's prompts only: its weights are not checked
    from training.services.rows import check_weights

    assert check_weights([{"weight": 0.0}] * 10, {}, "ppo").effective_size == 0


@pytest.mark.django_db(transaction=True)  # the worker closes its connection when done
def test_worker_fails_a_run_that_got_past_launch(muted):
    """A run queued before this check existed (or whose export was swapped) is failed by the worker
    with the same reason, before any training compute."""
    from training.worker.execute import train_run

    export = built_export(muted["project"])
    run = TrainingRun.objects.create(project=muted["project"], export=export, recipe="dpo",
                                     base_model=muted["base"], hyperparameters={}, status=RunStatus.QUEUED,
                                     out_dir=str(runs.runs_dir() / "run-x"))
    assert train_run(run.pk) == RunStatus.FAILED
    run.refresh_from_db()
    assert "below min_pairs=8" in run.error and run.step == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("one_cpu_thread")
def test_a_run_reports_held_out_metrics_by_phase(muted, no_send, client):
    """sft+dpo through the worker (in process): summary.eval keeps SFT's perplexity and DPO's loss
    apart, the launch's data numbers survive, and the run page shows each under its phase."""
    from training.worker.execute import train_run

    Membership.objects.filter(user__in=[muted["zero"], muted["faint"]]).update(weight_override=1.0)
    run = launch_run(muted["project"], base_model=muted["base"], recipe="sft+dpo", export=None,
                     hyperparameters={"max_steps": 2, "sft_max_steps": 2, "device": "cpu", "lr": 1e-3,
                                      "max_length": 64, "checkpoint_every": 0})
    assert train_run(run.pk) == RunStatus.SUCCEEDED
    run.refresh_from_db()
    evals = run.summary["eval"]
    assert set(evals) == {"sft", "dpo"}
    assert {"eval_loss", "eval_ppl"} <= set(evals["sft"]) and "eval_ppl" not in evals["dpo"]
    assert {"eval_loss", "eval_reward_accuracy"} <= set(evals["dpo"])
    assert evals["sft"]["eval_loss"] != evals["dpo"]["eval_loss"]
    assert run.summary["data"]["pairs"] == run.summary["train_pairs"]
    assert run.output_model.metrics["sft_eval_ppl"] == evals["sft"]["eval_ppl"]
    client.force_login(muted["admin"])
    page = client.get(reverse("training_run", args=[muted["project"].pk, run.pk])).content.decode()
    held_out = page[page.index('id="held-out"'):]
    assert "<td>SFT</td><td>ppl</td>" in held_out and "<td>DPO</td><td>reward accuracy</td>" in held_out
    assert "<td>DPO</td><td>ppl</td>" not in held_out


def test_an_exports_ties_reach_the_trainer_as_ties(muted, tiny_model_dir):
    """A real export written with ties: its tie rows tokenize as ties with p_chosen 0.5, so the
    DPO target of each is 0.5 even without use_soft_labels; its decided rows keep the hard label."""
    import torch
    from transformers import AutoTokenizer

    from training.data import collate, tokenize_pairs
    from training.losses import label_targets
    from training.services.rows import export_rows

    project = muted["project"]
    Membership.objects.filter(user__in=[muted["zero"], muted["faint"]]).update(weight_override=1.0)
    from annotate.models import Judgment

    tie_ids = list(Judgment.objects.filter(project=project, annotator=muted["zero"])
                   .order_by("comparison_id").values_list("comparison_id", flat=True)[:5])
    Judgment.objects.filter(project=project, comparison_id__in=tie_ids).update(choice="tie")
    export = create_export(project, None, {"formats": ["jsonl"], "test_fraction": 0.0, "include_ties": True},
                           enqueue=False)
    build_export(export)
    export.refresh_from_db()
    train, _ = export_rows(export, include_ties=True)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)
    examples = tokenize_pairs(tok, train)
    ties = [e for e in examples if e.tie]
    assert len(ties) == 5 and all(e.p_chosen == 0.5 for e in ties)
    batch = collate(examples, tok.pad_token_id)
    targets = label_targets(batch.p_chosen, batch.ties, use_soft_labels=False)
    assert targets[batch.ties].tolist() == [0.5] * 5 and bool((targets[~batch.ties] == 1).all())
    assert torch.equal(batch.ties, torch.tensor([r["comparison_id"] in tie_ids for r in train]))
    # a default launch (no soft labels) leaves the export's ties out, and says how many
    dropped: dict = {}
    assert len(export_rows(export, dropped=dropped)[0]) == len(train) - 5 and dropped["ties"] == 5
