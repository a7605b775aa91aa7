"""The export's ``hf/`` folder trains with TRL's DPOTrainer exactly as the dataset card says
(one step of a tiny random Llama on the CPU), extra columns and all."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

from evaluation.export.services import create_export
from evaluation.export.tasks import build_export_task
from tests.factories import make_annotators, make_comparison, make_judgment, make_pool, make_project

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
pytest.importorskip("trl")

pytestmark = [pytest.mark.django_db, pytest.mark.slow]

PAIRS = [
    ("Human: What is the capital of France?\n\nAssistant:", " Paris is the capital.", " I do not know."),
    ("Human: Say something kind.\n\nAssistant:", " You are doing great!", " No."),
    ("Human: How do I boil an egg?\n\nAssistant:", " Boil it for eight minutes.", " Eggs cannot be boiled."),
    ("Human: Count to three.\n\nAssistant:", " 1 2 3", " 3 2 1 go"),
    ("Human: Name a colour.\n\nAssistant:", " Blue.", " Seven."),
    ("Human: Is water wet?\n\nAssistant:", " It makes things wet.", " Maybe."),
]


def test_dpo_trainer_runs_on_the_export(settings, tmp_path):
    settings.PREFLOOP_EXPORT_BOOTSTRAP = 100
    project = make_project("TRL export")
    pool = make_pool(project, "p")
    users = make_annotators(project, 3, pool, prefix="trl-annotator-")
    for i, (prompt_text, good, bad) in enumerate(PAIRS):
        c = make_comparison(
            project, f"trl{i}", prompt=prompt_text, text_a=bad, text_b=good, model_a="m", model_b="m"
        )
        for k, u in enumerate(users):
            make_judgment(u, c, "b", pool=pool, a_on_left=k % 2 == 0)
    export = create_export(project, None, {"formats": ["hf"], "test_fraction": 0.34}, enqueue=False)
    assert build_export_task.apply(args=(export.pk,)).get() == "succeeded"
    export.refresh_from_db()

    from datasets import load_from_disk
    from transformers import LlamaForCausalLM
    from trl import DPOConfig, DPOTrainer

    from training.tiny_model import llama_config, train_tokenizer

    ds = load_from_disk(str(Path(export.path) / "hf"))  # as in the card
    train = ds["train"].filter(lambda r: r["label"] == "preference")
    assert all(r["chosen"] in {p[1] for p in PAIRS} for r in train)
    tok = train_tokenizer([p + g + b for p, g, b in PAIRS] * 5, vocab_size=400)
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config(tok, hidden=32, layers=1, heads=2))
    args = DPOConfig(
        output_dir=str(tmp_path / "dpo"),
        report_to="none",
        per_device_train_batch_size=2,
        max_steps=1,
        max_length=64,
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        gradient_checkpointing=False,
        dataset_num_proc=None,
        logging_steps=1,
    )
    ref = copy.deepcopy(model)  # a path as `model` (as in the card) lets TRL load the reference itself
    trainer = DPOTrainer(
        model=model,
        ref_model=ref,
        args=args,
        train_dataset=train,
        eval_dataset=ds["test"],
        processing_class=tok,
    )
    result = trainer.train()
    assert result.global_step == 1 and torch.isfinite(torch.tensor(result.training_loss))
