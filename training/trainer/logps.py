"""Response log-probabilities: the backbone runs once per batch, the LM head only on the response
positions (in chunks, recomputed on backward when large), so full ``(batch, length, vocab)``
logits never exist.

``sequence_logps`` is the one function every phase's loss starts from; ``LogpsModel`` wraps it
as the module ``accelerator.prepare`` sees; ``compute_logps_table`` runs it without gradients
over a list of examples (reference log-probs, evaluation).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.utils.checkpoint

from ..data import Batch, attention_mask_4d, collate

def _hf_parts(model):
    """(backbone, lm_head) of a causal LM, through PEFT and accelerate wrappers."""
    inner = model
    if hasattr(inner, "get_base_model"):  # PEFT
        inner = inner.get_base_model()
    backbone = inner.get_decoder() if hasattr(inner, "get_decoder") else inner.base_model
    return inner, backbone, inner.get_output_embeddings()


def _token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if logits.dtype in (torch.float16, torch.bfloat16):  # log-softmax in at least float32
        logits = logits.float()
    return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def _head_logps(lm_head, hidden, targets):
    return _token_logps(lm_head(hidden), targets)


def chunked_token_logps(hidden: torch.Tensor, lm_head: nn.Module, targets: torch.Tensor,
                        chunk_elements: int = 2**26) -> torch.Tensor:
    """``log softmax(lm_head(hidden))[targets]`` for ``hidden`` of shape ``(N, H)``.

    At most ``chunk_elements`` logits exist at a time; with gradients enabled and more than one
    chunk, each chunk is checkpointed (its logits are recomputed during backward instead of kept).
    """
    vocab = lm_head.weight.shape[0]
    chunk = max(1, chunk_elements // vocab)
    if hidden.shape[0] <= chunk:
        return _head_logps(lm_head, hidden, targets)
    grad = torch.is_grad_enabled()
    out = []
    for h, t in zip(hidden.split(chunk), targets.split(chunk)):
        if grad:
            out.append(torch.utils.checkpoint.checkpoint(_head_logps, lm_head, h, t, use_reentrant=False))
        else:
            out.append(_head_logps(lm_head, h, t))
    return torch.cat(out)


def sequence_logps(model, batch: Batch, chunk_elements: int = 2**26, unpadded: bool = False) -> torch.Tensor:
    """Summed response log-probs, shape ``(num_examples, num_continuations)``, of a collated batch
    (``[:, 0]`` chosen, ``[:, 1]`` rejected for pairs).

    ``unpadded``: run the backbone one row at a time, each trimmed to its real length, instead of
    one padded ``(rows, length)`` forward. The same numbers with no compute spent on padding; the
    faster choice on a CPU (where a batch brings no extra parallelism), not on a GPU.
    """
    inner, backbone, lm_head = _hf_parts(model)
    impl = getattr(inner.config, "_attn_implementation", "sdpa")
    if impl not in ("sdpa", "eager"):
        raise ValueError(f"the shared-prompt layout needs attn_implementation 'sdpa' or 'eager', "
                         f"not {impl!r}")
    mask_dtype = None if impl == "sdpa" else lm_head.weight.dtype
    if not unpadded or batch.input_ids.shape[0] == 1:
        mask = attention_mask_4d(batch.segment_ids, batch.unit_ids, dtype=mask_dtype)
        hidden = backbone(input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids,
                          use_cache=False).last_hidden_state
        hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch.target_src)
    else:
        rows, width = batch.input_ids.shape
        real = (batch.segment_ids >= 0).sum(dim=1).tolist()  # padding only ever trails a row
        outs = []
        for r, n in enumerate(real):
            row = slice(r, r + 1)
            mask = attention_mask_4d(batch.segment_ids[row, :n], batch.unit_ids[row, :n], dtype=mask_dtype)
            out = backbone(input_ids=batch.input_ids[row, :n], attention_mask=mask,
                           position_ids=batch.position_ids[row, :n], use_cache=False)
            outs.append(out.last_hidden_state[0])
        starts = torch.tensor([0] + real[:-1], device=batch.target_src.device).cumsum(0)
        src = starts[batch.target_src // width] + batch.target_src % width
        hidden = torch.cat(outs).index_select(0, src)
    token_logps = chunked_token_logps(hidden, lm_head, batch.target_ids, chunk_elements)
    n_seq = batch.num_examples * batch.num_continuations
    sums = torch.zeros(n_seq, dtype=token_logps.dtype, device=token_logps.device)
    sums = sums.index_add(0, batch.target_seq, token_logps)
    return sums.view(batch.num_examples, batch.num_continuations)


class LogpsModel(nn.Module):
    """The module ``accelerator.prepare`` wraps (DDP/FSDP need the whole computation inside one
    ``forward``): a causal LM whose forward returns per-sequence response log-probs."""

    def __init__(self, model: nn.Module, chunk_elements: int = 2**26, unpadded: bool = False):
        super().__init__()
        self.model = model
        self.chunk_elements = chunk_elements
        self.unpadded = unpadded
        self._no_split_modules = getattr(model, "_no_split_modules", None)

    def forward(self, batch: Batch) -> torch.Tensor:
        return sequence_logps(self.model, batch, self.chunk_elements, self.unpadded)


@torch.no_grad()
def compute_logps_table(model, examples, pad_id, batch_size, acc, chunk_elements=2**26, pack=True,
                        unpadded=False) -> dict:
    """Summed response log-probs of every example, ``{example.index: tensor(K)}`` (no grad)."""
    was_training = model.training
    model.eval()
    out = {}
    rank, world = acc.process_index, acc.num_processes
    mine = examples[rank::world]
    for s in range(0, len(mine), batch_size):
        chunk = mine[s:s + batch_size]
        batch = collate(chunk, pad_id, pack=pack).to(acc.device)
        with acc.autocast():
            lp = sequence_logps(model, batch, chunk_elements, unpadded).float().cpu()
        for ex, row in zip(chunk, lp):
            out[ex.index] = row
    if world > 1:
        from accelerate.utils import gather_object

        merged = {}
        for part in gather_object([out]):
            merged.update(part)
        out = merged
    model.train(was_training)
    return out
