"""Reward model and PPO on the tiny model, on CPU: sampling, scoring, learning, resume, errors."""
import json
import math
import os
import random

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForSequenceClassification

from training.config import TrainConfig
from training.data import collate, tokenize_pairs
from training.ppo import Rollout
from training.ppo_trainer import roll_samples, train_ppo
from training.reward_model import RewardScorer, load_reward_model, pair_rewards, train_reward_model
from training.rollout import Sequences, TokenizerMismatchError, draw, policy_logprobs, sample, sequence_hidden, trunk
from training.tiny_model import build_default_model, load_model_and_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = ("apple river stone cloud green music table window garden light paper dream horse silver ocean "
         "forest winter candle").split()

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def upper_pairs(n, seed=0):
    """The preferred response is the other one in capitals: a property a reward model can learn."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        body = " ".join(rng.sample(WORDS, 4))
        out.append({"prompt": f"Tell me about {rng.choice(WORDS)}.", "chosen": " " + body.upper(),
                    "rejected": " " + body, "p_chosen": 0.9})
    return out


def prompts():
    return [{"prompt": f"Tell me about {w}."} for w in WORDS]


def word_reward(_prompts, responses):
    """How many of the target words a response contains."""
    return [sum(r.count(w) for w in WORDS) for r in responses]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pairs = upper_pairs(200)
    texts = [p["prompt"] + p["chosen"] + p["rejected"] for p in pairs]
    return build_default_model(tmp_path_factory.mktemp("m") / "model", texts, vocab_size=512, hidden=64, layers=2)


@pytest.fixture(scope="module")
def reward_model(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm")
    cfg = TrainConfig(recipe="rm", device="cpu", rm_lr=2e-3, rm_max_steps=30, batch_size=8, eval_fraction=0.25,
                      checkpoint_every=0, min_pairs=4, use_weights=False, rm_norm_samples=24,
                      ppo_response_length=8, ppo_temperature=1.0)
    steps = []

    class CB:
        def on_step(self, m):
            steps.append(m)

    report = train_reward_model(cfg, tiny, upper_pairs(160, seed=1), out, CB())
    return report, steps, cfg


def ppo_cfg(**kw):
    base = dict(recipe="ppo", device="cpu", ppo_iterations=6, ppo_batch_size=8, ppo_mini_batches=2,
                ppo_response_length=10, ppo_lr=1e-3, ppo_temperature=1.0, ppo_value_model="shared",
                checkpoint_every=0, ppo_samples_per_log=2, seed=0)
    base.update(kw)
    return TrainConfig(**base)


class Recorder:
    def __init__(self, crash_at=None, stop_at=None):
        self.steps, self.logs, self.ckpts = [], [], []
        self.crash_at, self.stop_at = crash_at, stop_at

    def on_step(self, m):
        self.steps.append(m)
        if self.crash_at and m["step"] == self.crash_at:
            raise RuntimeError("worker killed")

    def on_log(self, msg):
        self.logs.append(msg)

    def on_checkpoint(self, path):
        self.ckpts.append(path)

    def should_stop(self):
        return self.stop_at is not None and len(self.steps) >= self.stop_at


# ------------------------------------------------------------------ sampling and scoring


def test_sampled_logprobs_equal_a_fresh_forward(tiny):
    model, tok = load_model_and_tokenizer(tiny)
    ps = [tok(p["prompt"])["input_ids"] for p in prompts()[:5]] + [tok("Hi")["input_ids"]]
    g = torch.Generator().manual_seed(0)
    value_head = torch.nn.Linear(model.config.hidden_size, 1)
    s = sample(model, ps, 12, 0.7, tok.eos_token_id, tok.pad_token_id, g, "cpu", batch_size=4, value_head=value_head)
    seqs = Sequences.build(ps, s.tokens, s.mask)
    for unpadded in (True, False):  # length buckets (CPU) and one padded batch (GPU)
        lp, ent, values = policy_logprobs(model, seqs, s.tokens.shape[1], 0.7, "cpu", unpadded, want_entropy=True,
                                          value_head=value_head)
        assert (lp - s.logprobs).abs().max() < 1e-4
        assert ((ent > 0) | (s.mask == 0)).all()
        # a value head on the policy's trunk: the sampler's values are the forward's
        assert (values * s.mask - s.values).abs().max() < 1e-4
    # the same seed samples the same responses
    again = sample(model, ps, 12, 0.7, tok.eos_token_id, tok.pad_token_id, torch.Generator().manual_seed(0), "cpu",
                   batch_size=4)
    assert torch.equal(again.tokens, s.tokens)


def test_hidden_states_at_response_positions_equal_the_full_forward_with_the_same_gradients(tiny):
    """sequence_hidden computes the last layer only from the first position asked for; values and
    gradients must be those of the model's full forward."""
    model, _ = load_model_and_tokenizer(tiny)
    model.eval()
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, model.config.vocab_size, (n,), generator=g).tolist() for n in (30, 30, 24, 17)]
    pos = [torch.arange(5 + i, len(s) - 1) for i, s in enumerate(seqs)]
    body = trunk(model)
    for unpadded in (True, False):
        for rows in ([0], [0, 2, 3], [0, 1, 2, 3]):
            ss, pp = [seqs[i] for i in rows], [pos[i] for i in rows]
            model.zero_grad()
            h = sequence_hidden(model, ss, pp, "cpu", unpadded)
            (h.square().sum() + h.sum()).backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters()}
            model.zero_grad()
            full = torch.cat([body(input_ids=torch.tensor([s]), use_cache=False).last_hidden_state[0, p]
                              for s, p in zip(ss, pp)])
            (full.square().sum() + full.sum()).backward()
            assert (h - full).abs().max() < 1e-5
            for n, p in model.named_parameters():
                assert (grads[n] - p.grad).abs().max() <= 1e-4 * p.grad.abs().max(), n  # float32 sums


def test_draw_samples_the_given_distribution():
    probs = torch.tensor([[0.0, 0.5, 0.2, 0.3, 0.0], [0.9, 0.0, 0.0, 0.0, 0.1]])
    g = torch.Generator().manual_seed(0)
    n = 20000
    picks = torch.stack([draw(probs, g) for _ in range(n)])  # (n, 2)
    for row in range(2):
        freq = torch.bincount(picks[:, row], minlength=5).float() / n
        assert (freq - probs[row]).abs().max() < 0.015  # ~4 standard errors at n = 20000
        assert freq[probs[row] == 0].sum() == 0  # a zero-probability token is never drawn
    # seeded: the same generator state draws the same tokens
    a = draw(probs, torch.Generator().manual_seed(3))
    assert torch.equal(a, draw(probs, torch.Generator().manual_seed(3)))


def test_sample_texts_drop_nul_characters(tiny):
    """A sampled byte token can decode to NUL, which PostgreSQL cannot store in a JSON metric."""
    _, tok = load_model_and_tokenizer(tiny)
    nul = next(i for i in range(len(tok)) if "\x00" in tok.decode([i]))
    word = tok("apple")["input_ids"][-1]
    z = torch.zeros(1, 3)
    roll = Rollout(prompt_ids=[[word]], responses=torch.tensor([[word, nul, word]]), mask=torch.ones(1, 3),
                   logprobs=z, ref_logprobs=z, values=z, scores=torch.tensor([0.5]), raw_scores=torch.tensor([0.5]),
                   has_eos=torch.tensor([False]))
    (sample_text,) = roll_samples(tok, roll, ["a\x00b"], 3)
    assert "\x00" not in sample_text["response"] and sample_text["prompt"] == "ab"
    assert sample_text["response"] == tok.decode([word, nul, word]).replace("\x00", "")


def test_pair_rewards_equal_sequence_classification_on_each_sequence(tiny):
    rm, tok, _ = load_reward_model(tiny)
    rm.eval()
    rows = upper_pairs(5) + [{"prompt": "Tell me.", "chosen": " apple river", "rejected": "?"}]
    ex = tokenize_pairs(tok, rows)
    for pack, unpadded in [(True, False), (False, True)]:
        r = pair_rewards(rm, collate(ex, tok.pad_token_id, pack=pack), unpadded)
        for e, (rc, rr) in zip(ex, r.tolist()):
            one = [rm(input_ids=torch.tensor([e.prompt_ids + c])).logits.item() for c in e.continuations]
            assert [rc, rr] == pytest.approx(one, abs=1e-5)
    assert isinstance(rm, LlamaForSequenceClassification)


# ------------------------------------------------------------------ reward model


def test_reward_model_learns_a_clear_preference(reward_model, tiny):
    report, steps, cfg = reward_model
    assert report["status"] == "succeeded" and report["steps"] == 30
    ev = report["eval_metrics"]
    assert ev["eval_reward_accuracy"] >= 0.9
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=0.05)
    # calibration: every held-out pair is in one of ten bins, humans said 0.9 everywhere
    bins = ev["eval_calibration"]
    assert len(bins) == 10 and sum(b["n"] for b in bins) == 40
    assert all(b["observed"] == pytest.approx(0.9) for b in bins if b["n"])
    assert 0 <= ev["eval_ece"] <= 1
    # normalisation recorded with the model: reference-policy samples score mean 0, std 1
    folder = report["out"]
    norm = json.loads(open(os.path.join(folder, "reward_normalization.json")).read())
    assert json.loads(open(os.path.join(folder, "config.json")).read())["prefloop_reward_normalization"] == norm
    rm, tok, loaded = load_reward_model(folder)
    assert loaded == norm and norm["n"] == 24
    policy, _ = load_model_and_tokenizer(tiny)
    from training.reward_model import reference_statistics

    train_prompts = [e.prompt_ids for e in tokenize_pairs(tok, upper_pairs(160, seed=1))]
    from training.reward_model import split_eval

    idx, _ = split_eval(160, cfg)
    ps = [train_prompts[i] for i in idx][:24]
    g = torch.Generator().manual_seed(cfg.seed + 7919)
    s = sample(policy, ps, cfg.ppo_response_length, cfg.ppo_temperature, tok.eos_token_id, tok.pad_token_id, g,
               "cpu", batch_size=max(cfg.ppo_batch_size, 16))
    seqs = Sequences.build(ps, s.tokens, s.mask).seqs
    scores, raw = RewardScorer(rm, loaded, "cpu", True)(seqs)
    assert scores.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert scores.std().item() == pytest.approx(1.0, abs=1e-4)
    assert reference_statistics  # the function the trainer used


# ------------------------------------------------------------------ PPO


@pytest.mark.slow
def test_ppo_raises_a_programmatic_reward_with_bounded_kl(tiny, tmp_path):
    rec = Recorder()
    cfg = ppo_cfg(ppo_iterations=16, ppo_batch_size=16, ppo_response_length=12, lr_schedule="constant",
                  ppo_lr=3e-3, ppo_kl_coef=0.05)
    report = train_ppo(cfg, tiny, prompts(), tmp_path / "run", rec, reward_fn=word_reward)
    assert report["status"] == "succeeded" and report["steps"] == 16
    rewards = [m["reward"] for m in rec.steps]
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert first < 1.0 and last > first + 1.5, rewards  # ~0.5 target words per response at the start
    # the KL to the reference stays bounded: under 2 nats per response token all along
    assert all(m["kl"] < 2.0 * m["response_length"] for m in rec.steps), [m["kl"] for m in rec.steps]
    assert rec.steps[0]["kl"] == pytest.approx(0.0, abs=1e-3)  # the first rollout is the reference's
    for key in ["reward", "kl", "kl_coef", "clip_fraction", "approx_kl", "value_loss", "policy_loss", "entropy",
                "response_length", "gen_s", "score_s", "update_s", "rollout_tokens_per_s",
                "update_samples_per_s"]:
        assert key in rec.steps[-1], key
    assert len(rec.steps[-1]["samples"]) == 2 and "response" in rec.steps[-1]["samples"][0]
    model = AutoModelForCausalLM.from_pretrained(report["out"], local_files_only=True)
    assert model.config.vocab_size > 0


@pytest.mark.slow
def test_ppo_resumes_after_a_crash_at_the_next_iteration(tiny, tmp_path):
    cfg = ppo_cfg(ppo_iterations=5, ppo_kl_target=1.0, ppo_kl_horizon=100)  # adaptive KL: its state resumes
    whole = Recorder()
    train_ppo(cfg, tiny, prompts(), tmp_path / "whole", whole, reward_fn=word_reward)
    crashed = Recorder(crash_at=4)
    with pytest.raises(RuntimeError, match="worker killed"):
        train_ppo(cfg, tiny, prompts(), tmp_path / "run", crashed, reward_fn=word_reward)
    resumed = Recorder()
    report = train_ppo(cfg, tiny, prompts(), tmp_path / "run", resumed, reward_fn=word_reward)
    assert any("resumed from" in m and "iteration 3" in m for m in resumed.logs), resumed.logs
    assert [m["step"] for m in resumed.steps] == [4, 5] and report["steps"] == 5
    for a, b in zip(whole.steps[3:], resumed.steps):
        for key in ("reward", "kl", "kl_coef", "value_loss", "policy_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key


def test_ppo_cancel_keeps_a_checkpoint(tiny, tmp_path):
    rec = Recorder(stop_at=2)
    report = train_ppo(ppo_cfg(ppo_iterations=4), tiny, prompts(), tmp_path / "run", rec, reward_fn=word_reward)
    assert report["status"] == "cancelled" and report["steps"] == 2
    assert rec.ckpts and rec.ckpts[-1].endswith("step-000002")
    rest = Recorder()
    assert train_ppo(ppo_cfg(ppo_iterations=4), tiny, prompts(), tmp_path / "run", rest,
                     reward_fn=word_reward)["steps"] == 4
    assert [m["step"] for m in rest.steps] == [3, 4]


def test_ppo_with_the_trained_reward_model_and_its_critic(reward_model, tiny, tmp_path):
    report, _, _ = reward_model
    rec = Recorder()
    out = train_ppo(ppo_cfg(ppo_iterations=2, ppo_value_model="reward", ppo_missing_eos_penalty=1.0), tiny,
                    prompts(), tmp_path / "run", rec, reward_model_path=report["out"])
    assert out["status"] == "succeeded" and len(rec.steps) == 2
    assert all(math.isfinite(m["reward"]) and math.isfinite(m["value_loss"]) for m in rec.steps)


def test_reward_model_with_another_tokenizer_fails_before_compute(tiny, tmp_path):
    other = build_default_model(tmp_path / "other", ["completely different words here"] * 20, vocab_size=300,
                                hidden=32, layers=1)
    out = tmp_path / "run"
    with pytest.raises(TokenizerMismatchError, match="tokenizer differs from the policy's.*vocabulary sizes"):
        train_ppo(ppo_cfg(ppo_value_model="policy"), tiny, prompts(), out, reward_model_path=other)
    assert not out.exists()  # nothing was created, nothing computed


def test_invalid_ppo_settings_are_refused(tiny, tmp_path):
    with pytest.raises(ValueError, match="ppo_value_model='reward'"):
        train_ppo(ppo_cfg(ppo_value_model="reward"), tiny, prompts(), tmp_path / "a", reward_fn=word_reward)
    with pytest.raises(ValueError, match="exactly one reward"):
        train_ppo(ppo_cfg(), tiny, prompts(), tmp_path / "b")
    with pytest.raises(ValueError, match="ppo_mini_batches"):
        train_ppo(ppo_cfg(ppo_mini_batches=9), tiny, prompts(), tmp_path / "c", reward_fn=word_reward)
    with pytest.raises(ValueError, match="max_prompt_length"):
        train_ppo(ppo_cfg(max_length=4, max_prompt_length=4), tiny, prompts(), tmp_path / "d",
                  reward_fn=word_reward)


def test_long_ppo_prompts_keep_their_last_tokens(tiny):
    """A prompt that leaves no room for the sampled response within max_length keeps its last
    tokens: as many as ppo_response_length leaves room for, at least half of max_length."""
    from training.ppo_trainer import tokenize_prompts
    from training.tiny_model import load_tokenizer

    tok = load_tokenizer(tiny)
    row = {"prompt": "Tell me about " + " and ".join(WORDS) + "."}
    whole = tok(row["prompt"])["input_ids"]
    assert len(whole) > 24
    (ids,), _ = tokenize_prompts(tok, [row], ppo_cfg(max_length=24))
    assert ids == whole[-14:]  # 24 - ppo_response_length 10
    (ids,), _ = tokenize_prompts(tok, [row], ppo_cfg(max_length=24, ppo_response_length=20))
    assert ids == whole[-12:]  # never below max_length // 2
    (ids,), _ = tokenize_prompts(tok, [row], ppo_cfg(max_length=24, max_prompt_length=5))
    assert ids == whole[-5:]
