"""Hyperparameters never name a path (issue 11, item 1).

A run's hyperparameters are an explicit allow-list (``SETTABLE_FIELDS``), checked before the run
is stored on the page, the API and ``manage.py train``; path-valued settings (``ref_cache_dir``)
are the server's choice under the run's output folder, so a project admin cannot make the worker
create folders, write files or ``torch.load`` anything outside the data folder. The other places
a request could name a path (model registration, exports, imports) are refused too.
"""

from __future__ import annotations

import dataclasses
import io
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from annotate.models import Role
from evaluation.models import Export
from training.config import TrainConfig
from training.models import ModelVersion, RunStatus, TrainingRun
from training.services.errors import TrainingError
from training.services.hyperparameters import (
    RESERVED_FIELDS,
    SERVER_CHOSEN_FIELDS,
    SETTABLE_FIELDS,
    effective_config,
    validate_hyperparameters,
)
from training.services.runs import launch_run

from .test_runs import _client, _launch_post, no_send, scene, tiny_model_dir  # noqa: F401 - fixtures


def test_every_trainconfig_field_is_either_settable_or_the_servers():
    """A field added to TrainConfig is refused until someone decides which list it belongs to."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert SETTABLE_FIELDS | SERVER_CHOSEN_FIELDS | RESERVED_FIELDS == fields
    assert not SETTABLE_FIELDS & SERVER_CHOSEN_FIELDS
    for name in SETTABLE_FIELDS:  # no settable field is a folder by its name
        assert not name.endswith(("_dir", "_path", "_folder", "_file")), name


@pytest.mark.parametrize(
    "hp, message",
    [
        ({"ref_cache_dir": "/tmp/elsewhere"}, "ref_cache_dir cannot be set: the server chooses"),
        ({"ref_cache_dir": None}, "ref_cache_dir cannot be set"),
        ({"reward_model": "/etc"}, "reward_model is the name of a registered reward model"),
        ({"reward_model": "../../runs/run-00001/rm/final"}, "reward_model is the name"),
        ({"lora_target_modules": ["q_proj", "../x"]}, "'../x' is not a module name"),
        ({"out_dir": "/tmp/x"}, "unknown hyperparameter 'out_dir'"),
    ],
)
def test_path_valued_hyperparameters_are_refused(hp, message):
    with pytest.raises(TrainingError, match=message):
        validate_hyperparameters(hp, "ppo")


def test_the_page_refuses_ref_cache_dir_and_creates_nothing(scene, no_send, client, tmp_path):
    target = tmp_path / "outside"
    c = _client(client, scene["users"][Role.ADMIN])
    url = reverse("training_run_new", args=[scene["project"].pk])
    response = c.post(url, _launch_post(scene, extra=json.dumps({"ref_cache_dir": str(target)})))
    assert response.status_code == 400
    assert "ref_cache_dir cannot be set" in response.content.decode()
    assert not TrainingRun.objects.exists() and no_send == [] and not target.exists()


def test_the_api_refuses_ref_cache_dir_and_creates_nothing(scene, no_send, client, tmp_path):
    target = tmp_path / "outside"
    c = _client(client, scene["users"][Role.ADMIN])
    url = reverse("training-api:run-list", args=[scene["project"].pk])
    body = {"recipe": "dpo", "base_model": "tiny-test", "export": scene["export"].pk,
            "hyperparameters": {"max_steps": 1, "ref_cache_dir": str(target)}}
    response = c.post(url, body, content_type="application/json")
    assert response.status_code == 400
    assert "ref_cache_dir cannot be set" in response.json()["hyperparameters"][0]
    path_rm = c.post(url, {**body, "recipe": "ppo", "hyperparameters": {}, "reward_model": str(tmp_path)},
                     content_type="application/json")
    assert path_rm.status_code == 400 and "reward_model" in path_rm.json()
    assert not TrainingRun.objects.exists() and no_send == [] and not target.exists()


def test_the_command_refuses_ref_cache_dir(scene, no_send, tmp_path):
    target = tmp_path / "outside"
    with pytest.raises(CommandError, match="ref_cache_dir cannot be set"):
        call_command("train", "--project", str(scene["project"].pk), "--export", str(scene["export"].pk),
                     "--recipe", "dpo", "--base", "tiny-test", "--set", f"ref_cache_dir={target}",
                     stdout=io.StringIO())
    assert not TrainingRun.objects.exists() and not target.exists()


def test_a_reward_model_of_another_project_cannot_be_named(scene, no_send):
    from annotate.models import Project

    other = Project.objects.create(name="Someone else's")
    ModelVersion.objects.create(name="their-rm", path=scene["base"].path, kind="reward", project=other)
    with pytest.raises(TrainingError, match="no registered model is named 'their-rm'"):
        launch_run(scene["project"], base_model=scene["base"], recipe="ppo", export=scene["export"],
                   hyperparameters={"reward_model": "their-rm"})
    assert not TrainingRun.objects.exists()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)  # the task closes its connection, as a worker does
def test_a_stored_path_never_reaches_the_worker(scene, no_send, tmp_path, one_cpu_thread):
    """A run row that holds a path (stored before the allow-list, or written by hand) trains with
    the server's folders: the reference log-probs are cached inside the run's out_dir and nothing
    is created at the stored path."""
    from training.tasks import run_training

    run = launch_run(scene["project"], base_model=scene["base"], recipe="dpo", export=scene["export"],
                     hyperparameters={"max_steps": 1, "batch_size": 4, "max_length": 48, "eval_fraction": 0.0,
                                      "checkpoint_every": 0})
    target = tmp_path / "outside" / "cache"
    TrainingRun.objects.filter(pk=run.pk).update(
        hyperparameters={**run.hyperparameters, "ref_cache_dir": str(target), "reward_model": str(tmp_path)}
    )
    run.refresh_from_db()
    config = effective_config(run)
    assert config["ref_cache_dir"] is None and config["reward_model"] is None
    assert run_training.apply(args=(run.pk,)).get() == RunStatus.SUCCEEDED, TrainingRun.objects.get(pk=run.pk).logs
    run.refresh_from_db()
    assert not (tmp_path / "outside").exists()
    cached = list((tmp_path / "runs").rglob("ref_logps-*.pt"))
    assert cached and all(p.is_relative_to(run.out_dir) for p in cached)


# --------------------------------------------------------------------------- other paths


def test_models_register_only_from_the_model_roots(scene, client, settings, tmp_path):
    """A project admin cannot register (and so make the worker load) a folder outside
    PREFLOOP_MODEL_ROOTS, through ``..`` or a symlink, on the page or the API."""
    import os

    settings.PREFLOOP_MODEL_ROOTS = [tmp_path / "roots"]
    (tmp_path / "roots").mkdir()
    os.symlink(scene["base"].path, tmp_path / "roots" / "link")
    c = _client(client, scene["users"][Role.ADMIN])
    for path in (scene["base"].path, str(tmp_path / "roots" / ".." / ".."), str(tmp_path / "roots" / "link")):
        api = c.post(reverse("training-api:model-list"), {"name": "escape", "path": path},
                     content_type="application/json")
        assert api.status_code == 400 and "outside the folders" in api.json()["path"][0], path
        page = c.post(reverse("model_registry"), {"name": "escape", "path": path})
        assert page.status_code == 400 and "outside the folders" in page.content.decode(), path
    assert not ModelVersion.objects.filter(name="escape").exists()


def test_exports_take_no_folder_from_a_request(scene, client, tmp_path):
    """Export options are a closed set: a folder (``out_dir``, ``path``) is an unknown option to the
    service, and the API does not pass one on; only ``manage.py export_preferences --out`` (shell
    access) writes elsewhere than PREFLOOP_EXPORTS_DIR."""
    from evaluation.export.options import ExportError, clean_options

    for option in ("out_dir", "path"):
        with pytest.raises(ExportError, match=f"unknown option.*{option}"):
            clean_options(scene["project"], {option: str(tmp_path / "x")})
    c = _client(client, scene["users"][Role.ADMIN])
    url = reverse("export-api:export-list", args=[scene["project"].pk])
    for option in ("out_dir", "path"):
        c.post(url, {option: str(tmp_path / "x"), "formats": ["jsonl"]}, content_type="application/json")
    assert not (tmp_path / "x").exists()
    assert Export.objects.filter(project=scene["project"]).count() == 1  # the scene's own


def test_an_import_file_name_is_never_a_path(scene, client, tmp_path):
    """The uploaded file's name only picks the format and a source label; nothing is written
    where it points."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    c = _client(client, scene["users"][Role.ADMIN])
    escape = tmp_path / "escaped.jsonl"
    line = json.dumps({"prompt": "p?", "response_a": "a", "response_b": "b", "model_a": "m1", "model_b": "m2"})
    upload = SimpleUploadedFile(str(escape), (line + "\n").encode(), content_type="application/jsonl")
    c.post(reverse("annotate-api:comparison-import", args=[scene["project"].pk]), {"file": upload})
    assert not escape.exists()
