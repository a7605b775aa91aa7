"""The plan of a phase: which examples each optimizer step sees, in which order, at which learning
rate, and which rows are held out.

Everything here is a pure function of the config and the seed, so a resumed run replays exactly
the steps it would have taken (``plan_fingerprint`` checks that a checkpoint belongs to the same
plan).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Sequence

import torch

from ..config import TrainConfig
from ..data import data_fingerprint


#: Settings a phase takes from its own config field when that is set (the SFT phase of ``sft+dpo``
#: has its own learning rate, epochs and step count); a new phase with its own adds a line here.
PHASE_OVERRIDES = {"sft": {"lr": "sft_lr", "epochs": "sft_epochs", "max_steps": "sft_max_steps"}}


def phase_setting(cfg: TrainConfig, phase: str, name: str):
    """``cfg.<name>``, unless ``PHASE_OVERRIDES`` gives ``phase`` its own field for it and that
    field is set (e.g. ``sft_lr`` for ``lr`` in the SFT phase)."""
    field = PHASE_OVERRIDES.get(phase, {}).get(name)
    override = getattr(cfg, field) if field else None
    return override if override else getattr(cfg, name)


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass


def lr_lambda(schedule: str, warmup: int, total: int):
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        progress = min(max(progress, 0.0), 1.0)
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0 - progress

    return f


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool, salt: str = "") -> list[int]:
    """The data order of one epoch: a pure function of (seed, epoch), so a resumed run replays it."""
    if not shuffle:
        return list(range(n))
    digest = hashlib.sha256(f"{seed}:{epoch}:{salt}".encode()).hexdigest()
    g = torch.Generator().manual_seed(int(digest[:15], 16))
    return torch.randperm(n, generator=g).tolist()


def plan_steps(n: int, cfg: TrainConfig, phase: str, world: int = 1) -> list[dict]:
    """Every optimizer step of a phase: ``{"epoch": float, "micro": [[positions], ...]}``.

    A micro-batch holds ``batch_size * world`` positions (process ``r`` takes ``[r::world]``); a step
    holds ``grad_accum`` micro-batches; the last step of an epoch may be smaller. With ``max_steps``
    the epochs repeat (each reshuffled) until that many steps.
    """
    max_steps = phase_setting(cfg, phase, "max_steps")
    epochs = phase_setting(cfg, phase, "epochs")
    micro_size = cfg.batch_size * world
    per_step = micro_size * cfg.grad_accum
    steps_per_epoch = math.ceil(n / per_step)
    total = max_steps if max_steps else max(1, math.ceil(epochs * steps_per_epoch))
    plan: list[dict] = []
    epoch = 0
    while len(plan) < total:
        order = epoch_order(n, cfg.seed, epoch, cfg.shuffle, salt=phase)
        for s in range(steps_per_epoch):
            if len(plan) >= total:
                break
            chunk = order[s * per_step:(s + 1) * per_step]
            micro = [chunk[i:i + micro_size] for i in range(0, len(chunk), micro_size)]
            if world > 1:  # every process needs the same number of examples: wrap around
                micro = [m + order[:(-len(m)) % world] for m in micro]
            plan.append({"epoch": epoch + (s + 1) / steps_per_epoch, "micro": micro})
        epoch += 1
    return plan


def check_pairs(pairs, cfg: TrainConfig) -> None:
    """Enough rows to train on once the held-out ones are set aside."""
    if not isinstance(pairs, Sequence) or isinstance(pairs, str | bytes):
        raise ValueError("pairs must be a list of dicts with prompt/chosen/rejected")
    n_eval = eval_count(len(pairs), cfg)
    if len(pairs) - n_eval < cfg.min_pairs:
        raise ValueError(
            f"need at least {cfg.min_pairs} training pairs, got {len(pairs)} pairs"
            + (f" ({n_eval} held out for eval)" if n_eval else "")
        )


def eval_count(n: int, cfg: TrainConfig) -> int:
    """How many of ``n`` rows ``eval_fraction`` holds out (at least one when it is set)."""
    if cfg.eval_fraction <= 0 or n < 2:
        return 0
    return max(1, int(round(n * cfg.eval_fraction)))


def split_eval(n: int, cfg: TrainConfig) -> tuple[list[int], list[int]]:
    """Deterministic (seeded) train / eval split of ``range(n)``."""
    idx = list(range(n))
    random.Random(cfg.seed).shuffle(idx)
    n_eval = eval_count(n, cfg)
    return sorted(idx[n_eval:]), sorted(idx[:n_eval])


def ex_len(ex) -> int:
    """Tokens of one example (its prompt and every continuation)."""
    return len(ex.prompt_ids) + sum(len(c) for c in ex.continuations)


def step_ids(plan, phase_step, examples) -> list[int]:
    """The caller's row positions of the examples step ``phase_step`` trains on."""
    return [examples[i].index for m in plan[phase_step]["micro"] for i in m]


# settings that may change between a crash and its resume without invalidating the checkpoint
_RUNTIME_FIELDS = {"checkpoint_every", "keep_checkpoints", "log_every", "cpu_threads", "eval_every",
                   "eval_batch_size", "ref_cache_dir", "min_pairs"}


def plan_fingerprint(plan, examples, cfg: TrainConfig | None = None) -> str:
    """Hash of the data order, the tokenized data and the training settings of a phase."""
    h = hashlib.sha256()
    h.update(json.dumps([s["micro"] for s in plan]).encode())
    h.update(data_fingerprint(examples).encode())
    if cfg is not None:
        h.update(json.dumps({k: v for k, v in cfg.to_dict().items() if k not in _RUNTIME_FIELDS},
                            sort_keys=True).encode())
    return h.hexdigest()
