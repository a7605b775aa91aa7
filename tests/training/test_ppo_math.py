"""PPO's math (training.ppo, training.losses) on hand-computed values, plus hypothesis properties."""
import math
import statistics

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from training import losses, ppo


def t(*rows):
    """t(1.0, 2.0) and t([1.0, 2.0]) are 1-D; t([..], [..]) is 2-D."""
    data = rows[0] if len(rows) == 1 and isinstance(rows[0], list) else rows
    return torch.tensor(data, dtype=torch.float64)


# ------------------------------------------------------------------ clipped surrogate


def test_clipped_surrogate_by_hand():
    # four tokens, eps = 0.2, ratios 1.5, 1.5, 0.5, 0.5 against advantages +1, -1, +1, -1
    old = t([0.0, 0.0, 0.0, 0.0])
    new = t([math.log(1.5), math.log(1.5), math.log(0.5), math.log(0.5)])
    adv = t([1.0, -1.0, 1.0, -1.0])
    mask = t([1.0, 1.0, 1.0, 1.0])
    loss, clip_frac, approx_kl = losses.ppo_clipped_surrogate(new, old, adv, 0.2, mask)
    # token 1: max(-1.5, -1.2) = -1.2 (clipped: the gain of a too-large step is capped)
    # token 2: max( 1.5,  1.2) =  1.5 (unclipped: a bad step is always fully penalised)
    # token 3: max(-0.5, -0.8) = -0.5 (unclipped)
    # token 4: max( 0.5,  0.8) =  0.8 (clipped)
    assert loss.item() == pytest.approx((-1.2 + 1.5 - 0.5 + 0.8) / 4)
    assert clip_frac.item() == pytest.approx(0.5)
    # k3: (r - 1) - log r, mean of 0.5 - log 1.5 (twice) and -0.5 - log 0.5 (twice)
    k3 = ((0.5 - math.log(1.5)) + (-0.5 - math.log(0.5))) / 2
    assert approx_kl.item() == pytest.approx(k3)


def test_clipped_surrogate_ignores_masked_tokens_and_gradient_is_zero_when_clipped():
    new = t([math.log(1.5), 0.3]).requires_grad_()
    loss, clip_frac, _ = losses.ppo_clipped_surrogate(new, t([0.0, 0.0]), t([1.0, 5.0]), 0.2, t([1.0, 0.0]))
    assert loss.item() == pytest.approx(-1.2)
    loss.backward()
    assert new.grad.tolist() == [0.0, 0.0]  # clipped token: no gradient; masked token: none either
    assert clip_frac.item() == 1.0


# ------------------------------------------------------------------ value loss


def test_clipped_value_loss_by_hand():
    # token 1: v=1.0, old=0.5, R=2: v_clip = 0.7; max((1-2)^2, (0.7-2)^2) = 1.69
    # token 2: v=1.0, old=0.9, R=0: v_clip = 1.0; max(1, 1) = 1
    values, old, ret = t([1.0, 1.0]), t([0.5, 0.9]), t([2.0, 0.0])
    loss = losses.ppo_value_loss(values, old, ret, 0.2, t([1.0, 1.0]))
    assert loss.item() == pytest.approx(0.5 * (1.69 + 1.0) / 2)
    assert ppo.value_clip_fraction(values, old, ret, 0.2, t([1.0, 1.0])).item() == pytest.approx(0.5)
    assert losses.ppo_value_loss(values, old, ret, 0.2, t([0.0, 1.0])).item() == pytest.approx(0.5)


# ------------------------------------------------------------------ GAE


def test_gae_by_hand():
    rewards, values, mask = t([0.0, 0.0, 1.0]), t([0.5, 0.6, 0.7]), t([1.0, 1.0, 1.0])
    adv, ret = ppo.gae(rewards[None], values[None], mask[None], gamma=1.0, lam=0.95)
    # delta_2 = 1 - 0.7 = 0.3;  delta_1 = 0.7 - 0.6 = 0.1;  delta_0 = 0.6 - 0.5 = 0.1
    # A_2 = 0.3;  A_1 = 0.1 + 0.95 * 0.3 = 0.385;  A_0 = 0.1 + 0.95 * 0.385 = 0.46575
    assert adv[0].tolist() == pytest.approx([0.46575, 0.385, 0.3])
    assert ret[0].tolist() == pytest.approx([0.96575, 0.985, 1.0])
    adv, _ = ppo.gae(rewards[None], values[None], mask[None], gamma=0.9, lam=0.5)
    # delta_2 = 0.3; delta_1 = 0.9*0.7 - 0.6 = 0.03; delta_0 = 0.9*0.6 - 0.5 = 0.04
    # A_1 = 0.03 + 0.45 * 0.3 = 0.165; A_0 = 0.04 + 0.45 * 0.165 = 0.11425
    assert adv[0].tolist() == pytest.approx([0.11425, 0.165, 0.3])


def test_gae_padding_is_the_end_of_the_episode():
    # a 2-token response padded to 4: whatever sits in the padding changes nothing
    r = t([0.0, 1.0, 9.0, 9.0])[None]
    v = t([0.2, 0.4, 7.0, 7.0])[None]
    m = t([1.0, 1.0, 0.0, 0.0])[None]
    adv, ret = ppo.gae(r, v, m, 1.0, 0.95)
    alone, _ = ppo.gae(r[:, :2], v[:, :2], m[:, :2], 1.0, 0.95)
    assert adv[0, :2].tolist() == pytest.approx(alone[0].tolist())
    assert adv[0, 2:].tolist() == [0.0, 0.0] and ret[0, 2:].tolist() == [0.0, 0.0]
    # A_1 = 1 - 0.4 = 0.6; A_0 = (0.4 - 0.2) + 0.95 * 0.6 = 0.77
    assert alone[0].tolist() == pytest.approx([0.77, 0.6])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(-5, 5), st.floats(-5, 5)), min_size=1, max_size=12), st.integers(0, 4))
def test_gae_with_lambda_and_gamma_one_is_reward_to_go_minus_value(steps, pad):
    """Monte-Carlo limit: with gamma = lambda = 1, A_t = sum_{s >= t} r_s - V_t, padding or not."""
    r = t([s[0] for s in steps] + [3.0] * pad)[None]
    v = t([s[1] for s in steps] + [-2.0] * pad)[None]
    m = t([1.0] * len(steps) + [0.0] * pad)[None]
    adv, ret = ppo.gae(r, v, m, gamma=1.0, lam=1.0)
    n = len(steps)
    to_go = [sum(s[0] for s in steps[i:]) for i in range(n)]
    assert adv[0, :n].tolist() == pytest.approx([g - s[1] for g, s in zip(to_go, steps)], abs=1e-9)
    assert ret[0, :n].tolist() == pytest.approx(to_go, abs=1e-9)


# ------------------------------------------------------------------ whitening


def test_whitening_by_hand():
    x = t([1.0, 2.0, 3.0, 4.0, 100.0])
    m = t([1.0, 1.0, 1.0, 1.0, 0.0])
    # mean 2.5, unbiased variance (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3
    sd = math.sqrt(5 / 3 + 1e-8)
    w = ppo.masked_whiten(x, m)
    assert w.tolist() == pytest.approx([-1.5 / sd, -0.5 / sd, 0.5 / sd, 1.5 / sd, 0.0])
    kept = ppo.masked_whiten(x, m, shift_mean=False)
    assert kept.tolist()[:4] == pytest.approx([2.5 - 1.5 / sd, 2.5 - 0.5 / sd, 2.5 + 0.5 / sd, 2.5 + 1.5 / sd])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-100, 100), min_size=2, max_size=30).filter(lambda xs: max(xs) - min(xs) > 1e-3))
@example(xs=[0.0, 0.001953125])  # found by a CI run: the 1e-8 in the variance shows
def test_whitened_values_have_mean_zero_and_unit_std(xs):
    w = ppo.masked_whiten(t(xs), torch.ones(len(xs), dtype=torch.float64))
    assert w.mean().item() == pytest.approx(0.0, abs=1e-6)
    # unit standard deviation up to the 1e-8 added to the variance (it matters when the values
    # barely differ: xs = [0, 0.00195] whitens to a standard deviation of 0.9974)
    var = statistics.variance(xs)
    assert w.std().item() == pytest.approx(math.sqrt(var / (var + 1e-8)), rel=1e-6)
    if var > 1e-4:
        assert w.std().item() == pytest.approx(1.0, abs=1e-3)


# ------------------------------------------------------------------ KL, rewards, EOS


def test_kl_estimators_by_hand():
    lp, ref = t([-1.0]), t([-1.5])  # d = 0.5
    assert ppo.kl_penalty(lp, ref, "k1").item() == pytest.approx(0.5)
    assert ppo.kl_penalty(lp, ref, "k2").item() == pytest.approx(0.125)
    assert ppo.kl_penalty(lp, ref, "k3").item() == pytest.approx(math.exp(-0.5) - 1 + 0.5)
    with pytest.raises(ValueError, match="unknown KL estimator"):
        ppo.kl_penalty(lp, ref, "k4")


def test_per_token_rewards_put_the_score_on_the_last_response_token():
    kl = t([0.1, 0.2, 0.3], [0.4, 0.5, 0.0])
    mask = t([1.0, 1.0, 1.0], [1.0, 1.0, 0.0])
    rewards, non_score = ppo.per_token_rewards(t(2.0, -1.0), kl, 0.5, mask)
    assert rewards.flatten().tolist() == pytest.approx([-0.05, -0.1, -0.15 + 2.0, -0.2, -0.25 - 1.0, 0.0])
    assert non_score.sum(1).tolist() == pytest.approx([-0.3, -0.45])


def test_adaptive_kl_controller_by_hand():
    # Ziegler et al. 2019: beta *= 1 + clip(KL/target - 1, -0.2, 0.2) * n / horizon
    c = ppo.AdaptiveKLController(0.2, target=6.0, horizon=10000)
    assert c.update(6.6, 256) == pytest.approx(0.2 * (1 + 0.1 * 256 / 10000))
    c = ppo.AdaptiveKLController(0.2, target=6.0, horizon=10000)
    assert c.update(60.0, 16) == pytest.approx(0.2 * (1 + 0.2 * 16 / 10000))  # error clipped at +0.2
    c = ppo.AdaptiveKLController(0.2, target=6.0, horizon=10000)
    assert c.update(0.0, 16) == pytest.approx(0.2 * (1 - 0.2 * 16 / 10000))
    fixed = ppo.kl_controller(0.05)
    assert fixed.update(100.0, 16) == 0.05


def test_truncate_after_eos_and_missing_eos_penalty():
    tokens = torch.tensor([[5, 2, 7, 8], [5, 6, 7, 8], [2, 9, 9, 9]])
    out, mask, lengths, has_eos = ppo.truncate_after_eos(tokens, eos_id=2, pad_id=0)
    assert out.tolist() == [[5, 2, 0, 0], [5, 6, 7, 8], [2, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert lengths.tolist() == [2, 4, 1] and has_eos.tolist() == [True, False, True]
    scores = ppo.apply_missing_eos_penalty(torch.tensor([1.0, 1.0, 1.0]), has_eos, 3.0)
    assert scores.tolist() == [1.0, -2.0, 1.0]
    assert ppo.apply_missing_eos_penalty(scores, has_eos, None).tolist() == scores.tolist()


def test_rollout_finish_and_select():
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    roll = ppo.Rollout(prompt_ids=[[1, 2], [3]], responses=torch.tensor([[4, 5, 6], [7, 0, 0]]), mask=mask,
                       logprobs=t([-1.0, -1.0, -1.0], [-2.0, 0.0, 0.0]).float(),
                       ref_logprobs=t([-1.5, -1.0, -1.0], [-2.0, 0.0, 0.0]).float(),
                       values=torch.zeros(2, 3), scores=torch.tensor([1.0, 0.0]), raw_scores=torch.tensor([1.0, 0.0]),
                       has_eos=torch.tensor([True, False]))
    roll.finish(kl_coef=0.1, gamma=1.0, lam=1.0)
    # row 0: KL 0.5 on token 0 -> reward -0.05 there, score 1 on token 2
    assert roll.rewards[0].tolist() == pytest.approx([-0.05, 0.0, 1.0])
    assert roll.returns[0].tolist() == pytest.approx([0.95, 1.0, 1.0])
    assert roll.advantages[1, 1:].tolist() == [0.0, 0.0]
    assert roll.stats()["kl"] == pytest.approx(0.25)
    part = roll.select([1])
    assert part.responses.shape == (1, 1) and part.prompt_ids == [[3]]
