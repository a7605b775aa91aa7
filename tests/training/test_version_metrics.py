"""Automatic metrics of a model version (training.worker.metrics): distinct-2 by hand; a model
against itself has KL 0 and no length change; against a much more peaked model a large KL."""

from __future__ import annotations

import pytest

from training.worker.metrics import distinct_2, version_metrics

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def test_distinct_2_by_hand():
    assert distinct_2(["a b a b", "a b"]) == 0.5  # (a b) x3, (b a) x1: 2 distinct of 4
    assert distinct_2(["one two three"]) == 1.0
    assert distinct_2(["single", ""]) is None


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    from training.tiny_model import build_default_model

    texts = [f"Question {i}: tell me about the river and the stone." for i in range(30)]
    import torch

    from training.tiny_model import load_model_and_tokenizer

    root = tmp_path_factory.mktemp("metrics")
    a = build_default_model(root / "a", texts, seed=0, vocab_size=320, hidden=32, layers=1, max_positions=128)
    # The other model: the same one with its output layer scaled, far from uniform (a clear KL).
    model, tok = load_model_and_tokenizer(a)
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
    model.save_pretrained(root / "b")
    tok.save_pretrained(root / "b")
    return str(a), str(root / "b")


def test_a_model_against_itself_and_against_another(two_models):
    a, b = two_models
    prompts = [f"Question {i}: tell me about the river." for i in range(8)] + [[{"role": "user", "content": "Hi?"}]]
    same = version_metrics(a, a, prompts, max_new_tokens=12)
    assert same["eval_prompts"] == 9 and same["kl_to_parent"] == pytest.approx(0.0, abs=1e-4)
    assert same["length_change"] == 0 and 1 <= same["mean_length"] <= 12 and 0 < same["distinct_2"] <= 1
    other = version_metrics(a, b, prompts, max_new_tokens=12)
    assert other["kl_to_parent"] > 1.0
    assert version_metrics(a, None, prompts, max_new_tokens=12).keys() == {"eval_prompts", "mean_length", "distinct_2"}
    assert version_metrics(a, b, []) == {}
