"""Automatic metrics of a newly trained model version, computed by the worker after its run.

On the evaluation prompts (the export's test split, else the first training prompts; at most
``MAX_PROMPTS``), the new model and its parent each answer every prompt once by sampling at
temperature 1 (``training.worker.sampler``). Then:

* ``kl_to_parent`` -- mean over prompts of ``log p_new(y|x) - log p_parent(y|x)`` for the new
  model's own samples ``y`` (a Monte Carlo estimate of KL(new || parent) per response, in nats;
  the parent is the reference DPO was anchored to);
* ``mean_length`` / ``parent_mean_length`` / ``length_change`` -- mean response length in tokens
  (the end-of-sequence token counted when it was drawn) and its change from the parent's (DPO
  is known to drift towards longer answers);
* ``distinct_2`` -- distinct word bigrams over all bigrams of the new model's responses
  (diversity; a collapsed model repeats itself);
* ``preference_accuracy`` -- the implicit-reward preference accuracy on the export's test split,
  as the trainer measured it at the end of the DPO phase (``dpo_eval_reward_accuracy``).
"""

from __future__ import annotations

MAX_PROMPTS = 64
MAX_NEW_TOKENS = 32


def distinct_2(texts: list[str]) -> float | None:
    """Distinct word bigrams / all word bigrams over ``texts`` (None without any bigram)."""
    bigrams = [tuple(words[i : i + 2]) for t in texts for words in [t.split()] for i in range(len(words) - 1)]
    return len(set(bigrams)) / len(bigrams) if bigrams else None


def _sequence_logps(model, prompts: list[list[int]], responses: list[list[int]], batch_size: int = 32,
                    features: bool = False):
    """Sum of log-probabilities of each response given its prompt (right padding). With
    ``features``, also ``[n, hidden]``: the model's final hidden state (the LM head's input)
    summed over each response's positions, from the same forward pass."""
    import numpy as np
    import torch

    device = next(model.parameters()).device
    out, feats = [], []
    for start in range(0, len(prompts), batch_size):
        pairs = list(zip(prompts[start : start + batch_size], responses[start : start + batch_size]))
        width = max(len(p) + len(r) for p, r in pairs)
        ids = torch.zeros((len(pairs), width), dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for k, (p, r) in enumerate(pairs):
            ids[k, : len(p) + len(r)] = torch.tensor(p + r, device=device)
            mask[k, : len(p) + len(r)] = 1
        with torch.no_grad():
            result = model(input_ids=ids, attention_mask=mask, output_hidden_states=features)
        logits = result.logits.float()
        logps = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        for k, (p, r) in enumerate(pairs):
            out.append(float(logps[k, len(p) - 1 : len(p) + len(r) - 1].sum()))
        if features:
            hidden = result.hidden_states[-1].float()
            # the states that predict the response's tokens (as the log-probs above)
            feats += [hidden[k, len(p) - 1 : len(p) + len(r) - 1].sum(0).cpu().numpy() for k, (p, r) in enumerate(pairs)]
    if features:
        return out, np.stack(feats) if feats else np.zeros((0, model.config.hidden_size))
    return out


def version_metrics(model_path: str, parent_path: str | None, prompts: list, *, seed: int = 0,
                    max_new_tokens: int = MAX_NEW_TOKENS) -> dict:
    """The sampled metrics of the module docstring for the model at ``model_path``."""
    from ..tiny_model import load_model_and_tokenizer
    from .generation import encode_prompts
    from .sampler import sample_token_ids

    prompts = prompts[:MAX_PROMPTS]
    if not prompts:
        return {}
    model, tok = load_model_and_tokenizer(model_path)
    model.eval()
    encoded = encode_prompts(model, tok, prompts, max_new_tokens)

    def answers(m):
        ids = [per[0] for per in sample_token_ids(
            m, encoded, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, max_new_tokens=max_new_tokens,
            temperature=1.0, top_p=1.0, top_k=0, seed=seed)]
        return [seq + [tok.eos_token_id] if len(seq) < max_new_tokens else seq for seq in ids]

    mine = answers(model)
    texts = [tok.decode(seq, skip_special_tokens=True) for seq in mine]
    metrics = {
        "eval_prompts": len(prompts),
        "mean_length": sum(map(len, mine)) / len(mine),
        "distinct_2": distinct_2(texts),
    }
    if parent_path:
        parent, parent_tok = load_model_and_tokenizer(parent_path)
        parent.eval()
        if parent_tok.get_vocab() == tok.get_vocab():
            new_lp = _sequence_logps(model, encoded, mine)
            old_lp = _sequence_logps(parent, encoded, mine)
            metrics["kl_to_parent"] = sum(a - b for a, b in zip(new_lp, old_lp)) / len(mine)
            theirs = answers(parent)
            metrics["parent_mean_length"] = sum(map(len, theirs)) / len(theirs)
            metrics["length_change"] = metrics["mean_length"] - metrics["parent_mean_length"]
    return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in metrics.items()}
