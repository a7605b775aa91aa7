"""DPO steps/s and peak memory: prefloop's trainer against TRL 1.16's DPOTrainer, same run.

Same model (a random Llama: ~20M parameters for CPU, ~0.5B with --size large for a GPU), same
tokenizer (byte-level BPE trained by ``training.tiny_model`` on the HH pairs), same data (HH-RLHF
harmless pairs from ../shared/data/hh_harmless_dev.jsonl, in file order, both samplers
sequential), same batch (4 pairs, max length 384), same optimizer (AdamW, linear decay, grad clip
1.0), fp32 on CPU / bf16 autocast on GPU, no gradient checkpointing. Each trainer runs in its own
subprocess, so peak RSS (``ru_maxrss``) or ``torch.cuda.max_memory_allocated`` is its own.

    .venv/bin/python bench/dpo.py                       # CPU, ~20M params
    .venv/bin/python bench/dpo.py --device cuda --size large --steps 20
    .venv/bin/python bench/dpo.py --write-results       # also append to bench/RESULTS.md

Reported: seconds per optimizer step over the measured steps (after --warmup steps), steps/s,
the ratio ours/TRL, peak memory, and both trainers' per-step losses (they see the same batches,
so the losses should agree to float precision at step 1 and stay close after). Our trainer
precomputes the reference log-probs once before training (one no-grad forward per pair); that
time is reported separately and also amortised over the measured steps ("incl. ref").
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
# bench/ holds other scripts (e.g. queue.py) that must not shadow the standard library
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "hh_harmless_dev.jsonl"

SIZES = {
    # ~20M parameters: vocab 8192, hidden 384, 8 layers (untied head)
    "small": dict(hidden=384, layers=8, heads=6, intermediate=1024, tie=False),
    # ~0.5B parameters for a GPU
    "large": dict(hidden=1280, layers=24, heads=20, intermediate=3456, tie=False),
}


def build(args, work: Path) -> tuple[Path, Path]:
    """Tokenizer + random Llama in work/model, and the selected pairs in work/pairs.jsonl."""
    import torch
    from transformers import LlamaForCausalLM

    from training.data import tokenize_pair
    from training.tiny_model import llama_config, train_tokenizer
    from training.trainer.cli import load_pairs_jsonl

    rows = load_pairs_jsonl(args.data)
    tok = train_tokenizer([r["prompt"] + r["chosen"] + r["rejected"] for r in rows], vocab_size=args.vocab)
    size = SIZES[args.size]
    config = llama_config(tok, hidden=size["hidden"], layers=size["layers"], heads=size["heads"],
                          intermediate=size["intermediate"], tie_embeddings=size["tie"])
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    model_dir = work / "model"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    # TRL drops pairs whose prompt alone fills max_length; we would reject them: skip them for both
    need = (args.warmup + args.steps) * args.batch
    chosen = []
    for i, r in enumerate(rows):
        try:
            tokenize_pair(tok, r, i, max_length=args.max_length)
        except ValueError:
            continue
        chosen.append(r)
        if len(chosen) == need:
            break
    pairs_path = work / "pairs.jsonl"
    pairs_path.write_text("".join(json.dumps(r) + "\n" for r in chosen))
    return model_dir, pairs_path, n_params


def peak_memory(device: str) -> float:
    """Peak memory of this process in MB: CUDA max allocated on GPU, max RSS on CPU."""
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def run_ours(args, model_dir: Path, pairs_path: Path) -> dict:
    from training.config import TrainConfig
    from training.trainer.cli import load_pairs_jsonl
    from training.trainer.loop import train

    pairs = load_pairs_jsonl(pairs_path)
    steps, ref_time, cpu = [], [], []

    class CB:
        def on_step(self, m):
            steps.append(m)
            cpu.append(time.process_time())

        def on_log(self, msg):
            if "reference log-probs for" in msg:  # "... for N pairs in X.Ys -> path"
                ref_time.append(float(msg.split(" in ")[1].split("s ")[0]))

    cfg = TrainConfig(recipe="dpo", lr=args.lr, max_steps=args.warmup + args.steps, batch_size=args.batch,
                      max_length=args.max_length, beta=0.1, loss_type="sigmoid", eval_fraction=0.0, min_pairs=1,
                      shuffle=False, checkpoint_every=0, device=args.device, max_grad_norm=1.0,
                      precision="bf16" if args.device == "cuda" else "fp32", precompute_ref_logps=not args.live_ref)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as out:
        train(cfg, model_dir, pairs, out, CB())
    wall = time.time() - t0
    timed = steps[args.warmup:]
    sec = sum(m["step_time_s"] for m in timed) / len(timed)
    cpu_per_step = (cpu[-1] - cpu[args.warmup - 1]) / args.steps if args.warmup else float("nan")
    return {"sec_per_step": sec, "cpu_per_step": cpu_per_step, "losses": [m["loss"] for m in steps], "wall_s": wall,
            "ref_s": ref_time[0] if ref_time else 0.0,
            "peak_mb": peak_memory(args.device),
            "reward_acc": [m["reward_accuracy"] for m in steps]}


def run_trl(args, model_dir: Path, pairs_path: Path) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    dtype = torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=dtype)
    rows = [json.loads(x) for x in pairs_path.read_text().splitlines()]
    ds = datasets.Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
    times, cpu, losses, accs = [], [], [], []

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
                accs.append(logs.get("rewards/accuracies"))

    variant = args.trl_variant
    # "matched": our settings (fp32 on CPU / bf16 on GPU, no gradient checkpointing, live reference);
    # "precompute": the same with TRL's precompute_ref_log_probs=True;
    # "defaults": DPOConfig's own defaults for the speed-relevant knobs (gradient_checkpointing=True,
    #             bf16=True, live reference), which is what a user who only sets batch/length gets
    speed = {} if variant == "defaults" else {"gradient_checkpointing": False, "bf16": args.device == "cuda"}
    with tempfile.TemporaryDirectory() as out:
        cfg = DPOConfig(output_dir=out, report_to="none", per_device_train_batch_size=args.batch,
                        max_length=args.max_length, learning_rate=args.lr, lr_scheduler_type="linear",
                        warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, beta=0.1, loss_type=["sigmoid"],
                        max_steps=args.warmup + args.steps, logging_steps=1, save_strategy="no",
                        use_cpu=args.device == "cpu", train_sampling_strategy="sequential", disable_dropout=True,
                        dataloader_num_workers=0, precompute_ref_log_probs=variant == "precompute", seed=0, **speed)
        t0 = time.time()
        trainer = DPOTrainer(model=model, args=cfg, processing_class=tok, train_dataset=ds, callbacks=[Timer()])
        trainer.train()
        wall = time.time() - t0
    timed = times[args.warmup:]
    return {"sec_per_step": sum(timed) / len(timed), "cpu_per_step": sum(cpu[args.warmup:]) / len(timed),
            "losses": losses, "wall_s": wall,
            "peak_mb": peak_memory(args.device), "reward_acc": accs}


def worker(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir, pairs_path = Path(args.model_dir), Path(args.pairs)
    fn = run_ours if args.worker == "ours" else run_trl
    result = fn(args, model_dir, pairs_path)
    print("RESULT " + json.dumps(result))


def spawn(args, which: str, model_dir: Path, pairs_path: Path, extra=()) -> dict:
    cmd = [sys.executable, __file__, "--worker", which, "--model-dir", str(model_dir), "--pairs", str(pairs_path),
           "--device", args.device, "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--batch", str(args.batch), "--max-length", str(args.max_length), "--lr", str(args.lr),
           "--threads", str(args.threads or 0), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"{which} worker failed (exit {proc.returncode})")
    return json.loads(line[-1][len("RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--size", choices=list(SIZES), default=None, help="small (CPU default) or large (GPU default)")
    p.add_argument("--steps", type=int, default=8, help="measured optimizer steps")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured first steps")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--max-length", type=int, default=384)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=0, help="torch threads in each worker (0: torch default)")
    p.add_argument("--repeats", type=int, default=1, help="alternate ours/TRL this many times, keep the best")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--write-results", action="store_true", help="append the numbers to bench/RESULTS.md")
    p.add_argument("--live-ref", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--trl-variant", choices=["matched", "precompute", "defaults"], default="matched",
                   help=argparse.SUPPRESS)
    p.add_argument("--variants", default="matched,precompute,defaults",
                   help="TRL configurations to measure (comma-separated: matched, precompute, defaults)")
    p.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--pairs", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    args.size = args.size or ("large" if args.device == "cuda" else "small")
    if not args.data.exists():
        raise SystemExit(f"{args.data} not found")

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        t = time.time()
        model_dir, pairs_path, n_params = build(args, work)
        print(f"model: random Llama, {n_params / 1e6:.1f}M parameters ({args.size}), vocab {args.vocab}; "
              f"{(args.warmup + args.steps) * args.batch} HH pairs; batch {args.batch}, max length "
              f"{args.max_length}; device {args.device}; built in {time.time() - t:.0f}s", flush=True)
        variants = [v for v in args.variants.split(",") if v]
        runs = {"ours": [], **{v: [] for v in variants}}
        for _ in range(args.repeats):  # alternate, so slow phases of a shared machine hit both
            for v in variants:
                runs[v].append(spawn(args, "trl", model_dir, pairs_path, ["--trl-variant", v]))
            runs["ours"].append(spawn(args, "ours", model_dir, pairs_path))
    best = {k: min(v, key=lambda r: r["sec_per_step"]) for k, v in runs.items() if v}
    ours = best["ours"]
    n_total = args.warmup + args.steps
    # our one-off reference pre-computation (one no-grad forward per pair), amortised over the steps
    ours_amortised = ours["sec_per_step"] + ours["ref_s"] / n_total
    names = {
        "matched": "TRL 1.16 DPOTrainer, same settings (live reference)",
        "precompute": "TRL 1.16 DPOTrainer, same settings + precompute_ref_log_probs",
        "defaults": "TRL 1.16 DPOTrainer, DPOConfig defaults (grad. checkpointing, bf16)",
    }
    rows = [(names[v], best[v]) for v in variants] + [("prefloop training.trainer", ours)]
    unit = "peak CUDA MB" if args.device == "cuda" else "peak RSS MB"
    lines = [f"| trainer | s/step (wall) | steps/s | CPU s/step | {unit} | loss step 1 | loss step {n_total} |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows:
        lines.append(f"| {name} | {r['sec_per_step']:.3f} | {1 / r['sec_per_step']:.3f} | {r['cpu_per_step']:.3f} | "
                     f"{r['peak_mb']:.0f} | {r['losses'][0]:.4f} | {r['losses'][-1]:.4f} |")
    summary = []
    for v in variants:
        r = best[v]
        summary.append(
            f"vs {v}: steps/s ratio {r['sec_per_step'] / ours['sec_per_step']:.2f}x (wall), "
            f"{r['cpu_per_step'] / ours['cpu_per_step']:.2f}x (CPU time), "
            f"{r['sec_per_step'] / ours_amortised:.2f}x with our reference pre-computation amortised; "
            f"peak memory ratio ours/TRL {ours['peak_mb'] / r['peak_mb']:.2f}; "
            f"max |loss diff| {max(abs(a - b) for a, b in zip(ours['losses'], r['losses'])):.1e}")
    summary.append(f"our reference pre-computation: {ours['ref_s']:.1f}s for {n_total * args.batch} pairs "
                   f"(once per export; amortised over the {n_total} steps above)")
    summary.append("losses ours: " + " ".join(f"{x:.4f}" for x in ours["losses"]))
    for v in variants:
        summary.append(f"losses TRL {v}: " + " ".join(f"{x:.4f}" for x in best[v]["losses"]))
    print("\n".join(lines + [""] + summary))
    if args.write_results:
        cmd = "HF_HUB_OFFLINE=1 .venv/bin/python bench/dpo.py " + " ".join(a for a in sys.argv[1:]
                                                                           if a != "--write-results")
        res = ROOT / "bench" / "RESULTS.md"
        text = res.read_text() if res.exists() else "# Benchmarks\n"
        block = (f"\n## DPO (bench/dpo.py)\n\n`{cmd.strip()}`\n\n"
                 f"{time.strftime('%Y-%m-%d')}, {args.device}, random Llama {n_params / 1e6:.1f}M, batch {args.batch}, "
                 f"max length {args.max_length}, {args.steps} measured steps after {args.warmup} warm-up.\n\n"
                 + "\n".join(lines) + "\n\n" + "\n".join(f"- {s}" for s in summary) + "\n")
        res.write_text(text.rstrip("\n") + "\n" + block)


if __name__ == "__main__":
    main()
