"""One training run on the worker, start to finish: claim the row, read and check the export's rows,
train (in this process, or under the launcher), and record the outcome -- the registered output
model on success, the last checkpoint on cancel, the error on failure.

torch and the trainer are imported inside the functions: importing this module loads neither.
"""

from __future__ import annotations

import inspect
import logging

from django.db import close_old_connections
from django.utils import timezone

from ..config import RECIPE_PHASES
from ..models import RunStatus, TrainingRun
from ..services import registry, rows, runs
from ..services.hyperparameters import effective_config
from .launcher import train_in_subprocess, training_launcher
from .reporting import Heartbeat, RunReporter, compact_metrics

log = logging.getLogger(__name__)


def _check_device(config: dict) -> None:
    import torch

    if config.get("device") == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "this run asks for a GPU (device='cuda') but the worker has no CUDA GPU; "
            "run a worker on a GPU machine or set device to 'auto' or 'cpu'"
        )


def execute_run(run: TrainingRun) -> str:
    """Run the trainer for a claimed run; returns the final status. Raises on failure."""
    from ..config import TrainConfig
    from ..trainer.loop import train

    reporter = RunReporter(run)
    if run.export is None:
        raise ValueError("the run has no export to train on")
    config = effective_config(run)
    _check_device(config)
    dropped: dict = {}
    train_rows, test_rows = rows.run_rows(run, dropped)
    if any(dropped.values()):
        reporter.log(
            f"left out of export {run.export_id}: {dropped['ties']} tie / both-bad rows, "
            f"{dropped['empty']} rows with an empty prompt or response"
        )
    rows.check_rows(train_rows, test_rows, run.hyperparameters or {}, run.recipe)
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
        if launcher and cfg.recipe not in RECIPE_PHASES:
            reporter.log(f"{cfg.recipe} runs in this process on one device (the launcher is for SFT/DPO)")
            launcher = None
        if launcher:
            reporter.log(f"launching: {' '.join(launcher)} -m training.trainer")
            result = train_in_subprocess(
                launcher, cfg.to_dict(), run.base_model.path, train_rows, run.out_dir, reporter
            )
        elif cfg.recipe not in RECIPE_PHASES:  # reward model / PPO: training.rlhf chains the phases
            from ..rlhf import train_rlhf

            result = train_rlhf(cfg, run.base_model.path, train_rows, run.out_dir, callbacks=reporter, **kwargs)
        else:
            result = train(cfg, run.base_model.path, train_rows, run.out_dir, callbacks=reporter, **kwargs)
    finally:
        heartbeat.stop()

    run.refresh_from_db(fields=["summary"])
    summary = {
        **(run.summary or {}),  # what launch recorded (the data's weight sum and effective size)
        "steps": result.steps,
        "total_steps": result.total_steps,
        "final": compact_metrics(result.metrics or {}),
        "eval": eval_by_phase(result.eval_metrics or {}),
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
    reward_model = _register_reward_model(run, result, summary)
    version = registry.register_model(
        registry.output_model_name(run),
        result.final_path,
        parent=run.base_model,
        project=run.project,
        description=f"{run.get_recipe_display()} of {run.base_model.name} (export {run.export_id})",
        created_by=run.created_by,
        training_run=run,
        round=_trained_round(run),
        metrics={
            **flat_eval(summary["eval"]),
            **{f"final_{k}": v for k, v in summary["final"].items() if isinstance(v, (int, float))},
        },
        replace=True,
    )
    if version.kind != "reward":
        _record_version_metrics(version, run, test_rows or train_rows, reporter)
    also = f"; its reward model as {reward_model.name}" if reward_model and reward_model != version else ""
    reporter.log(
        f"succeeded: {result.steps} steps; model registered as {version.name} ({version.path}){also}",
        status=RunStatus.SUCCEEDED,
        finished_at=now,
        summary=summary,
        output_model=version,
        progress=1.0,
        eta_seconds=0,
        step=result.steps,
        total_steps=result.total_steps,
    )
    from ..active.services import after_run_succeeded

    after_run_succeeded(run)  # a project in margin order re-scores its open pairs with the new model
    return RunStatus.SUCCEEDED


def _record_version_metrics(version, run: TrainingRun, rows_: list[dict], reporter) -> None:
    """The new version's automatic metrics (``training.worker.metrics``) into its ``metrics``; a
    failure is logged on the run and leaves the run succeeded."""
    import time

    from .metrics import MAX_PROMPTS, version_metrics

    # Sampling both models on the evaluation prompts takes a while on a CPU: say so, so the run
    # page does not look stuck at 100% between "saved final" and "succeeded".
    reporter.log(f"computing automatic metrics on {min(len(rows_), MAX_PROMPTS)} evaluation prompts")
    started = time.monotonic()
    try:
        extra = version_metrics(version.path, run.base_model.path, [r["prompt"] for r in rows_],
                                seed=int((run.hyperparameters or {}).get("seed", 0)))
    except Exception as exc:  # noqa: BLE001 - metrics are a report, not the run
        reporter.log(f"automatic metrics failed: {type(exc).__name__}: {exc}")
        return
    accuracy = version.metrics.get("dpo_eval_reward_accuracy")
    if accuracy is not None:
        extra["preference_accuracy"] = accuracy
    version.metrics = {**version.metrics, **extra}
    version.save(update_fields=["metrics"])
    reporter.log(f"automatic metrics computed in {time.monotonic() - started:.0f} s")


def eval_by_phase(evals: dict) -> dict:
    """The held-out metrics as ``{phase: {eval_*: value}}`` (the trainer's shape), compacted: SFT's
    perplexity and DPO's loss each stay under the phase they measure."""
    nested = {ph: m for ph, m in evals.items() if isinstance(m, dict)}
    loose = {k: v for k, v in evals.items() if not isinstance(v, dict)}
    if loose:  # a trainer that reported flat keys: their phase is unknown
        nested.setdefault("unknown", {}).update(loose)
    return {ph: compact_metrics(m) for ph, m in nested.items()}


def flat_eval(evals: dict) -> dict:
    """``{"<phase>_eval_loss": ...}``: the nested held-out numbers as a registered model's metrics."""
    return {f"{ph}_{k}": v for ph, m in evals.items() for k, v in m.items() if not isinstance(v, (list, dict))}


def _register_reward_model(run: TrainingRun, result, summary: dict):
    """The reward model an RLHF run trained (``rm/final``), registered as a reward model of its
    own (``<output name>.rm``; for recipe ``rm`` it is the output itself, registered by the caller)."""
    from pathlib import Path

    rm_dir = Path(run.out_dir) / "rm" / "final"
    if run.recipe in RECIPE_PHASES or run.recipe == "rm" or not (rm_dir / ".complete").exists():
        return None
    return registry.register_model(
        f"{registry.output_model_name(run)}.rm",
        rm_dir,
        parent=run.base_model,
        project=run.project,
        description=f"reward model trained by run {run.pk} ({run.get_recipe_display()}, export {run.export_id})",
        created_by=run.created_by,
        training_run=run,
        round=_trained_round(run),
        metrics=flat_eval({"rm": summary["eval"].get("rm", {})}),
        replace=True,
    )


def _trained_round(run: TrainingRun) -> int:
    """The latest round in the run's export (its ``rounds`` filter), else the project's round."""
    rounds = (run.export.params or {}).get("rounds") if run.export else None
    if isinstance(rounds, list) and rounds and all(isinstance(r, int) for r in rounds):
        return max(rounds)
    return run.project.current_round


def train_run(run_id: int, task_id: str = "") -> str:
    """The ``run_training`` task: claim run ``run_id`` and train it; returns the run's final status,
    or "skipped" when it must not run here (finished, cancelled, held by another live worker).
    Idempotent: a redelivered or late message is harmless."""
    run = runs.claim_run(run_id, task_id)
    if run is None:
        return "skipped"
    try:
        status = execute_run(run)
    except Exception as exc:  # noqa: BLE001 - the row says what went wrong; no automatic retry
        log.exception("training run %s failed", run_id)
        message = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc)
        runs.append_run_log(
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
