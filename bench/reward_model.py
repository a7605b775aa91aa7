"""Reward-model training steps/s and peak memory: prefloop against TRL 1.16's RewardTrainer, same run.

Same model (a random Llama with a one-output score head: ~20M parameters on CPU, ``--size large``
~0.5B for a GPU), same tokenizer (byte-level BPE trained on the HH pairs), same data (HH-RLHF
harmless pairs from ../shared/data/hh_harmless_dev.jsonl whose ``prompt + response`` fits
``--max-length``, in file order for both), same batch, AdamW with linear decay and gradient
clipping 1.0, fp32 on CPU / bf16 autocast on GPU, no gradient checkpointing, unweighted
Bradley-Terry loss. Each trainer runs in its own subprocess, so peak RSS (or
``torch.cuda.max_memory_allocated``) is its own. Both see the same batches, so their per-step
losses must agree to float precision.

    .venv/bin/python bench/reward_model.py
    .venv/bin/python bench/reward_model.py --device cuda --size large --steps 20
    .venv/bin/python bench/reward_model.py --write-results

TRL runs ``prompt + chosen`` and ``prompt + rejected`` as separate rows padded to the longest;
ours runs each pair as one ``[prompt | chosen | rejected]`` unit (the prompt once) at its own
length on a CPU, and reads the score head at each response's last token only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "hh_harmless_dev.jsonl"

SIZES = {
    "small": dict(hidden=384, layers=8, heads=6, intermediate=1024),  # ~20M with vocab 8192, untied
    "large": dict(hidden=1280, layers=24, heads=20, intermediate=3456),  # ~0.5B
}


def build(args, work: Path):
    import torch
    from transformers import LlamaForSequenceClassification

    from training.data import tokenize_pair
    from training.tiny_model import llama_config, train_tokenizer
    from training.ppo_trainer import load_pairs_jsonl

    rows = load_pairs_jsonl(args.data)
    tok = train_tokenizer([r["prompt"] + r["chosen"] + r["rejected"] for r in rows], vocab_size=args.vocab)
    size = SIZES[args.size]
    config = llama_config(tok, hidden=size["hidden"], layers=size["layers"], heads=size["heads"],
                          intermediate=size["intermediate"], tie_embeddings=False)
    config.num_labels = 1
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    model.save_pretrained(work / "model")
    tok.save_pretrained(work / "model")
    need = (args.warmup + args.steps) * args.batch
    chosen = []
    for i, r in enumerate(rows):
        ex = tokenize_pair(tok, r, i)  # both trainers see exactly these tokens, untruncated
        if len(ex.prompt_ids) + max(len(ex.chosen_ids), len(ex.rejected_ids)) > args.max_length:
            continue
        chosen.append({k: r[k] for k in ("prompt", "chosen", "rejected")})
        if len(chosen) == need:
            break
    (work / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chosen))
    return sum(p.numel() for p in model.parameters())


def peak_mb(device: str) -> float:
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(args, work: Path) -> dict:
    from training.config import TrainConfig
    from training.reward_model import train_reward_model
    from training.ppo_trainer import load_pairs_jsonl

    pairs = load_pairs_jsonl(work / "pairs.jsonl")
    steps, cpu = [], [time.process_time()]

    class CB:
        def on_step(self, m):
            steps.append(m)
            cpu.append(time.process_time())

    cfg = TrainConfig(recipe="rm", rm_lr=args.lr, rm_max_steps=args.warmup + args.steps, batch_size=args.batch,
                      max_length=args.max_length, eval_fraction=0.0, min_pairs=1, shuffle=False, checkpoint_every=0,
                      rm_norm_samples=0, use_weights=False, device=args.device, max_grad_norm=1.0,
                      precision="bf16" if args.device == "cuda" else "fp32")
    with tempfile.TemporaryDirectory() as out:
        train_reward_model(cfg, work / "model", pairs, out, CB())
    timed = steps[args.warmup:]
    return {"sec_per_step": sum(m["step_time_s"] for m in timed) / len(timed),
            "cpu_per_step": (cpu[-1] - cpu[args.warmup]) / len(timed), "losses": [m["loss"] for m in steps],
            "peak_mb": peak_mb(args.device)}


def run_trl(args, work: Path) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    tok = AutoTokenizer.from_pretrained(work / "model", local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(work / "model", local_files_only=True,
                                                               dtype=torch.float32)
    rows = [json.loads(x) for x in (work / "pairs.jsonl").read_text().splitlines()]
    times, cpu, losses = [], [], []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            if args.device == "cuda":
                torch.cuda.synchronize()
            self.t, self.c = time.time(), time.process_time()

        def on_step_end(self, a, state, control, **kw):
            if args.device == "cuda":
                torch.cuda.synchronize()
            times.append(time.time() - self.t)
            cpu.append(time.process_time() - self.c)

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    with tempfile.TemporaryDirectory() as out:
        cfg = RewardConfig(output_dir=out, report_to="none", per_device_train_batch_size=args.batch,
                           max_length=args.max_length, learning_rate=args.lr, lr_scheduler_type="linear",
                           warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, max_steps=args.warmup + args.steps,
                           logging_steps=1, save_strategy="no", use_cpu=args.device == "cpu",
                           train_sampling_strategy="sequential", disable_dropout=True, dataloader_num_workers=0,
                           gradient_checkpointing=False, bf16=args.device == "cuda", seed=0)
        trainer = RewardTrainer(model=model, args=cfg, processing_class=tok,
                                train_dataset=datasets.Dataset.from_list(rows), callbacks=[Timer()])
        trainer.train()
    timed = times[args.warmup:]
    return {"sec_per_step": sum(timed) / len(timed), "cpu_per_step": sum(cpu[args.warmup:]) / len(timed),
            "losses": losses, "peak_mb": peak_mb(args.device)}


def worker(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    fn = run_ours if args.worker == "ours" else run_trl
    print("RESULT " + json.dumps(fn(args, Path(args.work))), flush=True)


def spawn(args, which: str, work: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", which, "--work", str(work), "--device", args.device,
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch", str(args.batch),
           "--max-length", str(args.max_length), "--lr", str(args.lr), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"{which} worker failed (exit {proc.returncode})")
    return json.loads(line[-1][len("RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--size", choices=list(SIZES), default=None)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--max-length", type=int, default=384)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--write-results", action="store_true")
    p.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    args.size = args.size or ("large" if args.device == "cuda" else "small")
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        n_params = build(args, work)
        print(f"reward model: random Llama + score head, {n_params / 1e6:.1f}M parameters ({args.size}); "
              f"{(args.warmup + args.steps) * args.batch} HH pairs; batch {args.batch}; {args.device}", flush=True)
        runs = {"trl": [], "ours": []}
        for _ in range(args.repeats):
            runs["trl"].append(spawn(args, "trl", work))
            runs["ours"].append(spawn(args, "ours", work))
    best = {k: min(v, key=lambda r: r["sec_per_step"]) for k, v in runs.items()}
    unit = "peak CUDA MB" if args.device == "cuda" else "peak RSS MB"
    lines = [f"| trainer | s/step | steps/s | CPU s/step | {unit} | loss step 1 | loss step {args.warmup + args.steps} |",
             "|---|---|---|---|---|---|---|"]
    names = {"trl": "TRL 1.16 RewardTrainer", "ours": "prefloop training.reward_model"}
    for k in ("trl", "ours"):
        r = best[k]
        lines.append(f"| {names[k]} | {r['sec_per_step']:.3f} | {1 / r['sec_per_step']:.3f} | {r['cpu_per_step']:.3f} "
                     f"| {r['peak_mb']:.0f} | {r['losses'][0]:.4f} | {r['losses'][-1]:.4f} |")
    a, b = best["ours"], best["trl"]
    summary = [f"steps/s ratio ours/TRL **{b['sec_per_step'] / a['sec_per_step']:.2f}x** (CPU time "
               f"{b['cpu_per_step'] / a['cpu_per_step']:.2f}x); peak memory ours/TRL {a['peak_mb'] / b['peak_mb']:.2f}; "
               f"max |loss diff| over the steps {max(abs(x - y) for x, y in zip(a['losses'], b['losses'])):.1e}",
               "losses ours: " + " ".join(f"{x:.4f}" for x in a["losses"]),
               "losses TRL:  " + " ".join(f"{x:.4f}" for x in b["losses"])]
    print("\n".join(lines + [""] + summary))
    if args.write_results:
        cmd = "HF_HUB_OFFLINE=1 .venv/bin/python bench/reward_model.py " + " ".join(
            a for a in sys.argv[1:] if a != "--write-results")
        res = ROOT / "bench" / "RESULTS.md"
        block = (f"\n## Reward model (bench/reward_model.py)\n\n`{cmd.strip()}`\n\n{time.strftime('%Y-%m-%d')}, "
                 f"{args.device}, random Llama + score head {n_params / 1e6:.1f}M, batch {args.batch}, max length "
                 f"{args.max_length}, {args.steps} measured steps after {args.warmup}, {args.threads} thread(s).\n\n"
                 + "\n".join(lines) + "\n\n" + "\n".join(f"- {x}" for x in summary) + "\n")
        res.write_text(res.read_text().rstrip("\n") + "\n" + block)


if __name__ == "__main__":
    main()
