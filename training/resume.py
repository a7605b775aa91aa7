"""Resuming a cancelled or failed training run from its last checkpoint.

The trainer keeps periodic checkpoints under ``<out_dir>/checkpoints/<phase>/step-NNNNNN/``
and a ``train`` call with the same ``out_dir`` continues from the newest one, replaying the
same data order (``training.trainer``). Resuming a run therefore only puts its row back in
the queue (status ``queued``, cancel flag and error cleared, a line in its log) and sends
its task again; the worker's claim (``services.runs.claim_run``) counts it as a restart. The web
page (``training.views.run_resume``) and the API (``POST …/runs/<id>/resume/``) call
:func:`resume_run`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from django.db import transaction

from .models import RunStatus, TrainingRun
from .services.errors import TrainingError

RESUMABLE = (RunStatus.CANCELLED, RunStatus.FAILED)
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    phase: str
    step: int
    path: Path


def last_checkpoint(run: TrainingRun) -> Checkpoint | None:
    """The newest complete checkpoint folder of the run (by phase order, then step), if any."""
    root = Path(run.out_dir) / "checkpoints" if run.out_dir else None
    if root is None or not root.is_dir():
        return None
    best: Checkpoint | None = None
    phases = sorted(p for p in root.iterdir() if p.is_dir())
    order = {"sft": 0, "rm": 1, "dpo": 2, "ppo": 3}
    for phase_dir in sorted(phases, key=lambda p: order.get(p.name, 9)):
        for step_dir in phase_dir.iterdir():
            m = _STEP_DIR.match(step_dir.name)
            # The trainer writes ".complete" last: a folder without it was cut short.
            if m and step_dir.is_dir() and (step_dir / ".complete").exists():
                cand = Checkpoint(phase_dir.name, int(m.group(1)), step_dir)
                if best is None or (order.get(cand.phase, 9), cand.step) >= (order.get(best.phase, 9), best.step):
                    best = cand
    return best


def resume_refusal(run: TrainingRun) -> str:
    """Why the run cannot be resumed now ('' when it can)."""
    if run.status not in RESUMABLE:
        return f"Only a cancelled or failed run can be resumed; run {run.pk} is {run.get_status_display().lower()}."
    return ""


def resume_run(run: TrainingRun, user=None, *, send: bool = True) -> TrainingRun:
    """Queue a cancelled or failed run again; it continues from its last checkpoint (or from
    the start when it has none). Raises ``TrainingError`` when it cannot."""
    from .services.runs import append_log, send_run

    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().get(pk=run.pk)
        refusal = resume_refusal(run)
        if refusal:
            raise TrainingError(refusal)
        ckpt = last_checkpoint(run)
        who = f" by {user.get_username()}" if user is not None and user.is_authenticated else ""
        where = f"from the {ckpt.phase} checkpoint at step {ckpt.step}" if ckpt else "from the start (no checkpoint yet)"
        run.status = RunStatus.QUEUED
        run.cancel_requested = False
        run.error = ""
        run.finished_at = None
        run.eta_seconds = None
        run.logs = append_log(run.logs, f"resume requested{who}; continues {where}")
        run.save(update_fields=["status", "cancel_requested", "error", "finished_at", "eta_seconds", "logs", "updated_at"])
    if send:
        transaction.on_commit(lambda: send_run(run.pk))
    return run
