"""Training runs on the Django side: validation before any compute, roles, the run page and its
plots, cancel (the flag, and a real in-process run stopping at the next step with its
checkpoint), the model registry, the API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from annotate.models import Membership, Project, Role
from evaluation.models import Export, JobStatus
from training.models import ModelVersion, RunStatus, TrainingMetric, TrainingRun
from training.services import runs
from training.services.errors import ModelFolderError, TrainingError
from training.services.hyperparameters import validate_hyperparameters
from training.services.registry import register_model
from training.services.rows import export_rows
from training.services.runs import cancel_run, launch_run
from training.services.sampling import queue_sample_round, sample_next_round

User = get_user_model()

WORDS = "apple river stone cloud green table music light paper window garden silver".split()


def synthetic_rows(n: int, *, test_every: int = 0) -> list[dict]:
    """TRL-format rows where the chosen response always starts with "Sure!"."""
    rows = []
    for i in range(n):
        w = [WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(5)]
        rows.append(
            {
                "prompt": f"Question {i}: tell me about the {w[0]}.",
                "chosen": f" Sure! {w[1]} {w[2]}.",
                "rejected": f" {w[3]} {w[4]}.",
                "label": "preference",
                "weight": 1.0,
                "p_chosen": 1.0,
                "split": "test" if test_every and i % test_every == 0 else "train",
            }
        )
    return rows


def make_export(project: Project, rows: list[dict], folder: Path) -> Export:
    """A built export as evaluation.export writes it: ``preferences.jsonl`` in its folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "preferences.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return Export.objects.create(
        project=project,
        status=JobStatus.SUCCEEDED,
        path=str(folder),
        n_rows=len(rows),
        params={"formats": ["jsonl"]},
    )


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    from training.tiny_model import build_default_model

    texts = [r["prompt"] + r["chosen"] + r["rejected"] for r in synthetic_rows(40)]
    return build_default_model(
        tmp_path_factory.mktemp("tiny") / "model",
        texts,
        vocab_size=320,
        hidden=32,
        layers=1,
        max_positions=128,
    )


@pytest.fixture
def scene(db, tmp_path, tiny_model_dir):
    project = Project.objects.create(name="Training project")
    users = {}
    for role in (Role.ADMIN, Role.RESEARCHER, Role.ANNOTATOR):
        user = User.objects.create_user(f"{role}-user")  # no password: no slow hashing
        Membership.objects.create(project=project, user=user, role=role)
        users[role] = user
    base = register_model("tiny-test", tiny_model_dir)
    export = make_export(project, synthetic_rows(24, test_every=6), tmp_path / "export")
    return {"project": project, "users": users, "base": base, "export": export, "tmp": tmp_path}


@pytest.fixture
def no_send(monkeypatch):
    """Launching queues nothing (no broker in these tests); the sent run ids are recorded."""
    sent = []
    monkeypatch.setattr(runs, "send_run", sent.append)
    return sent


def _client(client, user):
    client.force_login(user)
    return client


# --------------------------------------------------------------------------- validation


def test_launch_creates_a_queued_run_with_its_out_dir(scene, no_send, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        run = launch_run(
            scene["project"],
            base_model=scene["base"],
            recipe="dpo",
            export=scene["export"],
            hyperparameters={"lr": "1e-3", "max_steps": "5"},
        )
    assert run.status == RunStatus.QUEUED
    assert run.hyperparameters == {"lr": 0.001, "max_steps": 5}
    assert run.out_dir.endswith(f"run-{run.pk:05d}") and Path(run.out_dir).is_absolute()
    assert no_send == [run.pk]


def test_too_small_export_is_refused_before_anything_is_created(scene, no_send):
    small = make_export(scene["project"], synthetic_rows(5), scene["tmp"] / "small")
    with pytest.raises(TrainingError, match="at least 8 are needed"):
        launch_run(scene["project"], base_model=scene["base"], export=small)
    assert not TrainingRun.objects.exists() and no_send == []


def test_export_rows_follow_the_export_split_and_drop_ties(scene):
    rows = synthetic_rows(10, test_every=5)
    rows[1]["label"] = "tie"
    export = make_export(scene["project"], rows, scene["tmp"] / "ties")
    train, test = export_rows(export)
    assert len(test) == 2 and len(train) == 7
    assert len(export_rows(export, include_ties=True)[0]) == 8


def test_fresh_export_with_no_judgments_is_a_clear_error(scene, no_send):
    with pytest.raises(TrainingError, match="could not build a fresh export: .*no comparisons"):
        launch_run(scene["project"], base_model=scene["base"], export=None)
    assert not TrainingRun.objects.exists()


@pytest.mark.parametrize(
    "hp, message",
    [
        ({"learning_rate": 1e-4}, "unknown hyperparameter 'learning_rate'"),
        ({"lr": -1}, "lr must be > 0"),
        ({"max_steps": "ten"}, "'max_steps': 'ten' is not valid"),
        ({"loss_type": "nope"}, "loss_type must be one of"),
        ({"recipe": "sft"}, "set recipe with the run's own field"),
        ({"max_length": 64, "max_prompt_length": 64}, "max_prompt_length .* below max_length"),
    ],
)
def test_bad_hyperparameters_are_refused(scene, no_send, hp, message):
    with pytest.raises(TrainingError, match=message):
        launch_run(
            scene["project"], base_model=scene["base"], export=scene["export"], hyperparameters=hp
        )
    assert not TrainingRun.objects.exists()


def test_prompts_far_longer_than_max_length_are_accepted(scene, no_send):
    """The trainer truncates long prompts from the left (training.data.prompt_keep), so the launch
    takes them with or without max_prompt_length (tests/training/test_long_prompts.py trains on
    real HH prompts)."""
    rows = synthetic_rows(12)
    rows[3]["prompt"] = "word " * 400
    export = make_export(scene["project"], rows, scene["tmp"] / "long")
    for hp in ({"max_length": 32}, {"max_length": 32, "max_prompt_length": 16}):
        run = launch_run(scene["project"], base_model=scene["base"], export=export, hyperparameters=hp)
        assert run.status == RunStatus.QUEUED


def test_a_base_model_whose_folder_is_gone_is_refused(scene, no_send, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = ModelVersion.objects.create(name="broken", path=str(empty))
    with pytest.raises(ModelFolderError, match="no config.json"):
        launch_run(scene["project"], base_model=broken, export=scene["export"])
    gone = ModelVersion.objects.create(name="gone", path=str(tmp_path / "nowhere"))
    with pytest.raises(ModelFolderError, match="does not exist"):
        launch_run(scene["project"], base_model=gone, export=scene["export"])


def test_the_web_side_never_imports_torch():
    """``training.config`` (TrainConfig) and everything the web process loads stay torch-free;
    the config there is the trainer's own class, with its defaults and its validate()."""
    import subprocess
    import sys

    code = (
        "import sys; from training import config; "
        "assert 'torch' not in sys.modules and 'django' not in sys.modules, 'config imports too much'; "
        "import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'prefloop.settings'); "
        "django.setup(); from training import views, api, forms, tasks, worker; "
        "from training.services import hyperparameters as hp, registry, rows, runs, sampling; "
        "from training.worker import execute, generation, launcher, reporting; "
        "hp.validate_hyperparameters({'lr': 1e-4}); "
        "assert hp.train_config_defaults() == config.TrainConfig().to_dict(); "
        "assert hp.train_config_defaults()['loss_type'] == 'sigmoid'; "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.strip().endswith("False False"), out.stdout + out.stderr


# --------------------------------------------------------------------------- roles


def _launch_post(scene, **extra):
    data = {
        "recipe": "dpo",
        "base_model": scene["base"].pk,
        "export": scene["export"].pk,
        "max_steps": 3,
        "lr": "0.001",
        "extra": "",
    }
    data.update(extra)
    return data


@pytest.mark.parametrize("role", [Role.ANNOTATOR, Role.RESEARCHER])
def test_only_admins_launch(scene, no_send, client, role):
    c = _client(client, scene["users"][role])
    url = reverse("training_run_new", args=[scene["project"].pk])
    assert c.get(url).status_code == 403
    assert c.post(url, _launch_post(scene)).status_code == 403
    api = reverse("training-api:run-list", args=[scene["project"].pk])
    body = {"recipe": "dpo", "base_model": "tiny-test", "export": scene["export"].pk}
    assert c.post(api, body, content_type="application/json").status_code == 403
    assert not TrainingRun.objects.exists()


def test_annotators_cannot_see_runs(scene, client):
    c = _client(client, scene["users"][Role.ANNOTATOR])
    assert c.get(reverse("training_runs", args=[scene["project"].pk])).status_code == 403
    assert c.get(reverse("training-api:run-list", args=[scene["project"].pk])).status_code == 403
    assert c.get(reverse("model_registry")).status_code == 403


def test_admin_launches_from_the_form(scene, no_send, client, django_capture_on_commit_callbacks):
    c = _client(client, scene["users"][Role.ADMIN])
    url = reverse("training_run_new", args=[scene["project"].pk])
    page = c.get(url)
    assert page.status_code == 200 and b"Launch" in page.content
    with django_capture_on_commit_callbacks(execute=True):
        response = c.post(url, _launch_post(scene, extra='{"checkpoint_every": 2}'))
    run = TrainingRun.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse(
        "training_run", args=[scene["project"].pk, run.pk]
    )
    assert run.created_by == scene["users"][Role.ADMIN] and run.recipe == "dpo"
    assert run.hyperparameters == {"max_steps": 3, "lr": 0.001, "checkpoint_every": 2}
    assert no_send == [run.pk]


def test_form_shows_the_validation_error(scene, no_send, client):
    c = _client(client, scene["users"][Role.ADMIN])
    url = reverse("training_run_new", args=[scene["project"].pk])
    response = c.post(url, _launch_post(scene, extra='{"warmup": 3}'))
    assert response.status_code == 400
    assert "unknown hyperparameter &#x27;warmup&#x27;" in response.content.decode()
    assert not TrainingRun.objects.exists()


def test_api_launch_and_errors(scene, no_send, client):
    c = _client(client, scene["users"][Role.ADMIN])
    url = reverse("training-api:run-list", args=[scene["project"].pk])
    bad = c.post(
        url,
        {"base_model": "tiny-test", "export": scene["export"].pk, "hyperparameters": {"foo": 1}},
        content_type="application/json",
    )
    assert bad.status_code == 400 and "unknown hyperparameter 'foo'" in bad.json()["hyperparameters"][0]
    missing = c.post(url, {"base_model": "no-such-model"}, content_type="application/json")
    assert missing.status_code == 400 and "base_model" in missing.json()
    ok = c.post(
        url,
        {
            "recipe": "sft",
            "base_model": "tiny-test",
            "export": scene["export"].pk,
            "hyperparameters": {"max_steps": 2},
        },
        content_type="application/json",
    )
    assert ok.status_code == 201, ok.content
    run_id = ok.json()["id"]
    researcher = _client(client, scene["users"][Role.RESEARCHER])
    detail = researcher.get(reverse("training-api:run-detail", args=[scene["project"].pk, run_id]))
    assert detail.status_code == 200 and detail.json()["status"] == "queued"


# --------------------------------------------------------------------------- the run page


def _running_run(scene, **fields) -> TrainingRun:
    defaults = dict(
        project=scene["project"],
        export=scene["export"],
        recipe="sft+dpo",
        base_model=scene["base"],
        status=RunStatus.RUNNING,
        step=12,
        total_steps=40,
        progress=0.3,
        eta_seconds=75,
        logs="line one\nline two <script>",
        out_dir=str(scene["tmp"] / "run"),
    )
    defaults.update(fields)
    run = TrainingRun.objects.create(**defaults)
    for step in range(1, 13):
        phase = "sft" if step <= 5 else "dpo"
        data = {"phase": phase, "step": step, "loss": 2.0 / step, "lr": 1e-3, "tokens_per_s": 900.0 + step}
        if phase == "dpo":
            data.update(
                reward_accuracy=min(1.0, 0.1 * step),
                reward_margin=0.05 * step,
                chosen_logps=-20.0 + step,
                rejected_logps=-20.0 - step,
                kl_to_ref=0.01 * step,
            )
        TrainingMetric.objects.create(run=run, step=step, data=data)
    return run


def test_run_page_shows_progress_plots_and_polls_while_running(scene, client):
    run = _running_run(scene)
    c = _client(client, scene["users"][Role.RESEARCHER])
    page = c.get(reverse("training_run", args=[scene["project"].pk, run.pk])).content.decode()
    assert page.count("<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"plot\"") == 7  # the plots (the progress bar is SVG too)
    for title in (
        "Loss",
        "DPO reward accuracy",
        "DPO reward margin",
        "Log-probs",
        "KL to reference",
        "Learning rate",
        "Tokens / s",
    ):
        assert f"<title>{title}</title>" in page
    assert page.count("<path d=") >= 8  # sft and dpo loss, accuracy, margin, chosen, rejected, kl, lr, tok/s
    assert 'hx-trigger="every 2s"' in page and "ETA 1m 15s" in page and "step 12 / 40" in page
    assert "line two &lt;script&gt;" in page  # logs are escaped
    assert "Cancel run" not in page  # researchers cannot cancel
    live = c.get(reverse("training_run_live", args=[scene["project"].pk, run.pk]), HTTP_HX_REQUEST="true")
    assert live.status_code == 200 and 'hx-trigger="every 2s"' in live.content.decode()


def test_finished_run_stops_polling_and_offers_samples(scene, client):
    run = _running_run(scene, status=RunStatus.SUCCEEDED, step=40, progress=1.0)
    run.output_model = register_model("tiny-test.out", scene["base"].path, parent=scene["base"])
    run.save()
    c = _client(client, scene["users"][Role.ADMIN])
    page = c.get(reverse("training_run", args=[scene["project"].pk, run.pk])).content.decode()
    assert 'hx-trigger="every 2s"' not in page
    assert "Generate a sample" in page and "Sample next round" in page and "tiny-test.out" in page
    live = c.get(
        reverse("training_run_live", args=[scene["project"].pk, run.pk]) + "?was=active",
        HTTP_HX_REQUEST="true",
    )
    assert live["HX-Refresh"] == "true"  # the page reloads once to show the results


def test_runs_list_and_metrics_api(scene, client):
    run = _running_run(scene)
    c = _client(client, scene["users"][Role.RESEARCHER])
    page = c.get(reverse("training_runs", args=[scene["project"].pk])).content.decode()
    assert f"#{run.pk}" in page and "Running" in page
    metrics = c.get(
        reverse("training-api:run-metrics", args=[scene["project"].pk, run.pk]) + "?since=10"
    ).json()
    assert [m["step"] for m in metrics] == [11, 12]


def test_svg_plot_escapes_and_handles_edge_cases():
    from training.plots import svg_line_plot

    assert "no data yet" in svg_line_plot("empty", [])
    one = svg_line_plot("<one>", [("a&b", [(3, 1.0)])])
    # One logged step is said in words, not drawn as a lone dot.
    assert "&lt;one&gt;" in one and "a&amp;b" in one and "one step logged so far (step 3)" in one
    two = svg_line_plot("two", [("a", [(3, 1.0)]), ("b", [(4, 2.0)])])
    assert two.count("<circle") == 2  # single points at different steps are still drawn
    flat = svg_line_plot("flat", [("", [(1, 2.0), (2, 2.0), (3, float("nan"))])])
    assert "<path" in flat and "nan" not in flat


# --------------------------------------------------------------------------- cancel


def test_cancel_view_sets_the_flag(scene, client):
    run = _running_run(scene)
    url = reverse("training_run_cancel", args=[scene["project"].pk, run.pk])
    assert _client(client, scene["users"][Role.RESEARCHER]).post(url).status_code == 403
    response = _client(client, scene["users"][Role.ADMIN]).post(url, HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and "cancelling" in response.content.decode()
    run.refresh_from_db()
    assert run.cancel_requested and run.status == RunStatus.RUNNING  # the worker stops it


def test_cancelling_a_queued_run_cancels_it_at_once(scene, no_send, client):
    run = launch_run(scene["project"], base_model=scene["base"], export=scene["export"])
    response = _client(client, scene["users"][Role.ADMIN]).post(
        reverse("training-api:run-cancel", args=[scene["project"].pk, run.pk])
    )
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    from training.tasks import run_training

    assert run_training.apply(args=(run.pk,)).get() == "skipped"  # a late delivery does nothing


@pytest.mark.django_db(transaction=True)
def test_cancel_stops_the_task_at_the_next_step_and_keeps_the_checkpoint(scene, no_send, monkeypatch):
    from training import tasks
    from training.worker.reporting import RunReporter

    run = launch_run(
        scene["project"],
        base_model=scene["base"],
        recipe="dpo",
        export=scene["export"],
        hyperparameters={
            "max_steps": 50,
            "batch_size": 2,
            "lr": 1e-3,
            "max_length": 48,
            "checkpoint_every": 0,
            "eval_fraction": 0.0,
        },
    )
    original = RunReporter.on_step

    def on_step(self, metrics):
        original(self, metrics)
        if metrics["step"] == 3:  # the admin clicks "Cancel" while step 3 is reported
            cancel_run(TrainingRun.objects.get(pk=self.run_id))

    monkeypatch.setattr(RunReporter, "on_step", on_step)
    assert tasks.run_training.apply(args=(run.pk,)).get() == RunStatus.CANCELLED
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED and run.step == 3 and run.output_model is None
    assert list(TrainingMetric.objects.filter(run=run).values_list("step", flat=True)) == [1, 2, 3]
    checkpoint = Path(run.out_dir) / "checkpoints" / "dpo" / "step-000003"
    assert (checkpoint / ".complete").exists()
    assert "cancel requested" in run.logs and "last checkpoint is kept" in run.logs


@pytest.mark.django_db(transaction=True)
def test_a_run_asking_for_a_gpu_on_a_cpu_worker_fails_with_the_reason(scene, no_send):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from training.tasks import run_training

    run = launch_run(
        scene["project"],
        base_model=scene["base"],
        recipe="dpo",
        export=scene["export"],
        hyperparameters={"device": "cuda"},
    )
    assert run_training.apply(args=(run.pk,)).get() == RunStatus.FAILED
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED and "no CUDA GPU" in run.error and run.step == 0
    assert not TrainingMetric.objects.filter(run=run).exists()


# --------------------------------------------------------------------------- the model registry


def test_register_model_validates_the_folder(db, tmp_path, tiny_model_dir):
    with pytest.raises(ModelFolderError, match="does not exist"):
        register_model("x", tmp_path / "missing")
    with pytest.raises(ModelFolderError, match="not an absolute path"):
        register_model("x", "relative/folder")
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelFolderError, match="is not valid JSON"):
        register_model("x", folder)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ModelFolderError, match="has no weights"):
        register_model("x", folder)
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelFolderError, match="has no tokenizer"):
        register_model("x", folder)
    (folder / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelFolderError, match="tokenizer .* does not load"):
        register_model("x", folder)
    with pytest.raises(TrainingError, match="a model name is"):
        register_model("bad name!", tiny_model_dir)
    version = register_model("good", tiny_model_dir)
    assert version.metrics["model_type"] == "llama" and not version.is_adapter
    with pytest.raises(TrainingError, match="already registered"):
        register_model("good", tiny_model_dir)
    assert ModelVersion.objects.count() == 1


def test_the_trainer_and_the_web_side_share_one_train_config():
    from training import config, losses
    from training.trainer import loop, phases

    assert loop.TrainConfig is config.TrainConfig and losses.DPO_LOSS_TYPES is config.DPO_LOSS_TYPES
    assert {p for recipe in config.RECIPE_PHASES.values() for p in recipe} <= set(phases.PHASES)
    cfg = config.TrainConfig(recipe="sft+dpo", lora_target_modules=("q_proj",), adam_betas=(0.8, 0.9))
    assert config.TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match=r"loss_type must be one of \('sigmoid', 'ipo'"):
        config.TrainConfig(loss_type="nope").validate()
    with pytest.raises(TrainingError, match="soft labels are not defined for loss_type 'robust'"):
        validate_hyperparameters({"loss_type": "robust", "use_soft_labels": "true"})


def test_registry_page_registers_for_admins_only(scene, client, tmp_path, settings):
    root = Path(scene["base"].path).parent
    settings.PREFLOOP_MODEL_ROOTS = [root]
    url = reverse("model_registry")
    researcher = _client(client, scene["users"][Role.RESEARCHER])
    assert researcher.get(url).status_code == 200
    assert researcher.post(url, {"name": "r", "path": scene["base"].path}).status_code == 403
    admin = _client(client, scene["users"][Role.ADMIN])
    bad = admin.post(url, {"name": "nope", "path": str(root / "missing")})
    assert bad.status_code == 400 and "does not exist" in bad.content.decode()
    ok = admin.post(url, {"name": "copy", "path": scene["base"].path, "parent": scene["base"].pk})
    assert ok.status_code == 302 and ModelVersion.objects.get(name="copy").parent == scene["base"]
    api = admin.post(
        reverse("training-api:model-list"),
        {"name": "api-copy", "path": scene["base"].path},
        content_type="application/json",
    )
    assert api.status_code == 201 and api.json()["name"] == "api-copy"
    assert "tiny-test" in admin.get(url).content.decode()


def _roots_scene(scene, settings, tmp_path) -> dict:
    """A model root holding a copy of the tiny model, and another copy outside it."""
    import shutil

    root = tmp_path / "model-root"
    inside = root / "tiny"
    outside = tmp_path / "elsewhere" / "tiny"
    shutil.copytree(scene["base"].path, inside)
    shutil.copytree(scene["base"].path, outside)
    (root / "escape").symlink_to(outside, target_is_directory=True)
    settings.PREFLOOP_MODEL_ROOTS = [root]
    return {"root": root.resolve(), "inside": inside, "outside": outside}


def test_admins_register_models_only_inside_the_model_roots(scene, client, settings, tmp_path):
    paths = _roots_scene(scene, settings, tmp_path)
    root = paths["root"]
    admin = _client(client, scene["users"][Role.ADMIN])
    url = reverse("model_registry")
    api_url = reverse("training-api:model-list")
    assert str(root) in admin.get(url).content.decode()  # the path's help names the root
    refused = [
        "/etc",
        str(paths["outside"]),
        str(root / ".." / "elsewhere" / "tiny"),  # `..` out of the root
        str(root / "escape"),  # a symlink out of the root
    ]
    before = ModelVersion.objects.count()
    for path in refused:
        page = admin.post(url, {"name": "sneaky", "path": path})
        assert page.status_code == 400, path
        errors = page.context["form"].errors
        assert list(errors) == ["path"] and "outside the folders models may be registered from" in errors[
            "path"
        ][0]
        assert str(root) in errors["path"][0]
        api = admin.post(api_url, {"name": "sneaky", "path": path}, content_type="application/json")
        assert api.status_code == 400, path
        assert list(api.json()) == ["path"] and str(root) in api.json()["path"][0]
    assert ModelVersion.objects.count() == before
    ok = admin.post(url, {"name": "in-root", "path": str(paths["inside"])})
    assert ok.status_code == 302
    assert ModelVersion.objects.get(name="in-root").path == str(paths["inside"].resolve())
    (root / "sub").mkdir()
    api = admin.post(
        api_url,
        {"name": "in-root-api", "path": str(root / "sub" / ".." / "tiny")},  # `..` that stays inside
        content_type="application/json",
    )
    assert api.status_code == 201, api.content


def test_an_adapter_in_the_root_on_a_base_outside_it_is_refused(scene, client, settings, tmp_path):
    paths = _roots_scene(scene, settings, tmp_path)
    adapter = paths["root"] / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": str(paths["outside"]), "peft_type": "LORA"})
    )
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    admin = _client(client, scene["users"][Role.ADMIN])
    api_url = reverse("training-api:model-list")
    refused = admin.post(api_url, {"name": "lora", "path": str(adapter)}, content_type="application/json")
    assert refused.status_code == 400 and "neither registered nor inside" in refused.json()["path"][0]
    register_model("outside-base", paths["outside"])  # e.g. by manage.py register_model
    ok = admin.post(api_url, {"name": "lora", "path": str(adapter)}, content_type="application/json")
    assert ok.status_code == 201, ok.content
    assert ModelVersion.objects.get(name="lora").parent.name == "outside-base"


def test_superusers_and_the_command_register_any_folder(scene, client, settings, tmp_path):
    from django.core.management import call_command

    paths = _roots_scene(scene, settings, tmp_path)
    superuser = User.objects.create_superuser("root-user", "root@example.com", None)
    su = _client(client, superuser)
    page = su.post(reverse("model_registry"), {"name": "su-page", "path": str(paths["outside"])})
    assert page.status_code == 302
    api = su.post(
        reverse("training-api:model-list"),
        {"name": "su-api", "path": str(paths["root"] / "escape")},
        content_type="application/json",
    )
    assert api.status_code == 201, api.content
    call_command("register_model", "from-shell", str(paths["outside"]))
    assert ModelVersion.objects.get(name="from-shell").path == str(paths["outside"].resolve())


def test_build_default_model_command_registers_tiny_default(db, tmp_path, monkeypatch):
    from django.core.management import call_command

    from training import tiny_model

    calls = []
    real_build = tiny_model.build_default_model

    def fake_build(out, texts, **kwargs):  # smaller than the default, for speed
        calls.append(kwargs)
        return real_build(out, texts, vocab_size=300, hidden=32, layers=1, max_positions=64)

    monkeypatch.setattr(tiny_model, "build_default_model", fake_build)
    call_command("build_default_model", "--if-missing", "--out", str(tmp_path / "tiny"))
    version = ModelVersion.objects.get(name="tiny-default")
    assert Path(version.path) == (tmp_path / "tiny").resolve() and len(calls) == 1
    call_command("build_default_model", "--if-missing", "--out", str(tmp_path / "tiny"))
    assert len(calls) == 1  # nothing to do the second time


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_trainer_can_run_under_a_launcher_subprocess(scene, no_send, settings):
    """PREFLOOP_TRAINING_LAUNCHER (``accelerate launch --config_file ...`` on a multi-GPU box; the
    plain interpreter here): the task relays the subprocess's JSON-lines events into the run."""
    import sys

    from training.tasks import run_training

    settings.PREFLOOP_TRAINING_LAUNCHER = [sys.executable]
    run = launch_run(
        scene["project"],
        base_model=scene["base"],
        recipe="sft",
        export=scene["export"],
        hyperparameters={
            "max_steps": 3,
            "batch_size": 4,
            "lr": 1e-3,
            "max_length": 48,
            "eval_fraction": 0.0,
            "checkpoint_every": 0,
        },
    )
    assert run_training.apply(args=(run.pk,)).get() == RunStatus.SUCCEEDED
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED and run.step == 3 and "launching:" in run.logs
    # the minutes spent sampling for the version's metrics are announced, not a silent 100%
    assert run.logs.index("computing automatic metrics") < run.logs.index("automatic metrics computed")
    assert list(TrainingMetric.objects.filter(run=run).values_list("step", flat=True)) == [1, 2, 3]
    assert Path(run.output_model.path, "config.json").exists()


def test_sample_next_round_creates_the_next_rounds_comparisons(scene):
    """New model vs. its parent on seeded prompts; identical pairs are skipped (fake generator)."""
    from annotate.models import Comparison, Prompt

    project = scene["project"]
    for i in range(6):
        Prompt.objects.create(project=project, text=f"Prompt {i}?", content_hash=f"h{i}")
    import shutil

    new_dir = shutil.copytree(scene["base"].path, scene["tmp"] / "new-model")
    new = register_model("tiny-test.new", new_dir, parent=scene["base"])

    def fake_generate(path, prompts, n, max_new_tokens, temperature, seed):
        tag = "new" if path == new.path else "old"
        assert path in (new.path, scene["base"].path)
        return [[f"{tag} answer to {p}" if "3" not in p else "same"] * n for p in prompts]

    job = sample_next_round(
        new, project, n_prompts=4, compare_to=scene["base"], generate=fake_generate, seed=7
    )
    project.refresh_from_db()
    assert job.status == "succeeded" and job.round == 1 and project.current_round == 1
    comparisons = Comparison.objects.filter(project=project, round=1).select_related(
        "response_a", "response_b"
    )
    assert comparisons.count() == job.n_created
    assert 3 <= job.n_created <= 4  # "Prompt 3?" gives identical answers when drawn: skipped
    for c in comparisons:
        assert {c.response_a.model_name, c.response_b.model_name} == {"tiny-test.new", "tiny-test"}
        assert c.response_a.round == c.response_b.round == 1
    with pytest.raises(TrainingError, match="n_prompts"):
        queue_sample_round(project, new, n_prompts=0)
