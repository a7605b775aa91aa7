"""Sampling a round: batched sampling with a KV cache (training.worker.sampler) against a
per-prompt ``model.generate`` loop (what generate_texts did before), in the same run.

    .venv/bin/python bench/sampling.py [--prompts 64] [--new-tokens 48] [--batch 32] [--device auto]

The model is the project's default tiny model (hidden 256, 4 layers; tokenizer trained on the
prompts), random weights, so neither side stops early: both write ``--new-tokens`` tokens per
prompt unless the end-of-sequence token is drawn. Both sample at temperature 0.8, top-p 0.95.
Prints generated tokens per second of each and the ratio (goal: ours >= 5x the loop). On a GPU
(``--device cuda`` or auto when one is present) the same comparison runs there.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()

    import torch

    from training.tiny_model import build_default_model, load_model_and_tokenizer
    from training.worker.sampler import sample_token_ids

    if args.threads:
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    topics = "apple river stone cloud green table music light paper window garden silver quiet ocean".split()
    texts = [f"Question {i}: tell me about the {topics[i % len(topics)]}{' and why' * (i % 5)}." for i in range(args.prompts)]
    with tempfile.TemporaryDirectory() as work:
        folder = build_default_model(Path(work) / "m", texts)
        model, tok = load_model_and_tokenizer(folder)
    model.eval().to(device)
    prompts = [tok(t)["input_ids"] for t in texts]
    n_params = sum(p.numel() for p in model.parameters())

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def loop():
        torch.manual_seed(0)
        n = 0
        for p in prompts:
            ids = torch.tensor([p], device=device)
            with torch.no_grad():
                g = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens,
                                   min_new_tokens=1, do_sample=True, temperature=0.8, top_p=0.95,
                                   pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            n += g.shape[1] - len(p)
        return n

    def ours():
        out = sample_token_ids(model, prompts, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                               max_new_tokens=args.new_tokens, temperature=0.8, top_p=0.95, batch_size=args.batch)
        return sum(len(s) + (len(s) < args.new_tokens) for per in out for s in per)  # + the eos token, as generate counts it

    results = {}
    for name, fn in (("per-prompt model.generate loop", loop), (f"batched, KV cache (batch {args.batch})", ours)):
        fn() if name.startswith("batched") else None  # warm-up of ours (the loop warms up on its first prompts)
        sync()
        start = time.perf_counter()
        tokens = fn()
        sync()
        seconds = time.perf_counter() - start
        results[name] = tokens / seconds
        print(f"{name:<36} {tokens:>6} tokens in {seconds:7.2f} s = {tokens / seconds:9.1f} tokens/s")
    peer, mine = results.values()
    print(f"device {device}, threads {torch.get_num_threads()}, model {n_params / 1e6:.2f}M parameters, "
          f"{args.prompts} prompts x {args.new_tokens} new tokens")
    print(f"ratio (ours / loop): {mine / peer:.1f}x  (goal >= 5x)")


if __name__ == "__main__":
    main()
