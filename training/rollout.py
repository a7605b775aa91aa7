"""Sampling and scoring for PPO: generate with a KV cache, score with the reward model, and the
per-token log-probs / values / entropies of ``[prompt | response]`` sequences.

Models only, no Django. Three kinds of model go through here, all Hugging Face ``PreTrainedModel``:

* a causal LM (policy, reference): log-probs of the response tokens under ``softmax(logits / T)``
  (the sampling temperature, as TRL and Huang et al. 2024 do, so the KL and the ratio compare the
  distributions that were actually sampled from);
* a sequence-classification model with one label (reward model, separate critic): its ``score``
  head applied to the trunk's last hidden state -- at the last token for a reward, at every state
  before a response token for values;
* a policy with a value head on its own trunk (``shared``): both from one forward.

Only the hidden states of the response positions go through the LM head, so ``(length x vocab)``
logits of the prompt never exist. On a CPU every sequence runs alone at its own length (no
padding: a batch buys no parallelism there); on a GPU the sequences are right-padded into one
batch. Sampling is batched with left-padded prompts and a ``StaticCache`` (preallocated for
prompt + response, so no step copies the cache); the generator is seeded by the caller, so a
rollout is a pure function of (weights, prompts, seed).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from .ppo import entropy_from_logits, truncate_after_eos


class TokenizerMismatchError(ValueError):
    """The reward model and the policy do not share one tokenizer."""


def check_same_tokenizer(policy_tok, reward_tok, policy_name: str = "policy", reward_name: str = "reward model"):
    """PPO feeds the policy's token ids to the reward model (and the critic) as they are, so both
    must tokenize identically: same vocabulary and the same pad / eos / bos ids. Raises
    ``TokenizerMismatchError`` naming the first difference."""
    problems = []
    va, vb = policy_tok.get_vocab(), reward_tok.get_vocab()
    if len(va) != len(vb):
        problems.append(f"vocabulary sizes {len(va)} vs {len(vb)}")
    elif va != vb:
        diff = sorted(t for t in va if vb.get(t) != va[t])[:3]
        problems.append(f"{sum(1 for t in va if vb.get(t) != va[t])} tokens have other ids (e.g. {diff})")
    for name in ("eos_token_id", "pad_token_id", "bos_token_id"):
        a, b = getattr(policy_tok, name, None), getattr(reward_tok, name, None)
        if a != b:
            problems.append(f"{name} {a} vs {b}")
    if problems:
        raise TokenizerMismatchError(
            f"the {reward_name}'s tokenizer differs from the {policy_name}'s ({'; '.join(problems)}); PPO scores "
            f"the {policy_name}'s tokens directly, so both must use one tokenizer: train the reward model "
            f"from the same base model as the policy")


def trunk(model: nn.Module) -> nn.Module:
    """The transformer trunk (no head) of a causal LM or sequence-classification model, through PEFT."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if hasattr(inner, "get_decoder"):
        dec = inner.get_decoder()
        if dec is not None:
            return dec
    return getattr(inner, inner.base_model_prefix)


def lm_head(model: nn.Module) -> nn.Module:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.get_output_embeddings()


def score_head(model: nn.Module) -> nn.Module:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = getattr(inner, "score", None) or getattr(inner, "value_head", None)
    if head is None:
        raise ValueError(f"{type(inner).__name__} has no score head (expected a sequence-classification model)")
    return head


def _cache_kw(model) -> str:
    params = inspect.signature(trunk(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


# ============================================================================================
# Hidden states of [prompt | response] sequences
# ============================================================================================


def length_buckets(lengths: list[int], overhead_tokens: float) -> list[list[int]]:
    """Group sequence indices into padded forwards at the least cost, where a forward costs
    ``overhead_tokens + rows x longest`` (its fixed call overhead in token-equivalents plus its
    padded size). Optimal over contiguous groups of the length-sorted sequences (a small DP)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    ls = [lengths[i] for i in order]
    n = len(ls)
    best = [0.0] + [math.inf] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):  # group = ls[i:j], padded to ls[j-1]
            c = best[i] + overhead_tokens + (j - i) * ls[j - 1]
            if c < best[j]:
                best[j], cut[j] = c, i
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


def _overhead_tokens(model) -> float:
    """A forward call's fixed cost in tokens of compute: about 1.5 ms of call overhead on a CPU
    against ~2 FLOPs per trunk parameter per token at ~20 GFLOP/s."""
    n = getattr(model, "_prefloop_trunk_params", None)
    if n is None:
        body = trunk(model)
        emb = body.get_input_embeddings() if hasattr(body, "get_input_embeddings") else None
        n = sum(p.numel() for p in body.parameters()) - (emb.weight.numel() if emb is not None else 0)
        model._prefloop_trunk_params = n
    return 1.5e7 / max(n, 1)


_LAST_LAYER_FAST = ("llama", "mistral", "qwen2")  # attention: q/k/v/o projections + rotate-half rotary


def _rotary(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class _LastLayerFrom(nn.Module):
    """The last decoder layer of a Llama-style trunk, computed only for the positions from
    ``start`` on: keys and values for every position (later queries attend to them), queries,
    attention output and MLP only from ``start``. The outputs it skips are ones no log-prob,
    value or reward reads, so what it returns equals the full layer's rows ``start:`` (the same
    math); it saves most of the last layer's work on the prompt. Right-padded input only (a
    real position never attends to a later one, so a causal mask is the whole mask)."""

    def __init__(self, layer: nn.Module, start: int):
        super().__init__()
        self.layer, self.start = layer, start

    def forward(self, hidden_states, attention_mask=None, position_embeddings=None, **kwargs):
        layer, a = self.layer, self.start
        attn = layer.self_attn
        b, s, _ = hidden_states.shape
        x = layer.input_layernorm(hidden_states)
        q = attn.q_proj(x[:, a:]).view(b, s - a, -1, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(b, s, -1, attn.head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(b, s, -1, attn.head_dim).transpose(1, 2)
        cos, sin = (t.unsqueeze(1) for t in position_embeddings)
        q, k = _rotary(q, cos[:, :, a:], sin[:, :, a:]), _rotary(k, cos, sin)
        causal = torch.arange(s, device=x.device)[None, :] <= torch.arange(a, s, device=x.device)[:, None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=causal, scale=attn.scaling,
                                             enable_gqa=q.shape[1] != k.shape[1])
        h = hidden_states[:, a:] + attn.o_proj(out.transpose(1, 2).reshape(b, s - a, -1))
        return h + layer.mlp(layer.post_attention_layernorm(h))


def _trunk_from(body: nn.Module, start: int, **inputs) -> tuple[torch.Tensor, int]:
    """``body(**inputs).last_hidden_state`` from position ``offset`` on, and ``offset``: with the
    last layer computed from ``start`` on (:class:`_LastLayerFrom`) where the architecture
    allows, else the full forward (``offset`` 0)."""
    layers, config = getattr(body, "layers", None), getattr(body, "config", None)
    last = layers[-1] if layers is not None and len(layers) else None
    attn = getattr(last, "self_attn", None)
    fast = (start > 0 and getattr(config, "model_type", None) in _LAST_LAYER_FAST and attn is not None
            and getattr(attn, "sliding_window", None) is None
            and (getattr(config, "sliding_window", None) is None or inputs["input_ids"].shape[1] <= config.sliding_window)
            and (not last.training or getattr(attn, "attention_dropout", 0.0) == 0.0))
    if not fast:
        return body(**inputs, use_cache=False).last_hidden_state, 0
    layers[-1] = _LastLayerFrom(last, start)
    try:
        return body(**inputs, use_cache=False).last_hidden_state, start
    finally:
        layers[-1] = last


def sequence_hidden(model: nn.Module, seqs: list[list[int]], positions: list[torch.Tensor], device,
                    unpadded: bool) -> torch.Tensor:
    """Last-layer hidden states of ``seqs`` at ``positions[i]`` (indices into sequence ``i``),
    concatenated: ``(sum_i len(positions[i]), H)``.

    ``unpadded`` (the CPU layout): sequences of about the same length run together, each group
    padded to its longest (:func:`length_buckets` weighs padding against per-call overhead), so
    little compute goes to padding and tiny models do not pay one forward call per sequence.
    Otherwise (GPU): one right-padded batch.
    """
    if unpadded and len(seqs) > 1:
        groups = length_buckets([len(s) for s in seqs], _overhead_tokens(model))
        if len(groups) > 1:
            parts = [sequence_hidden(model, [seqs[i] for i in g], [positions[i] for i in g], device, False)
                     for g in groups]
            sizes = [len(p) for p in positions]
            chunks = {}
            for g, h in zip(groups, parts):
                for i, piece in zip(g, h.split([sizes[i] for i in g])):
                    chunks[i] = piece
            return torch.cat([chunks[i] for i in range(len(seqs))])
    body = trunk(model)
    start = min(int(p.min()) for p in positions if len(p)) if any(len(p) for p in positions) else 0
    if len(seqs) == 1:
        ids = torch.tensor([seqs[0]], device=device)
        h, off = _trunk_from(body, start, input_ids=ids)
        return h[0].index_select(0, (positions[0] - off).to(device))
    width = max(len(s) for s in seqs)
    ids = torch.zeros((len(seqs), width), dtype=torch.long)
    att = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        att[i, :len(s)] = 1
    h, off = _trunk_from(body, start, input_ids=ids.to(device), attention_mask=att.to(device))
    flat = torch.cat([pos - off + i * (width - off) for i, pos in enumerate(positions)]).to(device)
    return h.reshape(-1, h.shape[-1]).index_select(0, flat)


def _logps_entropy(head: nn.Module, hidden, targets, temperature: float, want_entropy: bool,
                   entropy_grad: bool = False):
    logits = head(hidden).float() / temperature
    lse = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, targets[:, None]).squeeze(-1) - lse
    if not want_entropy:
        return logp, None
    if entropy_grad:
        return logp, entropy_from_logits(logits)
    with torch.no_grad():  # entropy_from_logits, reusing the logsumexp: lse - sum(softmax(z) * z)
        z, lse = logits.detach(), lse.detach()
        ent = lse - (torch.exp(z - lse[:, None]) * z).sum(-1)
    return logp, ent


def head_logps(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
               want_entropy: bool = False, chunk_elements: int = 2**26, entropy_grad: bool = False):
    """Log-probs of ``targets`` under ``softmax(head(hidden) / T)`` and entropies (detached
    unless ``entropy_grad``, for an entropy bonus). At most ``chunk_elements`` logits exist at
    once; with gradients on, each chunk is recomputed in the backward pass instead of kept."""
    vocab = head.weight.shape[0]
    chunk = max(1, chunk_elements // vocab)
    if hidden.shape[0] <= chunk or entropy_grad:
        return _logps_entropy(head, hidden, targets, temperature, want_entropy, entropy_grad)
    logps, ents = [], []
    for h, t in zip(hidden.split(chunk), targets.split(chunk)):
        if torch.is_grad_enabled():
            lp = torch.utils.checkpoint.checkpoint(
                lambda a, b: _logps_entropy(head, a, b, temperature, False)[0], h, t, use_reentrant=False)
            ent = _logps_entropy(head, h.detach(), t, temperature, True)[1] if want_entropy else None
        else:
            lp, ent = _logps_entropy(head, h, t, temperature, want_entropy)
        logps.append(lp)
        ents.append(ent)
    return torch.cat(logps), (torch.cat(ents) if want_entropy else None)


@dataclass
class Sequences:
    """``[prompt | response]`` rows of a (mini)batch and where their response tokens sit."""

    seqs: list[list[int]]
    state_pos: list[torch.Tensor]  # positions of the states before each response token: P-1 .. P+R-2
    targets: torch.Tensor  # the response tokens, flattened
    lengths: list[int]  # response lengths

    @classmethod
    def build(cls, prompt_ids: list[list[int]], responses: torch.Tensor, mask: torch.Tensor) -> "Sequences":
        seqs, pos, tgt, lengths = [], [], [], []
        for p, r, m in zip(prompt_ids, responses.tolist(), mask.sum(1).tolist()):
            r = r[:int(m)]
            seqs.append(list(p) + r)
            pos.append(torch.arange(len(p) - 1, len(p) - 1 + len(r)))
            tgt.extend(r)
            lengths.append(len(r))
        return cls(seqs, pos, torch.tensor(tgt, dtype=torch.long), lengths)

    def unflatten(self, flat: torch.Tensor, width: int) -> torch.Tensor:
        """``(sum R_i,)`` -> right-padded ``(B, width)`` (zeros after each response)."""
        out = flat.new_zeros((len(self.lengths), width))
        start = 0
        for i, n in enumerate(self.lengths):
            out[i, :n] = flat[start:start + n]
            start += n
        return out


def policy_logprobs(model, seqs: Sequences, width: int, temperature: float, device, unpadded: bool,
                    want_entropy: bool = False, value_head: nn.Module | None = None,
                    chunk_elements: int = 2**26, entropy_grad: bool = False):
    """Per-token log-probs ``(B, width)`` of the responses under ``model`` (with gradients when
    enabled), entropies ``(B, width)`` when asked, and values from ``value_head`` applied to the
    same hidden states (the ``shared`` critic) when given."""
    hidden = sequence_hidden(model, seqs.seqs, seqs.state_pos, device, unpadded)
    logp, ent = head_logps(lm_head(model), hidden, seqs.targets.to(device), temperature, want_entropy,
                           chunk_elements, entropy_grad)
    values = value_head(hidden).squeeze(-1).float() if value_head is not None else None
    return (seqs.unflatten(logp, width), seqs.unflatten(ent, width) if ent is not None else None,
            seqs.unflatten(values, width) if values is not None else None)


def critic_values(model, seqs: Sequences, width: int, device, unpadded: bool) -> torch.Tensor:
    """Values ``(B, width)`` of the states before each response token from a separate critic
    (a sequence-classification model)."""
    hidden = sequence_hidden(model, seqs.seqs, seqs.state_pos, device, unpadded)
    return seqs.unflatten(score_head(model)(hidden).squeeze(-1).float(), width)


def reward_scores(model, seqs: list[list[int]], device, unpadded: bool, batch_size: int = 64) -> torch.Tensor:
    """The reward model's scalar on each full sequence (its score head at the last token)."""
    out = []
    for s in range(0, len(seqs), batch_size):
        part = seqs[s:s + batch_size]
        last = [torch.tensor([len(x) - 1]) for x in part]
        hidden = sequence_hidden(model, part, last, device, unpadded)
        out.append(score_head(model)(hidden).squeeze(-1).float())
    return torch.cat(out)


# ============================================================================================
# Sampling with a KV cache
# ============================================================================================


@dataclass
class Samples:
    """Sampled responses ``(B, T)`` cut after the first EOS (pad after), their 0/1 ``mask``, the
    per-token log-probs under the tempered sampling distribution, and ``has_eos`` per row."""

    tokens: torch.Tensor
    mask: torch.Tensor
    logprobs: torch.Tensor
    has_eos: torch.Tensor
    steps: int  # forward passes the sampler made (== T)
    values: torch.Tensor | None = None  # value_head of the state before each token, when asked


@torch.no_grad()
def sample(model, prompt_ids: list[list[int]], max_new_tokens: int, temperature: float, eos_id: int | None,
           pad_id: int, generator: torch.Generator, device, batch_size: int = 64,
           value_head: nn.Module | None = None) -> Samples:
    """Sample one response per prompt, ``batch_size`` prompts at a time (left-padded, KV cache);
    a batch stops as soon as every row has produced ``eos_id``. ``temperature`` scales the logits
    before softmax; the returned log-probs are those of that tempered distribution.
    ``value_head``: also apply it to the hidden state before each sampled token (a critic on the
    policy's own trunk gets its rollout values for free)."""
    parts = [_sample_batch(model, prompt_ids[s:s + batch_size], max_new_tokens, temperature, eos_id, pad_id,
                           generator, device, value_head) for s in range(0, len(prompt_ids), batch_size)]
    width = max(p[0].shape[1] for p in parts)

    def cat(i, fill):
        return torch.cat([F.pad(p[i], (0, width - p[i].shape[1]), value=fill) for p in parts])

    tokens, logps = cat(0, pad_id), cat(1, 0.0)
    values = cat(3, 0.0) if value_head is not None else None
    tokens, mask, _, has_eos = truncate_after_eos(tokens, eos_id, pad_id)
    return Samples(tokens, mask, logps * mask, has_eos, max(p[2] for p in parts),
                   values * mask if values is not None else None)


def draw(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One index per row of ``probs`` ``(B, V)`` (rows summing to ~1), drawn with probability
    ``probs[b, i]``: inverse-CDF sampling with one uniform per row. Same distribution as
    ``torch.multinomial(probs, 1)``, which on a CPU draws an exponential variate for every
    vocabulary entry (``B x V`` random numbers per step instead of ``B``)."""
    cdf = probs.cumsum(dim=-1)
    u = torch.rand((probs.shape[0], 1), generator=generator, device=probs.device, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=probs.shape[1] - 1)


def _sample_batch(model, prompts, max_new_tokens, temperature, eos_id, pad_id, generator, device,
                  value_head=None):
    b = len(prompts)
    width = max(len(p) for p in prompts)
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    att = torch.zeros((b, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        att[i, width - len(p):] = 1
    ids, att = ids.to(device), att.to(device)
    pos = (att.cumsum(1) - 1).clamp(min=0)
    from transformers import StaticCache

    # preallocated keys/values: a DynamicCache concatenates (copies) every layer's cache each step
    cache = StaticCache(config=model.config, max_cache_len=width + max_new_tokens)
    kw = {_cache_kw(model): cache}
    body, head = trunk(model), lm_head(model)
    was_training = model.training
    model.eval()
    h = body(input_ids=ids, attention_mask=att, position_ids=pos, use_cache=True, **kw).last_hidden_state[:, -1]
    logits = head(h)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    tokens, logps, values = [], [], []
    last_pos = pos[:, -1:]
    for _ in range(max_new_tokens):
        if value_head is not None:
            values.append(value_head(h).squeeze(-1).float())
        logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)
        nxt = draw(logp_all.exp(), generator)
        lp = logp_all.gather(1, nxt[:, None]).squeeze(1)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        tokens.append(nxt)
        logps.append(torch.where(done, torch.zeros_like(lp), lp))
        if eos_id is not None:
            done = done | (nxt == eos_id)
        if len(tokens) == max_new_tokens or bool(done.all()):
            break
        att = torch.cat([att, torch.ones((b, 1), dtype=att.dtype, device=device)], dim=1)
        last_pos = last_pos + 1
        h = body(input_ids=nxt[:, None], attention_mask=att, position_ids=last_pos, use_cache=True,
                 **kw).last_hidden_state[:, -1]
        logits = head(h)
    model.train(was_training)
    vals = torch.stack(values, 1).cpu() if values else None
    return torch.stack(tokens, 1).cpu(), torch.stack(logps, 1).cpu(), len(tokens), vals


__all__ = ["TokenizerMismatchError", "check_same_tokenizer", "trunk", "lm_head", "score_head",
           "sequence_hidden", "head_logps", "Sequences", "policy_logprobs", "critic_values", "reward_scores",
           "Samples", "sample", "draw"]
