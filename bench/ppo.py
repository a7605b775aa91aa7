"""PPO iterations/s, time split and peak memory: prefloop's PPO against the last TRL that ships PPO.

TRL removed PPO after 1.12 (``trl.experimental.ppo.PPOTrainer`` is in the 1.12.0 wheel, gone from
1.13.0 on), so this script installs ``trl==1.12.0`` into its own virtualenv under
``var/bench/trl-1.12.0/`` (never into ``.venv``); that environment sees the project's torch and
transformers through a ``.pth`` file, so both trainers run on the same libraries.

Same everything, in the same run: a random Llama policy (``--size``), a random Llama reward model
with a score head (the critic of both starts as a copy of it, as in TRL's example script and
Stiennon et al. 2020), the same tokenizer (byte-level BPE trained on the HH prompts), the same
prompts (HH-RLHF harmless, the last ``--max-prompt`` tokens; each used once), the same settings
(``--batch`` rollouts per iteration, micro-batches of ``--micro``, 4 PPO epochs, 1 minibatch,
``--response-length`` new tokens at temperature 0.7 stopping at EOS, KL coefficient 0.05 with the
k1 estimator, clip 0.2, value clip 0.2, vf_coef 0.1, gamma 1, lambda 0.95, AdamW lr ``--lr``
linear decay, no gradient clipping -- TRL's PPO loop clips nothing -- fp32). Each trainer runs in
its own subprocess with ``--threads`` torch threads; peak memory is that process's ``ru_maxrss``
(CPU) or ``torch.cuda.max_memory_allocated``.

    .venv/bin/python bench/ppo.py                        # CPU, tiny model (~3.5M parameters)
    .venv/bin/python bench/ppo.py --size small           # ~20M parameters
    .venv/bin/python bench/ppo.py --device cuda --size large
    .venv/bin/python bench/ppo.py --write-results        # also append to bench/RESULTS.md

Reported per trainer over the measured iterations (after ``--warmup``): seconds per iteration and
iterations/s, its split into generation / scoring (reference, critic, reward model) / optimisation,
rollout tokens/s (batch x decode steps / generation time) and update samples/s (batch x epochs /
optimisation time), peak memory; then both trainers' per-iteration mean reward and KL side by side.
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
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "hh_harmless_dev.jsonl"
TRL_VERSION = "1.12.0"  # the last release with PPO (trl/experimental/ppo); 1.13.0 has none
TRL_VENV = ROOT / "var" / "bench" / f"trl-{TRL_VERSION}"

SIZES = {
    "tiny": dict(hidden=256, layers=4, heads=4, intermediate=704, vocab=4096, tie=True),  # ~3.5M
    "small": dict(hidden=384, layers=8, heads=6, intermediate=1024, vocab=8192, tie=False),  # ~20M
    "large": dict(hidden=1280, layers=24, heads=20, intermediate=3456, vocab=32000, tie=False),  # ~0.5B
}


def ensure_trl_venv() -> Path:
    """``var/bench/trl-1.12.0``: a virtualenv holding trl 1.12.0 alone; everything else (torch,
    transformers, accelerate, datasets) comes from the project's environment via a ``.pth``."""
    py = TRL_VENV / "bin" / "python"
    if py.exists() and subprocess.run([str(py), "-c", f"import trl; assert trl.__version__ == '{TRL_VERSION}'"],
                                      capture_output=True).returncode == 0:
        return py
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(TRL_VENV)], check=True)
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    import site as _site

    ours = [p for p in _site.getsitepackages() if p.endswith("site-packages")][0]
    Path(site, "zz_prefloop_env.pth").write_text(ours + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site,
                    f"trl=={TRL_VERSION}"], check=True)
    return py


def build(args, work: Path):
    """Tokenizer, policy and reward model folders, and the prompts file."""
    import torch
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    from training.tiny_model import llama_config, train_tokenizer
    from training.ppo_trainer import load_pairs_jsonl

    rows = load_pairs_jsonl(args.data)
    size = SIZES[args.size]
    tok = train_tokenizer([r["prompt"] + r["chosen"] for r in rows], vocab_size=size["vocab"])
    config = llama_config(tok, hidden=size["hidden"], layers=size["layers"], heads=size["heads"],
                          intermediate=size["intermediate"], tie_embeddings=size["tie"])
    torch.manual_seed(0)
    policy = LlamaForCausalLM(config)
    policy.generation_config.pad_token_id = tok.pad_token_id
    policy.save_pretrained(work / "policy")
    tok.save_pretrained(work / "policy")
    config.num_labels = 1
    torch.manual_seed(1)
    rm = LlamaForSequenceClassification(config)
    with torch.no_grad():
        rm.score.weight.normal_(0, 1.0 / config.hidden_size ** 0.5)
    rm.save_pretrained(work / "rm")
    tok.save_pretrained(work / "rm")
    n = (args.warmup + args.iterations) * args.batch
    prompts = []
    for r in rows:
        ids = tok(r["prompt"])["input_ids"][-args.max_prompt:]
        prompts.append({"prompt": tok.decode(ids[1:] if ids[0] == tok.bos_token_id else ids), "ids": ids})
        if len(prompts) == n:
            break
    (work / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    return sum(p.numel() for p in policy.parameters())


def peak_mb(device: str) -> float:
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(args, work: Path) -> dict:
    from training.config import TrainConfig
    from training.ppo_trainer import train_ppo

    rows = [json.loads(x) for x in (work / "prompts.jsonl").read_text().splitlines()]
    steps, cpu = [], [time.process_time()]

    class CB:
        def on_step(self, m):
            steps.append(m)
            cpu.append(time.process_time())

    cfg = TrainConfig(recipe="ppo", device=args.device, seed=0, ppo_iterations=args.warmup + args.iterations,
                      ppo_batch_size=args.batch, ppo_micro_batch_size=args.micro, ppo_mini_batches=1, ppo_epochs=4,
                      ppo_response_length=args.response_length, ppo_temperature=0.7, ppo_kl_coef=0.05,
                      ppo_lr=args.lr, ppo_value_model=args.critic, max_grad_norm=None, lr_schedule="linear",
                      max_length=args.max_prompt + args.response_length + 1, checkpoint_every=0,
                      ppo_checkpoint_every=0, ppo_samples_per_log=0, shuffle=True,
                      precision="bf16" if args.device == "cuda" else "fp32")
    with tempfile.TemporaryDirectory() as out:
        train_ppo(cfg, work / "policy", [{"prompt": r["prompt"]} for r in rows], out, CB(),
                  reward_model_path=work / "rm")
    return {"iterations": [{"time": m["step_time_s"], "gen": m["gen_s"], "score": m["score_s"],
                            "update": m["update_s"], "decode_steps": m["gen_steps"], "reward": m["reward"],
                            "kl": m["kl"], "clip_fraction": m["clip_fraction"], "value_loss": m["value_loss"],
                            "cpu": c1 - c0}
                           for m, c0, c1 in zip(steps, cpu, cpu[1:])], "peak_mb": peak_mb(args.device)}


def run_trl(args, work: Path) -> dict:
    import datasets
    import torch
    import trl
    import trl.experimental.ppo.ppo_trainer as P
    from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,
                              TrainerCallback)
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    assert trl.__version__ == TRL_VERSION, trl.__version__
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    tok = AutoTokenizer.from_pretrained(work / "policy", local_files_only=True)
    tok.padding_side = "left"  # TRL's PPO generates from left-padded queries
    load = dict(local_files_only=True, dtype=torch.float32)
    policy = AutoModelForCausalLM.from_pretrained(work / "policy", **load)
    ref = AutoModelForCausalLM.from_pretrained(work / "policy", **load)
    rm = AutoModelForSequenceClassification.from_pretrained(work / "rm", num_labels=1, **load)
    critic = AutoModelForSequenceClassification.from_pretrained(work / "rm", num_labels=1, **load)
    rows = [json.loads(x) for x in (work / "prompts.jsonl").read_text().splitlines()]
    ds = datasets.Dataset.from_dict({"input_ids": [r["ids"] for r in rows]})
    marks: dict = {"it": []}
    cur: dict = {}
    orig_gen, orig_fwd = P.batch_generation, P.forward

    def timed_generation(*a, **k):
        sync()
        cur.clear()
        cur["start"], cur["cpu"] = time.time(), time.process_time()
        out = orig_gen(*a, **k)
        sync()
        cur["gen_end"] = time.time()
        cur["decode_steps"] = out[1].shape[1]
        return out

    def marked_forward(model, *a, **k):
        if isinstance(model, P.PolicyAndValueWrapper) and "update_start" not in cur:
            sync()
            cur["update_start"] = time.time()
        return orig_fwd(model, *a, **k)

    P.batch_generation, P.forward = timed_generation, marked_forward

    class Timer(TrainerCallback):
        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "objective/scores" in logs:
                cur["reward"], cur["kl"] = logs["objective/scores"], logs["objective/kl"]
                cur["clip_fraction"], cur["value_loss"] = logs["policy/clipfrac_avg"], logs["loss/value_avg"]

        def on_step_end(self, a, state, control, **kw):
            sync()
            end = time.time()
            marks["it"].append({"time": end - cur["start"], "gen": cur["gen_end"] - cur["start"],
                                "score": cur["update_start"] - cur["gen_end"], "update": end - cur["update_start"],
                                "decode_steps": cur["decode_steps"], "cpu": time.process_time() - cur["cpu"], **{k: cur.get(k) for k in
                                                                        ("reward", "kl", "clip_fraction",
                                                                         "value_loss")}})

    with tempfile.TemporaryDirectory() as out:
        cfg = PPOConfig(output_dir=out, report_to="none", per_device_train_batch_size=args.micro,
                        gradient_accumulation_steps=args.batch // args.micro, num_mini_batches=1, num_ppo_epochs=4,
                        total_episodes=len(rows), response_length=args.response_length, temperature=0.7,
                        stop_token="eos", kl_coef=0.05, kl_estimator="k1", cliprange=0.2, cliprange_value=0.2,
                        vf_coef=0.1, gamma=1.0, lam=0.95, learning_rate=args.lr, lr_scheduler_type="linear",
                        warmup_steps=0, weight_decay=0.0, use_cpu=args.device == "cpu", bf16=args.device == "cuda",
                        gradient_checkpointing=False, save_strategy="no", logging_steps=1,
                        num_sample_generations=0, local_rollout_forward_batch_size=args.batch, seed=0,
                        disable_tqdm=True, dataloader_num_workers=0)
        trainer = PPOTrainer(args=cfg, processing_class=tok, model=policy, ref_model=ref, reward_model=rm,
                             value_model=critic, train_dataset=ds, eval_dataset=ds.select(range(args.batch)),
                             callbacks=[Timer()])
        trainer.train()
    return {"iterations": marks["it"], "peak_mb": peak_mb(args.device)}


def worker(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        torch.set_float32_matmul_precision("high")
    fn = run_ours if args.worker == "ours" else run_trl
    print("RESULT " + json.dumps(fn(args, Path(args.work))), flush=True)


def spawn(args, which: str, work: Path, python: str, critic: str = "reward") -> dict:
    cmd = [python, __file__, "--worker", which, "--work", str(work), "--device", args.device, "--critic", critic,
           "--iterations", str(args.iterations), "--warmup", str(args.warmup), "--batch", str(args.batch),
           "--micro", str(args.micro), "--response-length", str(args.response_length),
           "--max-prompt", str(args.max_prompt), "--lr", str(args.lr), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"{which} worker failed (exit {proc.returncode})")
    return json.loads(line[-1][len("RESULT "):])


def summarise(r: dict, warmup: int, batch: int) -> dict:
    its = r["iterations"][warmup:]
    n = len(its)
    tot = {k: sum(i[k] for i in its) for k in ("time", "gen", "score", "update", "decode_steps", "cpu")}
    return {"s_per_it": tot["time"] / n, "its_per_s": n / tot["time"], "gen": tot["gen"] / n, "cpu": tot["cpu"] / n,
            "score": tot["score"] / n, "update": tot["update"] / n,
            "rollout_tok_s": batch * tot["decode_steps"] / tot["gen"], "update_samples_s": batch * 4 * n / tot["update"],
            "peak_mb": r["peak_mb"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--size", choices=list(SIZES), default=None, help="tiny (CPU default) / small / large (GPU)")
    p.add_argument("--iterations", type=int, default=4, help="measured PPO iterations")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, default=16, help="rollouts per iteration")
    p.add_argument("--micro", type=int, default=4, help="rows per forward/backward (gradient accumulation)")
    p.add_argument("--response-length", type=int, default=24)
    p.add_argument("--max-prompt", type=int, default=64, help="prompt tokens kept (the last ones)")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (0: torch's default)")
    p.add_argument("--repeats", type=int, default=1, help="alternate TRL/ours this many times, keep the best")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--critics", default="reward,shared",
                   help="our critic variants: reward (a copy of the reward model, as TRL) and/or shared "
                        "(a value head on the policy's trunk, Ziegler et al. 2019)")
    p.add_argument("--critic", default="reward", help=argparse.SUPPRESS)
    p.add_argument("--write-results", action="store_true")
    p.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    args.size = args.size or ("large" if args.device == "cuda" else "tiny")
    if not args.data.exists():
        raise SystemExit(f"{args.data} not found")
    trl_python = str(ensure_trl_venv())
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        n_params = build(args, work)
        print(f"policy and reward model: random Llama, {n_params / 1e6:.1f}M parameters ({args.size}); "
              f"{(args.warmup + args.iterations) * args.batch} HH prompts (last {args.max_prompt} tokens); "
              f"batch {args.batch}, micro {args.micro}, {args.response_length} new tokens; {args.device}, "
              f"{args.threads or 'default'} thread(s)", flush=True)
        critics = [c for c in args.critics.split(",") if c]
        runs = {"trl": [], **{c: [] for c in critics}}
        for _ in range(args.repeats):  # alternate, so slow phases of a shared machine hit all
            runs["trl"].append(spawn(args, "trl", work, trl_python))
            for c in critics:
                runs[c].append(spawn(args, "ours", work, sys.executable, c))
    best = {k: min(v, key=lambda r: summarise(r, args.warmup, args.batch)["s_per_it"]) for k, v in runs.items()}
    s = {k: summarise(v, args.warmup, args.batch) for k, v in best.items()}
    unit = "peak CUDA MB" if args.device == "cuda" else "peak RSS MB"
    lines = [f"| trainer | s/iteration | iterations/s | CPU s/iteration | generation s | scoring s | "
             f"optimisation s | rollout tokens/s | update samples/s | {unit} |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    from training.config import TrainConfig

    default = TrainConfig().ppo_value_model
    names = {"trl": f"TRL {TRL_VERSION} PPOTrainer (critic: copy of the reward model)",
             "reward": "prefloop, same settings (critic: copy of the reward model)",
             "shared": "prefloop, critic = value head on the policy trunk"}
    names[default] = names.get(default, f"prefloop, critic {default}") + " [prefloop's default]"
    print(f"prefloop's default critic (TrainConfig.ppo_value_model, what the `ppo` recipe uses): {default!r}. "
          "Both trainers sample from the same tempered distribution with different random streams (TRL: "
          "torch.multinomial in generate; prefloop: one inverse-CDF uniform per row), so the reward/KL curves "
          "agree in scale, not point by point.")
    for k in runs:
        r = s[k]
        lines.append(f"| {names[k]} | {r['s_per_it']:.2f} | {r['its_per_s']:.3f} | {r['cpu']:.2f} | {r['gen']:.2f} | "
                     f"{r['score']:.2f} | {r['update']:.2f} | {r['rollout_tok_s']:.0f} | "
                     f"{r['update_samples_s']:.1f} | {r['peak_mb']:.0f} |")
    summary = []
    for c in critics:
        summary.append(
            f"{names[c]}: iterations/s **{s['trl']['s_per_it'] / s[c]['s_per_it']:.2f}x** TRL's "
            f"(CPU time {s['trl']['cpu'] / s[c]['cpu']:.2f}x); generation {s['trl']['gen'] / s[c]['gen']:.2f}x, "
            f"scoring {s['trl']['score'] / s[c]['score']:.2f}x, optimisation {s['trl']['update'] / s[c]['update']:.2f}x;"
            f" peak memory {s[c]['peak_mb'] / s['trl']['peak_mb']:.2f}x TRL's")
    head = " | ".join(f"reward {k} | KL {k}" for k in runs)
    curve = [f"| iteration | {head} |", "|---" * (1 + 2 * len(runs)) + "|"]
    for i, its in enumerate(zip(*(best[k]["iterations"] for k in runs))):
        curve.append(f"| {i + 1} | " + " | ".join(f"{x['reward']:.4f} | {x['kl']:.4f}" for x in its) + " |")
    print("\n".join(lines + [""] + summary + [""] + curve))
    if args.write_results:
        cmd = "HF_HUB_OFFLINE=1 .venv/bin/python bench/ppo.py " + " ".join(a for a in sys.argv[1:]
                                                                           if a != "--write-results")
        res = ROOT / "bench" / "RESULTS.md"
        block = (f"\n## PPO (bench/ppo.py)\n\n`{cmd.strip()}`\n\n{time.strftime('%Y-%m-%d')}, {args.device}, "
                 f"random Llama {n_params / 1e6:.1f}M ({args.size}), batch {args.batch}, micro {args.micro}, "
                 f"{args.response_length} new tokens, prompts cut to {args.max_prompt} tokens, "
                 f"{args.iterations} measured iterations after {args.warmup}, {args.threads or 'default'} "
                 f"thread(s).\n\n" + "\n".join(lines) + "\n\n" + "\n".join(f"- {x}" for x in summary)
                 + "\n\n" + "\n".join(curve) + "\n")
        res.write_text(res.read_text().rstrip("\n") + "\n" + block)


if __name__ == "__main__":
    main()
