"""Reference log-probs for DPO: computed once, before LoRA wrapping and before any checkpoint is
restored (when the model *is* the reference), and cached in ``out_dir/cache`` under a hash of the
tokenized data and the reference weights, so no reference model is kept or run while training.

Without the cache (``precompute_ref_logps=False``) each micro-batch asks ``reference_logps``:
a frozen copy of the model, or the PEFT model with its adapter disabled.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ..config import TrainConfig
from ..data import Batch, data_fingerprint
from .logps import compute_logps_table, sequence_logps
from .state import RunState


def model_fingerprint(model: nn.Module) -> str:
    """A cheap content hash of a model's parameters (a strided sample of every tensor)."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in sorted(model.state_dict().items()):
            flat = p.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 2048)].float().cpu()
            h.update(name.encode())
            h.update(str(tuple(p.shape)).encode())
            h.update(sample.numpy().tobytes())
    return h.hexdigest()


@dataclass
class Reference:
    """Where a DPO phase gets its reference log-probs: the precomputed ``table`` (rows by
    ``example.index``), else a frozen copy ``model``, else ``peft_model`` with its adapter off."""

    table: torch.Tensor | None = None
    model: nn.Module | None = None
    peft_model: nn.Module | None = None

    @torch.no_grad()
    def batch_logps(self, batch: Batch, acc, cfg: TrainConfig, unpadded: bool = False) -> torch.Tensor:
        """``(num_examples, 2)`` reference log-probs of one collated micro-batch."""
        if self.table is not None:
            return self.table[torch.tensor(batch.indices)].to(acc.device)
        with acc.autocast():
            if self.model is not None:
                return sequence_logps(self.model, batch, cfg.logits_chunk_elements, unpadded).float()
            with self.peft_model.disable_adapter():
                return sequence_logps(self.peft_model, batch, cfg.logits_chunk_elements, unpadded).float()

    def examples_logps(self, policy, examples, pad_id, batch_size, acc, cfg: TrainConfig, layout) -> dict:
        """``{example.index: tensor(2)}`` reference log-probs of ``examples`` (held-out evaluation);
        ``policy`` is the unwrapped PEFT model when the reference is its adapter-less base."""
        if self.table is not None:
            return {e.index: self.table[e.index] for e in examples}
        if self.model is not None:
            return compute_logps_table(self.model, examples, pad_id, batch_size, acc,
                                       cfg.logits_chunk_elements, *layout)
        with self.peft_model.disable_adapter():
            return compute_logps_table(policy, examples, pad_id, batch_size, acc,
                                       cfg.logits_chunk_elements, *layout)


def reference_table(run: RunState, model, examples, pad_id) -> torch.Tensor:
    """Reference log-probs for every pair, computed once and cached in a file keyed by a hash of
    the tokenized data and the reference model's weights."""
    cfg, acc = run.cfg, run.accelerator
    key = data_fingerprint(examples, {"model": model_fingerprint(model), "chunk": "v1"})[:24]
    cache_dir = Path(cfg.ref_cache_dir) if cfg.ref_cache_dir else run.out / "cache"
    path = cache_dir / f"ref_logps-{key}.pt"
    n = run.num_rows
    if path.exists():
        run.log(f"dpo: reference log-probs from cache {path}")
        return torch.load(path)
    t = time.time()
    bs = cfg.eval_batch_size or max(cfg.batch_size, 8)
    logps = compute_logps_table(model, examples, pad_id, bs, acc, cfg.logits_chunk_elements, run.pack,
                                run.unpadded)
    table = torch.full((n, 2), float("nan"))
    for i, row in logps.items():
        table[i] = row
    if run.main:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(table, tmp)
        os.replace(tmp, path)
    run.log(f"dpo: reference log-probs for {len(examples)} pairs in {time.time() - t:.1f}s -> {path}")
    return table
