"""The phases a recipe is made of, and what each does that the loop does not.

The optimizer loop (``loop.py``) is the same for every phase: plan the steps, collate micro-batches,
backward, clip, step, log, checkpoint. A ``Phase`` supplies the rest:

* ``tokenize`` -- the rows as examples (``training.data``: one continuation for SFT, two for pairs);
* ``needs_reference`` -- the loop prepares reference log-probs (``reference.Reference``) first;
* ``micro_loss(wrapped, batch, step)`` -- the loss of one micro-batch, already scaled so that
  gradient accumulation equals one big batch, and the sums it adds to the step's stats;
* ``finish_stats(agg, cfg)`` -- those sums, over the whole step, as the logged metrics;
* ``evaluate(run, policy, eval_ex, pad_id, reference)`` -- the held-out metrics (``eval_*``);
* ``seed_offset`` -- added to ``cfg.seed`` when the phase starts.

A phase's own learning rate, epochs or step count (``sft_lr`` ...) are named in
``plan.PHASE_OVERRIDES``.
To add a phase (a reward model, PPO): write its functions here, add it to ``PHASES``, and name it
in a recipe of ``training.config.RECIPE_PHASES``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .. import losses
from ..config import TrainConfig
from ..data import Batch, collate, tokenize_pairs, tokenize_sft
from .logps import compute_logps_table


@dataclass
class StepInputs:
    """What a micro-batch's loss may need besides the batch itself."""

    cfg: TrainConfig
    n_step: int  # examples in the whole optimizer step (this process)
    resp_step: int  # tokens of the first continuations (the SFT targets) in the whole step
    reference: Callable[[Batch], torch.Tensor]  # reference log-probs of a micro-batch


@dataclass(frozen=True)
class Phase:
    name: str
    tokenize: Callable
    micro_loss: Callable
    finish_stats: Callable
    evaluate: Callable
    needs_reference: bool = False
    seed_offset: int = 0
    metric_keys: tuple[str, ...] = ()


def policy_table(run, policy, examples, pad_id) -> dict:
    """``{example.index: summed response log-probs}`` of the policy (no grad, eval batch size)."""
    cfg = run.cfg
    bs = cfg.eval_batch_size or max(cfg.batch_size, 8)
    return compute_logps_table(policy, examples, pad_id, bs, run.accelerator, cfg.logits_chunk_elements,
                               run.pack, run.unpadded)


# ============================================================================================
# SFT: next-token loss on the chosen response
# ============================================================================================


def sft_micro(wrapped, batch: Batch, step: StepInputs):
    """Per-token NLL, normalised by the response tokens of the whole optimizer step (so gradient
    accumulation gives the same gradient as one big batch)."""
    cfg = step.cfg
    logps = wrapped(batch)[:, 0]
    weights = batch.weights if cfg.use_weights else None
    loss = losses.sft_sequence_loss(logps, batch.lengths[:, 0].sum(), weights)
    loss = loss * (batch.lengths[:, 0].sum().float() / max(step.resp_step, 1))
    stats = {"nll_sum": float(-logps.detach().sum()), "resp_tokens": float(batch.lengths[:, 0].sum()),
             "tokens": float(batch.num_tokens)}
    return loss, stats


def sft_stats(agg: dict, cfg: TrainConfig) -> dict:
    loss = agg["nll_sum"] / max(agg["resp_tokens"], 1.0)
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0))}


@torch.no_grad()
def sft_evaluate(run, policy, eval_ex, pad_id, reference) -> dict:
    pol = policy_table(run, policy, eval_ex, pad_id)
    nll = -sum(float(pol[e.index][0]) for e in eval_ex)
    toks = sum(len(e.response_ids) for e in eval_ex)
    return {"eval_loss": nll / max(toks, 1), "eval_ppl": math.exp(min(nll / max(toks, 1), 50.0))}


# ============================================================================================
# DPO: a DPO-family loss of (chosen, rejected) against the reference
# ============================================================================================


def dpo_batch_loss(logps: torch.Tensor, ref: torch.Tensor, batch: Batch, cfg: TrainConfig):
    """The configured DPO loss of a collated batch; returns ``(loss, summed stats)``."""
    weights = batch.weights if cfg.use_weights else None
    p_chosen = losses.label_targets(batch.p_chosen, batch.ties, cfg.use_soft_labels)
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


def dpo_micro(wrapped, batch: Batch, step: StepInputs):
    ref = step.reference(batch)
    logps = wrapped(batch)
    loss, stats = dpo_batch_loss(logps, ref, batch, step.cfg)
    scaled = loss * (batch.num_examples / step.n_step)  # mean over the step, not over the micro-batch
    stats = {k: float(v) for k, v in stats.items()}
    stats["tokens"] = float(batch.num_tokens)
    return scaled, stats


def dpo_stats(agg: dict, cfg: TrainConfig) -> dict:
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
def dpo_evaluate(run, policy, eval_ex, pad_id, reference) -> dict:
    cfg = run.cfg
    pol = policy_table(run, policy, eval_ex, pad_id)
    bs = cfg.eval_batch_size or max(cfg.batch_size, 8)
    layout = (run.pack, run.unpadded)
    ref = reference.examples_logps(policy, eval_ex, pad_id, bs, run.accelerator, cfg, layout)
    policy_logps = torch.stack([pol[e.index] for e in eval_ex])
    reference_logps = torch.stack([ref[e.index] for e in eval_ex]).float()
    batch = collate(eval_ex, pad_id, pack=False)  # only for weights / p_chosen / lengths
    loss, stats = dpo_batch_loss(policy_logps.float(), reference_logps, batch, cfg)
    out = dpo_stats({k: float(v) for k, v in stats.items()}, cfg)
    return {f"eval_{k}": v for k, v in out.items() if k != "weight_mean"}


# ============================================================================================
# The registry
# ============================================================================================

PHASES: dict[str, Phase] = {
    "sft": Phase("sft", tokenize=tokenize_sft, micro_loss=sft_micro, finish_stats=sft_stats,
                 evaluate=sft_evaluate, metric_keys=("ppl",)),
    "dpo": Phase("dpo", tokenize=tokenize_pairs, micro_loss=dpo_micro, finish_stats=dpo_stats,
                 evaluate=dpo_evaluate, needs_reference=True, seed_offset=1,
                 metric_keys=("reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward",
                              "chosen_logps", "rejected_logps", "kl_to_ref", "weight_mean")),
}
