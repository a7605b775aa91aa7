"""Several GPUs: the trainer in a subprocess under ``accelerate launch`` (``PREFLOOP_TRAINING_LAUNCHER``),
its JSON-lines events relayed into the run's row, cancel as SIGINT to its process group.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from ..models import TrainingRun
from .reporting import RunReporter


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
