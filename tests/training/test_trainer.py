"""training.data + training.trainer: batch layout, weighted DPO, validation, end to end, resume."""
import json
import math
import os
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from training.data import attention_mask_4d, collate, pack_units, tokenize_pairs, tokenize_sft
from training.losses import dpo_loss
from training.tiny_model import ModelLoadError, build_default_model, llama_config
from training.config import TrainConfig
from training.trainer.logps import chunked_token_logps, sequence_logps
from training.trainer.loop import NothingToLearn, train
from training.trainer.phases import dpo_batch_loss
from training.trainer.plan import plan_steps

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = ("apple river stone cloud green music table window garden light paper dream horse silver ocean "
         "forest winter candle").split()

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def synthetic_pairs(n, seed=0):
    """The preferred response is the rejected one in capitals: a property the model can learn."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        body = " ".join(rng.sample(WORDS, 4))
        out.append({"prompt": f"Tell me about {rng.choice(WORDS)}.", "chosen": " " + body.upper(),
                    "rejected": " " + body})
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pairs = synthetic_pairs(200)
    texts = [p["prompt"] + p["chosen"] + p["rejected"] for p in pairs]
    path = build_default_model(tmp_path_factory.mktemp("m") / "model", texts, vocab_size=512, hidden=64, layers=2)
    return path, AutoTokenizer.from_pretrained(path, local_files_only=True)


def cfg(**kw):
    base = dict(recipe="dpo", lr=1e-3, max_steps=6, batch_size=4, eval_fraction=0.0, device="cpu",
                checkpoint_every=0, min_pairs=4)
    base.update(kw)
    return TrainConfig(**base)


class Recorder:
    def __init__(self, crash_at=None, stop_at=None):
        self.steps, self.evals, self.ckpts, self.logs = [], [], [], []
        self.crash_at, self.stop_at = crash_at, stop_at

    def on_step(self, m):
        self.steps.append(m)
        if self.crash_at is not None and m["step"] == self.crash_at:
            raise RuntimeError("simulated worker crash")

    def on_eval(self, m):
        self.evals.append(m)

    def should_stop(self):
        return self.stop_at is not None and bool(self.steps) and self.steps[-1]["step"] >= self.stop_at

    def on_checkpoint(self, path):
        self.ckpts.append(path)

    def on_log(self, msg):
        self.logs.append(msg)


# ---- tokenization and the shared-prompt layout ----------------------------------------------


def _naive_logps(model, examples):
    rows = []
    for e in examples:
        row = []
        for c in e.continuations:
            ids = torch.tensor([e.prompt_ids + c])
            logits = model(input_ids=ids).logits[0, :-1].double().log_softmax(-1)
            tl = logits.gather(-1, ids[0, 1:, None])[:, 0]
            row.append(tl[len(e.prompt_ids) - 1:].sum())
        rows.append(torch.stack(row))
    return torch.stack(rows)


def _layout_pairs():
    pairs = [{"prompt": "Q: what is it? " * (i + 1), "chosen": " a cat" * (2 * i + 1), "rejected": " a dog!" * (4 - i)}
             for i in range(4)]
    pairs.append({"prompt": [{"role": "user", "content": "Hi there"}], "chosen": "Hello", "rejected": "Go away now"})
    return pairs


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("pack,unpadded", [(False, False), (True, False), (False, True), (True, True)])
def test_shared_prompt_logps_equal_naive(tiny, impl, pack, unpadded):
    _, tok = tiny
    config = llama_config(tok, hidden=64, layers=2, heads=4)
    config._attn_implementation = impl
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    examples = tokenize_pairs(tok, _layout_pairs(), max_length=100)
    batch = collate(examples, tok.pad_token_id, pack=pack)
    with torch.no_grad():
        fast32 = sequence_logps(model, batch, unpadded=unpadded)
        naive32 = _naive_logps(model, examples)
        model.double()
        fast64 = sequence_logps(model, batch, unpadded=unpadded)
        naive64 = _naive_logps(model, examples)
    # (eager attention does its softmax in float32 even for a float64 model)
    assert torch.allclose(fast64, naive64, atol=1e-9 if impl == "sdpa" else 1e-6, rtol=0)
    assert torch.allclose(fast32.double(), naive32, atol=1e-5, rtol=1e-6)
    # SFT batches (one continuation) use the same layout
    sft = tokenize_sft(tok, _layout_pairs(), max_length=100)
    with torch.no_grad():
        sft_logps = sequence_logps(model, collate(sft, tok.pad_token_id, pack=pack), unpadded=unpadded)
        assert torch.allclose(sft_logps[:, 0], fast64[:, 0], atol=1e-6)


def test_layout_and_mask():
    # unit lengths 5 and 3 and 2: without packing 3 rows of 5; packed, [5] and [3, 2]
    assert pack_units([5, 3, 2], pack=False) == [[0], [1], [2]]
    assert pack_units([5, 3, 2]) == [[0], [1, 2]]
    seg = torch.tensor([[0, 0, 1, 1, 2, 2, -1]])
    unit = torch.tensor([[0, 0, 0, 0, 0, 0, -1]])
    m = attention_mask_4d(seg, unit)[0, 0].int()
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0, 0],  # prompt
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],  # chosen sees the prompt and earlier chosen
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 0, 0, 1, 0, 0],  # rejected sees the prompt and itself, never the chosen tokens
        [1, 1, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 1],  # padding sees only padding
    ])
    assert torch.equal(m, expected)


def test_collate_pads_to_longest_only(tiny):
    _, tok = tiny
    ex = tokenize_pairs(tok, synthetic_pairs(4), max_length=512)
    batch = collate(ex, tok.pad_token_id, pack=False)
    assert batch.input_ids.shape == (4, max(len(e.prompt_ids) + len(e.chosen_ids) + len(e.rejected_ids) for e in ex))
    # positions: rejected tokens restart right after the prompt
    e = ex[0]
    p, c, r = len(e.prompt_ids), len(e.chosen_ids), len(e.rejected_ids)
    assert batch.position_ids[0, :p + c + r].tolist() == list(range(p + c)) + list(range(p, p + r))
    assert batch.target_ids.numel() == sum(len(x.chosen_ids) + len(x.rejected_ids) for x in ex)


def test_tokenization_rules(tiny):
    _, tok = tiny
    pair = {"prompt": "Tell me about apple.", "chosen": " APPLE RIVER", "rejected": " apple river"}
    (e,) = tokenize_pairs(tok, [pair])
    assert e.prompt_ids[0] == tok.bos_token_id
    assert e.chosen_ids[-1] == tok.eos_token_id and e.rejected_ids[-1] == tok.eos_token_id
    assert tok.decode(e.prompt_ids + e.chosen_ids, skip_special_tokens=True) == pair["prompt"] + pair["chosen"]
    # a pair too long for max_length: the prompt gives up its first tokens down to max_length // 2,
    # then the responses keep their start; with max_prompt_length the prompt keeps its last ones
    p, c = len(e.prompt_ids), len(e.chosen_ids)
    assert p >= 4 and c >= 3
    (t,) = tokenize_pairs(tok, [pair], max_length=p + c - 1)  # one token short: the prompt pays it
    assert t.prompt_ids == e.prompt_ids[1:] and t.chosen_ids == e.chosen_ids and t.truncated
    (t,) = tokenize_pairs(tok, [pair], max_length=4)  # prompt 2 tokens (its last), responses 2
    assert t.prompt_ids == e.prompt_ids[-2:] and t.chosen_ids == e.chosen_ids[:2] and t.truncated
    (t,) = tokenize_pairs(tok, [pair], max_length=8, max_prompt_length=3)
    assert t.prompt_ids == e.prompt_ids[-3:] and len(t.prompt_ids) + len(t.chosen_ids) <= 8
    with pytest.raises(ValueError, match="pair 0: the prompt has 4 tokens.*max_length=4"):
        tokenize_pairs(tok, [pair], max_length=4, max_prompt_length=4)  # TrainConfig refuses this one
    with pytest.raises(ValueError, match="pair 1: 'rejected' is missing"):
        tokenize_pairs(tok, [pair, {"prompt": "x", "chosen": "y"}])
    with pytest.raises(ValueError, match="pair 7: 'rejected' is missing"):  # named by the caller's index
        tokenize_pairs(tok, [pair, {"prompt": "x", "chosen": "y"}], indices=[3, 7])
    with pytest.raises(ValueError, match="p_chosen"):
        tokenize_pairs(tok, [dict(pair, p_chosen=2)])


def test_chunked_head_matches_full(tiny):
    _, tok = tiny
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    h = torch.randn(37, 16, requires_grad=True)
    t = torch.randint(0, 50, (37,))
    full = chunked_token_logps(h, head, t)
    chunked = chunked_token_logps(h, head, t, chunk_elements=50 * 8)  # 5 chunks, checkpointed
    assert torch.allclose(full, chunked, atol=1e-6)
    g_full = torch.autograd.grad(full.sum(), [h, head.weight])
    g_chunk = torch.autograd.grad(chunked.sum(), [h, head.weight])
    for a, b in zip(g_full, g_chunk):
        assert torch.allclose(a, b, atol=1e-6)


# ---- weighted DPO --------------------------------------------------------------------------


def _one_sgd_step(model, batch, ref, weights, lr=0.1):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    opt.zero_grad()
    logps = sequence_logps(model, batch)
    loss, _, _ = dpo_loss(logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1], beta=0.1, weights=weights)
    loss.backward()
    grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
    opt.step()
    return grads


def _weighted_setup(tok):
    config = llama_config(tok, hidden=32, layers=1, heads=2)
    torch.manual_seed(0)
    policy = LlamaForCausalLM(config)
    torch.manual_seed(1)
    ref_model = LlamaForCausalLM(config)
    ex = tokenize_pairs(tok, synthetic_pairs(3, seed=5), max_length=64)
    batch = collate(ex, tok.pad_token_id)
    with torch.no_grad():
        ref = sequence_logps(ref_model, batch)
    return policy, batch, ref


def test_zero_weight_pair_leaves_parameters_unchanged(tiny):
    _, tok = tiny
    policy, batch, ref = _weighted_setup(tok)
    before = [p.detach().clone() for p in policy.parameters()]
    _one_sgd_step(policy, batch, ref, weights=torch.zeros(3))
    assert all(torch.equal(a, b) for a, b in zip(before, policy.parameters()))
    # and inside a batch, a zero-weight pair contributes nothing: grads equal those without its term
    policy, batch, ref = _weighted_setup(tok)
    g_zero = _one_sgd_step(policy, batch, ref, weights=torch.tensor([1.0, 0.0, 1.0]))
    policy, batch, ref = _weighted_setup(tok)
    opt_grads = _one_sgd_step(policy, batch, ref, weights=torch.tensor([1.0, 1e-30, 1.0]))
    for a, b in zip(g_zero, opt_grads):
        assert torch.allclose(a, b, atol=1e-7)


def test_doubling_weights_doubles_gradient(tiny):
    _, tok = tiny
    w = torch.tensor([0.3, 1.0, 0.7])
    policy, batch, ref = _weighted_setup(tok)
    g1 = _one_sgd_step(policy, batch, ref, weights=w)
    policy, batch, ref = _weighted_setup(tok)
    g2 = _one_sgd_step(policy, batch, ref, weights=2 * w)
    assert sum(float(g.abs().sum()) for g in g1) > 0
    for a, b in zip(g1, g2):
        assert torch.allclose(2 * a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("recipe,steps", [("dpo", 6), ("sft", 2)])
def test_all_zero_weights_fail_instead_of_succeeding_unchanged(tiny, tmp_path, recipe, steps):
    """Weights of 0 give a gradient of exactly 0: the run fails on its first steps (all of them when
    the phase is shorter) naming the cause and the fix, and saves no model."""
    path, _ = tiny
    pairs = [dict(p, weight=0.0) for p in synthetic_pairs(8)]
    rec = Recorder()
    with pytest.raises(NothingToLearn, match=rf"{recipe}: the gradient norm was 0 for the first "
                                             rf"{min(steps, 3)} steps.*weighs 0.*use_weights=false"):
        train(cfg(recipe=recipe, max_steps=steps), path, pairs, tmp_path / "run", rec)
    assert len(rec.steps) == min(steps, 3) - 1  # the failing step is not reported as done
    assert not (tmp_path / "run" / "final").exists() and not (tmp_path / "run" / "result.json").exists()
    # the fix the message names: without the weights the same rows train
    res = train(cfg(recipe=recipe, max_steps=2, use_weights=False), path, pairs, tmp_path / "unweighted")
    assert res.status == "succeeded" and (tmp_path / "unweighted" / "final").exists()


def test_ties_train_towards_equal_never_as_preferences(tiny, tmp_path):
    """A tie row (label "tie", p_chosen 0.5) is a 0.5 target without use_soft_labels; SFT skips it."""
    _, tok = tiny
    rows = synthetic_pairs(3, seed=4)
    rows[1] = dict(rows[1], label="tie", p_chosen=0.5, tie=True)
    rows[2] = dict(rows[2], label="both_bad")  # an older export: the label alone, no p_chosen
    ex = tokenize_pairs(tok, rows)
    assert [(e.tie, e.p_chosen) for e in ex] == [(False, None), (True, 0.5), (True, 0.5)]
    assert [e.index for e in tokenize_sft(tok, rows)] == [0]
    batch = collate(ex, tok.pad_token_id)
    assert batch.ties.tolist() == [False, True, True]
    # the DPO loss of the batch from given log-probs, by hand: beta h = 0.1 * 2 = 0.2 for every pair
    logps = torch.tensor([[-1.0, -3.0]] * 3, dtype=torch.float64)
    ref = torch.full((3, 2), -2.0, dtype=torch.float64)
    hard, soft = -math.log(1 / (1 + math.exp(-0.2))), -math.log(1 / (1 + math.exp(0.2)))
    loss, _ = dpo_batch_loss(logps, ref, batch, cfg())
    assert loss.item() == pytest.approx((hard + 2 * (0.5 * hard + 0.5 * soft)) / 3, abs=1e-12)
    # no tie in the batch: exactly today's hard-label loss, p_chosen or not
    plain = collate(tokenize_pairs(tok, [dict(r, p_chosen=0.9) for r in synthetic_pairs(3, seed=4)]), tok.pad_token_id)
    assert plain.ties is None and dpo_batch_loss(logps, ref, plain, cfg())[0].item() == pytest.approx(hard, abs=1e-12)
    assert [e.tie for e in tokenize_pairs(tok, [dict(rows[0], tie="True"), dict(rows[0], tie="false")])] == [True, False]
    with pytest.raises(ValueError, match="pair 1: tie must be true or false"):
        tokenize_pairs(tok, [rows[0], dict(rows[0], tie="maybe")])


def test_robust_loss_refuses_ties_before_compute(tiny, tmp_path):
    path, _ = tiny
    pairs = synthetic_pairs(8)
    pairs[3] = dict(pairs[3], label="tie")
    with pytest.raises(ValueError, match="pair 3 is a tie, and robust DPO has no soft labels"):
        train(cfg(loss_type="robust", label_smoothing=0.1), path, pairs, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_soft_labels_reverse_the_preference(tiny, tmp_path):
    """p_chosen = 0 says "rejected is better": with use_soft_labels the margins go negative."""
    path, _ = tiny
    pairs = [dict(p, p_chosen=0.0) for p in synthetic_pairs(16, seed=6)]
    soft, hard = Recorder(), Recorder()
    train(cfg(max_steps=8, use_soft_labels=True), path, pairs, tmp_path / "soft", soft)
    train(cfg(max_steps=8), path, pairs, tmp_path / "hard", hard)
    assert soft.steps[-1]["reward_margin"] < 0 < hard.steps[-1]["reward_margin"]


# ---- validation before compute ----------------------------------------------------------------


def test_validation_errors(tiny, tmp_path):
    path, _ = tiny
    pairs = synthetic_pairs(12)
    with pytest.raises(ValueError, match="need at least 20 training pairs, got 12"):
        train(cfg(min_pairs=20), path, pairs, tmp_path / "a")
    with pytest.raises(ModelLoadError, match="does not exist"):
        train(cfg(), tmp_path / "nope", pairs, tmp_path / "b")
    with pytest.raises(ValueError, match=r"max_prompt_length \(5\) must be >= 1 and below max_length \(5\)"):
        train(cfg(max_length=5, max_prompt_length=5), path, pairs, tmp_path / "c")
    with pytest.raises(ValueError, match="recipe"):
        train(cfg(recipe="ppo"), path, pairs, tmp_path / "d")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            train(cfg(device="cuda"), path, pairs, tmp_path / "e")
    # nothing was trained or written for any of them
    assert not any((tmp_path / d / "checkpoints").exists() for d in "abcde")


# ---- end to end ----------------------------------------------------------------------------


def test_synthetic_task_heldout_reward_accuracy(tiny, tmp_path):
    path, _ = tiny
    pairs = synthetic_pairs(160, seed=1)
    rec = Recorder()
    res = train(cfg(max_steps=25, batch_size=8, eval_fraction=0.25, eval_every=25), path, pairs, tmp_path / "run",
                rec)
    assert res.status == "succeeded" and res.steps == 25
    # step 1: the policy is the reference (up to float rounding between batch shapes)
    assert abs(rec.steps[0]["chosen_reward"]) < 1e-4 and rec.steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert res.eval_metrics["dpo"]["eval_reward_accuracy"] > 0.9
    eval_ids = set(json.loads((tmp_path / "run" / "config.json").read_text())["eval_indices"])
    assert len(eval_ids) == 40 and not eval_ids & {i for m in rec.steps for i in m["batch_ids"]}
    for key in ["loss", "reward_accuracy", "reward_margin", "chosen_logps", "rejected_logps", "kl_to_ref", "lr",
                "tokens_per_s", "epoch", "phase", "total_steps"]:
        assert key in rec.steps[-1]
    # the output loads and generates
    tok = AutoTokenizer.from_pretrained(res.final_path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(res.final_path, local_files_only=True)
    out = model.generate(**tok("Tell me about apple.", return_tensors="pt"), max_new_tokens=4, do_sample=False)
    assert out.shape[1] > 1
    # a second call on a finished out_dir returns its result without training
    again = train(cfg(max_steps=25, batch_size=8, eval_fraction=0.25, eval_every=25), path, pairs, tmp_path / "run")
    assert again.steps == 25 and again.final_path == res.final_path


def test_resume_after_crash_same_order_same_end(tiny, tmp_path):
    path, _ = tiny
    pairs = synthetic_pairs(24, seed=2)
    config = cfg(max_steps=10, batch_size=4, checkpoint_every=3)
    full = Recorder()
    train(config, path, pairs, tmp_path / "full", full)

    crashed = Recorder(crash_at=7)
    with pytest.raises(RuntimeError, match="simulated"):
        train(config, path, pairs, tmp_path / "run", crashed)
    assert [Path(p).name for p in crashed.ckpts] == ["step-000003", "step-000006"]
    resumed = Recorder()
    res = train(config, path, pairs, tmp_path / "run", resumed)
    assert any("resumed from" in m and "step 6" in m for m in resumed.logs)
    assert [m["step"] for m in resumed.steps] == [7, 8, 9, 10]
    assert res.steps == 10 == full.steps[-1]["step"]
    by_step = {m["step"]: m["batch_ids"] for m in full.steps}
    assert [m["batch_ids"] for m in crashed.steps] == [by_step[s] for s in range(1, 8)]
    assert [m["batch_ids"] for m in resumed.steps] == [by_step[s] for s in range(7, 11)]
    for a, b in zip(full.steps[-4:], resumed.steps):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    history = [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert history == list(range(1, 11))
    wa = AutoModelForCausalLM.from_pretrained(tmp_path / "full" / "final", local_files_only=True).state_dict()
    wb = AutoModelForCausalLM.from_pretrained(res.final_path, local_files_only=True).state_dict()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_cancel_keeps_checkpoint_then_resumes(tiny, tmp_path):
    path, _ = tiny
    pairs = synthetic_pairs(16, seed=3)
    config = cfg(max_steps=5)
    rec = Recorder(stop_at=2)
    res = train(config, path, pairs, tmp_path / "run", rec)
    assert res.status == "cancelled" and res.final_path is None
    assert [Path(p).name for p in rec.ckpts] == ["step-000002"]
    with pytest.raises(ValueError, match="different data or settings"):
        train(cfg(max_steps=5, lr=5e-4), path, pairs, tmp_path / "run")
    res = train(config, path, pairs, tmp_path / "run", Recorder())
    assert res.status == "succeeded" and res.steps == 5


def test_explicit_eval_pairs(tiny, tmp_path):
    """eval_pairs (the export's own test split) replaces the seeded split; every pair trains."""
    path, _ = tiny
    rec = Recorder()
    res = train(cfg(max_steps=4, eval_fraction=0.5), path, synthetic_pairs(8, seed=8), tmp_path / "run", rec,
                eval_pairs=synthetic_pairs(3, seed=9))
    assert sorted({i for m in rec.steps for i in m["batch_ids"]}) == list(range(8))
    assert "eval_reward_accuracy" in res.eval_metrics["dpo"]
    with pytest.raises(ValueError, match="eval_pairs: pair 1: 'chosen' is missing"):
        train(cfg(), path, synthetic_pairs(8), tmp_path / "bad", eval_pairs=[synthetic_pairs(1)[0], {"prompt": "x"}])


def test_live_reference_equals_precomputed(tiny, tmp_path):
    """precompute_ref_logps=False keeps a frozen copy; the losses are the same."""
    path, _ = tiny
    pairs = synthetic_pairs(12, seed=4)
    a, b = Recorder(), Recorder()
    train(cfg(max_steps=3), path, pairs, tmp_path / "a", a)
    train(cfg(max_steps=3, precompute_ref_logps=False), path, pairs, tmp_path / "b", b)
    for x, y in zip(a.steps, b.steps):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-5)
        assert x["batch_ids"] == y["batch_ids"]


def test_sft_then_dpo_with_lora(tiny, tmp_path):
    path, _ = tiny
    pairs = synthetic_pairs(16, seed=5)
    rec = Recorder()
    res = train(cfg(recipe="sft+dpo", max_steps=3, lora=True, lora_r=4, precompute_ref_logps=False,
                    eval_fraction=0.25, grad_accum=2, batch_size=2), path, pairs, tmp_path / "run", rec)
    assert res.status == "succeeded" and res.total_steps == 6
    assert [m["phase"] for m in rec.steps] == ["sft"] * 3 + ["dpo"] * 3
    assert "eval_loss" in rec.steps[2] and "eval_reward_accuracy" in rec.steps[-1]
    assert rec.steps[0]["loss"] > 0 and math.isfinite(rec.steps[-1]["loss"])
    assert (tmp_path / "run" / "sft" / ".complete").exists()
    assert (Path(res.adapter_path) / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(res.final_path, local_files_only=True)
    base = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    assert not all(torch.equal(merged.state_dict()[k], v) for k, v in base.state_dict().items())
    from training.tiny_model import load_model_and_tokenizer

    from_adapter, _ = load_model_and_tokenizer(res.adapter_path)  # adapter on top of out_dir/sft
    for k, v in merged.state_dict().items():
        assert torch.allclose(from_adapter.state_dict()[k], v, atol=1e-5)


def test_command_line(tiny, tmp_path, capsys):
    """``python -m training.trainer`` (what ``accelerate launch`` runs) prints JSON events."""
    from training.trainer.cli import main

    path, _ = tiny
    pairs_file = tmp_path / "pairs.jsonl"
    pairs_file.write_text("".join(json.dumps(p) + "\n" for p in synthetic_pairs(8)))
    main(["--model", str(path), "--pairs", str(pairs_file), "--out", str(tmp_path / "run"),
          "--set", "max_steps=2", "device=cpu", "eval_fraction=0", "min_pairs=4", "lr=0.001"])
    events = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2]
    assert events[-1]["event"] == "result" and events[-1]["status"] == "succeeded"
    assert TrainConfig.from_dict({"lora_target_modules": ["q_proj"]}).lora_target_modules == ("q_proj",)
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({"learning_rate": 1})


def test_plan_covers_every_pair_once_per_epoch():
    plan = plan_steps(10, TrainConfig(batch_size=3, grad_accum=2, epochs=2), "dpo")
    assert len(plan) == 4
    epoch0 = [i for s in plan[:2] for m in s["micro"] for i in m]
    assert sorted(epoch0) == list(range(10))
    assert plan_steps(10, TrainConfig(batch_size=3, grad_accum=2, epochs=2), "dpo") == plan  # deterministic


def test_real_text_sft_then_dpo(shared_data, tmp_path):
    """HH-RLHF harmless pairs, the tiny default model with its tokenizer trained on that text,
    sft+dpo on CPU: the training DPO reward accuracy rises above its starting value."""
    from training.trainer.cli import load_pairs_jsonl

    hh = shared_data / "hh_harmless_dev.jsonl"
    if not hh.exists():
        pytest.skip(f"{hh} is missing")
    rows = load_pairs_jsonl(hh)
    assert len(rows) == 1150
    path = build_default_model(tmp_path / "model", [r["prompt"] + r["chosen"] + r["rejected"] for r in rows],
                               vocab_size=2048, hidden=96, layers=2)
    rec = Recorder()
    res = train(TrainConfig(recipe="sft+dpo", sft_lr=3e-3, sft_max_steps=10, lr=1e-3, max_steps=20, batch_size=8,
                            max_length=256, max_prompt_length=160, eval_fraction=0.0, device="cpu",
                            checkpoint_every=0), path, rows[:48], tmp_path / "run", rec)
    assert res.status == "succeeded" and res.steps == 30
    sft = [m for m in rec.steps if m["phase"] == "sft"]
    dpo = [m for m in rec.steps if m["phase"] == "dpo"]
    assert sft[-1]["loss"] < sft[0]["loss"]
    start = sum(m["reward_accuracy"] for m in dpo[:4]) / 4
    end = sum(m["reward_accuracy"] for m in dpo[-4:]) / 4
    assert end > start and end > 0.75, (start, end)
    assert dpo[-1]["reward_margin"] > 0
