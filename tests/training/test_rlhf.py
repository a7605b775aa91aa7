"""The RLHF recipes as phases (training.rlhf): sft+rm+ppo, sft+dpo+ppo, rm, ppo on the tiny model."""
import json
import os
from pathlib import Path

import pytest

from training.config import TrainConfig
from training.rlhf import plan_phase_steps, tokenizer_problem, train_rlhf
from training.tiny_model import build_default_model

from .test_ppo import WORDS, upper_pairs

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    texts = [p["prompt"] + p["chosen"] + p["rejected"] for p in upper_pairs(200)]
    return build_default_model(tmp_path_factory.mktemp("m") / "model", texts, vocab_size=512, hidden=64, layers=2)


def cfg(recipe, **kw):
    base = dict(recipe=recipe, device="cpu", lr=1e-3, sft_lr=1e-3, sft_max_steps=2, max_steps=2, rm_lr=2e-3,
                rm_max_steps=3, ppo_iterations=2, ppo_batch_size=4, ppo_response_length=6, ppo_lr=1e-3,
                batch_size=4, eval_fraction=0.2, checkpoint_every=0, min_pairs=4, rm_norm_samples=8,
                ppo_value_model="reward", ppo_samples_per_log=1)
    base.update(kw)
    return TrainConfig(**base)


class Rec:
    def __init__(self):
        self.steps = []

    def on_step(self, m):
        self.steps.append(m)


def test_sft_rm_ppo_runs_its_phases_with_one_step_count(tiny, tmp_path):
    c = cfg("sft+rm+ppo")
    pairs = upper_pairs(40, seed=3)
    assert plan_phase_steps(c, pairs, None) == {"sft": 2, "rm": 3, "ppo": 2}
    rec = Rec()
    res = train_rlhf(c, tiny, pairs, tmp_path / "run", rec)
    assert res.status == "succeeded" and res.steps == res.total_steps == 7
    assert [m["step"] for m in rec.steps] == list(range(1, 8))
    assert [m["phase"] for m in rec.steps] == ["sft"] * 2 + ["rm"] * 3 + ["ppo"] * 2
    assert all(m["total_steps"] == 7 for m in rec.steps)
    assert res.final_path == str(tmp_path / "run" / "ppo" / "final")
    info = json.loads((Path(res.final_path) / "prefloop_training.json").read_text())
    sft = str((tmp_path / "run" / "sft" / "final").resolve())
    assert info["base_model"] == sft and info["reference_model"] == sft  # PPO from the SFT model
    rm = json.loads((tmp_path / "run" / "rm" / "final" / "prefloop_training.json").read_text())
    assert rm["base_model"] == sft and rm["normalization"]["policy"] == sft  # RM from SFT, normalised on it
    # each held-out number under the phase it measures (SFT perplexity, the reward model's accuracy)
    assert "eval_reward_accuracy" in res.eval_metrics["rm"] and "eval_ppl" in res.eval_metrics["sft"]
    # a finished run called again trains nothing more
    again = Rec()
    assert train_rlhf(c, tiny, pairs, tmp_path / "run", again).status == "succeeded" and not again.steps


def test_sft_dpo_ppo_uses_the_dpo_model_as_start_and_reference(tiny, tmp_path):
    res = train_rlhf(cfg("sft+dpo+ppo"), tiny, upper_pairs(40, seed=4), tmp_path / "run", Rec())
    assert res.status == "succeeded" and [p["phase"] for p in res.phases] == ["sft+dpo", "rm", "ppo"]
    info = json.loads((Path(res.final_path) / "prefloop_training.json").read_text())
    dpo = str((tmp_path / "run" / "sft+dpo" / "final").resolve())
    assert info["base_model"] == dpo and info["reference_model"] == dpo
    assert info["reward_model"] == str((tmp_path / "run" / "rm" / "final").resolve())


def test_rm_recipe_outputs_the_reward_model_and_ppo_needs_one(tiny, tmp_path):
    res = train_rlhf(cfg("rm"), tiny, upper_pairs(40), tmp_path / "rm", Rec())
    assert res.final_path == str(tmp_path / "rm" / "rm" / "final")
    assert json.loads((Path(res.final_path) / "config.json").read_text())["architectures"] == [
        "LlamaForSequenceClassification"]
    with pytest.raises(ValueError, match="needs a reward model"):
        train_rlhf(cfg("ppo"), tiny, upper_pairs(40), tmp_path / "ppo")
    out = train_rlhf(cfg("ppo", reward_model=res.final_path), tiny, upper_pairs(40), tmp_path / "ppo2", Rec())
    assert out.status == "succeeded" and out.steps == 2


def test_tokenizer_problem_without_torch(tiny, tmp_path):
    assert tokenizer_problem(tiny, tiny) is None
    other = build_default_model(tmp_path / "other", [" ".join(WORDS)] * 10, vocab_size=300, hidden=32, layers=1)
    assert "vocabulary sizes" in tokenizer_problem(tiny, other)


def test_a_reward_model_on_zero_weights_fails_instead_of_learning_nothing(tiny, tmp_path):
    from training.trainer.loop import NothingToLearn

    pairs = [dict(p, weight=0.0) for p in upper_pairs(20, seed=5)]
    with pytest.raises(NothingToLearn, match="rm: the gradient norm was 0 for the first 3 steps.*use_weights=false"):
        train_rlhf(cfg("rm"), tiny, pairs, tmp_path / "run", Rec())
    assert not (tmp_path / "run" / "rm" / "final").exists()
