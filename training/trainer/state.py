"""What one ``train`` call shares across its phases: the callbacks it reports to, the state of the
run (config, out_dir, accelerator, the latest metrics), and the result it returns.

Only the main process reports: ``RunState.log`` / ``emit`` are no-ops on the others.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import TrainConfig


class Callbacks:
    """Hooks ``train`` calls on the main process. Subclass, or pass any object with some of
    these methods (missing ones are skipped). Exceptions raised in a hook propagate (the last
    checkpoint stays on disk, so a later ``train`` call resumes)."""

    def on_step(self, metrics: dict) -> None:
        """After every ``log_every``-th optimizer step. Keys: ``METRIC_KEYS`` and the phase's
        ``Phase.metric_keys``."""

    def on_eval(self, metrics: dict) -> None:
        """After each held-out evaluation (keys prefixed ``eval_``)."""

    def should_stop(self) -> bool:
        """Polled before every step: True cancels (a checkpoint is saved; status 'cancelled')."""
        return False

    def on_checkpoint(self, path: str) -> None:
        """After a checkpoint folder is complete on disk."""

    def on_log(self, message: str) -> None:
        """Human-readable progress lines (phase starts, reference pre-computation, saves)."""


#: Keys of every ``on_step`` metrics dict; each phase adds its own (``phases.Phase.metric_keys``).
METRIC_KEYS = ["phase", "step", "total_steps", "phase_step", "phase_total_steps", "epoch", "loss", "lr",
               "grad_norm", "tokens", "tokens_per_s", "step_time_s", "elapsed_s", "eta_s", "batch_ids"]


@dataclass
class TrainResult:
    """What ``train`` returns (and writes to ``out_dir/result.json``)."""

    status: str  # "succeeded" | "cancelled"
    out_dir: str
    final_path: str | None
    adapter_path: str | None
    steps: int
    total_steps: int
    metrics: dict = field(default_factory=dict)  # the last on_step metrics
    eval_metrics: dict = field(default_factory=dict)  # {phase: its last eval, eval_* keys}
    phases: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def call(callbacks, name, *args):
    """``callbacks.name(*args)`` when the object has that hook, else None."""
    fn = getattr(callbacks, name, None) if callbacks is not None else None
    if fn is not None:
        return fn(*args)
    return None


class RunState:
    """State shared by the phases of one ``train`` call."""

    def __init__(self, cfg: TrainConfig, model_path: str, pairs, out_dir: Path, callbacks):
        self.cfg = cfg
        self.model_path = str(model_path)
        self.pairs = pairs
        self.out = out_dir
        self.cb = callbacks
        self.t0 = time.time()
        self.accelerator = None
        self.history_path = out_dir / "metrics.jsonl"
        self.eval_metrics: dict = {}  # {phase: {eval_*: value}}: which phase each number came from
        self.last_metrics: dict = {}
        self.pack, self.unpadded = True, False  # the batch layout, set per phase (see device.batch_layout)
        self.num_rows = len(pairs)  # rows addressable by example.index (pairs + eval_pairs)

    # -- logging ------------------------------------------------------------------------------
    @property
    def main(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process

    def log(self, msg: str) -> None:
        if self.main:
            call(self.cb, "on_log", msg)

    def emit(self, metrics: dict) -> None:
        if not self.main:
            return
        with open(self.history_path, "a") as f:
            f.write(json.dumps(metrics) + "\n")
        call(self.cb, "on_step", metrics)

    def truncate_history(self, upto_step: int) -> None:
        """Forget the metrics lines after ``upto_step`` (steps a resumed run is about to replay)."""
        if not self.main or not self.history_path.exists():
            return
        keep = [ln for ln in self.history_path.read_text().splitlines()
                if ln.strip() and json.loads(ln).get("step", 0) <= upto_step]
        self.history_path.write_text("".join(ln + "\n" for ln in keep))
