"""The reward model: Bradley-Terry training on a calibrated export, calibration, normalisation.

``train_reward_model(cfg, model_path, pairs, out_dir)`` puts a one-output score head on a causal
LM's trunk (``AutoModelForSequenceClassification``, ``num_labels=1``; with ``cfg.lora`` a LoRA
adapter whose score head is fully trained, merged into the saved weights) and minimises
``training.losses.bt_reward_loss``:

* per-pair **weights** (the export's ``weight``, ``use_weights``) and soft labels (``p_chosen``,
  ``use_soft_labels``), reduced as ``mean(w * l)`` like DPO;
* optional **margins** ``m`` in ``-logsigmoid(r_c - r_r - m)`` (Llama 2, Touvron et al. 2023, sec.
  3.2.2): ``rm_margin="strength"`` takes the row's ``strength`` (prefloop's 1 slightly / 2
  clearly / 3 much better; a mean over judgments is fine) as ``m = scale * strength / 3``, Llama 2's
  "small" margins 1/3, 2/3, 1; ``"p_chosen"`` uses ``m = scale * (2 p_chosen - 1)``. Rows without the
  field get ``m = 0``;
* ``rm_center_coef``: TRL's ``center_rewards_coefficient * mean((r_c + r_r)^2)`` (Eisenstein et al.
  2023), off by default;
* one epoch at lr 1e-5 by default: reward models overfit after one epoch (Stiennon et al. 2020;
  Ouyang et al. 2022 train 1 epoch at 9e-6).

The batch layout is the trainer's: each pair is one ``[prompt | chosen | rejected]`` unit with a
4-D mask (``training.data``), so the prompt runs once and the reward of each response is the score
head at its last token -- exactly the number ``LlamaForSequenceClassification`` gives the
sequence ``prompt + response`` alone (the test checks this against TRL's RewardTrainer).

Held-out metrics: pairwise accuracy, loss, and calibration -- ten bins of the model's
``sigma(r_c - r_r)`` against the humans' mean ``p_chosen`` in each bin (a reliability diagram),
with the expected calibration error.

Normalisation (Ziegler et al. 2019, sec. 2.1; Stiennon et al. 2020): after training, responses
sampled from the reference policy (the model PPO starts from) to training prompts are scored, and
the reward is reported as ``(r - mean) / std`` so those samples have mean 0 and std 1. Mean and std
are recorded with the model (``config.json`` key ``prefloop_reward_normalization`` and
``reward_normalization.json``) and applied by :class:`RewardScorer`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import torch

from . import losses
from .config import TrainConfig
from .data import attention_mask_4d, collate, tokenize_pairs
from .rollout import reward_scores, sample, score_head, trunk
from .tiny_model import ModelLoadError, load_tokenizer
from .trainer.checkpoints import checkpoint_dirs as _checkpoint_dirs
from .trainer.checkpoints import complete as _complete
from .trainer.checkpoints import write_json as _write_json
from .trainer.device import resolve_precision
from .trainer.loop import ZeroGradientGuard
from .trainer.plan import lr_lambda, plan_steps, set_seed, split_eval
from .trainer.state import call as _call

NORM_KEY = "prefloop_reward_normalization"
NORM_FILE = "reward_normalization.json"
CALIBRATION_BINS = 10


# ============================================================================================
# Loading and scoring
# ============================================================================================


def load_reward_model(path, dtype=None, seed: int = 0):
    """``(model, tokenizer, normalization)`` from a folder: a trained reward model, or any causal
    LM folder (its trunk gets a fresh score head, initialised from ``seed``)."""
    from transformers import AutoModelForSequenceClassification

    path = Path(path)
    if not (path / "config.json").exists():
        raise ModelLoadError(f"{path} is not a Hugging Face model folder (no config.json)")
    tokenizer = load_tokenizer(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                str(path), num_labels=1, local_files_only=True, dtype=dtype or torch.float32,
                attn_implementation="sdpa")
        except Exception as exc:  # noqa: BLE001 - one clear error for any loader failure
            raise ModelLoadError(f"could not load a reward model from {path}: {type(exc).__name__}: {exc}") from exc
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, read_normalization(path)


def read_normalization(path) -> dict | None:
    f = Path(path) / NORM_FILE
    return json.loads(f.read_text()) if f.exists() else None


class RewardScorer:
    """Scores ``[prompt | response]`` token sequences with a reward model, normalised with the
    recorded mean / std when there is one."""

    def __init__(self, model, normalization: dict | None, device, unpadded: bool, batch_size: int = 64):
        self.model = model.eval().requires_grad_(False)
        self.norm = normalization
        self.device, self.unpadded, self.batch_size = device, unpadded, batch_size

    @torch.no_grad()
    def __call__(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(normalised, raw)`` scores, on the CPU."""
        raw = reward_scores(self.model, seqs, self.device, self.unpadded, self.batch_size).float().cpu()
        if not self.norm:
            return raw, raw
        return (raw - self.norm["mean"]) / max(self.norm["std"], 1e-6), raw


# ============================================================================================
# Pure pieces: margins, calibration
# ============================================================================================


def pair_margins(rows, cfg: TrainConfig) -> list[float]:
    """The Bradley-Terry margin of each row (see the module docstring)."""
    out = []
    for r in rows:
        if cfg.rm_margin == "strength":
            s = r.get("strength")
            out.append(cfg.rm_margin_scale * float(s) / 3.0 if s is not None else 0.0)
        elif cfg.rm_margin == "p_chosen":
            p = r.get("p_chosen")
            out.append(cfg.rm_margin_scale * (2.0 * float(p) - 1.0) if p is not None else cfg.rm_margin_scale)
        else:
            out.append(0.0)
    return out


def calibration(pred: list[float], human: list[float], n_bins: int = CALIBRATION_BINS) -> dict:
    """Reliability diagram of predicted ``P(chosen)`` against the humans' ``p_chosen``: per bin
    of the prediction, ``{lo, hi, n, predicted, observed}`` (means), and the expected calibration
    error ``sum_b n_b/N * |predicted_b - observed_b|``."""
    bins = [{"lo": b / n_bins, "hi": (b + 1) / n_bins, "n": 0, "predicted": None, "observed": None}
            for b in range(n_bins)]
    sums = [[0.0, 0.0] for _ in range(n_bins)]
    for p, h in zip(pred, human):
        b = min(int(p * n_bins), n_bins - 1)
        bins[b]["n"] += 1
        sums[b][0] += p
        sums[b][1] += h
    n = max(1, len(pred))
    ece = 0.0
    for b, (sp, sh) in zip(bins, sums):
        if b["n"]:
            b["predicted"], b["observed"] = sp / b["n"], sh / b["n"]
            ece += b["n"] / n * abs(b["predicted"] - b["observed"])
    return {"bins": bins, "ece": ece}


# ============================================================================================
# Rewards of a collated batch (shared-prompt layout)
# ============================================================================================


def pair_rewards(model, batch, unpadded: bool = False) -> torch.Tensor:
    """Rewards ``(num_examples, K)`` of a collated batch: the score head at the last token of
    each continuation, with the prompt computed once per unit (see ``training.data``)."""
    body = trunk(model)
    impl = getattr(model.config, "_attn_implementation", "sdpa")
    mask_dtype = None if impl == "sdpa" else score_head(model).weight.dtype
    rows, width = batch.input_ids.shape
    if not unpadded or rows == 1:
        mask = attention_mask_4d(batch.segment_ids, batch.unit_ids, dtype=mask_dtype)
        hidden = body(input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids,
                      use_cache=False).last_hidden_state
        hidden = hidden.reshape(-1, hidden.shape[-1])

        def where(flat):
            return flat
    else:
        real = (batch.segment_ids >= 0).sum(dim=1).tolist()
        outs = []
        for r, n in enumerate(real):
            mask = attention_mask_4d(batch.segment_ids[r:r + 1, :n], batch.unit_ids[r:r + 1, :n], dtype=mask_dtype)
            outs.append(body(input_ids=batch.input_ids[r:r + 1, :n], attention_mask=mask,
                             position_ids=batch.position_ids[r:r + 1, :n], use_cache=False).last_hidden_state[0])
        hidden = torch.cat(outs)
        starts = torch.tensor([0] + real[:-1], device=hidden.device).cumsum(0)

        def where(flat):
            return starts[flat // width] + flat % width
    # the last token of continuation j sits one after the source of its last target, except a
    # one-token continuation j > 0, whose only target is sourced from the last prompt token
    k = batch.num_continuations
    n_seq = batch.num_examples * k
    last_src = torch.full((n_seq,), -1, dtype=torch.long, device=batch.target_src.device)
    last_src = last_src.scatter_reduce(0, batch.target_seq, batch.target_src, reduce="amax")
    lengths = batch.lengths.reshape(-1)
    before = (batch.lengths.cumsum(1) - batch.lengths).reshape(-1)
    pos = last_src + 1 + torch.where(lengths == 1, before, torch.zeros_like(before))
    return score_head(model)(hidden.index_select(0, where(pos))).squeeze(-1).float().view(-1, k)


def rm_batch_loss(rewards: torch.Tensor, batch, margins: torch.Tensor | None, cfg: TrainConfig):
    """The configured Bradley-Terry loss of a batch's ``(n, 2)`` rewards; ``(loss, stats)``."""
    rc, rr = rewards[:, 0], rewards[:, 1]
    weights = batch.weights.to(rc.device) if cfg.use_weights else None
    ties = None if batch.ties is None else batch.ties.to(rc.device)
    p = losses.label_targets(batch.p_chosen.to(rc.device), ties, cfg.use_soft_labels)
    loss = losses.bt_reward_loss(rc, rr, weights=weights, margin=margins, p_chosen=p)
    if cfg.rm_center_coef:
        loss = loss + cfg.rm_center_coef * torch.mean((rc + rr) ** 2)
    d = rewards.detach()
    stats = {"n": float(len(rc)), "loss_sum": float(loss.detach()) * len(rc),
             "acc_sum": float((d[:, 0] > d[:, 1]).float().sum()), "margin_sum": float((d[:, 0] - d[:, 1]).sum()),
             "chosen_reward_sum": float(d[:, 0].sum()), "rejected_reward_sum": float(d[:, 1].sum())}
    return loss, stats


def _finish(agg: dict) -> dict:
    n = max(agg.get("n", 0.0), 1.0)
    return {"loss": agg["loss_sum"] / n, "reward_accuracy": agg["acc_sum"] / n,
            "reward_margin": agg["margin_sum"] / n, "chosen_reward": agg["chosen_reward_sum"] / n,
            "rejected_reward": agg["rejected_reward_sum"] / n}


@torch.no_grad()
def evaluate_reward_model(model, examples, rows, cfg: TrainConfig, pad_id: int, device, unpadded: bool) -> dict:
    """Held-out loss, pairwise accuracy and calibration (``eval_*`` keys)."""
    was = model.training
    model.eval()
    agg: dict = {}
    pred, human = [], []
    bs = cfg.eval_batch_size or max(cfg.batch_size, 8)
    margins = pair_margins(rows, cfg)
    for s in range(0, len(examples), bs):
        chunk = examples[s:s + bs]
        batch = collate(chunk, pad_id, pack=not unpadded).to(device)
        r = pair_rewards(model, batch, unpadded)
        m = torch.tensor(margins[s:s + bs], device=r.device)
        _, stats = rm_batch_loss(r, batch, m, cfg)
        for k, v in stats.items():
            agg[k] = agg.get(k, 0.0) + v
        pred += torch.sigmoid(r[:, 0] - r[:, 1]).tolist()
        human += [1.0 if e.p_chosen is None else e.p_chosen for e in chunk]
    model.train(was)
    cal = calibration(pred, human)
    out = {f"eval_{k}": v for k, v in _finish(agg).items()}
    out["eval_ece"] = cal["ece"]
    out["eval_calibration"] = cal["bins"]
    return out


# ============================================================================================
# Normalisation against the reference policy
# ============================================================================================


@torch.no_grad()
def reference_statistics(rm, policy, tokenizer, prompts: list[list[int]], cfg: TrainConfig, device,
                         unpadded: bool) -> dict:
    """Mean and std of the raw reward over one response per prompt sampled from ``policy``."""
    g = torch.Generator(device=device).manual_seed(cfg.seed + 7919)
    s = sample(policy, prompts, cfg.ppo_response_length, cfg.ppo_temperature, tokenizer.eos_token_id,
               tokenizer.pad_token_id, g, device, batch_size=max(cfg.ppo_batch_size, 16))
    seqs = [list(p) + t[:int(n)] for p, t, n in zip(prompts, s.tokens.tolist(), s.mask.sum(1).tolist())]
    raw = reward_scores(rm, seqs, device, unpadded).float().cpu()
    std = float(raw.std()) if len(raw) > 1 else 1.0
    return {"mean": float(raw.mean()), "std": std if std > 1e-6 else 1.0, "n": len(raw),
            "temperature": cfg.ppo_temperature, "max_new_tokens": cfg.ppo_response_length}


def write_normalization(folder: Path, norm: dict) -> None:
    _write_json(folder / NORM_FILE, norm)
    cfg_file = folder / "config.json"
    data = json.loads(cfg_file.read_text())
    data[NORM_KEY] = norm
    _write_json(cfg_file, data)


# ============================================================================================
# Training
# ============================================================================================


def device_of(cfg: TrainConfig) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' was requested but no CUDA GPU is available on this worker")
        return torch.device("cuda")
    return torch.device("cpu")


def _autocast(cfg: TrainConfig, device):
    if device.type == "cuda" and resolve_precision(cfg) == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def train_reward_model(cfg: TrainConfig, model_path, pairs, out_dir, callbacks=None, eval_pairs=None,
                       policy_path=None, step_offset: int = 0, total_steps: int | None = None,
                       phase_out: Path | None = None) -> dict:
    """Train a reward model from ``model_path`` on ``pairs``; save it in ``phase_out`` (default
    ``out_dir/final``). ``policy_path``: the reference policy for the normalisation (default
    ``model_path``). Checkpoints in ``out_dir/checkpoints/rm``; calling again resumes. Returns a
    report ``{"status", "steps", "out", "metrics", "eval_metrics", "normalization"}``."""
    cfg.validate()
    out = Path(out_dir)
    phase_out = Path(phase_out) if phase_out else out / "final"
    if _complete(phase_out):  # finished before (a retried task): report, do not retrain
        info = json.loads((phase_out / "prefloop_training.json").read_text())
        return {"status": "succeeded", "steps": info.get("steps", 0), "out": str(phase_out), "metrics": {},
                "eval_metrics": info.get("eval", {}), "normalization": info.get("normalization")}
    device = device_of(cfg)
    unpadded = (device.type == "cpu") if cfg.unpadded is None else cfg.unpadded
    if eval_pairs is not None:
        train_rows, eval_rows = list(pairs), list(eval_pairs)
        train_idx, eval_idx = list(range(len(pairs))), [len(pairs) + j for j in range(len(eval_pairs))]
    else:
        train_idx, eval_idx = split_eval(len(pairs), cfg)
        train_rows, eval_rows = [pairs[i] for i in train_idx], [pairs[i] for i in eval_idx]
    if len(train_rows) < cfg.min_pairs:
        raise ValueError(f"need at least {cfg.min_pairs} training pairs for the reward model, got {len(train_rows)}")
    set_seed(cfg.seed)
    model, tokenizer, _ = load_reward_model(model_path, seed=cfg.seed)
    train_ex = tokenize_pairs(tokenizer, train_rows, cfg.max_length, cfg.max_prompt_length, indices=train_idx)
    eval_ex = tokenize_pairs(tokenizer, eval_rows, cfg.max_length, cfg.max_prompt_length, indices=eval_idx)
    margins = dict(zip(train_idx, pair_margins(train_rows, cfg)))
    rm_cfg = dataclasses.replace(cfg, max_steps=cfg.rm_max_steps, epochs=cfg.rm_epochs)
    plan = plan_steps(len(train_ex), rm_cfg, "rm")
    total_steps = total_steps or len(plan)
    if cfg.lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.lora_target_modules), task_type="SEQ_CLS"))
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.rm_lr, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay,
                            fused=True if device.type in ("cpu", "cuda") else None)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.lr_schedule, cfg.warmup_steps, len(plan)))
    ckpt_root = out / "checkpoints" / "rm"
    step = 0
    ckpts = _checkpoint_dirs(ckpt_root)
    if ckpts:
        state = torch.load(ckpts[-1] / "state.pt", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step = state["step"]
        _call(callbacks, "on_log", f"rm: resumed from {ckpts[-1]} at step {step_offset + step}")

    def checkpoint(reason):
        path = ckpt_root / f"step-{step:06d}"
        if _complete(path):
            return
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "step": step, "reason": reason}, path / "state.pt")
        (path / ".complete").touch()
        for old in _checkpoint_dirs(ckpt_root)[:-cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        _call(callbacks, "on_checkpoint", str(path))

    pad_id = tokenizer.pad_token_id
    t0 = time.time()
    done_here = 0
    last: dict = {}
    evals: dict = {}
    _call(callbacks, "on_log", f"rm: {len(train_ex)} train / {len(eval_ex)} eval pairs, {len(plan)} steps")
    zero_gradients = ZeroGradientGuard("rm", resumed_at=step, weighted=cfg.use_weights)
    while step < len(plan):
        if _call(callbacks, "should_stop"):
            checkpoint("cancelled")
            _call(callbacks, "on_log", f"rm: cancelled at step {step_offset + step}")
            return {"status": "cancelled", "steps": step, "out": None, "metrics": last, "eval_metrics": evals}
        t_step = time.time()
        micro = [[train_ex[i] for i in m] for m in plan[step]["micro"]]
        n_step = sum(len(m) for m in micro)
        agg: dict = {}
        tokens = 0
        for examples in micro:
            batch = collate(examples, pad_id, pack=not unpadded).to(device)
            m = torch.tensor([margins[e.index] for e in examples], device=device)
            with _autocast(cfg, device):
                rewards = pair_rewards(model, batch, unpadded)
            loss, stats = rm_batch_loss(rewards, batch, m, cfg)
            (loss * (len(examples) / n_step)).backward()
            tokens += batch.num_tokens
            for k, v in stats.items():
                agg[k] = agg.get(k, 0.0) + v
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or float("inf"))
        zero_gradients.check(step + 1, norm, len(plan))
        lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        done_here += 1
        dt = time.time() - t_step
        g = step_offset + step
        last = {"phase": "rm", "step": g, "total_steps": total_steps, "phase_step": step,
                "phase_total_steps": len(plan), "epoch": round(plan[step - 1]["epoch"], 4), "lr": lr,
                "grad_norm": float(norm), "tokens": tokens, "tokens_per_s": tokens / max(dt, 1e-9),
                "step_time_s": dt, "elapsed_s": time.time() - t0,
                "eta_s": (time.time() - t0) / done_here * (total_steps - g),
                "batch_ids": [e.index for m in micro for e in m], **_finish(agg)}
        if eval_ex and ((cfg.eval_every and step % cfg.eval_every == 0) or step == len(plan)):
            evals = evaluate_reward_model(model, eval_ex, eval_rows, cfg, pad_id, device, unpadded)
            last.update(evals)
            _call(callbacks, "on_eval", evals)
        if step % max(1, cfg.log_every) == 0 or step == len(plan):
            _call(callbacks, "on_step", last)
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < len(plan):
            checkpoint("periodic")

    # save (LoRA merged), then normalise against the reference policy
    inner = model.merge_and_unload() if cfg.lora else model
    shutil.rmtree(phase_out, ignore_errors=True)
    inner.save_pretrained(str(phase_out))
    tokenizer.save_pretrained(str(phase_out))
    norm = None
    if cfg.rm_norm_samples:
        from .tiny_model import load_model_and_tokenizer

        policy, ptok = load_model_and_tokenizer(policy_path or model_path)
        policy.to(device)
        prompts = [ex.prompt_ids for ex in train_ex[:cfg.rm_norm_samples]]
        with _autocast(cfg, device):
            norm = reference_statistics(inner.eval(), policy, ptok, prompts, cfg, device, unpadded)
        norm["policy"] = os.path.abspath(str(policy_path or model_path))
        del policy
        write_normalization(phase_out, norm)
        _call(callbacks, "on_log", f"rm: reward normalised on {norm['n']} reference samples "
                                   f"(mean {norm['mean']:.4g}, std {norm['std']:.4g})")
    _write_json(phase_out / "prefloop_training.json", {
        "phase": "rm", "base_model": os.path.abspath(str(model_path)), "recipe": cfg.recipe,
        "config": cfg.to_dict(), "eval": evals, "normalization": norm, "steps": step})
    (phase_out / ".complete").touch()
    return {"status": "succeeded", "steps": step, "out": str(phase_out), "metrics": last,
            "eval_metrics": evals, "normalization": norm}


__all__ = ["load_reward_model", "RewardScorer", "pair_margins", "calibration", "pair_rewards", "rm_batch_loss",
           "evaluate_reward_model", "reference_statistics", "train_reward_model",
           "NORM_FILE", "NORM_KEY"]
