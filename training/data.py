"""Tokenize preference pairs and collate them into the shared-prompt batch layout.

Input rows are the calibrated export's dicts::

    {"prompt": str | list[message], "chosen": str | list[message], "rejected": ...,
     "weight": float (optional, default 1), "p_chosen": float in [0, 1] (optional),
     "tie": bool (optional), "label": "preference" | "tie" | "both_bad" (optional)}

A tie (``"tie": true``, or ``label`` "tie" / "both_bad") says neither response is better: its
``p_chosen`` (0.5 when the row has none) is always its DPO target (``TokenizedPair.tie``), so a
tie never trains as "chosen beats rejected"; SFT (which learns the chosen response) leaves ties out.

Tokenization (the same rules as TRL 1.16's DPOTrainer, so both see the same tokens):

* a prompt that is a list of ``{"role", "content"}`` messages goes through the tokenizer's chat
  template (``add_generation_prompt=True``); a string response is then the assistant message.
  Plain-text rows are tokenized as text and get the eos token appended to each response.
* ``prompt`` and ``prompt + response`` are tokenized whole, and the response starts where the two
  diverge (BPE merges across the boundary cannot shift tokens between prompt and response).
* The loss only sees response tokens (the labels of prompt tokens are masked).

Truncation (``prompt_keep``): a pair longer than ``max_length`` loses its prompt's *earliest*
tokens first (the oldest turns; the prompt keeps its last ones, as TRL's ``max_prompt_length``
did), then its responses' last tokens (TRL's ``keep_start``: responses keep their first
``max_length - len(prompt)`` tokens). With ``max_prompt_length`` set, a longer prompt keeps its
last ``max_prompt_length`` tokens. Unset (the default), a prompt is cut only as far as the longer
response needs, and never below ``max_length // 2`` tokens, so a long conversation (real HH-RLHF
prompts run to hundreds of tokens) trains on its latest turns instead of failing. A prompt that
leaves no room for a response is an error (``ValueError`` naming the pair); with these rules
only an explicit ``max_prompt_length >= max_length`` could do that, and ``TrainConfig`` refuses it.

The batch layout (``collate_preference``). A naive DPO batch runs ``prompt+chosen`` and
``prompt+rejected`` as two padded rows, computing the shared prompt twice. Here each pair is one
*unit* ``[prompt | chosen | rejected]`` with

* position ids ``0..P-1 | P..P+C-1 | P..P+R-1`` (the rejected tokens sit where they would in
  their own sequence), and
* a 4-D attention mask in which the chosen tokens see the prompt and earlier chosen tokens, and
  the rejected tokens see the prompt and earlier rejected tokens -- never the chosen ones.

Every token's hidden state is then exactly what it would be in its own sequence (the test checks
this to 1e-5 against the naive computation), but the prompt is computed once. Units are padded
only to the batch's longest, and with ``pack=True`` short units share a row (first-fit
decreasing into rows no longer than the longest unit; the mask keeps units apart), so packing
never makes a row longer, only removes rows. SFT batches use the same layout with a single
continuation per unit.

Log-probabilities need the hidden state *before* each response token: for chosen token ``k`` it
is position ``P+k-1``; for the first rejected token it is the last prompt token ``P-1``. The
collate function writes these source positions (``target_src``, flat indices into the padded
``rows x length`` grid), the token ids to score (``target_ids``), and which sequence each token
belongs to (``target_seq``: ``2*i`` chosen, ``2*i+1`` rejected for pair ``i``), so the model
code gathers exactly the hidden states it needs and projects only those through the LM head.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

PROMPT_SEGMENT = 0


@dataclass
class TokenizedPair:
    """One preference pair as token ids. ``index`` is its position in the caller's list."""

    index: int
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    weight: float = 1.0
    p_chosen: float | None = None
    truncated: bool = False
    tie: bool = False  # neither is better: p_chosen is the target whatever use_soft_labels says

    @property
    def continuations(self) -> list[list[int]]:
        return [self.chosen_ids, self.rejected_ids]


@dataclass
class TokenizedExample:
    """One SFT example: a prompt and the response the loss is computed on."""

    index: int
    prompt_ids: list[int]
    response_ids: list[int]
    weight: float = 1.0
    truncated: bool = False

    @property
    def continuations(self) -> list[list[int]]:
        return [self.response_ids]


def is_conversational(value) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m for m in value)


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _as_messages(response, field_name: str, index: int) -> list[dict]:
    if isinstance(response, str):
        return [{"role": "assistant", "content": response}]
    if is_conversational(response):
        return response
    raise ValueError(f"pair {index}: {field_name} must be a string or a list of messages")


def _chat_ids(tokenizer, messages, **kwargs) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)
    return list(out["input_ids"])


def _split_prompt_responses(tokenizer, prompt, responses: Sequence, index: int):
    """Return ``(prompt_ids, [response_ids, ...])`` with TRL's common-prefix rule."""
    if is_conversational(prompt):
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(f"pair {index}: the prompt is a list of messages but the tokenizer has no "
                             f"chat template")
        prompt_ids = _chat_ids(tokenizer, prompt, add_generation_prompt=True)
        fulls = [
            _chat_ids(tokenizer, prompt + _as_messages(r, "response", index)) for r in responses
        ]
    elif isinstance(prompt, str):
        eos = tokenizer.eos_token or ""
        prompt_ids = list(tokenizer(prompt)["input_ids"])
        fulls = []
        for r in responses:
            if not isinstance(r, str):
                raise ValueError(f"pair {index}: the prompt is text, so the responses must be text too")
            text = r if (not eos or r.endswith(eos)) else r + eos
            fulls.append(list(tokenizer(prompt + text)["input_ids"]))
    else:
        raise ValueError(f"pair {index}: prompt must be a string or a list of messages")
    prompt_len = min(common_prefix_length(prompt_ids, f) for f in fulls)
    return prompt_ids[:prompt_len], [f[prompt_len:] for f in fulls]


def prompt_keep(prompt_len: int, response_len: int, max_length: int | None,
                max_prompt_length: int | None) -> int:
    """How many of a prompt's last tokens to keep (see the module docstring): all of them when the
    pair fits; else at most ``max_prompt_length`` when it is set, otherwise only as few as the
    longest response (``response_len`` tokens) needs, but never fewer than ``max_length // 2``."""
    if max_prompt_length is not None:
        return min(prompt_len, max_prompt_length)
    if max_length is None or prompt_len + response_len <= max_length:
        return prompt_len
    return min(prompt_len, max(max_length // 2, max_length - response_len))


def _truncate(prompt_ids, responses, max_length, max_prompt_length, index):
    truncated = False
    keep = prompt_keep(len(prompt_ids), max(len(r) for r in responses), max_length, max_prompt_length)
    if keep < len(prompt_ids):
        prompt_ids = prompt_ids[len(prompt_ids) - keep:]
        truncated = True
    if not prompt_ids:
        raise ValueError(f"pair {index}: the prompt is empty after tokenization (nothing to condition on)")
    if max_length is not None:
        room = max_length - len(prompt_ids)
        if room < 1:
            raise ValueError(
                f"pair {index}: the prompt has {len(prompt_ids)} tokens, which leaves no room for a response "
                f"within max_length={max_length}; set max_prompt_length below max_length"
            )
        if any(len(r) > room for r in responses):
            truncated = True
        responses = [r[:room] for r in responses]
    return prompt_ids, responses, truncated


def _check_pair(pair, index: int, keys=("prompt", "chosen", "rejected")):
    if not isinstance(pair, dict):
        raise ValueError(f"pair {index}: expected a dict with keys {keys}, got {type(pair).__name__}")
    for key in keys:
        value = pair.get(key)
        if value is None or (isinstance(value, str | list) and len(value) == 0):
            raise ValueError(f"pair {index}: {key!r} is missing or empty")


def _weight(pair, index) -> float:
    w = pair.get("weight")
    if w is None:
        return 1.0
    w = float(w)
    if not math.isfinite(w) or w < 0:
        raise ValueError(f"pair {index}: weight must be a finite number >= 0, got {pair.get('weight')!r}")
    return w


def _p_chosen(pair, index) -> float | None:
    p = pair.get("p_chosen")
    if p is None:
        return None
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"pair {index}: p_chosen must lie in [0, 1], got {pair.get('p_chosen')!r}")
    return p


#: ``label`` values of export rows that are not a preference (see the module docstring).
TIE_LABELS = ("tie", "both_bad")


def is_tie(pair: dict) -> bool:
    """Whether an export row says neither response is better (``tie`` true, or a tie label)."""
    tie = pair.get("tie")
    if isinstance(tie, str) and tie.strip().lower() in ("true", "false", "1", "0", ""):
        tie = tie.strip().lower() in ("true", "1")  # a CSV's text
    if tie is not None and not isinstance(tie, bool) and tie not in (0, 1):
        raise ValueError(f"tie must be true or false, got {tie!r}")
    return bool(tie) or pair.get("label") in TIE_LABELS


def tokenize_pair(tokenizer, pair: dict, index: int = 0, max_length: int | None = None,
                  max_prompt_length: int | None = None) -> TokenizedPair:
    """Tokenize one preference row (see the module docstring for the rules)."""
    _check_pair(pair, index)
    prompt_ids, (chosen, rejected) = _split_prompt_responses(
        tokenizer, pair["prompt"], [pair["chosen"], pair["rejected"]], index)
    if not chosen or not rejected:
        raise ValueError(f"pair {index}: a response is empty after tokenization")
    prompt_ids, (chosen, rejected), truncated = _truncate(prompt_ids, [chosen, rejected], max_length,
                                                          max_prompt_length, index)
    try:
        tie = is_tie(pair)
    except ValueError as exc:
        raise ValueError(f"pair {index}: {exc}") from None
    p_chosen = _p_chosen(pair, index)
    if tie and p_chosen is None:
        p_chosen = 0.5
    return TokenizedPair(index, prompt_ids, chosen, rejected, _weight(pair, index), p_chosen, truncated, tie)


def tokenize_pairs(tokenizer, pairs: Sequence[dict], max_length: int | None = None,
                   max_prompt_length: int | None = None, indices: Sequence[int] | None = None
                   ) -> list[TokenizedPair]:
    """Tokenize every row; the first bad row raises a ``ValueError`` naming its index
    (``indices[k]`` for row ``k`` when given, else ``k``)."""
    indices = range(len(pairs)) if indices is None else indices
    return [tokenize_pair(tokenizer, p, i, max_length, max_prompt_length) for i, p in zip(indices, pairs)]


def tokenize_sft(tokenizer, rows: Sequence[dict], max_length: int | None = None,
                 max_prompt_length: int | None = None, indices: Sequence[int] | None = None,
                 response_key: str = "chosen") -> list[TokenizedExample]:
    """Tokenize SFT rows ``{"prompt", response_key}`` (by default the chosen responses of an export).
    Ties are left out: their "chosen" is only the first response, not a better one."""
    out = []
    indices = range(len(rows)) if indices is None else indices
    for i, row in zip(indices, rows):
        _check_pair(row, i, keys=("prompt", response_key))
        if isinstance(row, dict) and response_key == "chosen" and is_tie(row):
            continue
        prompt_ids, (resp,) = _split_prompt_responses(tokenizer, row["prompt"], [row[response_key]], i)
        if not resp:
            raise ValueError(f"row {i}: the response is empty after tokenization")
        prompt_ids, (resp,), truncated = _truncate(prompt_ids, [resp], max_length, max_prompt_length, i)
        out.append(TokenizedExample(i, prompt_ids, resp, _weight(row, i), truncated))
    return out


def data_fingerprint(examples: Sequence[TokenizedPair | TokenizedExample], extra: dict | None = None) -> str:
    """A sha256 over the token ids (and ``extra``), used to key caches such as reference log-probs."""
    h = hashlib.sha256()
    h.update(json.dumps(extra or {}, sort_keys=True, default=str).encode())
    for ex in examples:
        h.update(json.dumps([ex.index, ex.prompt_ids, ex.continuations]).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Collate
# --------------------------------------------------------------------------------------------


def unit_length(example: TokenizedPair | TokenizedExample) -> int:
    return len(example.prompt_ids) + sum(len(c) for c in example.continuations)


def pack_units(lengths: Sequence[int], pack: bool = True) -> list[list[int]]:
    """Group unit indices into rows. Without packing, one unit per row. With packing, first-fit
    decreasing into rows whose capacity is the longest unit, so no row is ever longer than the
    unpacked batch would be."""
    if not pack:
        return [[i] for i in range(len(lengths))]
    capacity = max(lengths)
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, room in enumerate(free):
            if lengths[i] <= room:
                rows[r].append(i)
                free[r] -= lengths[i]
                break
        else:
            rows.append([i])
            free.append(capacity - lengths[i])
    return rows


@dataclass
class Batch:
    """A collated batch. Tensors live on CPU until ``to(device)``.

    ``input_ids``, ``position_ids``, ``segment_ids``, ``unit_ids``: ``(rows, length)``.
    ``segment_ids`` is 0 on prompt tokens, ``j+1`` on continuation ``j`` and -1 on padding;
    ``unit_ids`` numbers the units inside a row (-1 on padding). ``target_*``: one entry per scored
    token (see the module docstring). Per example (``n = num_examples``): ``weights``,
    ``p_chosen`` (NaN where the row had none), ``ties`` (bool), ``lengths`` ``(n, K)`` response
    token counts, and ``indices`` (positions in the caller's list).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segment_ids: torch.Tensor
    unit_ids: torch.Tensor
    target_src: torch.Tensor
    target_ids: torch.Tensor
    target_seq: torch.Tensor
    weights: torch.Tensor
    p_chosen: torch.Tensor
    lengths: torch.Tensor
    indices: list[int]
    num_continuations: int
    num_tokens: int = 0  # real (non-pad) tokens in the batch
    extras: dict = field(default_factory=dict)
    ties: torch.Tensor | None = None  # (n,) bool; None: no tie in the batch

    @property
    def num_examples(self) -> int:
        return len(self.indices)

    def to(self, device) -> "Batch":
        moved = {}
        for name in ("input_ids", "position_ids", "segment_ids", "unit_ids", "target_src", "target_ids",
                     "target_seq", "weights", "p_chosen", "lengths"):
            moved[name] = getattr(self, name).to(device, non_blocking=True)
        return Batch(**moved, indices=self.indices, num_continuations=self.num_continuations,
                     num_tokens=self.num_tokens, extras={k: v.to(device) if torch.is_tensor(v) else v
                                                         for k, v in self.extras.items()},
                     ties=None if self.ties is None else self.ties.to(device, non_blocking=True))


def collate(examples: Sequence[TokenizedPair | TokenizedExample], pad_token_id: int, pack: bool = True,
            pad_to_multiple_of: int | None = None) -> Batch:
    """Collate pairs (2 continuations) or SFT examples (1) into the shared-prompt layout."""
    if not examples:
        raise ValueError("cannot collate an empty batch")
    k = len(examples[0].continuations)
    lengths = [unit_length(e) for e in examples]
    rows = pack_units(lengths, pack)
    width = max(sum(lengths[i] for i in row) for row in rows)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    n_rows = len(rows)
    input_ids = torch.full((n_rows, width), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((n_rows, width), dtype=torch.long)
    segment_ids = torch.full((n_rows, width), -1, dtype=torch.long)
    unit_ids = torch.full((n_rows, width), -1, dtype=torch.long)
    src, tgt, seq = [], [], []
    for r, row in enumerate(rows):
        offset = 0
        for u, i in enumerate(row):
            ex = examples[i]
            p = len(ex.prompt_ids)
            base = r * width + offset
            ids = list(ex.prompt_ids)
            pos = list(range(p))
            segs = [PROMPT_SEGMENT] * p
            start = p
            for j, cont in enumerate(ex.continuations):
                n = len(cont)
                ids += cont
                pos += range(p, p + n)
                segs += [j + 1] * n
                # token t of continuation j (absolute unit position start+t) is predicted by the
                # hidden state at start+t-1, except t == 0, predicted by the last prompt token
                src.append(base + p - 1)
                src.extend(base + start + t - 1 for t in range(1, n))
                tgt.extend(cont)
                seq.extend([i * k + j] * n)
                start += n
            length = len(ids)
            input_ids[r, offset:offset + length] = torch.tensor(ids)
            position_ids[r, offset:offset + length] = torch.tensor(pos)
            segment_ids[r, offset:offset + length] = torch.tensor(segs)
            unit_ids[r, offset:offset + length] = u
            offset += length
    p_chosen = [getattr(e, "p_chosen", None) for e in examples]
    ties = [getattr(e, "tie", False) for e in examples]
    return Batch(
        input_ids=input_ids,
        position_ids=position_ids,
        segment_ids=segment_ids,
        unit_ids=unit_ids,
        target_src=torch.tensor(src, dtype=torch.long),
        target_ids=torch.tensor(tgt, dtype=torch.long),
        target_seq=torch.tensor(seq, dtype=torch.long),
        weights=torch.tensor([e.weight for e in examples], dtype=torch.float32),
        p_chosen=torch.tensor([float("nan") if p is None else p for p in p_chosen], dtype=torch.float32),
        lengths=torch.tensor([[len(c) for c in e.continuations] for e in examples], dtype=torch.long),
        indices=[e.index for e in examples],
        num_continuations=k,
        num_tokens=sum(lengths),
        ties=torch.tensor(ties, dtype=torch.bool) if any(ties) else None,
    )


def attention_mask_4d(segment_ids: torch.Tensor, unit_ids: torch.Tensor, dtype: torch.dtype | None = None):
    """The ``(rows, 1, L, L)`` mask of the shared-prompt layout.

    Query ``i`` may attend to key ``j`` when ``j <= i``, both are in the same unit, and ``j`` is a
    prompt token or in the same continuation as ``i``. Padding attends to earlier padding only (so
    no softmax row is empty). Boolean (True = attend) for SDPA; with ``dtype`` an additive float
    mask (0 / dtype-min) for eager attention.
    """
    length = segment_ids.shape[1]
    idx = torch.arange(length, device=segment_ids.device)
    causal = idx[None, :] <= idx[:, None]  # (L_q, L_k)
    same_unit = unit_ids[:, :, None] == unit_ids[:, None, :]
    seg_q = segment_ids[:, :, None]
    seg_k = segment_ids[:, None, :]
    visible = (seg_k == PROMPT_SEGMENT) | (seg_k == seg_q)
    mask = (causal[None] & same_unit & visible)[:, None]
    if dtype is None:
        return mask
    out = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return out.masked_fill_(~mask, torch.finfo(dtype).min)
