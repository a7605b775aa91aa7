"""Our DPO (shared-prompt layout + training.losses) against TRL 1.16's DPOTrainer on one batch.

Same tiny random Llama, same tokenizer, same four pairs. The reference model is a *different*
random Llama so the rewards are not all zero. TRL computes the loss with its own collator
(chosen and rejected as separate padded rows) and fused LM head; we compute it with
``training.data.collate`` (prompt once, 4-D mask) and ``training.losses.dpo_loss``.
"""
import copy
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from transformers import LlamaForCausalLM  # noqa: E402

from training.data import collate, tokenize_pairs  # noqa: E402
from training.losses import dpo_loss  # noqa: E402
from training.tiny_model import llama_config, train_tokenizer  # noqa: E402
from training.trainer.logps import sequence_logps  # noqa: E402

PAIRS = [
    {"prompt": "Human: What is the capital of France?\n\nAssistant:",
     "chosen": " The capital of France is Paris.", "rejected": " I do not know."},
    {"prompt": "Human: Say something kind.\n\nAssistant:",
     "chosen": " You are doing great, keep going!", "rejected": " No."},
    {"prompt": "Human: How do I boil an egg?\n\nAssistant:",
     "chosen": " Put it in boiling water for eight minutes.", "rejected": " Eggs cannot be boiled, sorry about that."},
    {"prompt": "Human: Count to three.\n\nAssistant:", "chosen": " 1 2 3", "rejected": " 3 2 1 go"},
]

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tok = train_tokenizer([p["prompt"] + p["chosen"] + p["rejected"] for p in PAIRS] * 5, vocab_size=400)
    cfg = llama_config(tok, hidden=64, layers=2, heads=4)
    torch.manual_seed(1)
    policy = LlamaForCausalLM(cfg)
    torch.manual_seed(2)
    ref = LlamaForCausalLM(cfg)
    return tok, policy, ref, tmp_path_factory.mktemp("trl")


def _trl_loss_and_grad(tok, policy, ref, out_dir, loss_type):
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=str(out_dir), report_to="none", per_device_train_batch_size=4, max_length=128,
                     beta=0.1, loss_type=[loss_type], gradient_checkpointing=False, bf16=False, use_cpu=True,
                     logging_steps=1, save_strategy="no", disable_dropout=True, dataset_num_proc=None)
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args, processing_class=tok,
                         train_dataset=datasets.Dataset.from_list(PAIRS))
    feats = [trainer.train_dataset[i] for i in range(len(PAIRS))]
    batch = trainer.data_collator(feats)
    trainer.model.train()
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grad_norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in trainer.model.parameters()
                               if p.grad is not None))
    m = trainer._metrics["train"]
    tokenized = [(f["prompt_ids"], f["chosen_ids"], f["rejected_ids"]) for f in feats]
    return loss.item(), m["rewards/chosen"][-1], m["rewards/rejected"][-1], m["rewards/accuracies"][-1], \
        grad_norm.item(), tokenized


def _our_loss_and_grad(tok, policy, ref, loss_type):
    examples = tokenize_pairs(tok, PAIRS, max_length=128)
    batch = collate(examples, tok.pad_token_id, pack=True)
    policy.train()
    policy.zero_grad()
    logps = sequence_logps(policy, batch)
    with torch.no_grad():
        ref_logps = sequence_logps(ref, batch)
    lengths = batch.lengths.float()
    loss, cr, rr = dpo_loss(logps[:, 0], logps[:, 1], ref_logps[:, 0], ref_logps[:, 1], beta=0.1,
                            loss_type=loss_type, chosen_lengths=lengths[:, 0], rejected_lengths=lengths[:, 1])
    loss.backward()
    grad_norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in policy.parameters() if p.grad is not None))
    tokenized = [(e.prompt_ids, e.chosen_ids, e.rejected_ids) for e in examples]
    return loss.item(), cr.mean().item(), rr.mean().item(), (cr > rr).float().mean().item(), grad_norm.item(), \
        tokenized


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_dpo_matches_trl(setup, loss_type):
    tok, policy, ref, out_dir = setup
    ours = _our_loss_and_grad(tok, copy.deepcopy(policy), copy.deepcopy(ref), loss_type)
    theirs = _trl_loss_and_grad(tok, copy.deepcopy(policy), copy.deepcopy(ref), out_dir / loss_type, loss_type)
    assert ours[5] == theirs[5], "tokenization differs from TRL's"
    names = ["loss", "chosen reward", "rejected reward", "reward accuracy", "grad norm"]
    for name, a, b in zip(names, ours[:5], theirs[:5]):
        assert a == pytest.approx(b, abs=1e-4), f"{name}: ours {a} vs TRL {b}"
    # the rewards are not trivially zero (policy and reference differ)
    assert abs(ours[1]) > 1e-3 and abs(ours[2]) > 1e-3
