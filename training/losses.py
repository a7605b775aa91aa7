"""Preference, reward-model and RL losses as pure functions of log-probabilities.

Nothing here knows about models, tokenizers or Django: every function takes tensors and
returns tensors, so each one can be checked by hand on three numbers (see
``tests/training/test_losses.py``). The style follows ``preference_loss`` in
eric-mitchell/direct-preference-optimization.

Notation, per preference pair ``i``::

    pi_c, pi_r   summed log-probability of the chosen / rejected response under the policy
    ref_c, ref_r the same under the frozen reference model
    h            = (pi_c - ref_c) - (pi_r - ref_r)        the DPO "logit"
    beta         the inverse temperature (strength of the pull towards the reference)

Batch reduction. Every loss returns ``mean_i(w_i * l_i)``: the per-pair loss times its weight,
summed and divided by the number of pairs (not by the sum of the weights). So

* a pair with weight 0 contributes no gradient at all, and
* doubling every weight doubles the gradient (the weights act like a per-pair learning rate),

which is what the calibrated export's "annotator-weighted confidence" means: a pair that the
annotators agree on moves the model more than a contested one. With ``weights=None`` every
weight is 1 and the reduction is the plain mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import DPO_LOSS_TYPES


def weighted_mean(per_example: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``sum(w * l) / n`` (``mean(l)`` when ``weights`` is None). See the module docstring."""
    if weights is None:
        return per_example.mean()
    weights = weights.to(per_example.dtype)
    if weights.shape != per_example.shape:
        raise ValueError(f"weights has shape {tuple(weights.shape)}, expected {tuple(per_example.shape)}")
    return (weights * per_example).mean()


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` over the positions where ``mask`` is 1 (0 when the mask is empty)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1.0)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def label_targets(
    p_chosen: torch.Tensor, ties: torch.Tensor | None, use_soft_labels: bool
) -> torch.Tensor | None:
    """The per-pair target probability ``p`` the preference losses take (``None``: hard labels).

    ``p_chosen`` holds each pair's probability that "chosen" is better (NaN where the row gave
    none); ``ties`` marks pairs where neither is better (None: no tie). With ``use_soft_labels``
    every pair's ``p_chosen`` is its target (NaN -> 1). Without, decided pairs keep the hard
    label ``p = 1`` and only ties use theirs (0.5), so a tie is never trained as a preference;
    with no tie the result is ``None`` and the losses compute exactly the textbook hard-label form.
    """
    if use_soft_labels:
        return torch.where(torch.isnan(p_chosen), torch.ones_like(p_chosen), p_chosen)
    if ties is None or not bool(ties.any()):
        return None
    tie_p = torch.where(torch.isnan(p_chosen), torch.full_like(p_chosen, 0.5), p_chosen)
    return torch.where(ties, tie_p, torch.ones_like(p_chosen))


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    weights: torch.Tensor | None = None,
    p_chosen: torch.Tensor | None = None,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DPO family of losses. Returns ``(loss, chosen_rewards, rejected_rewards)``.

    All inputs are 1-D tensors of shape ``(batch,)``; log-probabilities are summed over the
    response tokens. The rewards are ``beta * (policy - reference)`` log-ratios, detached, as in
    TRL (they are for logging; the loss carries the gradient).

    ``loss_type`` (with ``p = p_chosen``, the probability that "chosen" is the better response;
    ``p = 1`` when no soft labels are given, which gives the textbook losses):

    ``"sigmoid"`` -- standard DPO (Rafailov et al. 2023), the Bradley-Terry log-likelihood::

        l = -p * logsigmoid(beta*h) - (1-p) * logsigmoid(-beta*h)

    ``"cdpo"`` -- conservative DPO (Mitchell 2023): the labels are flipped with probability
    ``eps = label_smoothing``, i.e. the sigmoid loss with target ``p' = (1-eps)*p + eps*(1-p)``.
    (TRL <= 0.x called this "sigmoid with label_smoothing"; TRL 1.16's "sigmoid" ignores
    ``label_smoothing``, so we give it its own name.)

    ``"robust"`` -- robust DPO (Chowdhury et al. 2024), TRL's definition, an unbiased estimate
    under label noise ``eps``::

        l = ((1-eps) * -logsigmoid(beta*h) + eps * logsigmoid(-beta*h)) / (1 - 2*eps)

    ``"hinge"`` -- SLiC (Zhao et al. 2023): ``l = p*relu(1 - beta*h) + (1-p)*relu(1 + beta*h)``.

    ``"ipo"`` -- IPO (Azar et al. 2023) with TRL's per-token normalisation: when
    ``chosen_lengths`` / ``rejected_lengths`` (number of response tokens) are given, the log-ratios
    are divided by them first, ``h = (pi_c-ref_c)/n_c - (pi_r-ref_r)/n_r``. Then::

        l = p * (h - 1/(2*beta))**2 + (1-p) * (h + 1/(2*beta))**2

    (the expectation of IPO's squared loss over the label; its minimiser is
    ``h* = (2p-1)/(2*beta)``, so p=1/2 pulls the two responses together).

    ``weights`` -- per-pair weights, reduced as ``mean(w * l)`` (see the module docstring).
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; expected one of {DPO_LOSS_TYPES}")
    if label_smoothing and loss_type not in ("cdpo", "robust"):
        raise ValueError(
            f"label_smoothing={label_smoothing} only applies to loss_type 'cdpo' or 'robust', "
            f"not {loss_type!r}"
        )
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")

    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps

    if p_chosen is not None:
        p = p_chosen.to(chosen_logratios.dtype)
        if ((p < 0) | (p > 1)).any():
            raise ValueError("p_chosen must lie in [0, 1]")
    else:
        p = None

    if loss_type == "ipo":
        h_c, h_r = chosen_logratios, rejected_logratios
        if chosen_lengths is not None:
            h_c = h_c / chosen_lengths.to(h_c.dtype).clamp(min=1.0)
        if rejected_lengths is not None:
            h_r = h_r / rejected_lengths.to(h_r.dtype).clamp(min=1.0)
        h = h_c - h_r
        target = 1.0 / (2.0 * beta)
        losses = (h - target) ** 2
        if p is not None:
            losses = p * losses + (1 - p) * (h + target) ** 2
    else:
        logits = beta * (chosen_logratios - rejected_logratios)
        if loss_type == "sigmoid":
            losses = -F.logsigmoid(logits)
            if p is not None:
                losses = p * losses - (1 - p) * F.logsigmoid(-logits)
        elif loss_type == "cdpo":
            eps = label_smoothing
            q = torch.ones_like(logits) if p is None else p
            q = (1 - eps) * q + eps * (1 - q)
            losses = -q * F.logsigmoid(logits) - (1 - q) * F.logsigmoid(-logits)
        elif loss_type == "robust":
            eps = label_smoothing
            if p is not None:
                raise ValueError("soft labels (p_chosen) are not defined for loss_type 'robust'")
            losses = (-(1 - eps) * F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) / (1 - 2 * eps)
        else:  # hinge
            losses = torch.relu(1 - logits)
            if p is not None:
                losses = p * losses + (1 - p) * torch.relu(1 + logits)

    loss = weighted_mean(losses, weights)
    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    return loss, chosen_rewards, rejected_rewards


def bt_reward_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    weights: torch.Tensor | None = None,
    margin: torch.Tensor | float | None = None,
    p_chosen: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bradley-Terry loss for a scalar reward model (InstructGPT; Llama 2's margin variant).

    ``l = -p * logsigmoid(r_c - r_r - m) - (1-p) * logsigmoid(r_r - r_c - m)`` with ``m = margin``
    (0 by default; Llama 2 uses a larger margin for pairs the annotators rated "clearly" better)
    and ``p = p_chosen`` (1 by default). Reduced as ``mean(w * l)``.
    """
    diff = chosen_rewards - rejected_rewards
    m = 0.0 if margin is None else margin
    losses = -F.logsigmoid(diff - m)
    if p_chosen is not None:
        p = p_chosen.to(diff.dtype)
        losses = p * losses - (1 - p) * F.logsigmoid(-diff - m)
    return weighted_mean(losses, weights)


def ppo_clipped_surrogate(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps: float,
    mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped policy objective (Schulman et al. 2017), per token, as a loss to minimise.

    ``ratio = exp(logprobs - old_logprobs)``;
    ``l = max(-A * ratio, -A * clip(ratio, 1-eps, 1+eps))``, averaged over the tokens where
    ``mask`` is 1. Returns ``(loss, clip_fraction, approx_kl)``; the last two are detached
    diagnostics (``approx_kl`` is the k3 estimator ``mean((r-1) - log r)``).
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).to(logprobs.dtype), mask)
        approx_kl = masked_mean((ratio - 1) - log_ratio, mask)
    return loss, clip_fraction, approx_kl


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    clip_eps: float,
    mask: torch.Tensor,
) -> torch.Tensor:
    """PPO's clipped value loss: ``0.5 * max((v - R)^2, (v_clip - R)^2)`` averaged over ``mask``,
    with ``v_clip = old_v + clip(v - old_v, -eps, eps)``."""
    clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


def sft_loss(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood per response token: ``-sum(logp * mask) / sum(mask)``."""
    return -masked_mean(token_logps, mask)


def sft_sequence_loss(
    sequence_logps: torch.Tensor, num_tokens: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """SFT loss from per-sequence summed log-probs: ``-sum_i w_i * logp_i / sum_i n_i``
    (the per-token mean over the batch; with ``weights=None`` equal to :func:`sft_loss`)."""
    w = torch.ones_like(sequence_logps) if weights is None else weights.to(sequence_logps.dtype)
    return -(w * sequence_logps).sum() / num_tokens.to(sequence_logps.dtype).sum().clamp(min=1.0)
