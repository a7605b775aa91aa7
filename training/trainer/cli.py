"""The trainer's command line, for ``accelerate launch`` (several GPUs) or a plain subprocess:
``python -m training.trainer --model DIR --pairs FILE.jsonl --out DIR [--config FILE] [--set K=V]``.

The Celery task runs it this way when ``PREFLOOP_TRAINING_LAUNCHER`` is set
(``training.worker.launcher``) and relays the JSON-lines events it prints into the database.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..config import TrainConfig
from .loop import train
from .state import Callbacks


def load_pairs_jsonl(path: str | os.PathLike, limit: int | None = None) -> list[dict]:
    """Read preference rows from a JSON-lines file (the export format)."""
    rows = []
    with open(path) as f:
        for i, line in enumerate(f):
            if limit is not None and len(rows) >= limit:
                break
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{i + 1}: not valid JSON: {exc}") from exc
    return rows


def main(argv=None) -> None:
    """Command line, for ``accelerate launch`` (several GPUs) or a plain subprocess::

        accelerate launch --config_file training/accelerate_configs/ddp.yaml -m training.trainer \\
            --model var/models/default --pairs export.jsonl --out var/runs/42 --config run.json

    ``--config`` is a JSON object of TrainConfig fields. Progress goes to stdout as JSON lines
    (``{"event": "step", ...}``) from the main process; the result is written to out/result.json.
    Cancel: SIGINT (the first one; a second interrupts at once) or a file ``<out>/STOP`` stops
    the run at the next step with a checkpoint, like ``Callbacks.should_stop``.
    """
    import argparse
    import signal

    p = argparse.ArgumentParser(description="prefloop SFT / DPO trainer")
    p.add_argument("--model", required=True, help="local Hugging Face model folder")
    p.add_argument("--pairs", required=True,
                   help="JSON-lines file of {prompt, chosen, rejected, weight?, p_chosen?}")
    p.add_argument("--out", required=True, help="output folder (resumes if it holds checkpoints)")
    p.add_argument("--config", help="JSON file of TrainConfig fields")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override TrainConfig fields (JSON values)")
    args = p.parse_args(argv)
    values = json.loads(Path(args.config).read_text()) if args.config else {}
    for item in args.set:
        key, _, raw = item.partition("=")
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    cfg = TrainConfig.from_dict(values)

    stop_file = Path(args.out) / "STOP"
    interrupted = []

    def on_sigint(signum, frame):
        interrupted.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C interrupts now

    signal.signal(signal.SIGINT, on_sigint)

    class Printer(Callbacks):
        def should_stop(self):
            return bool(interrupted) or stop_file.exists()

        def on_step(self, metrics):
            print(json.dumps({"event": "step", **metrics}), flush=True)

        def on_eval(self, metrics):
            print(json.dumps({"event": "eval", **metrics}), flush=True)

        def on_checkpoint(self, path):
            print(json.dumps({"event": "checkpoint", "path": path}), flush=True)

        def on_log(self, message):
            print(json.dumps({"event": "log", "message": message}), flush=True)

    main_process = os.environ.get("RANK", "0") == "0"
    if main_process and stop_file.exists():
        stop_file.unlink()  # a request that belonged to an earlier launch
    callbacks = Printer() if main_process else None
    result = train(cfg, args.model, load_pairs_jsonl(args.pairs), args.out, callbacks)
    if main_process:
        print(json.dumps({"event": "result", **result.to_dict()}), flush=True)
