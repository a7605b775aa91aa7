"""Batched sampling with a KV cache (training.worker.sampler): greedy answers are the ones a
per-prompt ``model.generate`` gives, whatever the batch size and the prompts' lengths (left
padding changes nothing); sampling is seeded; every row gets at least one token and stops at
the end-of-sequence token; ``generate_texts`` (the next round's responses) goes through it."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from training.loop.seed import synthetic_lines
    from training.tiny_model import build_default_model, load_model_and_tokenizer

    lines = synthetic_lines(40)
    texts = [f"{l['prompt']} {l['response_a']} {l['response_b']}" for l in lines]
    folder = build_default_model(tmp_path_factory.mktemp("sampler") / "m", texts, vocab_size=384, hidden=32,
                                 layers=2, max_positions=256)
    model, tokenizer = load_model_and_tokenizer(folder)
    model.eval()
    prompts = [tokenizer(l["prompt"] * (1 + i % 4))["input_ids"] for i, l in enumerate(lines[:12])]
    return folder, model, tokenizer, prompts


def _one_by_one(model, tokenizer, prompts, max_new_tokens):
    import torch

    out = []
    for p in prompts:
        ids = torch.tensor([p])
        g = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                           min_new_tokens=1, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                           eos_token_id=tokenizer.eos_token_id)[0][len(p):].tolist()
        out.append(g[: g.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in g else g)
    return out


@pytest.mark.parametrize("batch_size", [1, 5, 32])
def test_greedy_batches_answer_as_generate_does_one_prompt_at_a_time(tiny, batch_size):
    from training.worker.sampler import sample_token_ids

    _, model, tokenizer, prompts = tiny
    expected = _one_by_one(model, tokenizer, prompts, 16)
    ours = sample_token_ids(model, prompts, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                            max_new_tokens=16, batch_size=batch_size)
    assert [o[0] for o in ours] == expected
    assert all(len(o[0]) >= 1 for o in ours)


def test_sampling_is_seeded_and_stops_at_the_end_of_sequence(tiny):
    from training.worker.sampler import sample_token_ids

    _, model, tokenizer, prompts = tiny
    kw = dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, max_new_tokens=12,
              num_return_sequences=3, temperature=1.0, batch_size=8)
    seen = []
    first = sample_token_ids(model, prompts, seed=5, progress=lambda done, total: seen.append((done, total)), **kw)
    assert sample_token_ids(model, prompts, seed=5, **kw) == first
    assert sample_token_ids(model, prompts, seed=6, **kw) != first
    assert all(len(per_prompt) == 3 for per_prompt in first)
    flat = [seq for per_prompt in first for seq in per_prompt]
    assert all(1 <= len(seq) <= 12 and tokenizer.eos_token_id not in seq and tokenizer.pad_token_id not in seq
               for seq in flat)
    assert len({tuple(s) for s in flat}) > len(flat) // 2  # samples differ
    assert seen[-1] == (36, 36) and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_generate_texts_answers_text_and_chat_prompts(tiny):
    from training.worker.generation import generate_texts

    folder = str(tiny[0])
    out = generate_texts(folder, ["Question 1: tell me about the river.", [{"role": "user", "content": "Hello?"}]],
                         2, 8, 0.9, 3)
    assert len(out) == 2 and all(len(texts) == 2 for texts in out)
    assert generate_texts(folder, ["Question 1: tell me about the river."], 1, 8, 0.0) == \
        generate_texts(folder, ["Question 1: tell me about the river."], 1, 8, 0.0, 99)  # greedy: seed-free
