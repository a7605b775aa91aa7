"""The training loop: ``train`` turns a recipe into phases and runs them one after another; a phase
is one optimizer loop over its planned steps.

Read top to bottom: ``train`` validates, tokenizes every phase's data, plans every phase's steps
and writes ``config.json``; ``run_phase`` prepares the model (reference log-probs, LoRA, the
optimizer, the accelerator), restores the latest checkpoint, then for each step collates the
micro-batches, asks the phase for its loss, steps the optimizer, logs, evaluates and checkpoints.
What differs between SFT and DPO is in ``phases.py``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import torch

from ..config import RECIPE_PHASES, TrainConfig
from ..data import collate
from .checkpoints import PhaseCheckpoints, complete, result_from_history, save_phase_output, write_json
from .device import batch_layout, check_device, load_model, make_accelerator
from .logps import LogpsModel
from .phases import PHASES, Phase, StepInputs
from .plan import check_pairs, ex_len, lr_lambda, phase_setting, plan_steps, set_seed, split_eval
from .reference import Reference, reference_table
from .state import RunState, TrainResult, call


def train(config: TrainConfig | dict, model_path: str | os.PathLike, pairs: Sequence[dict],
          out_dir: str | os.PathLike, callbacks=None, eval_pairs: Sequence[dict] | None = None) -> TrainResult:
    """Run ``config.recipe`` on ``pairs`` starting from the model folder ``model_path``.

    ``eval_pairs``: a held-out set to evaluate on (e.g. the export's own test split); when given,
    every row of ``pairs`` is trained on and ``eval_fraction`` is ignored. Otherwise
    ``eval_fraction`` of ``pairs`` is held out (seeded). In metrics, ``batch_ids`` are positions in
    ``pairs`` (eval rows are numbered from ``len(pairs)``).

    Raises ``ValueError`` (``ModelLoadError`` for the model folder) before any training compute
    when the inputs are unusable. Returns a ``TrainResult`` (also written to
    ``out_dir/result.json``). See the module docstring for ``out_dir``'s layout and resuming.
    """
    cfg = TrainConfig.from_dict(config) if isinstance(config, dict) else config
    cfg.validate()
    if cfg.recipe not in RECIPE_PHASES:
        raise ValueError(f"recipe {cfg.recipe!r} is not one of this trainer's ({', '.join(RECIPE_PHASES)}); "
                         f"the RLHF recipes run through training.rlhf.train_rlhf")
    check_device(cfg)
    if eval_pairs is not None:
        eval_pairs = list(eval_pairs)
        cfg = dataclasses.replace(cfg, eval_fraction=0.0)
    check_pairs(pairs, cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if complete(out / "final"):  # finished before (e.g. a retried task): report, do not retrain
        if (out / "result.json").exists():
            result = json.loads((out / "result.json").read_text())
            if result.get("status") == "succeeded":
                return TrainResult(**result)
        return result_from_history(out)

    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    run = RunState(cfg, model_path, pairs, out, callbacks)
    # the model folder and the data, validated before anything is trained
    model, tokenizer = load_model(cfg, model_path)
    if eval_pairs is not None:
        train_idx = list(range(len(pairs)))
        eval_idx = [len(pairs) + j for j in range(len(eval_pairs))]
        train_rows, eval_rows = list(pairs), eval_pairs
    else:
        train_idx, eval_idx = split_eval(len(pairs), cfg)
        train_rows = [pairs[i] for i in train_idx]
        eval_rows = [pairs[i] for i in eval_idx]
    run.num_rows = len(pairs) + len(eval_pairs or [])
    phases = list(RECIPE_PHASES[cfg.recipe])
    data = {}

    for phase in phases:  # errors name the row's position in the caller's list
        fn = PHASES[phase].tokenize
        tr = fn(tokenizer, train_rows, cfg.max_length, cfg.max_prompt_length, indices=train_idx)
        if eval_pairs is None:
            ev = fn(tokenizer, eval_rows, cfg.max_length, cfg.max_prompt_length, indices=eval_idx)
        else:
            try:
                ev = fn(tokenizer, eval_rows, cfg.max_length, cfg.max_prompt_length)
            except ValueError as exc:
                raise ValueError(f"eval_pairs: {exc}") from exc
            for ex, i in zip(ev, eval_idx):
                ex.index = i  # numbered after the training rows
        data[phase] = (tr, ev)
        cut = [e for e in tr + ev if e.truncated]
        if cut:
            run.log(truncation_line(phase, cut, len(tr) + len(ev), cfg))
        if cfg.loss_type == "robust" and phase == "dpo":
            tie = next((e for e in tr + ev if getattr(e, "tie", False)), None)
            if tie is not None:
                raise ValueError(f"pair {tie.index} is a tie, and robust DPO has no soft labels to train a tie "
                                 f"with; leave ties out or choose another loss_type")
        if not tr:
            raise ValueError(f"{phase}: no training rows left (SFT leaves ties out: a tie has no better "
                             f"response to learn)")

    run.accelerator = accelerator = make_accelerator(cfg)
    world = accelerator.num_processes
    plans = {ph: plan_steps(len(data[ph][0]), cfg, ph, world) for ph in phases}
    total_steps = sum(len(p) for p in plans.values())
    if run.main:
        write_json(out / "config.json", {"config": cfg.to_dict(), "model_path": str(model_path),
                                         "num_pairs": len(pairs), "train_indices": train_idx,
                                         "eval_indices": eval_idx, "total_steps": total_steps,
                                         "eval_source": "eval_pairs" if eval_pairs is not None else "split",
                                         "world_size": world})

    step_offset = 0
    start_path = str(model_path)
    phase_reports = []
    status = "succeeded"
    final_path = adapter_path = None
    for k, phase in enumerate(phases):
        last = k == len(phases) - 1
        phase_out = out / ("final" if last else phase)  # a phase's output starts the next one
        if not last and complete(phase_out):
            run.log(f"{phase}: already done ({phase_out}), skipping")
            step_offset += len(plans[phase])
            start_path = str(phase_out)
            model = None
            continue
        if model is None:
            model, tokenizer = load_model(cfg, start_path)
        report = run_phase(run, PHASES[phase], model, tokenizer, data[phase], plans[phase], step_offset,
                           total_steps, start_path, phase_out)
        model = None
        phase_reports.append(report)
        if report["status"] == "cancelled":
            status = "cancelled"
            break
        step_offset += len(plans[phase])
        start_path = str(phase_out)
        if last:
            final_path = str(phase_out)
            adapter_path = report.get("adapter_path")

    result = TrainResult(status=status, out_dir=str(out), final_path=final_path, adapter_path=adapter_path,
                         steps=run.last_metrics.get("step", step_offset), total_steps=total_steps,
                         metrics=run.last_metrics, eval_metrics=run.eval_metrics, phases=phase_reports)
    if run.main:
        write_json(out / "result.json", result.to_dict())
    accelerator.wait_for_everyone()
    return result


def truncation_line(phase: str, cut, total: int, cfg: TrainConfig) -> str:
    """The log line saying how many of a phase's rows were cut to fit ``max_length``."""
    limit = (f"prompts keep their last max_prompt_length={cfg.max_prompt_length} tokens"
             if cfg.max_prompt_length is not None else
             f"prompts keep their last tokens, at least {cfg.max_length // 2}")
    return (f"{phase}: {len(cut)} of {total} rows truncated to fit max_length={cfg.max_length} ({limit}, "
            f"then responses keep their first tokens); raise max_length to keep more")


#: A phase whose gradient norm is exactly 0 on each of its first this-many steps learns nothing.
ZERO_GRADIENT_STEPS = 3


class NothingToLearn(ValueError):
    """The gradient was 0 on every one of a phase's first steps: the run would "succeed" unchanged."""


class ZeroGradientGuard:
    """Fails a phase whose gradient norm is exactly 0 on each of its first ``ZERO_GRADIENT_STEPS``
    steps (all of them when the phase is shorter), instead of letting it finish "succeeded" with
    the model unchanged. A real gradient is never exactly 0; weights of 0 (the usual cause) or
    nothing trainable give exactly 0. Steps restored from a checkpoint are not checked again."""

    def __init__(self, phase: str, resumed_at: int, weighted: bool, steps: int = ZERO_GRADIENT_STEPS):
        self.phase, self.weighted, self.steps = phase, weighted, steps
        self.active = resumed_at == 0
        self.zeros = 0

    def check(self, phase_step: int, grad_norm, phase_steps: int | None = None) -> None:
        if not self.active:
            return
        norm = None if grad_norm is None else float(grad_norm)
        if norm is None or norm != 0.0:  # unknown (DeepSpeed may not report it) or a real gradient
            self.active = False
            return
        self.zeros += 1
        if self.zeros >= self.steps or (phase_steps is not None and phase_step >= phase_steps):
            cause = ("every pair in these batches weighs 0 (the export's weight column: annotators "
                     "excluded or with a weight override of 0 count 0 under the weight rule, "
                     "docs/quality.md). Fix the annotators' weights (include them, or raise their "
                     "overrides on the quality page) and export again, or set use_weights=false "
                     "to train every pair at weight 1"
                     if self.weighted else
                     "nothing in the model is trained (check lora_target_modules and the model folder)")
            raise NothingToLearn(
                f"{self.phase}: the gradient norm was 0 for the first {self.zeros} steps, so the model "
                f"learns nothing and no model is saved. Usual cause: {cause}.")


def run_phase(run: RunState, spec: Phase, model, tokenizer, data, plan, step_offset, total_steps, start_path,
              phase_out: Path) -> dict:
    """Train ``model`` through the steps of ``plan`` (resuming from the phase's latest checkpoint)
    and save it into ``phase_out``; returns ``{"phase", "status", "steps", "out", "adapter_path"?}``."""
    run.accelerator = acc = make_accelerator(run.cfg)  # fresh per phase (own checkpointed objects)
    cfg = run.cfg
    phase = spec.name
    train_ex, eval_ex = data
    lr = phase_setting(cfg, phase, "lr")
    pad_id = tokenizer.pad_token_id
    set_seed(cfg.seed + spec.seed_offset)
    run.pack, run.unpadded = batch_layout(cfg, acc.device)
    run.log(f"{phase}: {len(train_ex)} train / {len(eval_ex)} eval examples, {len(plan)} steps")

    model.config.use_cache = False
    model.to(acc.device)
    if cfg.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # reference log-probs (DPO): before LoRA wrapping and before any checkpoint is restored, the
    # model *is* the reference, so this is the one place they are computed
    reference = Reference()
    if spec.needs_reference:
        if cfg.precompute_ref_logps:
            reference.table = reference_table(run, model, train_ex + eval_ex, pad_id)
        elif not cfg.lora:
            reference.model = copy.deepcopy(model).eval().requires_grad_(False)

    if cfg.lora:
        from peft import LoraConfig, get_peft_model

        lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=list(cfg.lora_target_modules), task_type="CAUSAL_LM")
        model.config.name_or_path = os.path.abspath(start_path)
        model = get_peft_model(model, lcfg)
        if cfg.gradient_checkpointing:
            model.enable_input_require_grads()
    params = [p for p in model.parameters() if p.requires_grad]
    deepspeed = str(acc.distributed_type).endswith("DEEPSPEED")
    if deepspeed:  # no dataloader is prepared, so DeepSpeed must be told the batch geometry
        ds = acc.state.deepspeed_plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = cfg.batch_size
        ds["gradient_accumulation_steps"] = cfg.grad_accum
    # the fused kernel (CPU and CUDA) updates all tensors in one pass; plain AdamW elsewhere
    fused = not deepspeed and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    optimizer = torch.optim.AdamW(params, lr=lr, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay,
                                  fused=fused or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(cfg.lr_schedule, cfg.warmup_steps, len(plan)))
    wrapped, optimizer = acc.prepare(LogpsModel(model, cfg.logits_chunk_elements, run.unpadded), optimizer)
    acc.register_for_checkpointing(scheduler)

    # resume
    checkpoints = PhaseCheckpoints(run, phase, plan, train_ex, step_offset, total_steps)
    phase_step = checkpoints.restore()
    run.truncate_history(step_offset + phase_step)

    rank, world = acc.process_index, acc.num_processes
    zero_gradients = ZeroGradientGuard(phase, resumed_at=phase_step, weighted=cfg.use_weights)
    reference.peft_model = model if cfg.lora else None
    status = "succeeded"
    phase_start = time.time()
    steps_done_here = 0
    while phase_step < len(plan):
        if run.main and call(run.cb, "should_stop"):
            stop = torch.ones(1, device=acc.device)
        else:
            stop = torch.zeros(1, device=acc.device)
        if world > 1:
            stop = acc.reduce(stop, reduction="sum")
        if stop.item() > 0:
            checkpoints.save(phase_step, "cancelled")
            status = "cancelled"
            run.log(f"{phase}: cancelled at step {step_offset + phase_step}")
            break
        step_plan = plan[phase_step]
        t_step = time.time()
        wrapped.train()
        micro = [[train_ex[i] for i in m[rank::world]] for m in step_plan["micro"]]
        n_step = sum(len(m) for m in micro)
        tok_step = sum(ex_len(e) for m in micro for e in m)
        resp_step = sum(len(e.continuations[0]) for m in micro for e in m)
        inputs = StepInputs(cfg, n_step, resp_step,
                            lambda b: reference.batch_logps(b, acc, cfg, run.unpadded))
        agg: dict[str, float] = {}
        for j, examples in enumerate(micro):
            batch = collate(examples, pad_id, pack=run.pack).to(acc.device)
            sync = j == len(micro) - 1
            ctx = acc.no_sync(wrapped) if (not sync and world > 1 and not deepspeed) else nullcontext()
            with ctx:
                loss, stats = spec.micro_loss(wrapped, batch, inputs)
                acc.backward(loss)
            for key, v in stats.items():
                agg[key] = agg.get(key, 0.0) + v
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm else float("inf")
        grad_norm = acc.clip_grad_norm_(params, max_norm)
        zero_gradients.check(phase_step + 1, grad_norm, len(plan))
        cur_lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        phase_step += 1
        steps_done_here += 1
        step = step_offset + phase_step

        # metrics (averaged over processes)
        if world > 1:
            keys = sorted(agg)
            vec = acc.reduce(torch.tensor([agg[k] for k in keys], device=acc.device), reduction="sum")
            agg = dict(zip(keys, vec.tolist()))
        dt = time.time() - t_step
        tokens = int(agg.get("tokens", tok_step))
        metrics = {"phase": phase, "step": step, "total_steps": total_steps, "phase_step": phase_step,
                   "phase_total_steps": len(plan), "epoch": round(step_plan["epoch"], 4),
                   "lr": cur_lr, "grad_norm": float("nan") if grad_norm is None else float(grad_norm),
                   "tokens": tokens,
                   "tokens_per_s": tokens / max(dt, 1e-9), "step_time_s": dt,
                   "elapsed_s": time.time() - run.t0,
                   "eta_s": (time.time() - phase_start) / steps_done_here * (total_steps - step),
                   "batch_ids": [train_ex[i].index for m in step_plan["micro"] for i in m]}
        metrics.update(spec.finish_stats(agg, cfg))
        do_eval = eval_ex and ((cfg.eval_every and phase_step % cfg.eval_every == 0)
                               or phase_step == len(plan))
        if do_eval:
            ev = spec.evaluate(run, acc.unwrap_model(wrapped).model, eval_ex, pad_id, reference)
            metrics.update(ev)
            run.eval_metrics.setdefault(phase, {}).update(ev)
            if run.main:
                call(run.cb, "on_eval", ev)
        run.last_metrics = metrics
        if phase_step % max(1, cfg.log_every) == 0 or phase_step == len(plan) or do_eval:
            run.emit(metrics)
        if cfg.checkpoint_every and phase_step % cfg.checkpoint_every == 0 and phase_step < len(plan):
            checkpoints.save(phase_step, "periodic")

    report = {"phase": phase, "status": status, "steps": phase_step, "out": None}
    if status == "succeeded":
        report.update(save_phase_output(run, wrapped, tokenizer, phase_out, start_path, phase))
    acc.free_memory()
    return report
