"""PPO for language models as pure tensor functions: KL penalty, GAE, whitening, rollout bookkeeping.

Nothing here knows about models, tokenizers or Django: each function takes tensors and returns
tensors, so each can be checked by hand (``tests/training/test_ppo_math.py``). The losses of the
update itself (clipped surrogate, clipped value loss) live in ``training.losses``; the loop that
samples, scores and updates is ``training.ppo_trainer``.

One PPO iteration (Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences";
Stiennon et al. 2020; the details follow Huang et al. 2024, "The N+ Implementation Details of
RLHF with PPO", and TRL's PPOTrainer, whose defaults we keep unless noted):

1. sample a response ``y`` for each prompt ``x`` from the policy (temperature ``T``), keep the
   per-token log-probs ``logp_t`` of the sampled tokens, cut each response after its first EOS;
2. score: ``s = RM(x, y)`` (normalised, minus ``missing_eos_penalty`` when ``y`` has no EOS),
   reference log-probs ``ref_t`` and values ``V_t`` of the state before each response token;
3. per-token reward ``r_t = -beta * KL_t`` plus ``s`` on the last response token
   (:func:`per_token_rewards`), with ``KL_t`` an estimator of ``log pi/pi_ref`` (:func:`kl_penalty`)
   and ``beta`` fixed or adapted towards a target KL (:class:`AdaptiveKLController`);
4. advantages by GAE(gamma, lambda) (:func:`gae`), returns ``A_t + V_t``, advantages whitened over
   the batch (:func:`masked_whiten`);
5. ``ppo_epochs`` passes of shuffled minibatches: clipped surrogate + ``vf_coef`` x clipped value
   loss (``training.losses``), gradient clipping, AdamW.

Defaults and where they come from (the fields are ``ppo_*`` of ``training.config.TrainConfig``):

=====================  ========  ==============================================================
setting                default   source
=====================  ========  ==============================================================
clip range (epsilon)   0.2       Schulman et al. 2017; TRL ``cliprange``
value clip range       0.2       Ziegler et al. 2019 (lm-human-preferences); TRL ``cliprange_value``
value loss coef        0.1       Ziegler et al. 2019; TRL ``vf_coef``
gamma / lambda         1.0/0.95  Ziegler et al. 2019; Huang et al. 2024; TRL ``gamma``/``lam``
PPO epochs             4         Ziegler et al. 2019 (``noptepochs``); TRL ``num_ppo_epochs``
minibatches            1         TRL ``num_mini_batches``
KL coefficient         0.05      TRL ``kl_coef``; Stiennon et al. 2020 use beta = 0.05
KL estimator           k1        TRL ``kl_estimator`` (http://joschu.net/blog/kl-approx.html)
adaptive KL            off       Ziegler et al. 2019 eq. (2): target 6 nats, horizon 10000,
                                 error clipped to +-0.2 (as TRL < 0.12 ``adap_kl_ctrl``)
temperature            0.7       TRL ``temperature``; Huang et al. 2024
response length        53        TRL ``response_length``; Huang et al. 2024 (TL;DR)
missing-EOS penalty    none      TRL ``missing_eos_penalty``; Huang et al. 2024 give such
                                 responses a fixed low score ("EOS trick")
whiten rewards         off       TRL ``whiten_rewards``; advantages always whitened (Huang et al.)
value model            shared    a value head on the policy's trunk, trained with it through
                                 ``vf_coef`` (Ziegler et al. 2019; TRL <= 0.11's
                                 ``AutoModelForCausalLMWithValueHead``): half the update compute, and
                                 it runs with a reward function too; ``reward`` is the separate
                                 critic initialised from the reward model of Stiennon et al. 2020,
                                 Huang et al. 2024 and TRL's example scripts
learning rate          3e-6      TRL ``learning_rate``; Huang et al. 2024
=====================  ========  ==============================================================

Shapes: a rollout of ``B`` prompts has right-padded responses ``(B, T)`` with a 0/1 ``mask``;
every per-token tensor (log-probs, values, rewards, advantages) is ``(B, T)`` and is zero where
``mask`` is 0. ``values[:, t]`` is the value of the state *before* response token ``t``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from .losses import masked_mean

KL_ESTIMATORS = ("k1", "k2", "k3")


# ============================================================================================
# Masked statistics
# ============================================================================================


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``values`` where ``mask`` is 1 (Bessel-corrected when ``unbiased``)."""
    mask = mask.to(values.dtype)
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        if n < 2:
            raise ValueError("masked_var needs at least two unmasked values")
        var = var * n / (n - 1)
    return var


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  eps: float = 1e-8) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` over the masked entries (unbiased variance, as TRL and
    Huang et al. 2024); masked-out entries come back as 0. ``shift_mean=False`` keeps the mean
    (for rewards: whitening must not change their sign on average)."""
    mask = mask.to(values.dtype)
    mean = masked_mean(values, mask)
    var = masked_var(values, mask)
    out = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` over the last dimension: ``logsumexp(z) - sum(p * z)``."""
    logits = logits.float()
    p = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (p * logits).sum(-1)


# ============================================================================================
# Responses: cut at EOS, penalise a missing EOS
# ============================================================================================


def truncate_after_eos(tokens: torch.Tensor, eos_id: int | None, pad_id: int):
    """Cut each row of sampled ``tokens`` ``(B, T)`` after its first ``eos_id`` (kept).

    Returns ``(tokens, mask, lengths, has_eos)``: the tokens with everything after the EOS set to
    ``pad_id``, the 0/1 mask of real response tokens, their count per row, and whether the row
    holds an EOS at all. ``eos_id=None``: nothing is cut.
    """
    b, t = tokens.shape
    if eos_id is None:
        mask = torch.ones_like(tokens)
        return tokens.clone(), mask, torch.full((b,), t, dtype=torch.long), torch.zeros(b, dtype=torch.bool)
    is_eos = tokens == eos_id
    has_eos = is_eos.any(dim=1)
    first = torch.where(has_eos, is_eos.float().argmax(dim=1), torch.full((b,), t - 1, device=tokens.device))
    idx = torch.arange(t, device=tokens.device)[None, :]
    mask = (idx <= first[:, None]).to(torch.long)
    out = torch.where(mask.bool(), tokens, torch.full_like(tokens, pad_id))
    return out, mask, mask.sum(dim=1), has_eos


def apply_missing_eos_penalty(scores: torch.Tensor, has_eos: torch.Tensor, penalty: float | None) -> torch.Tensor:
    """``scores - penalty`` for the responses without an EOS (TRL's ``missing_eos_penalty``: the
    sampler hit the length limit, so the response is unfinished)."""
    if not penalty:
        return scores
    return torch.where(has_eos.to(scores.device), scores, scores - penalty)


# ============================================================================================
# KL to the reference, and its coefficient
# ============================================================================================


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of ``KL(pi || pi_ref)`` from the sampled tokens' log-probs.

    With ``d = logprobs - ref_logprobs`` (http://joschu.net/blog/kl-approx.html):
    ``k1 = d`` (unbiased, can be negative), ``k2 = d**2 / 2``, ``k3 = (exp(-d) - 1) + d`` (unbiased,
    never negative, lower variance).
    """
    d = logprobs - ref_logprobs
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d ** 2
    if estimator == "k3":
        return torch.expm1(-d) + d
    raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {KL_ESTIMATORS}")


class FixedKLController:
    """A constant KL coefficient ``beta``."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Ziegler et al. 2019, eq. (2): steer the KL towards ``target``.

    ``e = clip(KL / target - 1, -0.2, 0.2)``; ``beta <- beta * (1 + e * n_steps / horizon)``,
    where ``n_steps`` is the number of episodes (responses) since the last update. A KL above the
    target raises ``beta`` (pulls harder towards the reference), below it lowers ``beta``.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int = 10000):
        if target <= 0 or horizon <= 0:
            raise ValueError("the adaptive KL controller needs target > 0 and horizon > 0")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


def kl_controller(kl_coef: float, target: float | None = None, horizon: int = 10000):
    """A fixed controller, or an adaptive one when ``target`` is set."""
    return FixedKLController(kl_coef) if target is None else AdaptiveKLController(kl_coef, target, horizon)


# ============================================================================================
# Rewards, GAE
# ============================================================================================


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of a right-padded 0/1 ``mask`` (0 for an empty row)."""
    return (mask.sum(dim=1) - 1).clamp(min=0).long()


def per_token_rewards(scores: torch.Tensor, kl: torch.Tensor, kl_coef: float, mask: torch.Tensor):
    """``r_t = -kl_coef * KL_t`` on every response token, plus the sequence's score on its last
    token. Returns ``(rewards, non_score_rewards)``, both ``(B, T)`` and 0 outside ``mask``."""
    mask = mask.to(kl.dtype)
    non_score = -kl_coef * kl * mask
    rewards = non_score.clone()
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last_index(mask)] += scores.to(rewards.dtype)
    return rewards, non_score


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over right-padded responses.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` with ``V`` = 0 after the last response token (the
    episode ends there), ``A_t = delta_t + gamma * lam * A_{t+1}``. Returns ``(advantages,
    returns = advantages + values)``, both 0 outside ``mask``.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    t_max = rewards.shape[1]
    last = torch.zeros_like(values[:, 0])
    out = [None] * t_max
    for t in reversed(range(t_max)):
        next_v = values[:, t + 1] if t + 1 < t_max else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        out[t] = last
    advantages = torch.stack(out, dim=1)
    return advantages, (advantages + values) * mask


def value_clip_fraction(values, old_values, returns, clip_eps: float, mask) -> torch.Tensor:
    """Share of tokens where the clipped value term is the larger (so it set the value loss)."""
    clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    return masked_mean(((clipped - returns) ** 2 > (values - returns) ** 2).to(values.dtype), mask)


# ============================================================================================
# Rollout bookkeeping
# ============================================================================================


@dataclass
class Rollout:
    """One iteration's experience. Per prompt: ``prompt_ids`` (list of token lists), responses
    ``(B, T)`` right-padded with ``mask``; per token ``(B, T)``: ``logprobs`` (policy at sampling
    time), ``ref_logprobs``, ``values``; per sequence ``scores`` (after normalisation and
    penalties) and ``raw_scores`` (the reward model's number). ``finish`` adds rewards,
    advantages and returns."""

    prompt_ids: list
    responses: torch.Tensor
    mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor
    raw_scores: torch.Tensor
    has_eos: torch.Tensor
    kl: torch.Tensor | None = None
    rewards: torch.Tensor | None = None
    non_score_rewards: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.responses.shape[0]

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(dim=1)

    def finish(self, kl_coef: float, gamma: float, lam: float, kl_estimator: str = "k1",
               whiten_rewards: bool = False) -> "Rollout":
        """Per-token rewards, GAE advantages (whitened) and returns; in place, returns self."""
        m = self.mask.float()
        self.kl = kl_penalty(self.logprobs, self.ref_logprobs, kl_estimator) * m
        self.rewards, self.non_score_rewards = per_token_rewards(self.scores, self.kl, kl_coef, m)
        if whiten_rewards:
            self.rewards = masked_whiten(self.rewards, m, shift_mean=False)
        adv, self.returns = gae(self.rewards, self.values, m, gamma, lam)
        self.advantages = masked_whiten(adv, m) if m.sum() > 1 else adv
        return self

    def select(self, idx: list[int] | torch.Tensor) -> "Rollout":
        """The rows ``idx`` (a minibatch), trimmed to their longest response."""
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        width = max(1, int(self.mask[idx_t].sum(dim=1).max()))
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "prompt_ids":
                out[f.name] = [v[i] for i in idx_t.tolist()]
            elif v is None:
                out[f.name] = None
            elif v.dim() == 2:
                out[f.name] = v[idx_t, :width]
            else:
                out[f.name] = v[idx_t]
        return Rollout(**out)

    def stats(self) -> dict:
        """Per-iteration numbers for the run page (means over the batch)."""
        m = self.mask.float()
        kl_seq = (self.kl * m).sum(1) if self.kl is not None else torch.zeros(len(self))
        out = {
            "reward": float(self.scores.mean()),
            "reward_raw": float(self.raw_scores.mean()),
            "reward_std": float(self.scores.std()) if len(self) > 1 else 0.0,
            "kl": float(kl_seq.mean()),
            "response_length": float(m.sum(1).mean()),
            "eos_fraction": float(self.has_eos.float().mean()),
            "policy_entropy_sampled": float((-self.logprobs * m).sum(1).mean()),
        }
        if self.non_score_rewards is not None:
            out["non_score_reward"] = float(self.non_score_rewards.sum(1).mean())
            out["rlhf_reward"] = out["reward"] + out["non_score_reward"]
        if self.returns is not None:
            out["value_mean"] = float(masked_mean(self.values, m))
            out["return_mean"] = float(masked_mean(self.returns, m))
        return out


def minibatch_order(n: int, n_minibatches: int, generator: torch.Generator) -> list[list[int]]:
    """A fresh random permutation of ``range(n)`` cut into ``n_minibatches`` equal parts (the last
    part takes the remainder)."""
    if n_minibatches < 1 or n_minibatches > n:
        raise ValueError(f"cannot cut {n} rollouts into {n_minibatches} minibatches")
    perm = torch.randperm(n, generator=generator).tolist()
    size = math.ceil(n / n_minibatches)
    return [perm[i:i + size] for i in range(0, n, size)]


__all__ = ["KL_ESTIMATORS", "masked_var", "masked_whiten", "entropy_from_logits", "truncate_after_eos",
           "apply_missing_eos_penalty", "kl_penalty", "FixedKLController", "AdaptiveKLController",
           "kl_controller", "per_token_rewards", "gae", "value_clip_fraction", "Rollout", "minibatch_order",
           "last_index"]
