"""Everything ``train`` writes into ``out_dir`` besides the metrics: checkpoints (save, keep the
last few, restore the latest), each phase's saved model, and the result of a finished run.

A folder is only trusted once its ``.complete`` marker exists, so a crash mid-save leaves
nothing that a resume would read; JSON files are replaced atomically.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .plan import plan_fingerprint, step_ids
from .state import RunState, TrainResult, call


def write_json(path: Path, obj) -> None:
    """Write ``obj`` to ``path`` atomically (a temporary file, then a rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def complete(path: Path) -> bool:
    return (path / ".complete").exists()


def checkpoint_dirs(root: Path) -> list[Path]:
    """The complete ``step-NNNNNN`` folders under ``root``, oldest first."""
    if not root.exists():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and complete(p)),
                  key=lambda p: int(p.name.split("-")[1]))


class PhaseCheckpoints:
    """``out_dir/checkpoints/<phase>/step-NNNNNN/`` of one phase: the accelerate state (model,
    optimizer, RNG, the scheduler registered with the accelerator) plus ``trainer_state.json``,
    which records the plan's fingerprint so a checkpoint never resumes a different run."""

    def __init__(self, run: RunState, phase: str, plan, train_ex, step_offset: int, total_steps: int):
        self.run, self.phase, self.plan, self.train_ex = run, phase, plan, train_ex
        self.step_offset, self.total_steps = step_offset, total_steps
        self.root = run.out / "checkpoints" / phase

    def restore(self) -> int:
        """Load the latest complete checkpoint into the accelerator; returns its ``phase_step``
        (0 when there is none). Half-written checkpoints of a crashed save are removed."""
        run, acc = self.run, self.run.accelerator
        phase_step = 0
        ckpts = checkpoint_dirs(self.root)
        if run.main and self.root.exists():  # drop half-written checkpoints of a crashed save
            for p in self.root.iterdir():
                if p.is_dir() and not complete(p):
                    shutil.rmtree(p, ignore_errors=True)
        if ckpts:
            state = json.loads((ckpts[-1] / "trainer_state.json").read_text())
            if state.get("plan_fingerprint") != plan_fingerprint(self.plan, self.train_ex, run.cfg):
                raise ValueError(f"{ckpts[-1]} belongs to a run with different data or settings; "
                                 f"use a fresh out_dir")
            acc.load_state(str(ckpts[-1]))
            phase_step = state["phase_step"]
            run.log(f"{self.phase}: resumed from {ckpts[-1]} at step {self.step_offset + phase_step}")
        return phase_step

    def save(self, phase_step: int, reason: str) -> None:
        """Checkpoint after ``phase_step`` steps (every process takes part); keeps the last
        ``keep_checkpoints``."""
        run, acc, cfg, plan = self.run, self.run.accelerator, self.run.cfg, self.plan
        path = self.root / f"step-{phase_step:06d}"
        if complete(path):
            return
        if run.main:
            shutil.rmtree(path, ignore_errors=True)
        acc.wait_for_everyone()
        acc.save_state(str(path), safe_serialization=False)
        if run.main:
            write_json(path / "trainer_state.json", {
                "phase": self.phase, "phase_step": phase_step, "step": self.step_offset + phase_step,
                "total_steps": self.total_steps, "seed": cfg.seed, "reason": reason,
                "plan_fingerprint": plan_fingerprint(plan, self.train_ex, cfg),
                "next_batch_ids": step_ids(plan, phase_step, self.train_ex) if phase_step < len(plan) else [],
            })
            (path / ".complete").touch()
            for old in checkpoint_dirs(self.root)[:-cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        run.log(f"{self.phase}: checkpoint {path} ({reason})")
        if run.main:
            call(run.cb, "on_checkpoint", str(path))


def save_phase_output(run: RunState, wrapped, tokenizer, phase_out: Path, start_path: str,
                      phase: str) -> dict:
    """save_pretrained the phase's model into ``phase_out`` (LoRA: merged; adapter alone in
    ``out_dir/adapter`` for the last phase), mark it complete."""
    cfg, acc = run.cfg, run.accelerator
    acc.wait_for_everyone()
    inner = acc.unwrap_model(wrapped).model
    state = acc.get_state_dict(wrapped)
    state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    report = {"out": str(phase_out)}
    if run.main:
        shutil.rmtree(phase_out, ignore_errors=True)
        if cfg.lora:
            if phase_out.name == "final":
                adapter_dir = run.out / "adapter"
                shutil.rmtree(adapter_dir, ignore_errors=True)
                inner.save_pretrained(str(adapter_dir))
                tokenizer.save_pretrained(str(adapter_dir))
                report["adapter_path"] = str(adapter_dir)
            merged = inner.merge_and_unload()
            merged.save_pretrained(str(phase_out))
        else:
            inner.save_pretrained(str(phase_out), state_dict=state)
        tokenizer.save_pretrained(str(phase_out))
        write_json(phase_out / "prefloop_training.json", {
            "phase": phase, "base_model": os.path.abspath(start_path), "recipe": cfg.recipe,
            "config": cfg.to_dict(), "lora": cfg.lora,
            "lora_note": ("LoRA adapter merged into these weights; the adapter alone is in ../adapter"
                          if cfg.lora else None),
            "eval": {ph: dict(ev) for ph, ev in run.eval_metrics.items()},
        })
        (phase_out / ".complete").touch()
        run.log(f"{phase}: saved {phase_out}")
    acc.wait_for_everyone()
    return report


def result_from_history(out: Path) -> TrainResult:
    """The result of a run whose final model is saved but whose result.json was never written."""
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()] \
        if (out / "metrics.jsonl").exists() else []
    last = lines[-1] if lines else {}
    evals: dict = {}
    for m in lines:
        ev = {k: v for k, v in m.items() if k.startswith("eval_")}
        if ev:
            evals.setdefault(m.get("phase", ""), {}).update(ev)
    adapter = out / "adapter"
    result = TrainResult(status="succeeded", out_dir=str(out), final_path=str(out / "final"),
                         adapter_path=str(adapter) if adapter.exists() else None, steps=last.get("step", 0),
                         total_steps=last.get("total_steps", 0), metrics=last, eval_metrics=evals)
    write_json(out / "result.json", result.to_dict())
    return result
