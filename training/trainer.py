"""SFT and (weighted, soft-label) DPO on any local causal-LM folder, in one readable file.

The public surface is three things::

    from training.trainer import TrainConfig, train, Callbacks
    result = train(TrainConfig(recipe="sft+dpo", max_steps=100), "var/models/default", pairs,
                   "var/runs/42", callbacks=my_callbacks)

``pairs`` are the calibrated export's rows ``{"prompt", "chosen", "rejected", "weight"?, "p_chosen"?}``.
``train`` validates everything it can before any compute (too few pairs, a model folder that
does not load, prompts longer than ``max_length``, CUDA asked for but absent), then runs the
recipe's phases:

* ``sft``: next-token loss on the chosen responses (response tokens only);
* ``dpo``: a DPO-family loss from ``training.losses`` against a frozen reference;
* ``sft+dpo``: SFT, save ``out_dir/sft``, then DPO from it with the SFT model as reference.

Layout of ``out_dir`` (everything the Django side needs to show and resume a run)::

    config.json            the TrainConfig and inputs of this run
    metrics.jsonl          one JSON object per optimizer step (what ``on_step`` received)
    checkpoints/<phase>/step-000050/   accelerate state (model, optimizer, RNG), scheduler,
                           trainer_state.json (step, phase, data-order seed); the last
                           ``keep_checkpoints`` are kept
    cache/ref_logps-*.pt   precomputed reference log-probs, keyed by data + model hash
    sft/                   (sft+dpo) the SFT model, save_pretrained, the DPO phase starts here
    final/                 the trained model + tokenizer (save_pretrained; LoRA merged into it)
    adapter/               (LoRA only) the last phase's PEFT adapter alone, on top of its base
    result.json            status, steps, final and eval metrics, paths (written last)

Calling ``train`` again with the same ``out_dir`` resumes from the last checkpoint, with the same
data order (the order of epoch ``e`` is a pure function of ``seed`` and ``e``), and ends at the same
step count; a finished ``out_dir`` just returns its result.

Efficiency: each pair is one ``[prompt | chosen | rejected]`` unit (``training.data``), so the
prompt is computed once and chosen and rejected go through one forward; on a GPU the units are
packed into as few rows as possible, padded to the batch's longest; on a CPU each unit runs at its
own length with no padding at all (``pack`` / ``unpadded``); only the response positions' hidden
states are projected through the LM head (in chunks that are recomputed on backward when large),
so full ``(batch, length, vocab)`` logits never exist; reference log-probs are computed once
before training (``precompute_ref_logps``, cached on disk) so no reference model is kept or run
during training; AdamW uses the fused kernel.
Multi-GPU: ``accelerate launch --config_file training/accelerate_configs/ddp.yaml ...`` (see that
folder); ``Accelerator`` does device placement, DDP/FSDP/DeepSpeed and bf16 autocast.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.utils.checkpoint

from . import losses
from .config import RECIPES, TrainConfig  # noqa: F401 - TrainConfig is part of this module's API
from .data import (
    Batch,
    attention_mask_4d,
    collate,
    data_fingerprint,
    tokenize_pairs,
    tokenize_sft,
)
from .tiny_model import ModelLoadError, load_model_and_tokenizer


class Callbacks:
    """Hooks ``train`` calls on the main process. Subclass, or pass any object with some of
    these methods (missing ones are skipped). Exceptions raised in a hook propagate (the last
    checkpoint stays on disk, so a later ``train`` call resumes)."""

    def on_step(self, metrics: dict) -> None:
        """After every ``log_every``-th optimizer step. Keys: see ``METRIC_KEYS``."""

    def on_eval(self, metrics: dict) -> None:
        """After each held-out evaluation (keys prefixed ``eval_``)."""

    def should_stop(self) -> bool:
        """Polled before every step: True cancels (a checkpoint is saved; status 'cancelled')."""
        return False

    def on_checkpoint(self, path: str) -> None:
        """After a checkpoint folder is complete on disk."""

    def on_log(self, message: str) -> None:
        """Human-readable progress lines (phase starts, reference pre-computation, saves)."""


METRIC_KEYS = {
    "common": ["phase", "step", "total_steps", "phase_step", "phase_total_steps", "epoch", "loss", "lr",
               "grad_norm", "tokens", "tokens_per_s", "step_time_s", "elapsed_s", "eta_s", "batch_ids"],
    "dpo": ["reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward", "chosen_logps",
            "rejected_logps", "kl_to_ref", "weight_mean"],
    "sft": ["ppl"],
}


@dataclass
class TrainResult:
    status: str  # "succeeded" | "cancelled"
    out_dir: str
    final_path: str | None
    adapter_path: str | None
    steps: int
    total_steps: int
    metrics: dict = field(default_factory=dict)  # the last on_step metrics
    eval_metrics: dict = field(default_factory=dict)  # last eval of each phase, eval_* keys
    phases: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ============================================================================================
# Log-probabilities: backbone once, LM head only on response positions
# ============================================================================================


def _hf_parts(model):
    """(backbone, lm_head) of a causal LM, through PEFT and accelerate wrappers."""
    inner = model
    if hasattr(inner, "get_base_model"):  # PEFT
        inner = inner.get_base_model()
    backbone = inner.get_decoder() if hasattr(inner, "get_decoder") else inner.base_model
    return inner, backbone, inner.get_output_embeddings()


def _token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if logits.dtype in (torch.float16, torch.bfloat16):  # log-softmax in at least float32
        logits = logits.float()
    return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def _head_logps(lm_head, hidden, targets):
    return _token_logps(lm_head(hidden), targets)


def chunked_token_logps(hidden: torch.Tensor, lm_head: nn.Module, targets: torch.Tensor,
                        chunk_elements: int = 2**26) -> torch.Tensor:
    """``log softmax(lm_head(hidden))[targets]`` for ``hidden`` of shape ``(N, H)``.

    At most ``chunk_elements`` logits exist at a time; with gradients enabled and more than one
    chunk, each chunk is checkpointed (its logits are recomputed during backward instead of kept).
    """
    vocab = lm_head.weight.shape[0]
    chunk = max(1, chunk_elements // vocab)
    if hidden.shape[0] <= chunk:
        return _head_logps(lm_head, hidden, targets)
    grad = torch.is_grad_enabled()
    out = []
    for h, t in zip(hidden.split(chunk), targets.split(chunk)):
        if grad:
            out.append(torch.utils.checkpoint.checkpoint(_head_logps, lm_head, h, t, use_reentrant=False))
        else:
            out.append(_head_logps(lm_head, h, t))
    return torch.cat(out)


def sequence_logps(model, batch: Batch, chunk_elements: int = 2**26, unpadded: bool = False) -> torch.Tensor:
    """Summed response log-probs, shape ``(num_examples, num_continuations)``, of a collated batch
    (``[:, 0]`` chosen, ``[:, 1]`` rejected for pairs).

    ``unpadded``: run the backbone one row at a time, each trimmed to its real length, instead of
    one padded ``(rows, length)`` forward. The same numbers with no compute spent on padding; the
    faster choice on a CPU (where a batch brings no extra parallelism), not on a GPU.
    """
    inner, backbone, lm_head = _hf_parts(model)
    impl = getattr(inner.config, "_attn_implementation", "sdpa")
    if impl not in ("sdpa", "eager"):
        raise ValueError(f"the shared-prompt layout needs attn_implementation 'sdpa' or 'eager', "
                         f"not {impl!r}")
    mask_dtype = None if impl == "sdpa" else lm_head.weight.dtype
    if not unpadded or batch.input_ids.shape[0] == 1:
        mask = attention_mask_4d(batch.segment_ids, batch.unit_ids, dtype=mask_dtype)
        hidden = backbone(input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids,
                          use_cache=False).last_hidden_state
        hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch.target_src)
    else:
        rows, width = batch.input_ids.shape
        real = (batch.segment_ids >= 0).sum(dim=1).tolist()  # padding only ever trails a row
        outs = []
        for r, n in enumerate(real):
            row = slice(r, r + 1)
            mask = attention_mask_4d(batch.segment_ids[row, :n], batch.unit_ids[row, :n], dtype=mask_dtype)
            out = backbone(input_ids=batch.input_ids[row, :n], attention_mask=mask,
                           position_ids=batch.position_ids[row, :n], use_cache=False)
            outs.append(out.last_hidden_state[0])
        starts = torch.tensor([0] + real[:-1], device=batch.target_src.device).cumsum(0)
        src = starts[batch.target_src // width] + batch.target_src % width
        hidden = torch.cat(outs).index_select(0, src)
    token_logps = chunked_token_logps(hidden, lm_head, batch.target_ids, chunk_elements)
    n_seq = batch.num_examples * batch.num_continuations
    sums = torch.zeros(n_seq, dtype=token_logps.dtype, device=token_logps.device)
    sums = sums.index_add(0, batch.target_seq, token_logps)
    return sums.view(batch.num_examples, batch.num_continuations)


class LogpsModel(nn.Module):
    """The module ``accelerator.prepare`` wraps (DDP/FSDP need the whole computation inside one
    ``forward``): a causal LM whose forward returns per-sequence response log-probs."""

    def __init__(self, model: nn.Module, chunk_elements: int = 2**26, unpadded: bool = False):
        super().__init__()
        self.model = model
        self.chunk_elements = chunk_elements
        self.unpadded = unpadded
        self._no_split_modules = getattr(model, "_no_split_modules", None)

    def forward(self, batch: Batch) -> torch.Tensor:
        return sequence_logps(self.model, batch, self.chunk_elements, self.unpadded)


# ============================================================================================
# Small helpers: seeds, schedules, data order, hashing, files
# ============================================================================================


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass


def lr_lambda(schedule: str, warmup: int, total: int):
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        progress = min(max(progress, 0.0), 1.0)
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0 - progress

    return f


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool, salt: str = "") -> list[int]:
    """The data order of one epoch: a pure function of (seed, epoch), so a resumed run replays it."""
    if not shuffle:
        return list(range(n))
    digest = hashlib.sha256(f"{seed}:{epoch}:{salt}".encode()).hexdigest()
    g = torch.Generator().manual_seed(int(digest[:15], 16))
    return torch.randperm(n, generator=g).tolist()


def plan_steps(n: int, cfg: TrainConfig, phase: str, world: int = 1) -> list[dict]:
    """Every optimizer step of a phase: ``{"epoch": float, "micro": [[positions], ...]}``.

    A micro-batch holds ``batch_size * world`` positions (process ``r`` takes ``[r::world]``); a step
    holds ``grad_accum`` micro-batches; the last step of an epoch may be smaller. With ``max_steps``
    the epochs repeat (each reshuffled) until that many steps.
    """
    max_steps = cfg.sft_max_steps if (phase == "sft" and cfg.sft_max_steps) else cfg.max_steps
    epochs = cfg.sft_epochs if (phase == "sft" and cfg.sft_epochs) else cfg.epochs
    micro_size = cfg.batch_size * world
    per_step = micro_size * cfg.grad_accum
    steps_per_epoch = math.ceil(n / per_step)
    total = max_steps if max_steps else max(1, math.ceil(epochs * steps_per_epoch))
    plan: list[dict] = []
    epoch = 0
    while len(plan) < total:
        order = epoch_order(n, cfg.seed, epoch, cfg.shuffle, salt=phase)
        for s in range(steps_per_epoch):
            if len(plan) >= total:
                break
            chunk = order[s * per_step:(s + 1) * per_step]
            micro = [chunk[i:i + micro_size] for i in range(0, len(chunk), micro_size)]
            if world > 1:  # every process needs the same number of examples: wrap around
                micro = [m + order[:(-len(m)) % world] for m in micro]
            plan.append({"epoch": epoch + (s + 1) / steps_per_epoch, "micro": micro})
        epoch += 1
    return plan


def model_fingerprint(model: nn.Module) -> str:
    """A cheap content hash of a model's parameters (a strided sample of every tensor)."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in sorted(model.state_dict().items()):
            flat = p.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 2048)].float().cpu()
            h.update(name.encode())
            h.update(str(tuple(p.shape)).encode())
            h.update(sample.numpy().tobytes())
    return h.hexdigest()


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def _call(callbacks, name, *args):
    fn = getattr(callbacks, name, None) if callbacks is not None else None
    if fn is not None:
        return fn(*args)
    return None


def _complete(path: Path) -> bool:
    return (path / ".complete").exists()


# ============================================================================================
# Validation (before any compute)
# ============================================================================================


def _check_device(cfg: TrainConfig) -> None:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but no CUDA GPU is available on this worker")
    if cfg.precision == "bf16" and cfg.device != "cpu" and torch.cuda.is_available() \
            and not torch.cuda.is_bf16_supported():
        raise ValueError("precision='bf16' was requested but this GPU does not support bfloat16")


def _check_pairs(pairs, cfg: TrainConfig) -> None:
    if not isinstance(pairs, Sequence) or isinstance(pairs, str | bytes):
        raise ValueError("pairs must be a list of dicts with prompt/chosen/rejected")
    n_eval = _n_eval(len(pairs), cfg)
    if len(pairs) - n_eval < cfg.min_pairs:
        raise ValueError(
            f"need at least {cfg.min_pairs} training pairs, got {len(pairs)} pairs"
            + (f" ({n_eval} held out for eval)" if n_eval else "")
        )


def _n_eval(n: int, cfg: TrainConfig) -> int:
    if cfg.eval_fraction <= 0 or n < 2:
        return 0
    return max(1, int(round(n * cfg.eval_fraction)))


def split_eval(n: int, cfg: TrainConfig) -> tuple[list[int], list[int]]:
    """Deterministic (seeded) train / eval split of ``range(n)``."""
    idx = list(range(n))
    random.Random(cfg.seed).shuffle(idx)
    n_eval = _n_eval(n, cfg)
    return sorted(idx[n_eval:]), sorted(idx[:n_eval])


# ============================================================================================
# The trainer
# ============================================================================================


class _Run:
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
        self.eval_metrics: dict = {}
        self.last_metrics: dict = {}
        self.pack, self.unpadded = True, False  # the batch layout, set per phase (see _layout)
        self.num_rows = len(pairs)  # rows addressable by example.index (pairs + eval_pairs)

    # -- logging ------------------------------------------------------------------------------
    @property
    def main(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process

    def log(self, msg: str) -> None:
        if self.main:
            _call(self.cb, "on_log", msg)

    def emit(self, metrics: dict) -> None:
        if not self.main:
            return
        with open(self.history_path, "a") as f:
            f.write(json.dumps(metrics) + "\n")
        _call(self.cb, "on_step", metrics)

    def truncate_history(self, upto_step: int) -> None:
        if not self.main or not self.history_path.exists():
            return
        keep = [ln for ln in self.history_path.read_text().splitlines()
                if ln.strip() and json.loads(ln).get("step", 0) <= upto_step]
        self.history_path.write_text("".join(ln + "\n" for ln in keep))


def resolve_precision(cfg: TrainConfig) -> str:
    """'bf16' or 'fp32': "auto" is bf16 on a bf16-capable GPU, fp32 otherwise."""
    if cfg.precision != "auto":
        return cfg.precision
    use_cuda = cfg.device != "cpu" and torch.cuda.is_available()
    return "bf16" if use_cuda and torch.cuda.is_bf16_supported() else "fp32"


def _layout(cfg: TrainConfig, device) -> tuple[bool, bool]:
    """(pack, unpadded) for ``device``. On a CPU a batch buys no parallelism, so each unit runs
    alone at its own length (no padding at all); on a GPU units are packed into as few padded
    rows as possible and run as one batch."""
    cpu = torch.device(device).type == "cpu"
    unpadded = cpu if cfg.unpadded is None else cfg.unpadded
    pack = (not unpadded) if cfg.pack is None else cfg.pack
    return pack, unpadded


def _make_accelerator(cfg: TrainConfig):
    from accelerate import Accelerator

    mp = "bf16" if resolve_precision(cfg) == "bf16" else "no"
    return Accelerator(cpu=(cfg.device == "cpu"), mixed_precision=mp)


def _load(cfg: TrainConfig, path):
    """Weights in fp32 (the optimizer's master copy; bf16 is autocast), except a frozen LoRA base
    under bf16, which is loaded in bf16 to halve its memory."""
    dtype = torch.bfloat16 if (cfg.lora and resolve_precision(cfg) == "bf16") else torch.float32
    return load_model_and_tokenizer(path, dtype=dtype)


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
    _check_device(cfg)
    if eval_pairs is not None:
        eval_pairs = list(eval_pairs)
        cfg = dataclasses.replace(cfg, eval_fraction=0.0)
    _check_pairs(pairs, cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if _complete(out / "final"):  # finished before (e.g. a retried task): report, do not retrain
        if (out / "result.json").exists():
            result = json.loads((out / "result.json").read_text())
            if result.get("status") == "succeeded":
                return TrainResult(**result)
        return _result_from_history(out)

    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    run = _Run(cfg, model_path, pairs, out, callbacks)
    # the model folder and the data, validated before anything is trained
    model, tokenizer = _load(cfg, model_path)
    if eval_pairs is not None:
        train_idx = list(range(len(pairs)))
        eval_idx = [len(pairs) + j for j in range(len(eval_pairs))]
        train_rows, eval_rows = list(pairs), eval_pairs
    else:
        train_idx, eval_idx = split_eval(len(pairs), cfg)
        train_rows = [pairs[i] for i in train_idx]
        eval_rows = [pairs[i] for i in eval_idx]
    run.num_rows = len(pairs) + len(eval_pairs or [])
    phases = ["sft", "dpo"] if cfg.recipe == "sft+dpo" else [cfg.recipe]
    data = {}

    for phase in phases:  # errors name the row's position in the caller's list
        fn = tokenize_sft if phase == "sft" else tokenize_pairs
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

    run.accelerator = accelerator = _make_accelerator(cfg)
    world = accelerator.num_processes
    plans = {ph: plan_steps(len(data[ph][0]), cfg, ph, world) for ph in phases}
    total_steps = sum(len(p) for p in plans.values())
    if run.main:
        _write_json(out / "config.json", {"config": cfg.to_dict(), "model_path": str(model_path),
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
        phase_out = out / ("final" if last else "sft")
        if not last and _complete(phase_out):
            run.log(f"{phase}: already done ({phase_out}), skipping")
            step_offset += len(plans[phase])
            start_path = str(phase_out)
            model = None
            continue
        if model is None:
            model, tokenizer = _load(cfg, start_path)
        report = _run_phase(run, phase, model, tokenizer, data[phase], plans[phase], step_offset, total_steps,
                            start_path, phase_out, last)
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
        _write_json(out / "result.json", result.to_dict())
    accelerator.wait_for_everyone()
    return result


def _result_from_history(out: Path) -> TrainResult:
    """The result of a run whose final model is saved but whose result.json was never written."""
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()] \
        if (out / "metrics.jsonl").exists() else []
    last = lines[-1] if lines else {}
    evals = {}
    for m in lines:
        evals.update({k: v for k, v in m.items() if k.startswith("eval_")})
    adapter = out / "adapter"
    result = TrainResult(status="succeeded", out_dir=str(out), final_path=str(out / "final"),
                         adapter_path=str(adapter) if adapter.exists() else None, steps=last.get("step", 0),
                         total_steps=last.get("total_steps", 0), metrics=last, eval_metrics=evals)
    _write_json(out / "result.json", result.to_dict())
    return result


def _checkpoint_dirs(root: Path) -> list[Path]:
    if not root.exists():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and _complete(p)),
                  key=lambda p: int(p.name.split("-")[1]))


def _run_phase(run: _Run, phase: str, model, tokenizer, data, plan, step_offset, total_steps, start_path,
               phase_out: Path, last_phase: bool) -> dict:
    run.accelerator = acc = _make_accelerator(run.cfg)  # fresh per phase (own checkpointed objects)
    cfg = run.cfg
    train_ex, eval_ex = data
    lr = cfg.sft_lr if (phase == "sft" and cfg.sft_lr) else cfg.lr
    ckpt_root = run.out / "checkpoints" / phase
    pad_id = tokenizer.pad_token_id
    set_seed(cfg.seed + (1 if phase == "dpo" else 0))
    run.pack, run.unpadded = _layout(cfg, acc.device)
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
    ref_table = None
    ref_model = None
    if phase == "dpo":
        if cfg.precompute_ref_logps:
            ref_table = _reference_table(run, model, train_ex + eval_ex, pad_id, start_path)
        elif not cfg.lora:
            ref_model = copy.deepcopy(model).eval().requires_grad_(False)

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
    phase_step = 0
    ckpts = _checkpoint_dirs(ckpt_root)
    if run.main and ckpt_root.exists():  # drop half-written checkpoints of a crashed save
        for p in ckpt_root.iterdir():
            if p.is_dir() and not _complete(p):
                shutil.rmtree(p, ignore_errors=True)
    if ckpts:
        state = json.loads((ckpts[-1] / "trainer_state.json").read_text())
        if state.get("plan_fingerprint") != _plan_fingerprint(plan, train_ex, cfg):
            raise ValueError(f"{ckpts[-1]} belongs to a run with different data or settings; "
                             f"use a fresh out_dir")
        acc.load_state(str(ckpts[-1]))
        phase_step = state["phase_step"]
        run.log(f"{phase}: resumed from {ckpts[-1]} at step {step_offset + phase_step}")
    run.truncate_history(step_offset + phase_step)

    def save_checkpoint(reason: str) -> None:
        path = ckpt_root / f"step-{phase_step:06d}"
        if _complete(path):
            return
        if run.main:
            shutil.rmtree(path, ignore_errors=True)
        acc.wait_for_everyone()
        acc.save_state(str(path), safe_serialization=False)
        if run.main:
            _write_json(path / "trainer_state.json", {
                "phase": phase, "phase_step": phase_step, "step": step_offset + phase_step,
                "total_steps": total_steps, "seed": cfg.seed, "reason": reason,
                "plan_fingerprint": _plan_fingerprint(plan, train_ex, cfg),
                "next_batch_ids": _step_ids(plan, phase_step, train_ex) if phase_step < len(plan) else [],
            })
            (path / ".complete").touch()
            for old in _checkpoint_dirs(ckpt_root)[:-cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        run.log(f"{phase}: checkpoint {path} ({reason})")
        if run.main:
            _call(run.cb, "on_checkpoint", str(path))

    rank, world = acc.process_index, acc.num_processes
    peft_model = model if cfg.lora else None
    status = "succeeded"
    phase_start = time.time()
    steps_done_here = 0
    while phase_step < len(plan):
        if run.main and _call(run.cb, "should_stop"):
            stop = torch.ones(1, device=acc.device)
        else:
            stop = torch.zeros(1, device=acc.device)
        if world > 1:
            stop = acc.reduce(stop, reduction="sum")
        if stop.item() > 0:
            save_checkpoint("cancelled")
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
        agg: dict[str, float] = {}
        for j, examples in enumerate(micro):
            batch = collate(examples, pad_id, pack=run.pack).to(acc.device)
            sync = j == len(micro) - 1
            ctx = acc.no_sync(wrapped) if (not sync and world > 1 and not deepspeed) else _null()
            with ctx:
                if phase == "sft":
                    loss, stats = _sft_micro(wrapped, batch, resp_step, cfg)
                else:
                    ref = _micro_ref(batch, ref_table, ref_model, peft_model, acc, cfg, run.unpadded)
                    loss, stats = _dpo_micro(wrapped, batch, ref, cfg, n_step)
                acc.backward(loss)
            for key, v in stats.items():
                agg[key] = agg.get(key, 0.0) + v
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm else float("inf")
        grad_norm = acc.clip_grad_norm_(params, max_norm)
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
        metrics.update(_finish_stats(phase, agg, cfg))
        do_eval = eval_ex and ((cfg.eval_every and phase_step % cfg.eval_every == 0)
                               or phase_step == len(plan))
        if do_eval:
            ev = _evaluate(run, phase, wrapped, eval_ex, ref_table, ref_model, peft_model, pad_id)
            metrics.update(ev)
            run.eval_metrics.update(ev)
            if run.main:
                _call(run.cb, "on_eval", ev)
        run.last_metrics = metrics
        if phase_step % max(1, cfg.log_every) == 0 or phase_step == len(plan) or do_eval:
            run.emit(metrics)
        if cfg.checkpoint_every and phase_step % cfg.checkpoint_every == 0 and phase_step < len(plan):
            save_checkpoint("periodic")

    report = {"phase": phase, "status": status, "steps": phase_step, "out": None}
    if status == "succeeded":
        report.update(_save_phase_output(run, wrapped, tokenizer, phase_out, start_path, phase))
    acc.free_memory()
    return report


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def ex_len(ex) -> int:
    return len(ex.prompt_ids) + sum(len(c) for c in ex.continuations)


def _step_ids(plan, phase_step, examples) -> list[int]:
    return [examples[i].index for m in plan[phase_step]["micro"] for i in m]


# settings that may change between a crash and its resume without invalidating the checkpoint
_RUNTIME_FIELDS = {"checkpoint_every", "keep_checkpoints", "log_every", "cpu_threads", "eval_every",
                   "eval_batch_size", "ref_cache_dir", "min_pairs"}


def _plan_fingerprint(plan, examples, cfg: TrainConfig | None = None) -> str:
    """Hash of the data order, the tokenized data and the training settings of a phase."""
    h = hashlib.sha256()
    h.update(json.dumps([s["micro"] for s in plan]).encode())
    h.update(data_fingerprint(examples).encode())
    if cfg is not None:
        h.update(json.dumps({k: v for k, v in cfg.to_dict().items() if k not in _RUNTIME_FIELDS},
                            sort_keys=True).encode())
    return h.hexdigest()


def _sft_micro(wrapped, batch: Batch, resp_step: int, cfg: TrainConfig):
    """Per-token NLL, normalised by the response tokens of the whole optimizer step (so gradient
    accumulation gives the same gradient as one big batch)."""
    logps = wrapped(batch)[:, 0]
    weights = batch.weights if cfg.use_weights else None
    loss = losses.sft_sequence_loss(logps, batch.lengths[:, 0].sum(), weights)
    loss = loss * (batch.lengths[:, 0].sum().float() / max(resp_step, 1))
    stats = {"nll_sum": float(-logps.detach().sum()), "resp_tokens": float(batch.lengths[:, 0].sum()),
             "tokens": float(batch.num_tokens)}
    return loss, stats


def _dpo_micro(wrapped, batch: Batch, ref: torch.Tensor, cfg: TrainConfig, n_step: int):
    logps = wrapped(batch)
    loss, stats = dpo_batch_loss(logps, ref, batch, cfg)
    scaled = loss * (batch.num_examples / n_step)  # mean over the step, not over the micro-batch
    stats = {k: float(v) for k, v in stats.items()}
    stats["tokens"] = float(batch.num_tokens)
    return scaled, stats


def dpo_batch_loss(logps: torch.Tensor, ref: torch.Tensor, batch: Batch, cfg: TrainConfig):
    """The configured DPO loss of a collated batch; returns ``(loss, summed stats)``."""
    weights = batch.weights if cfg.use_weights else None
    p_chosen = None
    if cfg.use_soft_labels:
        p = batch.p_chosen
        p_chosen = torch.where(torch.isnan(p), torch.ones_like(p), p)
    lengths = batch.lengths.to(logps.dtype)
    loss, cr, rr = losses.dpo_loss(
        logps[:, 0], logps[:, 1], ref[:, 0].to(logps.dtype), ref[:, 1].to(logps.dtype), beta=cfg.beta,
        loss_type=cfg.loss_type, label_smoothing=cfg.label_smoothing, weights=weights, p_chosen=p_chosen,
        chosen_lengths=lengths[:, 0], rejected_lengths=lengths[:, 1])
    d = logps.detach()
    stats = {
        "n": batch.num_examples,
        "loss_sum": float(loss.detach()) * batch.num_examples,
        "acc_sum": float((cr > rr).float().sum()),
        "margin_sum": float((cr - rr).sum()),
        "chosen_reward_sum": float(cr.sum()),
        "rejected_reward_sum": float(rr.sum()),
        "chosen_logps_sum": float(d[:, 0].sum()),
        "rejected_logps_sum": float(d[:, 1].sum()),
        "weight_sum": float(batch.weights.sum()),
    }
    return loss, stats


def _finish_stats(phase: str, agg: dict, cfg: TrainConfig) -> dict:
    if phase == "sft":
        loss = agg["nll_sum"] / max(agg["resp_tokens"], 1.0)
        return {"loss": loss, "ppl": math.exp(min(loss, 50.0))}
    n = max(agg["n"], 1.0)
    return {
        "loss": agg["loss_sum"] / n,
        "reward_accuracy": agg["acc_sum"] / n,
        "reward_margin": agg["margin_sum"] / n,
        "chosen_reward": agg["chosen_reward_sum"] / n,
        "rejected_reward": agg["rejected_reward_sum"] / n,
        "chosen_logps": agg["chosen_logps_sum"] / n,
        "rejected_logps": agg["rejected_logps_sum"] / n,
        # mean policy-minus-reference log-ratio of the batch's responses (a data-based proxy of
        # the KL to the reference; exact KL would need samples from the policy)
        "kl_to_ref": (agg["chosen_reward_sum"] + agg["rejected_reward_sum"]) / (2 * cfg.beta * n),
        "weight_mean": agg["weight_sum"] / n,
    }


@torch.no_grad()
def _micro_ref(batch: Batch, ref_table, ref_model, peft_model, acc, cfg: TrainConfig,
               unpadded: bool = False) -> torch.Tensor:
    if ref_table is not None:
        return ref_table[torch.tensor(batch.indices)].to(acc.device)
    with acc.autocast():
        if ref_model is not None:
            return sequence_logps(ref_model, batch, cfg.logits_chunk_elements, unpadded).float()
        with peft_model.disable_adapter():
            return sequence_logps(peft_model, batch, cfg.logits_chunk_elements, unpadded).float()


@torch.no_grad()
def compute_logps_table(model, examples, pad_id, batch_size, acc, chunk_elements=2**26, pack=True,
                        unpadded=False) -> dict:
    """Summed response log-probs of every example, ``{example.index: tensor(K)}`` (no grad)."""
    was_training = model.training
    model.eval()
    out = {}
    rank, world = acc.process_index, acc.num_processes
    mine = examples[rank::world]
    for s in range(0, len(mine), batch_size):
        chunk = mine[s:s + batch_size]
        batch = collate(chunk, pad_id, pack=pack).to(acc.device)
        with acc.autocast():
            lp = sequence_logps(model, batch, chunk_elements, unpadded).float().cpu()
        for ex, row in zip(chunk, lp):
            out[ex.index] = row
    if world > 1:
        from accelerate.utils import gather_object

        merged = {}
        for part in gather_object([out]):
            merged.update(part)
        out = merged
    model.train(was_training)
    return out


def _reference_table(run: _Run, model, examples, pad_id, start_path) -> torch.Tensor:
    """Reference log-probs for every pair, computed once and cached in a file keyed by a hash of
    the tokenized data and the reference model's weights."""
    cfg, acc = run.cfg, run.accelerator
    key = data_fingerprint(examples, {"model": model_fingerprint(model), "chunk": "v1"})[:24]
    cache_dir = Path(cfg.ref_cache_dir) if cfg.ref_cache_dir else run.out / "cache"
    path = cache_dir / f"ref_logps-{key}.pt"
    n = run.num_rows
    if path.exists():
        run.log(f"dpo: reference log-probs from cache {path}")
        return torch.load(path)
    t = time.time()
    bs = cfg.eval_batch_size or max(cfg.batch_size, 8)
    logps = compute_logps_table(model, examples, pad_id, bs, acc, cfg.logits_chunk_elements, run.pack,
                                run.unpadded)
    table = torch.full((n, 2), float("nan"))
    for i, row in logps.items():
        table[i] = row
    if run.main:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(table, tmp)
        os.replace(tmp, path)
    run.log(f"dpo: reference log-probs for {len(examples)} pairs in {time.time() - t:.1f}s -> {path}")
    return table


@torch.no_grad()
def _evaluate(run: _Run, phase, wrapped, eval_ex, ref_table, ref_model, peft_model, pad_id) -> dict:
    cfg, acc = run.cfg, run.accelerator
    unwrapped = acc.unwrap_model(wrapped).model
    bs = cfg.eval_batch_size or max(cfg.batch_size, 8)
    layout = (run.pack, run.unpadded)
    pol = compute_logps_table(unwrapped, eval_ex, pad_id, bs, acc, cfg.logits_chunk_elements, *layout)
    if phase == "sft":
        nll = -sum(float(pol[e.index][0]) for e in eval_ex)
        toks = sum(len(e.response_ids) for e in eval_ex)
        return {"eval_loss": nll / max(toks, 1), "eval_ppl": math.exp(min(nll / max(toks, 1), 50.0))}
    if ref_table is not None:
        ref = {e.index: ref_table[e.index] for e in eval_ex}
    elif ref_model is not None:
        ref = compute_logps_table(ref_model, eval_ex, pad_id, bs, acc, cfg.logits_chunk_elements, *layout)
    else:
        with peft_model.disable_adapter():
            ref = compute_logps_table(unwrapped, eval_ex, pad_id, bs, acc, cfg.logits_chunk_elements, *layout)
    policy = torch.stack([pol[e.index] for e in eval_ex])
    reference = torch.stack([ref[e.index] for e in eval_ex]).float()
    batch = collate(eval_ex, pad_id, pack=False)  # only for weights / p_chosen / lengths
    loss, stats = dpo_batch_loss(policy.float(), reference, batch, cfg)
    out = _finish_stats("dpo", {k: float(v) for k, v in stats.items()}, cfg)
    return {f"eval_{k}": v for k, v in out.items() if k != "weight_mean"}


def _save_phase_output(run: _Run, wrapped, tokenizer, phase_out: Path, start_path: str, phase: str) -> dict:
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
        _write_json(phase_out / "prefloop_training.json", {
            "phase": phase, "base_model": os.path.abspath(start_path), "recipe": cfg.recipe,
            "config": cfg.to_dict(), "lora": cfg.lora,
            "lora_note": ("LoRA adapter merged into these weights; the adapter alone is in ../adapter"
                          if cfg.lora else None),
            "eval": {k: v for k, v in run.eval_metrics.items()},
        })
        (phase_out / ".complete").touch()
        run.log(f"{phase}: saved {phase_out}")
    acc.wait_for_everyone()
    return report


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


if __name__ == "__main__":
    main()


__all__ = ["TrainConfig", "TrainResult", "Callbacks", "train", "sequence_logps", "chunked_token_logps",
           "LogpsModel", "plan_steps", "epoch_order", "split_eval", "load_pairs_jsonl", "ModelLoadError",
           "METRIC_KEYS"]
