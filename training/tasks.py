"""Celery tasks of the training app, all on the ``gpu`` queue (``CELERY_TASK_ROUTES``).

* ``run_training(run_id)`` -- one ``TrainingRun`` start to finish: claims the row, loads the
  export's rows, calls ``training.trainer.train`` with callbacks that write progress, metrics
  and logs into the database and read the cancel flag before every step, then registers the
  output ``ModelVersion``. Idempotent and safe to redeliver (``acks_late``): a finished run is
  left alone, a run another live worker holds is skipped, and a run restarted after a crash
  resumes from the last checkpoint in its ``out_dir`` (the trainer replays the same data order).
* ``generate_sample(sample_id)`` -- the run page's "generate" box.
* ``sample_round(job_id)`` -- new responses become the next round's comparisons.

torch, transformers and the trainer are imported inside the tasks, never at module level: the
web process imports this module to send tasks and must not load them.

When a worker starts (``worker_ready``), ``training.services.resume_stale_runs`` re-queues runs
whose worker died mid-run (the embedded file-system broker does not redeliver a message whose
worker was SIGKILLed).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import shlex
import signal
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from celery import shared_task
from celery.signals import worker_process_init, worker_ready
from django.db import close_old_connections, connection
from django.utils import timezone

from . import services
from .models import GenerationSample, JobStatus, RunStatus, SamplingJob, TrainingMetric, TrainingRun

log = logging.getLogger(__name__)

#: Metric keys kept in ``TrainingMetric.data`` (everything numeric the trainer reports but ids).
SKIP_METRIC_KEYS = {"batch_ids"}


def compact_metrics(metrics: dict) -> dict:
    """Numbers rounded to 5 significant digits, lists and ids dropped; strings kept."""
    out = {}
    for key, value in metrics.items():
        if key in SKIP_METRIC_KEYS or isinstance(value, (list, dict, tuple)):
            continue
        if isinstance(value, bool) or value is None or isinstance(value, str):
            out[key] = value
        elif isinstance(value, int):
            out[key] = value
        else:
            try:
                v = float(value)
            except (TypeError, ValueError):
                continue
            out[key] = float(f"{v:.5g}") if math.isfinite(v) else None
    return out


class RunReporter:
    """The trainer's callbacks for one run: every write goes to the run's row (log lines are
    appended by the database, so a cancel logged by the web process is never overwritten)."""

    def __init__(self, run: TrainingRun):
        self.run_id = run.pk
        self.total_steps = run.total_steps
        self._last_heartbeat = 0.0
        self._lock = threading.Lock()

    # -- helpers ------------------------------------------------------------------------------
    def _update(self, message: str | None = None, **fields) -> None:
        now = timezone.now()
        fields.setdefault("heartbeat_at", now)
        fields["updated_at"] = now
        if message is not None:
            fields["logs"] = services.log_expression(message)
        with self._lock:
            TrainingRun.objects.filter(pk=self.run_id).update(**fields)
            self._last_heartbeat = time.monotonic()

    def log(self, message: str, **fields) -> None:
        self._update(message, **fields)

    def heartbeat(self) -> None:
        if time.monotonic() - self._last_heartbeat >= services.HEARTBEAT_INTERVAL_S:
            self._update()

    # -- the trainer's callbacks --------------------------------------------------------------
    def on_log(self, message: str) -> None:
        self.log(message)

    def on_step(self, metrics: dict) -> None:
        data = compact_metrics(metrics)
        step = int(metrics.get("step", 0))
        total = int(metrics.get("total_steps") or self.total_steps or 0)
        self.total_steps = total
        TrainingMetric.objects.update_or_create(run_id=self.run_id, step=step, defaults={"data": data})
        eta = metrics.get("eta_s")
        parts = [f"step {step}/{total}", f"{metrics.get('phase', '')}"]
        for key in ("loss", "reward_accuracy", "reward_margin", "eval_reward_accuracy", "lr"):
            if key in data and data[key] is not None:
                parts.append(f"{key}={data[key]:.4g}")
        self._update(
            " ".join(p for p in parts if p),
            step=step,
            total_steps=total,
            progress=min(1.0, step / total) if total else 0.0,
            eta_seconds=float(eta) if isinstance(eta, (int, float)) and math.isfinite(eta) else None,
        )

    def on_eval(self, metrics: dict) -> None:
        pass  # the eval_* keys also arrive through on_step

    def should_stop(self) -> bool:
        self.heartbeat()
        return TrainingRun.objects.filter(pk=self.run_id, cancel_requested=True).exists()

    def on_checkpoint(self, path: str) -> None:
        pass  # on_log reports it too


class Heartbeat(threading.Thread):
    """Keeps ``heartbeat_at`` fresh while the trainer is busy between steps (loading a large
    model, pre-computing reference log-probs, saving), so no one mistakes the run for lost."""

    def __init__(self, reporter: RunReporter, interval: float = services.HEARTBEAT_INTERVAL_S):
        super().__init__(daemon=True, name=f"heartbeat-run-{reporter.run_id}")
        self.reporter = reporter
        self.interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopped.wait(self.interval):
                try:
                    self.reporter.heartbeat()
                except Exception:  # noqa: BLE001 - a missed heartbeat is not fatal
                    log.warning("heartbeat of run %s failed", self.reporter.run_id, exc_info=True)
        finally:
            connection.close()

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)


def _check_device(config: dict) -> None:
    import torch

    if config.get("device") == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "this run asks for a GPU (device='cuda') but the worker has no CUDA GPU; "
            "run a worker on a GPU machine or set device to 'auto' or 'cpu'"
        )


# =============================================================================================
# Several GPUs: the trainer in a subprocess under ``accelerate launch``
# =============================================================================================


def training_launcher() -> list[str]:
    """``PREFLOOP_TRAINING_LAUNCHER`` (a setting or environment variable): the command that runs
    ``-m training.trainer``, e.g. ``accelerate launch --config_file training/accelerate_configs/ddp.yaml``
    for every GPU of the worker's machine. Empty (the default): train in the worker process."""
    from django.conf import settings

    value = getattr(settings, "PREFLOOP_TRAINING_LAUNCHER", None) or os.environ.get(
        "PREFLOOP_TRAINING_LAUNCHER", ""
    )
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return shlex.split(value)


def train_in_subprocess(
    launcher: list[str],
    config: dict,
    model_path: str,
    rows: list[dict],
    out_dir: str,
    reporter: RunReporter,
    poll_s: float = 1.0,
):
    """Run the trainer's command line under ``launcher`` and relay its JSON-lines events (steps,
    logs, the result) to ``reporter``. Cancel: the subprocess is interrupted (SIGINT to its
    process group) and the run keeps its last periodic checkpoint. Returns a ``TrainResult``-like
    object; raises ``RuntimeError`` with the output's tail when the trainer fails."""
    from django.conf import settings

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pairs_path, config_path = out / "pairs.jsonl", out / "run_config.json"
    with open(pairs_path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    config_path.write_text(json.dumps(config))
    cmd = [
        *launcher,
        "-m",
        "training.trainer",
        "--model",
        str(model_path),
        "--pairs",
        str(pairs_path),
        "--out",
        str(out),
        "--config",
        str(config_path),
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=settings.BASE_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
    )
    cancelled = threading.Event()

    def watch_cancel():
        while proc.poll() is None:
            if reporter.should_stop():
                cancelled.set()
                (out / "STOP").touch()  # for a trainer that polls a stop file
                os.killpg(proc.pid, signal.SIGINT)
                return
            time.sleep(poll_s)

    watcher = threading.Thread(target=watch_cancel, name="cancel-watch", daemon=True)
    watcher.start()
    result, tail = None, []
    for line in proc.stdout:
        line = line.rstrip("\n")
        event = None
        if line.startswith("{"):
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = None
        if not isinstance(event, dict) or "event" not in event:
            tail = (tail + [line])[-30:]
            continue
        kind = event.pop("event")
        if kind == "step":
            reporter.on_step(event)
        elif kind == "log":
            reporter.on_log(str(event.get("message", "")))
        elif kind == "result":
            result = event
    code = proc.wait()
    watcher.join(timeout=5)
    if cancelled.is_set():
        last = TrainingRun.objects.filter(pk=reporter.run_id).values_list("step", "total_steps").first() or (
            0,
            0,
        )
        return SimpleNamespace(
            status="cancelled",
            steps=last[0],
            total_steps=last[1],
            metrics={},
            eval_metrics={},
            final_path=None,
        )
    if code != 0 or result is None:
        raise RuntimeError(f"the trainer exited with code {code}:\n" + "\n".join(tail[-15:]))
    return SimpleNamespace(
        **{
            k: result.get(k)
            for k in ("status", "steps", "total_steps", "metrics", "eval_metrics", "final_path")
        }
    )


def execute_run(run: TrainingRun) -> str:
    """Run the trainer for a claimed run; returns the final status. Raises on failure."""
    from .trainer import TrainConfig, train

    reporter = RunReporter(run)
    if run.export is None:
        raise ValueError("the run has no export to train on")
    config = services.effective_config(run)
    _check_device(config)
    dropped: dict = {}
    train_rows, test_rows = services.run_rows(run, dropped)
    if any(dropped.values()):
        reporter.log(
            f"left out of export {run.export_id}: {dropped['ties']} tie / both-bad rows, "
            f"{dropped['empty']} rows with an empty prompt or response"
        )
    services.check_rows(train_rows, test_rows, run.hyperparameters or {})
    kwargs = {}
    if test_rows and "eval_pairs" in inspect.signature(train).parameters:
        kwargs["eval_pairs"] = test_rows  # the export's own held-out split
    cfg = TrainConfig.from_dict(config)
    import torch

    device = "cuda" if (cfg.device != "cpu" and torch.cuda.is_available()) else "cpu"
    TrainingRun.objects.filter(pk=run.pk).update(device=device)
    reporter.log(
        f"training {run.recipe} on {len(train_rows)} pairs from export {run.export_id} "
        f"(device {device}), output in {run.out_dir}"
    )
    heartbeat = Heartbeat(reporter)
    heartbeat.start()
    try:
        launcher = training_launcher()
        if launcher:
            reporter.log(f"launching: {' '.join(launcher)} -m training.trainer")
            result = train_in_subprocess(
                launcher, cfg.to_dict(), run.base_model.path, train_rows, run.out_dir, reporter
            )
        else:
            result = train(cfg, run.base_model.path, train_rows, run.out_dir, callbacks=reporter, **kwargs)
    finally:
        heartbeat.stop()

    summary = {
        "steps": result.steps,
        "total_steps": result.total_steps,
        "final": compact_metrics(result.metrics or {}),
        "eval": compact_metrics(result.eval_metrics or {}),
        "train_pairs": len(train_rows),
        "test_pairs": len(test_rows) if kwargs else 0,
    }
    now = timezone.now()
    if result.status == "cancelled":
        reporter.log(
            f"cancelled at step {result.steps}; the last checkpoint is kept in {run.out_dir}/checkpoints",
            status=RunStatus.CANCELLED,
            finished_at=now,
            summary=summary,
            eta_seconds=None,
            step=result.steps,
        )
        return RunStatus.CANCELLED

    run.refresh_from_db()
    version = services.register_model(
        services.output_model_name(run),
        result.final_path,
        parent=run.base_model,
        project=run.project,
        description=f"{run.get_recipe_display()} of {run.base_model.name} (export {run.export_id})",
        created_by=run.created_by,
        training_run=run,
        round=_trained_round(run),
        metrics={
            **summary["eval"],
            **{f"final_{k}": v for k, v in summary["final"].items() if isinstance(v, (int, float))},
        },
        replace=True,
    )
    reporter.log(
        f"succeeded: {result.steps} steps; model registered as {version.name} ({version.path})",
        status=RunStatus.SUCCEEDED,
        finished_at=now,
        summary=summary,
        output_model=version,
        progress=1.0,
        eta_seconds=0,
        step=result.steps,
        total_steps=result.total_steps,
    )
    return RunStatus.SUCCEEDED


def _trained_round(run: TrainingRun) -> int:
    """The latest round in the run's export (its ``rounds`` filter), else the project's round."""
    rounds = (run.export.params or {}).get("rounds") if run.export else None
    if isinstance(rounds, list) and rounds and all(isinstance(r, int) for r in rounds):
        return max(rounds)
    return run.project.current_round


@shared_task(
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    name="training.tasks.run_training",
)
def run_training(self, run_id: int) -> str:
    """Train run ``run_id`` (idempotent; see the module docstring)."""
    run = services.claim_run(run_id, getattr(self.request, "id", "") or "")
    if run is None:
        return "skipped"
    try:
        status = execute_run(run)
    except Exception as exc:  # noqa: BLE001 - the row says what went wrong; no automatic retry
        log.exception("training run %s failed", run_id)
        message = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc)
        services.append_run_log(
            run_id,
            f"failed: {message[:2000]}",
            status=RunStatus.FAILED,
            error=message[:5000],
            finished_at=timezone.now(),
            eta_seconds=None,
        )
        return RunStatus.FAILED
    finally:
        close_old_connections()
    return status


# =============================================================================================
# Generation
# =============================================================================================

_MODEL_CACHE: dict[str, tuple] = {}


def _load(path: str):
    """Load (and keep, one at a time) a model for generation."""
    from .tiny_model import load_model_and_tokenizer

    if path not in _MODEL_CACHE:
        _MODEL_CACHE.clear()
        model, tokenizer = load_model_and_tokenizer(path)
        model.eval()
        _MODEL_CACHE[path] = (model, tokenizer)
    return _MODEL_CACHE[path]


def generate_texts(
    model_path: str,
    prompts: list,
    num_return_sequences: int = 1,
    max_new_tokens: int = 64,
    temperature: float = 0.8,
    seed: int = 0,
) -> list[list[str]]:
    """Responses of the model at ``model_path`` to each prompt (a string, tokenized as the
    trainer tokenizes text prompts, or a list of chat messages, through the chat template)."""
    import torch

    model, tokenizer = _load(model_path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    torch.manual_seed(seed)
    out: list[list[str]] = []
    for prompt in prompts:
        if isinstance(prompt, list):
            ids = tokenizer.apply_chat_template(
                prompt, add_generation_prompt=True, tokenize=True, return_dict=True
            )["input_ids"]
        else:
            ids = tokenizer(prompt)["input_ids"]
        max_positions = getattr(model.config, "max_position_embeddings", None) or 2048
        ids = list(ids)[-max(1, max_positions - max_new_tokens) :]
        input_ids = torch.tensor([ids], device=device)
        sample = num_return_sequences > 1 or temperature > 0
        with torch.no_grad():
            generated = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new_tokens,
                min_new_tokens=1,
                do_sample=sample,
                temperature=temperature if sample else None,
                top_p=0.95 if sample else None,
                num_return_sequences=num_return_sequences,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        out.append([tokenizer.decode(g[len(ids) :], skip_special_tokens=True) for g in generated])
    return out


@shared_task(bind=True, acks_late=True, ignore_result=True, name="training.tasks.generate_sample")
def generate_sample(self, sample_id: int) -> str:
    claimed = GenerationSample.objects.filter(pk=sample_id, status=JobStatus.QUEUED).update(
        status=JobStatus.RUNNING
    )
    if not claimed:
        return "skipped"
    sample = GenerationSample.objects.select_related("model_version").get(pk=sample_id)
    try:
        text = generate_texts(
            sample.model_version.path, [sample.prompt], 1, sample.max_new_tokens, temperature=0.0
        )[0][0]
    except Exception as exc:  # noqa: BLE001
        log.exception("sample %s failed", sample_id)
        GenerationSample.objects.filter(pk=sample_id).update(
            status=JobStatus.FAILED, error=f"{type(exc).__name__}: {exc}"[:2000], finished_at=timezone.now()
        )
        return "failed"
    GenerationSample.objects.filter(pk=sample_id).update(
        status=JobStatus.SUCCEEDED, output=text, finished_at=timezone.now()
    )
    return "succeeded"


@shared_task(bind=True, acks_late=True, ignore_result=True, name="training.tasks.sample_round")
def sample_round(self, job_id: int) -> str:
    """Generate the next round's pairs of a ``SamplingJob`` and import them as comparisons."""
    claimed = SamplingJob.objects.filter(pk=job_id, status=JobStatus.QUEUED).update(status=JobStatus.RUNNING)
    if not claimed:
        return "skipped"
    job = SamplingJob.objects.select_related("project", "model_version", "compare_to").get(pk=job_id)

    def progress(fraction: float) -> None:
        SamplingJob.objects.filter(pk=job_id).update(progress=fraction)

    try:
        created = services.run_sampling_job(job, progress=progress)
    except Exception as exc:  # noqa: BLE001
        log.exception("sampling job %s failed", job_id)
        SamplingJob.objects.filter(pk=job_id).update(
            status=JobStatus.FAILED, error=str(exc)[:2000], finished_at=timezone.now()
        )
        return "failed"
    SamplingJob.objects.filter(pk=job_id).update(
        status=JobStatus.SUCCEEDED, n_created=created, progress=1.0, finished_at=timezone.now()
    )
    return "succeeded"


def _consumes_gpu_queue(app) -> bool:
    try:
        queues = app.amqp.queues.consume_from or app.amqp.queues
        return "gpu" in queues
    except Exception:  # noqa: BLE001
        return False


def _preload_trainer() -> None:
    """Import torch and the trainer ahead of the first task (tens of seconds on a busy CPU)."""
    try:
        from . import trainer  # noqa: F401
    except Exception:  # noqa: BLE001 - the task reports a broken install itself
        log.warning("could not preload the trainer", exc_info=True)


def _preload_enabled() -> bool:
    from django.conf import settings

    return bool(getattr(settings, "PREFLOOP_PRELOAD_TRAINER", True))


@worker_ready.connect
def _on_worker_ready(sender=None, **kwargs) -> None:
    """Re-queue runs a dead worker left 'running' (see ``services.resume_stale_runs``), and warm
    up the trainer's imports in the background when this worker serves the gpu queue."""
    app = getattr(sender, "app", None)
    if app is not None and _preload_enabled() and _consumes_gpu_queue(app):
        threading.Thread(target=_preload_trainer, name="preload-trainer", daemon=True).start()
    try:
        requeued = services.resume_stale_runs()
    except Exception:  # noqa: BLE001 - a worker must start even if this fails (e.g. no tables yet)
        log.warning("resume_stale_runs failed at worker start", exc_info=True)
        return
    finally:
        close_old_connections()
    if requeued:
        log.warning("re-queued training runs left by a lost worker: %s", requeued)


@worker_process_init.connect
def _on_worker_process_init(sender=None, **kwargs) -> None:
    """Prefork pool: each child process warms up its own imports."""
    from celery import current_app

    if _preload_enabled() and _consumes_gpu_queue(current_app):
        threading.Thread(target=_preload_trainer, name="preload-trainer", daemon=True).start()
