"""How a training run reports from the worker: the trainer's callbacks write progress, metrics and
log lines into the run's row, and a heartbeat thread keeps ``heartbeat_at`` fresh while the
trainer is busy between steps (so no one mistakes the run for lost).
"""

from __future__ import annotations

import logging
import math
import threading
import time

from django.utils import timezone

from prefloop import jobs

from ..models import TrainingMetric, TrainingRun
from ..services import runs

log = logging.getLogger(__name__)

#: Metric keys kept in ``TrainingMetric.data`` (everything numeric the trainer reports but ids).
SKIP_METRIC_KEYS = {"batch_ids"}
#: Structured metrics kept as they are: PPO's sample generations (texts cut to ``SAMPLE_CHARS``)
#: and the reward model's calibration bins (the run page draws them).
STRUCTURED_METRIC_KEYS = {"samples", "eval_calibration"}
SAMPLE_CHARS = 600


def _structured(key: str, value):
    if key == "samples":
        return [{"prompt": str(s.get("prompt", ""))[-SAMPLE_CHARS:],
                 "response": str(s.get("response", ""))[:SAMPLE_CHARS],
                 "reward": s.get("reward")} for s in value[:8] if isinstance(s, dict)]
    return [{k: (float(f"{v:.5g}") if isinstance(v, float) and math.isfinite(v) else v) for k, v in b.items()}
            for b in value if isinstance(b, dict)]


def compact_metrics(metrics: dict) -> dict:
    """Numbers rounded to 5 significant digits, lists and ids dropped (but sample generations and
    calibration bins); strings kept."""
    out = {}
    for key, value in metrics.items():
        if key in STRUCTURED_METRIC_KEYS and isinstance(value, list):
            out[key] = _structured(key, value)
            continue
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
            fields["logs"] = runs.log_expression(message)
        with self._lock:
            TrainingRun.objects.filter(pk=self.run_id).update(**fields)
            self._last_heartbeat = time.monotonic()

    def log(self, message: str, **fields) -> None:
        self._update(message, **fields)

    def heartbeat(self) -> None:
        if time.monotonic() - self._last_heartbeat >= runs.HEARTBEAT_INTERVAL_S:
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
        for key in ("loss", "reward_accuracy", "reward_margin", "eval_reward_accuracy", "reward", "kl", "lr"):
            if isinstance(data.get(key), (int, float)):
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


def Heartbeat(reporter: RunReporter, interval: float = runs.HEARTBEAT_INTERVAL_S) -> jobs.Heartbeat:  # noqa: N802
    """Keeps ``heartbeat_at`` fresh while the trainer is busy between steps (loading a large
    model, pre-computing reference log-probs, saving), so no one mistakes the run for lost: the
    shared job heartbeat (``prefloop.jobs``) beating through the run's reporter."""
    name = f"heartbeat-run-{reporter.run_id}"
    return jobs.Heartbeat(interval=interval, beat=reporter.heartbeat, name=name)
