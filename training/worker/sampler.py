"""Batched sampling with a KV cache: many prompts (and several samples per prompt) answered in a
few forward passes per token instead of one ``model.generate`` call per prompt.

Prompts are sorted by length and cut into batches of ``batch_size`` rows; each batch is padded on
the left (so every row's next token sits in the last column), with an attention mask over the
padding and position ids that start at 0 on each row's first real token. One forward pass over
the prompts fills the cache; then each step feeds only the new token of every row. A row stops
at the end-of-sequence token (never on the first step: at least one token) or after
``max_new_tokens``; finished rows keep receiving the pad token until the whole batch is done.
Sampling: greedy at temperature 0, else temperature, top-k (50, as ``generate`` does by default;
0 turns it off) and nucleus (top-p) sampling from one seeded ``torch.Generator``. ``progress(done_rows, total_rows)`` is called after each batch.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence


def _next_token(logits, temperature: float, top_p: float, top_k: int, generator):
    import torch

    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if 0 < top_k < logits.shape[-1]:
        values, index = logits.topk(top_k, dim=-1)  # sorted, largest first: top-p needs no full sort
    else:
        values, index = logits.sort(dim=-1, descending=True)
    probs = torch.softmax(values, dim=-1)
    if top_p < 1.0:
        probs = probs * (probs.cumsum(dim=-1) - probs < top_p)  # always keeps the most likely token
    choice = torch.multinomial(probs, 1, generator=generator)
    return index.gather(-1, choice).squeeze(-1)


def sample_token_ids(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    eos_token_id: int,
    pad_token_id: int,
    max_new_tokens: int = 64,
    num_return_sequences: int = 1,
    temperature: float = 0.0,
    top_p: float = 0.95,
    top_k: int = 50,
    seed: int = 0,
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> list[list[list[int]]]:
    """New token ids per prompt (``num_return_sequences`` lists each), without the prompt and
    without the end-of-sequence token."""
    import torch

    device = next(model.parameters()).device
    accepted = inspect.signature(model.forward).parameters
    cache_kw = "cache" if "cache" in accepted else "past_key_values"  # the name changed within transformers 5
    extra = {"logits_to_keep": 1} if "logits_to_keep" in accepted else {}
    rows = [(i, list(p)) for i, p in enumerate(prompts) for _ in range(num_return_sequences)]
    order = sorted(range(len(rows)), key=lambda k: len(rows[k][1]))
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    outputs: list[list[int] | None] = [None] * len(rows)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        ids = [rows[k][1] for k in batch]
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), pad_token_id, dtype=torch.long, device=device)
        mask = torch.zeros((len(ids), width), dtype=torch.long, device=device)
        for r, x in enumerate(ids):
            input_ids[r, width - len(x) :] = torch.tensor(x, dtype=torch.long, device=device)
            mask[r, width - len(x) :] = 1
        positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
        done = torch.zeros(len(ids), dtype=torch.bool, device=device)
        new_tokens = []
        cache = None
        step_ids, step_positions = input_ids, positions
        with torch.no_grad():
            for step in range(max_new_tokens):
                out = model(
                    input_ids=step_ids, attention_mask=mask, position_ids=step_positions, use_cache=True,
                    **{cache_kw: cache}, **extra,
                )
                cache = out[cache_kw]
                logits = out.logits[:, -1, :]
                if step == 0:  # at least one new token
                    logits = logits.clone()
                    logits[:, eos_token_id] = float("-inf")
                token = _next_token(logits, temperature, top_p, top_k, generator)
                token = torch.where(done, torch.full_like(token, pad_token_id), token)
                new_tokens.append(token)
                done = done | (token == eos_token_id)
                if bool(done.all()):
                    break
                step_ids = token[:, None]
                step_positions = step_positions[:, -1:] + 1
                mask = torch.cat([mask, torch.ones((len(ids), 1), dtype=torch.long, device=device)], dim=-1)
        generated = torch.stack(new_tokens, dim=1).tolist()
        for r, k in enumerate(batch):
            seq = generated[r]
            if eos_token_id in seq:
                seq = seq[: seq.index(eos_token_id)]
            outputs[k] = seq
        if progress is not None:
            progress(min(start + batch_size, len(order)), len(order))
    per_prompt: list[list[list[int]]] = [[] for _ in prompts]
    for k, (i, _) in enumerate(rows):
        per_prompt[i].append(outputs[k])
    return per_prompt
