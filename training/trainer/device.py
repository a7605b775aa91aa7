"""Where and in what precision a phase runs: the device checks made before any compute, bf16 or
fp32, the ``Accelerator``, the batch layout for the device, and loading the model's weights.
"""

from __future__ import annotations

import torch

from ..config import TrainConfig
from ..tiny_model import load_model_and_tokenizer


def check_device(cfg: TrainConfig) -> None:
    """Refuse, before any compute, a device or precision this machine does not have."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but no CUDA GPU is available on this worker")
    if cfg.precision == "bf16" and cfg.device != "cpu" and torch.cuda.is_available() \
            and not torch.cuda.is_bf16_supported():
        raise ValueError("precision='bf16' was requested but this GPU does not support bfloat16")


def resolve_precision(cfg: TrainConfig) -> str:
    """'bf16' or 'fp32': "auto" is bf16 on a bf16-capable GPU, fp32 otherwise."""
    if cfg.precision != "auto":
        return cfg.precision
    use_cuda = cfg.device != "cpu" and torch.cuda.is_available()
    return "bf16" if use_cuda and torch.cuda.is_bf16_supported() else "fp32"


def batch_layout(cfg: TrainConfig, device) -> tuple[bool, bool]:
    """(pack, unpadded) for ``device``. On a CPU a batch buys no parallelism, so each unit runs
    alone at its own length (no padding at all); on a GPU units are packed into as few padded
    rows as possible and run as one batch."""
    cpu = torch.device(device).type == "cpu"
    unpadded = cpu if cfg.unpadded is None else cfg.unpadded
    pack = (not unpadded) if cfg.pack is None else cfg.pack
    return pack, unpadded


def make_accelerator(cfg: TrainConfig):
    """A fresh ``Accelerator`` (one per phase: each has its own checkpointed objects)."""
    from accelerate import Accelerator

    mp = "bf16" if resolve_precision(cfg) == "bf16" else "no"
    return Accelerator(cpu=(cfg.device == "cpu"), mixed_precision=mp)


def load_model(cfg: TrainConfig, path):
    """Weights in fp32 (the optimizer's master copy; bf16 is autocast), except a frozen LoRA base
    under bf16, which is loaded in bf16 to halve its memory."""
    dtype = torch.bfloat16 if (cfg.lora and resolve_precision(cfg) == "bf16") else torch.float32
    return load_model_and_tokenizer(path, dtype=dtype)
