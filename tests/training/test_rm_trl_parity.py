"""Our reward-model loss (shared-prompt layout + training.losses) against TRL 1.16's RewardTrainer.

Same random Llama with a score head, same tokenizer, same four pairs: TRL runs ``prompt + chosen``
and ``prompt + rejected`` as separate padded rows through ``LlamaForSequenceClassification``; we run
each pair as one ``[prompt | chosen | rejected]`` unit and read the score head at each response's
last token. Loss and gradient norm must agree, with and without margins and reward centring.
"""
import copy
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from transformers import LlamaForSequenceClassification  # noqa: E402

from training.config import TrainConfig  # noqa: E402
from training.data import collate, tokenize_pairs  # noqa: E402
from training.reward_model import pair_rewards, rm_batch_loss  # noqa: E402
from training.tiny_model import llama_config, train_tokenizer  # noqa: E402

PAIRS = [
    {"prompt": "Human: What is the capital of France?\n\nAssistant:",
     "chosen": " The capital of France is Paris.", "rejected": " I do not know.", "margin": 1.0},
    {"prompt": "Human: Say something kind.\n\nAssistant:",
     "chosen": " You are doing great, keep going!", "rejected": " No.", "margin": 0.0},
    {"prompt": "Human: How do I boil an egg?\n\nAssistant:",
     "chosen": " Put it in boiling water for eight minutes.", "rejected": " Eggs cannot be boiled, sorry.",
     "margin": 2 / 3},
    {"prompt": "Human: Count to three.\n\nAssistant:", "chosen": " 1 2 3", "rejected": " 3 2 1 go", "margin": 1 / 3},
]

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tok = train_tokenizer([p["prompt"] + p["chosen"] + p["rejected"] for p in PAIRS] * 5, vocab_size=400)
    cfg = llama_config(tok, hidden=64, layers=2, heads=4)
    cfg.num_labels = 1
    torch.manual_seed(3)
    model = LlamaForSequenceClassification(cfg)
    with torch.no_grad():  # a score head big enough that the rewards are not all ~0
        model.score.weight.normal_(0, 0.5)
    return tok, model, tmp_path_factory.mktemp("trl_rm")


def _grad_norm(model):
    return torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters() if p.grad is not None)).item()


def _trl(tok, model, out_dir, margin, center):
    from trl import RewardConfig, RewardTrainer

    rows = [{k: v for k, v in p.items() if margin or k != "margin"} for p in PAIRS]
    args = RewardConfig(output_dir=str(out_dir), report_to="none", per_device_train_batch_size=4, max_length=128,
                        use_cpu=True, bf16=False, save_strategy="no", center_rewards_coefficient=center,
                        dataset_num_proc=None)
    trainer = RewardTrainer(model=model, args=args, processing_class=tok, train_dataset=datasets.Dataset.from_list(rows))
    feats = [trainer.train_dataset[i] for i in range(len(rows))]
    batch = trainer.data_collator(feats)
    trainer.model.train()
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    return loss.item(), _grad_norm(trainer.model), [(f["chosen_ids"], f["rejected_ids"]) for f in feats]


def _ours(tok, model, margin, center):
    cfg = TrainConfig(recipe="rm", use_weights=False, rm_center_coef=center)
    examples = tokenize_pairs(tok, PAIRS, max_length=128)
    batch = collate(examples, tok.pad_token_id, pack=True)
    model.train()
    model.zero_grad()
    rewards = pair_rewards(model, batch)
    m = torch.tensor([p["margin"] for p in PAIRS]) if margin else None
    loss, _ = rm_batch_loss(rewards, batch, m, cfg)
    loss.backward()
    tokens = [(e.prompt_ids + e.chosen_ids, e.prompt_ids + e.rejected_ids) for e in examples]
    return loss.item(), _grad_norm(model), tokens


@pytest.mark.parametrize("margin,center", [(False, None), (True, None), (False, 0.01)])
def test_reward_loss_matches_trl_reward_trainer(setup, margin, center):
    tok, model, out_dir = setup
    ours = _ours(tok, copy.deepcopy(model), margin, center)
    theirs = _trl(tok, copy.deepcopy(model), out_dir / f"{margin}-{center}", margin, center)
    assert [tuple(map(list, t)) for t in ours[2]] == [tuple(map(list, t)) for t in theirs[2]], \
        "tokenization differs from TRL's"
    assert ours[0] == pytest.approx(theirs[0], abs=1e-4), f"loss: ours {ours[0]} vs TRL {theirs[0]}"
    assert ours[1] == pytest.approx(theirs[1], rel=1e-3), f"grad norm: ours {ours[1]} vs TRL {theirs[1]}"
    assert abs(ours[0] - 0.6931) > 1e-3  # the rewards are not trivially equal
