"""The PPO loop: sample, score, KL to the reference, GAE, minibatch updates, one checkpoint per iteration.

    from training.ppo_trainer import train_ppo
    report = train_ppo(cfg, "var/runs/7/sft", prompts, "var/runs/7", reward_model_path="var/runs/7/rm")

``prompts`` are rows with a ``prompt`` (text or chat messages), e.g. the calibrated export's rows
(repeated prompts count once). The reward is a trained reward model (``reward_model_path``,
normalised as recorded by ``training.reward_model``) or any ``reward_fn(prompts, responses) ->
scores`` on the decoded texts (tests use a programmatic one). The math is ``training.ppo`` and
``training.losses``; sampling and scoring are ``training.rollout``. The settings are the ``ppo_*``
fields of ``TrainConfig``; their defaults and sources are tabled in ``training.ppo``.

Models: the policy (trained), a frozen reference (the policy's starting weights, or ``ref_path``;
with LoRA the policy with its adapter switched off), the critic (``ppo_value_model``: a separate
sequence-classification model initialised from the reward model or from the policy, or a value
head on the policy's own trunk) and the reward model (frozen). One AdamW updates policy and
critic together (as TRL); dropout is off everywhere (Huang et al. 2024).

Iteration ``k`` takes prompts ``[k*B, (k+1)*B)`` of the seeded prompt stream (each epoch over the
prompts reshuffled, a pure function of the seed), samples with a generator seeded by ``(seed, k)``
and shuffles minibatches with another, so a run resumed from the checkpoint of iteration ``k``
replays iterations ``k+1...`` exactly as an uninterrupted run would. Checkpoints
(``out_dir/checkpoints/ppo/step-NNNNNN/state.pt``, NNNNNN the iterations done: policy, critic, optimizer, scheduler, KL
coefficient) are written every ``ppo_checkpoint_every`` iterations and on cancel.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
import torch.nn as nn

from . import losses
from .config import TrainConfig
from .data import is_conversational, prompt_keep
from .ppo import Rollout, apply_missing_eos_penalty, kl_controller, minibatch_order, value_clip_fraction
from .reward_model import RewardScorer, _autocast, device_of, load_reward_model
from .rollout import (
    Sequences,
    check_same_tokenizer,
    critic_values,
    policy_logprobs,
    sample,
)
from .tiny_model import load_model_and_tokenizer, load_tokenizer
from .trainer.checkpoints import checkpoint_dirs as _checkpoint_dirs
from .trainer.checkpoints import complete as _complete
from .trainer.checkpoints import write_json as _write_json
from .trainer.cli import load_pairs_jsonl  # noqa: F401 - for bench/ppo.py and bench/reward_model.py
from .trainer.plan import epoch_order, lr_lambda, set_seed
from .trainer.state import call as _call

PPO_METRIC_KEYS = ["reward", "reward_raw", "kl", "kl_coef", "clip_fraction", "approx_kl", "value_loss",
                   "policy_loss", "entropy", "response_length", "eos_fraction", "value_clip_fraction",
                   "rlhf_reward", "gen_s", "score_s", "update_s", "rollout_tokens_per_s", "update_samples_per_s"]


def _seed(*parts) -> int:
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:15], 16)


def tokenize_prompts(tokenizer, rows, cfg: TrainConfig) -> tuple[list[list[int]], list[str]]:
    """Unique prompts of ``rows`` as token ids (chat template for message lists, with the
    generation prompt), and their text. A long prompt keeps its last tokens (``training.data.prompt_keep``
    with the ``ppo_response_length`` tokens to sample: ``max_prompt_length`` when set, else as few as
    the response needs within ``max_length`` but at least half of it)."""
    seen, ids, texts = set(), [], []
    for i, row in enumerate(rows):
        prompt = row.get("prompt") if isinstance(row, dict) else row
        key = json.dumps(prompt, sort_keys=True)
        if not prompt or key in seen:
            continue
        seen.add(key)
        if is_conversational(prompt):
            toks = list(tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True,
                                                      return_dict=True)["input_ids"])
            text = "\n".join(m.get("content", "") for m in prompt)
        elif isinstance(prompt, str):
            toks, text = list(tokenizer(prompt)["input_ids"]), prompt
        else:
            raise ValueError(f"row {i}: prompt must be a string or a list of messages")
        keep = prompt_keep(len(toks), cfg.ppo_response_length, cfg.max_length, cfg.max_prompt_length)
        toks = toks[len(toks) - keep:]
        if len(toks) >= cfg.max_length:
            raise ValueError(f"row {i}: the prompt has {len(toks)} tokens, which leaves no room for a response "
                             f"within max_length={cfg.max_length}; set max_prompt_length")
        ids.append(toks)
        texts.append(text)
    if not ids:
        raise ValueError("PPO needs at least one prompt")
    return ids, texts


def n_iterations(cfg: TrainConfig, n_prompts: int) -> int:
    if cfg.ppo_iterations:
        return cfg.ppo_iterations
    if cfg.max_steps:
        return cfg.max_steps
    return max(1, math.ceil(cfg.epochs * n_prompts / cfg.ppo_batch_size))


def iteration_prompts(n: int, cfg: TrainConfig, iteration: int) -> list[int]:
    """Positions of the prompts of ``iteration`` (0-based) in the seeded stream of epochs."""
    b = cfg.ppo_batch_size
    out = []
    start = iteration * b
    while len(out) < b:
        epoch, offset = divmod(start + len(out), n)
        order = epoch_order(n, cfg.seed, epoch, cfg.shuffle, salt="ppo")
        out.extend(order[offset:offset + b - len(out)])
    return out


class _ValueHead(nn.Module):
    """The ``shared`` critic: a linear value head on the policy's last hidden state (zero init:
    the first values are 0)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.score = nn.Linear(hidden, 1)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)

    def forward(self, h):
        return self.score(h)


class _Reference:
    """Log-probs under the frozen reference: its own model, or the policy with LoRA switched off."""

    def __init__(self, model=None, peft_policy=None):
        self.model, self.peft = model, peft_policy

    def logprobs(self, seqs, width, cfg, device, unpadded):
        if self.model is not None:
            return policy_logprobs(self.model, seqs, width, cfg.ppo_temperature, device, unpadded,
                                   chunk_elements=cfg.logits_chunk_elements)[0]
        with self.peft.disable_adapter():
            return policy_logprobs(self.peft, seqs, width, cfg.ppo_temperature, device, unpadded,
                                   chunk_elements=cfg.logits_chunk_elements)[0]


def validate_ppo_inputs(cfg: TrainConfig, policy_path, reward_model_path=None, reward_fn=None) -> None:
    """Everything checkable before any model is loaded: the config, one reward source, and a
    reward model that shares the policy's tokenizer."""
    cfg.validate()
    if (reward_model_path is None) == (reward_fn is None):
        raise ValueError("PPO needs exactly one reward: a reward model folder or a reward function")
    if reward_fn is not None and cfg.ppo_value_model == "reward":
        raise ValueError("ppo_value_model='reward' initialises the critic from the reward model, but this run "
                         "has a reward function; use 'policy' or 'shared'")
    if reward_model_path is not None:
        check_same_tokenizer(load_tokenizer(policy_path), load_tokenizer(reward_model_path))


def train_ppo(cfg: TrainConfig, policy_path, prompts, out_dir, callbacks=None, reward_model_path=None,
              reward_fn=None, ref_path=None, step_offset: int = 0, total_steps: int | None = None,
              phase_out: Path | None = None) -> dict:
    """Run PPO from the model folder ``policy_path``; save the policy in ``phase_out`` (default
    ``out_dir/final``). Returns ``{"status", "steps", "out", "metrics"}``; calling again with the
    same ``out_dir`` resumes from the last checkpoint (a finished phase returns at once)."""
    validate_ppo_inputs(cfg, policy_path, reward_model_path, reward_fn)
    out = Path(out_dir)
    phase_out = Path(phase_out) if phase_out else out / "final"
    device = device_of(cfg)
    unpadded = (device.type == "cpu") if cfg.unpadded is None else cfg.unpadded
    set_seed(cfg.seed)
    tokenizer = load_tokenizer(policy_path)
    prompt_ids, prompt_texts = tokenize_prompts(tokenizer, prompts, cfg)
    iterations = n_iterations(cfg, len(prompt_ids))
    total_steps = total_steps or iterations
    if _complete(phase_out):
        return {"status": "succeeded", "steps": iterations, "out": str(phase_out), "metrics": {}}
    policy, tokenizer = load_model_and_tokenizer(policy_path)

    # models
    policy.config.use_cache = True
    ref = None
    if cfg.lora:
        from peft import LoraConfig, get_peft_model

        policy.config.name_or_path = os.path.abspath(str(policy_path))
        policy = get_peft_model(policy, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                                   lora_dropout=cfg.lora_dropout,
                                                   target_modules=list(cfg.lora_target_modules),
                                                   task_type="CAUSAL_LM"))
        reference = _Reference(peft_policy=policy)
    else:
        ref, _ = load_model_and_tokenizer(ref_path or policy_path)
        ref.to(device).eval().requires_grad_(False)
        reference = _Reference(model=ref)
    policy.to(device).eval()  # eval(): no dropout (Huang et al. 2024); gradients still flow
    scorer = None
    if reward_model_path is not None:
        rm, _, norm = load_reward_model(reward_model_path)
        scorer = RewardScorer(rm.to(device), norm, device, unpadded)
    value_head = critic = None
    if cfg.ppo_value_model == "shared":
        value_head = _ValueHead(policy.config.hidden_size).to(device)
    else:
        critic, _, _ = load_reward_model(reward_model_path if cfg.ppo_value_model == "reward" else policy_path,
                                         seed=cfg.seed)
        critic.to(device).eval()
    value_params = list((value_head or critic).parameters())
    params = [p for p in policy.parameters() if p.requires_grad] + value_params
    opt = torch.optim.AdamW(params, lr=cfg.ppo_lr, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay,
                            fused=True if device.type in ("cpu", "cuda") else None)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.lr_schedule, cfg.warmup_steps, iterations))
    kl_ctl = kl_controller(cfg.ppo_kl_coef, cfg.ppo_kl_target, cfg.ppo_kl_horizon)
    value_module = value_head or critic

    # resume
    ckpt_root = out / "checkpoints" / "ppo"
    it = 0
    ckpts = _checkpoint_dirs(ckpt_root)
    if ckpts:
        state = torch.load(ckpts[-1] / "state.pt", weights_only=False)
        policy.load_state_dict(state["policy"])
        value_module.load_state_dict(state["value"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        kl_ctl.load_state_dict(state["kl_controller"])
        it = state["iteration"]
        _call(callbacks, "on_log", f"ppo: resumed from {ckpts[-1]} at iteration {it}")

    def checkpoint(reason):
        path = ckpt_root / f"step-{it:06d}"
        if _complete(path):
            return
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        torch.save({"policy": policy.state_dict(), "value": value_module.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "kl_controller": kl_ctl.state_dict(), "iteration": it,
                    "reason": reason}, path / "state.pt")
        (path / ".complete").touch()
        for old in _checkpoint_dirs(ckpt_root)[:-cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        _call(callbacks, "on_checkpoint", str(path))

    _call(callbacks, "on_log", f"ppo: {len(prompt_ids)} prompts, {iterations} iterations of "
                               f"{cfg.ppo_batch_size} rollouts, critic '{cfg.ppo_value_model}'")
    t0 = time.time()
    done_here = 0
    last: dict = {}
    while it < iterations:
        if _call(callbacks, "should_stop"):
            checkpoint("cancelled")
            _call(callbacks, "on_log", f"ppo: cancelled at iteration {it}")
            return {"status": "cancelled", "steps": it, "out": None, "metrics": last}
        t_it = time.time()
        idx = iteration_prompts(len(prompt_ids), cfg, it)
        batch_prompts = [prompt_ids[i] for i in idx]
        roll, timing = collect_rollout(cfg, policy, reference, critic, value_head, scorer, reward_fn, tokenizer,
                                       batch_prompts, [prompt_texts[i] for i in idx], kl_ctl.value, device,
                                       unpadded, it)
        t_up = time.time()
        upd = ppo_update(cfg, policy, critic, value_head, roll, opt, params, device, unpadded, it)
        update_s = time.time() - t_up
        lr = sched.get_last_lr()[0]
        sched.step()
        stats = roll.stats()
        kl_coef = kl_ctl.value
        kl_ctl.update(stats["kl"], len(roll))
        it += 1
        done_here += 1
        step = step_offset + it
        dt = time.time() - t_it
        gen_tokens = int(roll.mask.sum())
        last = {"phase": "ppo", "step": step, "total_steps": total_steps, "phase_step": it,
                "phase_total_steps": iterations, "epoch": round(it * cfg.ppo_batch_size / len(prompt_ids), 4),
                "lr": lr, "kl_coef": kl_coef, **stats, **upd, **timing, "update_s": update_s,
                "rollout_tokens_per_s": gen_tokens / max(timing["gen_s"], 1e-9),
                "update_samples_per_s": len(roll) * cfg.ppo_epochs / max(update_s, 1e-9),
                "tokens": gen_tokens, "tokens_per_s": gen_tokens / max(dt, 1e-9), "step_time_s": dt,
                "elapsed_s": time.time() - t0, "eta_s": (time.time() - t0) / done_here * (total_steps - step),
                "batch_ids": idx}
        if cfg.ppo_samples_per_log:
            last["samples"] = roll_samples(tokenizer, roll, [prompt_texts[i] for i in idx], cfg.ppo_samples_per_log)
        if it % max(1, cfg.log_every) == 0 or it == iterations:
            _call(callbacks, "on_step", last)
        if cfg.ppo_checkpoint_every and it % cfg.ppo_checkpoint_every == 0 and it < iterations:
            checkpoint("periodic")

    inner = policy.merge_and_unload() if cfg.lora else policy
    shutil.rmtree(phase_out, ignore_errors=True)
    inner.save_pretrained(str(phase_out))
    tokenizer.save_pretrained(str(phase_out))
    _write_json(phase_out / "prefloop_training.json", {
        "phase": "ppo", "base_model": os.path.abspath(str(policy_path)),
        "reference_model": os.path.abspath(str(ref_path or policy_path)),
        "reward_model": os.path.abspath(str(reward_model_path)) if reward_model_path else "reward function",
        "recipe": cfg.recipe, "config": cfg.to_dict(), "kl_coef_final": kl_ctl.value,
        "last": {k: v for k, v in last.items() if k not in ("samples", "batch_ids")}})
    (phase_out / ".complete").touch()
    return {"status": "succeeded", "steps": it, "out": str(phase_out), "metrics": last}


def roll_samples(tokenizer, roll: Rollout, prompts: list[str], n: int) -> list[dict]:
    """The first ``n`` rollouts as text for the run page (NUL characters, which a sampled byte
    token can decode to and no PostgreSQL text or JSON value can hold, are dropped)."""
    out = []
    for i in range(min(n, len(roll))):
        k = int(roll.mask[i].sum())
        text = tokenizer.decode(roll.responses[i, :k].tolist(), skip_special_tokens=True)
        out.append({"prompt": prompts[i][-300:].replace("\x00", ""), "response": text.replace("\x00", ""),
                    "reward": round(float(roll.scores[i]), 4)})
    return out


@torch.no_grad()
def collect_rollout(cfg: TrainConfig, policy, reference: _Reference, critic, value_head, scorer, reward_fn,
                    tokenizer, prompt_ids, prompt_texts, kl_coef: float, device, unpadded: bool,
                    iteration: int) -> tuple[Rollout, dict]:
    """Sample, score, and compute rewards and advantages for one iteration."""
    g = torch.Generator(device=device).manual_seed(_seed(cfg.seed, iteration, "sample"))
    t = time.time()
    with _autocast(cfg, device):
        s = sample(policy, prompt_ids, cfg.ppo_response_length, cfg.ppo_temperature, tokenizer.eos_token_id,
                   tokenizer.pad_token_id, g, device, batch_size=len(prompt_ids), value_head=value_head)
    gen_s = time.time() - t
    t = time.time()
    width = s.tokens.shape[1]
    seqs = Sequences.build(prompt_ids, s.tokens, s.mask)
    with _autocast(cfg, device):
        ref_logp = reference.logprobs(seqs, width, cfg, device, unpadded).float().cpu()
        if value_head is not None:  # the shared critic's values came with the samples
            values = s.values
        else:
            values = critic_values(critic, seqs, width, device, unpadded)
        if scorer is not None:
            scores, raw = scorer(seqs.seqs)
        else:
            texts = [tokenizer.decode(r[:int(n)], skip_special_tokens=True)
                     for r, n in zip(s.tokens.tolist(), s.mask.sum(1).tolist())]
            raw = torch.tensor([float(x) for x in reward_fn(prompt_texts, texts)])
            scores = raw
    scores = apply_missing_eos_penalty(scores, s.has_eos, cfg.ppo_missing_eos_penalty)
    roll = Rollout(prompt_ids=prompt_ids, responses=s.tokens, mask=s.mask, logprobs=s.logprobs,
                   ref_logprobs=ref_logp * s.mask, values=values.float().cpu() * s.mask, scores=scores,
                   raw_scores=raw, has_eos=s.has_eos)
    roll.finish(kl_coef, cfg.ppo_gamma, cfg.ppo_lam, cfg.ppo_kl_estimator, cfg.ppo_whiten_rewards)
    return roll, {"gen_s": gen_s, "score_s": time.time() - t, "gen_steps": s.steps}


def ppo_update(cfg: TrainConfig, policy, critic, value_head, roll: Rollout, opt, params, device,
               unpadded: bool, iteration: int) -> dict:
    """``ppo_epochs`` passes of shuffled minibatches over the rollout; returns mean statistics."""
    g = torch.Generator().manual_seed(_seed(cfg.seed, iteration, "minibatches"))
    sums: dict[str, float] = {}
    count = 0
    grad_norms = []
    for _ in range(cfg.ppo_epochs):
        for mb in minibatch_order(len(roll), cfg.ppo_mini_batches, g):
            micro = cfg.ppo_micro_batch_size or len(mb)
            for s in range(0, len(mb), micro):
                part = roll.select(mb[s:s + micro])
                stats = _micro_step(cfg, policy, critic, value_head, part, device, unpadded,
                                    scale=len(part) / len(mb))
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or float("inf"))
            grad_norms.append(float(norm))
            opt.step()
            opt.zero_grad(set_to_none=True)
    out = {k: v / max(count, 1) for k, v in sums.items()}
    out["grad_norm"] = sum(grad_norms) / max(len(grad_norms), 1)
    return out


def _micro_step(cfg: TrainConfig, policy, critic, value_head, part: Rollout, device, unpadded: bool,
                scale: float) -> dict:
    seqs = Sequences.build(part.prompt_ids, part.responses, part.mask)
    width = part.responses.shape[1]
    m = part.mask.to(device).float()
    with _autocast(cfg, device):
        logp, ent, values = policy_logprobs(policy, seqs, width, cfg.ppo_temperature, device, unpadded,
                                            want_entropy=True, value_head=value_head,
                                            chunk_elements=cfg.logits_chunk_elements,
                                            entropy_grad=cfg.ppo_entropy_coef > 0)
        if values is None:
            values = critic_values(critic, seqs, width, device, unpadded)
    old_logp, adv = part.logprobs.to(device), part.advantages.to(device)
    old_v, ret = part.values.to(device), part.returns.to(device)
    pg, clip_frac, approx_kl = losses.ppo_clipped_surrogate(logp.float(), old_logp, adv, cfg.ppo_clip, m)
    vf = losses.ppo_value_loss(values.float(), old_v, ret, cfg.ppo_value_clip, m)
    entropy = losses.masked_mean(ent, m)
    loss = pg + cfg.ppo_vf_coef * vf - cfg.ppo_entropy_coef * entropy
    (loss * scale).backward()
    with torch.no_grad():
        vclip = value_clip_fraction(values.float(), old_v, ret, cfg.ppo_value_clip, m)
    return {"loss": float(loss.detach()), "policy_loss": float(pg.detach()), "value_loss": float(vf.detach()),
            "clip_fraction": float(clip_frac), "approx_kl": float(approx_kl), "entropy": float(entropy.detach()),
            "value_clip_fraction": float(vclip)}


__all__ = ["train_ppo", "validate_ppo_inputs", "tokenize_prompts", "n_iterations", "iteration_prompts",
           "collect_rollout", "ppo_update", "PPO_METRIC_KEYS"]
