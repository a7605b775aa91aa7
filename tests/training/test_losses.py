"""training.losses on hand-computed values, and float64 gradchecks of every loss."""
import math

import pytest
import torch

from training import losses

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


# One pair, worked by hand: beta = 0.5
#   chosen log-ratio   = -1.0 - (-1.5) = 0.5
#   rejected log-ratio = -2.0 - (-1.5) = -0.5
#   h = 0.5 - (-0.5) = 1.0, beta * h = 0.5
PI_C, PI_R, REF_C, REF_R, BETA = -1.0, -2.0, -1.5, -1.5, 0.5
LOG1P_EXP_M05 = math.log(1 + math.exp(-0.5))  # -logsigmoid(0.5)  = 0.474076984...
LOG1P_EXP_P05 = math.log(1 + math.exp(0.5))  # -logsigmoid(-0.5) = 0.974076984...


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def one(loss_type="sigmoid", **kw):
    return losses.dpo_loss(t(PI_C), t(PI_R), t(REF_C), t(REF_R), beta=kw.pop("beta", BETA), loss_type=loss_type, **kw)


def test_sigmoid_by_hand():
    loss, cr, rr = one()
    assert LOG1P_EXP_M05 == pytest.approx(0.4740769841, abs=1e-9)
    assert loss.item() == pytest.approx(LOG1P_EXP_M05, abs=1e-12)
    # rewards are beta * log-ratio: 0.5 * 0.5 and 0.5 * -0.5
    assert cr.item() == pytest.approx(0.25) and rr.item() == pytest.approx(-0.25)


def test_soft_label_by_hand():
    # p = 0.75: 0.75 * 0.4740769841 + 0.25 * 0.9740769841 = 0.5990769841
    loss, _, _ = one(p_chosen=t(0.75))
    assert loss.item() == pytest.approx(0.5990769841, abs=1e-9)
    # p = 1 is plain DPO; p = 0 swaps chosen and rejected
    assert one(p_chosen=t(1.0))[0].item() == pytest.approx(LOG1P_EXP_M05)
    swapped = losses.dpo_loss(t(PI_R), t(PI_C), t(REF_R), t(REF_C), beta=BETA)[0]
    assert one(p_chosen=t(0.0))[0].item() == pytest.approx(swapped.item())


def test_label_targets_ties_are_half_whatever_use_soft_labels_says():
    nan = float("nan")
    p = t(0.8, nan, 0.5, nan)
    ties = torch.tensor([False, False, True, True])
    # hard labels: decided pairs p = 1, ties their own 0.5 (0.5 too when the row gave none)
    assert losses.label_targets(p, ties, use_soft_labels=False).tolist() == [1.0, 1.0, 0.5, 0.5]
    # soft labels: every pair its p_chosen (1 where missing; a tie without one is 0.5 from tokenization)
    assert losses.label_targets(p, ties, use_soft_labels=True)[:3].tolist() == [0.8, 1.0, 0.5]
    # no tie and hard labels: None, so the losses run exactly the textbook code path
    assert losses.label_targets(p, None, use_soft_labels=False) is None
    assert losses.label_targets(p, torch.zeros(4, dtype=torch.bool), use_soft_labels=False) is None


def test_tie_in_a_batch_by_hand():
    """A batch of the worked pair as a preference and as a tie, hard labels otherwise:
    (0.4740769841 + (0.5 * 0.4740769841 + 0.5 * 0.9740769841)) / 2 = 0.5990769841."""
    p = losses.label_targets(t(1.0, 0.5), torch.tensor([False, True]), use_soft_labels=False)
    loss, _, _ = losses.dpo_loss(t(PI_C, PI_C), t(PI_R, PI_R), t(REF_C, REF_C), t(REF_R, REF_R), beta=BETA,
                                 p_chosen=p)
    assert loss.item() == pytest.approx((0.4740769841 + 0.7240769841) / 2, abs=1e-9)
    # the tie alone pulls towards h = 0: its gradient in h is beta * (sigmoid(beta h) - 1/2)
    h = torch.tensor([0.0], dtype=torch.float64, requires_grad=True)
    tie = losses.dpo_loss(h, t(0.0), t(0.0), t(0.0), beta=BETA, p_chosen=t(0.5))[0]
    tie.backward()
    assert h.grad.item() == pytest.approx(0.0, abs=1e-15)


def test_cdpo_by_hand():
    # eps = 0.1: 0.9 * 0.4740769841 + 0.1 * 0.9740769841 = 0.5240769841
    loss, _, _ = one("cdpo", label_smoothing=0.1)
    assert loss.item() == pytest.approx(0.5240769841, abs=1e-9)
    assert one("cdpo", label_smoothing=0.0)[0].item() == pytest.approx(LOG1P_EXP_M05)


def test_robust_by_hand():
    # (0.9 * 0.4740769841 - 0.1 * 0.9740769841) / 0.8 = (0.4266692857 - 0.0974076984) / 0.8 = 0.4115769841
    loss, _, _ = one("robust", label_smoothing=0.1)
    assert loss.item() == pytest.approx(0.4115769841, abs=1e-9)


def test_hinge_by_hand():
    # relu(1 - 0.5) = 0.5; soft p = 0.75: 0.75 * 0.5 + 0.25 * relu(1 + 0.5) = 0.375 + 0.375 = 0.75
    assert one("hinge")[0].item() == pytest.approx(0.5)
    assert one("hinge", p_chosen=t(0.75))[0].item() == pytest.approx(0.75)


def test_ipo_by_hand():
    # beta = 0.25 -> target 1 / (2 * 0.25) = 2; h = 1: (1 - 2)^2 = 1
    assert one("ipo", beta=0.25)[0].item() == pytest.approx(1.0)
    # TRL's per-token normalisation, n_c = 2, n_r = 4: h = 0.5/2 - (-0.5)/4 = 0.375; (0.375 - 2)^2 = 2.640625
    loss = one("ipo", beta=0.25, chosen_lengths=t(2), rejected_lengths=t(4))[0]
    assert loss.item() == pytest.approx(2.640625)
    # soft p = 0.5: 0.5 * (1 - 2)^2 + 0.5 * (1 + 2)^2 = 0.5 + 4.5 = 5
    assert one("ipo", beta=0.25, p_chosen=t(0.5))[0].item() == pytest.approx(5.0)


def test_weights_are_mean_of_weighted_losses():
    # pair 1 as above (0.4740769841), pair 2 has h = 0 (log 2); weights [2, 0]:
    # mean(w * l) = (2 * 0.4740769841 + 0 * 0.6931471806) / 2 = 0.4740769841
    loss, _, _ = losses.dpo_loss(t(PI_C, -1.0), t(PI_R, -1.0), t(REF_C, -1.0), t(REF_R, -1.0), beta=BETA,
                                 weights=t(2.0, 0.0))
    assert loss.item() == pytest.approx(LOG1P_EXP_M05)
    unweighted = losses.dpo_loss(t(PI_C, -1.0), t(PI_R, -1.0), t(REF_C, -1.0), t(REF_R, -1.0), beta=BETA)[0]
    assert unweighted.item() == pytest.approx((LOG1P_EXP_M05 + math.log(2)) / 2)


def test_bad_arguments():
    with pytest.raises(ValueError, match="loss_type"):
        one("nope")
    with pytest.raises(ValueError, match="label_smoothing"):
        one("sigmoid", label_smoothing=0.1)
    with pytest.raises(ValueError, match="p_chosen"):
        one(p_chosen=t(1.5))


def test_bt_reward_loss_by_hand():
    # -logsigmoid(1 - 0) = log(1 + e^-1) = 0.3132616875; with margin 1: -logsigmoid(0) = log 2
    assert losses.bt_reward_loss(t(1.0), t(0.0)).item() == pytest.approx(0.3132616875, abs=1e-9)
    assert losses.bt_reward_loss(t(1.0), t(0.0), margin=1.0).item() == pytest.approx(math.log(2))
    # weights [1, 3] on losses [0.3132616875, log 2]: (0.3132616875 + 3 * 0.6931471806) / 2 = 1.1963516
    w = losses.bt_reward_loss(t(1.0, 0.0), t(0.0, 0.0), weights=t(1.0, 3.0))
    assert w.item() == pytest.approx((0.3132616875 + 3 * math.log(2)) / 2, abs=1e-9)


def test_ppo_surrogate_by_hand():
    # ratio = 1.5 on both tokens, eps = 0.2
    #   A = +1: max(-1.5, -1.2) = -1.2 (clipped);  A = -1: max(1.5, 1.2) = 1.5 (unclipped)
    #   mean over the mask = (-1.2 + 1.5) / 2 = 0.15; third token masked out
    lp = t(math.log(1.5), math.log(1.5), 5.0)
    loss, clipfrac, _ = losses.ppo_clipped_surrogate(lp, t(0.0, 0.0, 0.0), t(1.0, -1.0, 100.0), 0.2, t(1, 1, 0))
    assert loss.item() == pytest.approx(0.15)
    assert clipfrac.item() == pytest.approx(0.5)


def test_ppo_value_loss_by_hand():
    # v = 2, old = 1, R = 0, eps = 0.5: v_clip = 1.5; 0.5 * max(4, 2.25) = 2
    assert losses.ppo_value_loss(t(2.0), t(1.0), t(0.0), 0.5, t(1)).item() == pytest.approx(2.0)
    # v = 0.2 (moving towards R): 0.5 * max(0.04, (1 - 0.5)^2 = 0.25) = 0.125
    assert losses.ppo_value_loss(t(0.2), t(1.0), t(0.0), 0.5, t(1)).item() == pytest.approx(0.125)


def test_sft_loss_by_hand():
    # -(-1 - 3) / 2 = 2 (third token masked)
    assert losses.sft_loss(t(-1.0, -3.0, -100.0), t(1, 1, 0)).item() == pytest.approx(2.0)
    assert losses.sft_sequence_loss(t(-4.0), t(2)).item() == pytest.approx(2.0)


# ---- gradchecks (float64) ------------------------------------------------------------------

def _inputs(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = [(-5 * torch.rand(n, generator=g, dtype=torch.float64)).requires_grad_() for _ in range(4)]
    return xs


@pytest.mark.parametrize("loss_type,smoothing", [("sigmoid", 0.0), ("ipo", 0.0), ("hinge", 0.0), ("cdpo", 0.2),
                                                 ("robust", 0.2)])
@pytest.mark.parametrize("weighted,soft", [(False, False), (True, False), (True, True)])
def test_dpo_gradcheck(loss_type, smoothing, weighted, soft):
    if soft and loss_type == "robust":
        pytest.skip("soft labels are not defined for robust DPO")
    pc, pr, rc, rr = _inputs()
    w = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64, requires_grad=True) if weighted else None
    p = torch.tensor([0.9, 0.6, 0.3], dtype=torch.float64, requires_grad=True) if soft else None
    lengths = torch.tensor([3.0, 5.0, 2.0], dtype=torch.float64)

    def f(pc, pr, rc, rr, *extra):
        ew = extra[0] if weighted else None
        ep = extra[-1] if soft else None
        return losses.dpo_loss(pc, pr, rc, rr, beta=0.7, loss_type=loss_type, label_smoothing=smoothing,
                               weights=ew, p_chosen=ep, chosen_lengths=lengths, rejected_lengths=lengths + 1)[0]

    args = [pc, pr, rc, rr] + ([w] if weighted else []) + ([p] if soft else [])
    assert torch.autograd.gradcheck(f, tuple(args), eps=1e-6, atol=1e-7)


def test_other_gradchecks():
    c, r, _, _ = _inputs()
    w = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
    p = torch.tensor([0.9, 0.6, 0.3], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c, r, w, p: losses.bt_reward_loss(c, r, weights=w, margin=0.3, p_chosen=p),
                                    (c, r, w, p))
    lp, old, adv, _ = _inputs(seed=1)
    mask = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    # keep ratios away from the clip boundaries, where the surrogate has kinks
    old = (lp.detach() + torch.tensor([0.5, -0.05, 0.0], dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b, c: losses.ppo_clipped_surrogate(a, b, c, 0.2, mask)[0],
                                    (lp, old, adv))
    v, ov, ret, _ = _inputs(seed=2)
    assert torch.autograd.gradcheck(lambda a, b, c: losses.ppo_value_loss(a, b, c, 0.3, mask), (v, ov, ret))
    assert torch.autograd.gradcheck(lambda a: losses.sft_loss(a, mask), (lp,))
