"""Active pair selection in the simulator: held-out preference accuracy per judgment, random
(arrival) order against active (margin) order.

Both arms get the same candidate comparisons (synthetic pairs of responses whose hidden utility
is ``training.loop.seed.synthetic_utility``: a lexicon score; ``--mixed`` of them set two mixed
responses against each other, the rest a kind response against an unkind one, drawn at random),
imported in the same order (so arrival order is a random order), and the same simulated annotators
(``evaluation.stats.simulation.DEFAULT_POOLS``: a careful, a hasty left-clicking and a
length-loving pool, drawn with the same seed), judging through the queue's own
``next_assignment`` / ``submit_judgment`` (``evaluation.simulated.annotate``), overlap 1.

Every ``--step`` judgments, each arm goes round the app's own loop: a fresh calibrated export
(every annotator at weight 1 by an admin's override: with overlap 1 and no gold the weight rule
has no evidence to weigh them by), a DPO run of the tiny model from the same
base model on every judgment so far (``training.services.runs.launch_run`` and the worker's
``train_run``, in this process, on the CPU); the margin arm's succeeded run queues the real
priority task (``training.active.recompute_priorities``, run eagerly here), so the next
judgments go to the comparisons with the smallest implicit-reward margin under the new model.
After each run, the held-out preference accuracy: the share of held-out pairs (never imported;
unequal utilities) whose implicit-reward margin under the new model (policy vs. the base model,
``training.active.scoring.MarginScorer``, the same code as the priorities) has the sign of the
hidden utility difference.

The margin arm runs the product's default (``PREFLOOP_MARGIN_SAMPLING_POWER``, strict order
unless set, docs/training.md); ``--arms`` adds variants: ``strict`` (a strict top-k of the margin
priority whatever the setting), ``power:P`` (comparisons drawn with probability ∝
priority^P), ``information`` (the expected-information order) and ``oracle`` (bench only: the
priorities set once from the simulator's truth, the largest utility gap first -- the clearest
votes, what no model can know; a yardstick of how much any order could gain here). Each step
also prints what the arm was served, from the simulator's truth (the bench reads it, the product never does): the share of
mixed pairs, the mean utility gap, and the share of decided votes on the better response.

Caveats: ``--mixed`` is the share drawn before pairs of equal utility are dropped, and only mixed
pairs can tie, so about 40% of the pairs are mixed at the default 0.5; every step retrains from the
base model, so one repeat's curve moves by up to ±0.1 from step to step (compare means over
repeats, with their standard error); the simulated annotators' accuracy does not depend on the
utility gap, which favours the strict order (people err more on close pairs).

    .venv/bin/python bench/active_selection.py    # 3 repeats x 10 steps of 20 judgments: ~6 minutes on 2 cores
    .venv/bin/python bench/active_selection.py --repeats 10 --arms random,margin --seed 1
    .venv/bin/python bench/active_selection.py --repeats 5 --steps 15 --candidates 600 --held-out 500
    .venv/bin/python bench/active_selection.py --repeats 5 --arms random,margin,strict,power:4

Prints the table (judgments -> accuracy per arm, the mean over repeats with its standard error),
the judgments each arm needs to reach each ``--target`` accuracy (on the mean curve, and per repeat),
each arm's paired difference from the first arm (over the whole curve and its second half),
and saves the curves to ``--plot`` (PNG, the standard error shaded).
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/ holds scripts named like standard modules (bench/queue.py): keep it off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["CELERY_TASK_ALWAYS_EAGER"] = "1"  # the priority task runs in this process
os.environ.setdefault("PREFLOOP_AUTO_QUALITY", "0")

from bench._django import bench_database  # noqa: E402

ARMS = ("random", "margin")
#: ``--arms`` may also name variants of the margin order: ``strict`` (strict order whatever the
#: default), ``power:P`` (``PREFLOOP_MARGIN_SAMPLING_POWER`` = P).
_UNSET = object()


def arm_power(arm: str):
    """The ``PREFLOOP_MARGIN_SAMPLING_POWER`` an arm runs with (``_UNSET``: the settings' own)."""
    if arm in ("random", "margin", "information", "oracle"):
        return _UNSET
    if arm == "strict":
        return None
    if arm.startswith("power:"):
        return float(arm.split(":", 1)[1])
    raise SystemExit(f"unknown arm {arm!r}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--candidates", type=int, default=2000,
                   help="comparisons each arm can be served (2000: ten times the judgments of the default run)")
    p.add_argument("--held-out", type=int, default=300, help="held-out pairs the accuracy is measured on (300)")
    p.add_argument("--step", type=int, default=20, help="judgments between two trainings (20)")
    p.add_argument("--steps", type=int, default=10, help="trainings per arm (10): step x steps judgments in all")
    p.add_argument("--mixed", type=float, default=0.5,
                   help="share of candidate and held-out pairs with two mixed responses (harder) (0.5)")
    p.add_argument("--target", default="0.8,0.85",
                   help="accuracies whose judgments-to-reach are reported, comma-separated (0.8,0.85)")
    p.add_argument("--repeats", type=int, default=3,
                   help="independent repeats (other pairs, people, arrival order, base model); the table is their mean (3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden", type=int, default=64, help="tiny model width (64; 1 layer)")
    p.add_argument("--epochs", type=float, default=3.0, help="DPO epochs over the judgments so far (3)")
    p.add_argument("--lr", type=float, default=1e-3, help="DPO learning rate (1e-3)")
    p.add_argument("--beta", type=float, default=0.1, help="DPO beta (0.1)")
    p.add_argument("--plot", default=str(ROOT / "var" / "bench" / "active_selection.png"), help="PNG of the curve")
    p.add_argument("--arms", default=",".join(ARMS),
                   help="comma-separated arms: random, margin (the product's default), information, strict, power:P, "
                        "oracle (bench only: the largest true utility gap first)")
    p.add_argument("--json", default="", help="also write the numbers here")
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------
# the simulated world
# --------------------------------------------------------------------------------------------


def make_lines(n: int, mixed: float, rng: random.Random, utility, start: int = 0) -> list[dict]:
    """``n`` import lines with unequal utilities (``mixed`` of them two mixed responses)."""
    from training.loop.seed import TOPICS, _response

    lines = []
    while len(lines) < n:
        tones = ["mixed", "mixed"] if rng.random() < mixed else ["kind", "unkind"]
        rng.shuffle(tones)
        a, b = _response(rng, tones[0]), _response(rng, tones[1])
        if utility(a) == utility(b):
            continue
        i = start + len(lines)
        lines.append({"prompt": f"Question {i}: tell me about the {rng.choice(TOPICS)}.", "response_a": a,
                      "response_b": b, "_tone": tones[0]})
    return lines


def held_out_accuracy(scorer, held: list[dict], utility) -> float:
    import numpy as np

    rows = [{"prompt": line["prompt"], "chosen": line["response_a"], "rejected": line["response_b"]}
            for line in held]
    lp, ok = scorer.logps(rows)
    m = (lp[:, 0] - lp[:, 1]) - (lp[:, 2] - lp[:, 3])
    truth = np.array([utility(line["response_a"]) > utility(line["response_b"]) for line in held])
    return float(((m > 0) == truth)[np.asarray(ok)].mean())


def run_arm(arm: str, lines: list[dict], held: list[dict], base, people, args, repeat: int) -> list[tuple[int, float]]:
    from annotate.imports import import_comparisons
    from annotate.models import Comparison, Membership, PairOrder, Project
    from annotate.services import set_pair_order
    from evaluation.simulated import annotate, enroll
    from training.active.scoring import MarginScorer, margin_model
    from training.loop.seed import synthetic_utility
    from training.models import PriorityJob, RunStatus
    from training.services.runs import launch_run
    from training.worker.execute import train_run

    utility = synthetic_utility()
    project = Project.objects.create(name=f"active-bench-{arm}-{repeat}", overlap=1, gold_rate=0.0, allow_ties=True)
    body = "".join(json.dumps({k: v for k, v in line.items() if not k.startswith("_")}) + "\n"
                   for line in lines).encode()
    import_comparisons(project, io.BytesIO(body), filename="candidates.jsonl")
    from django.conf import settings

    if arm == "oracle":
        # bench only, from the simulator's truth: the largest utility gap first (the clearest votes)
        gaps = {pk: abs(utility(a) - utility(b)) for pk, a, b in Comparison.objects.filter(project=project)
                .values_list("pk", "response_a__text", "response_b__text")}
        top = max(gaps.values()) or 1.0
        Comparison.objects.bulk_update([Comparison(pk=pk, priority=g / top) for pk, g in gaps.items()], ["priority"])
    elif arm == "information":
        set_pair_order(project, PairOrder.INFORMATION)
    elif arm != "random":
        power = arm_power(arm)
        if power is not _UNSET:
            settings.PREFLOOP_MARGIN_SAMPLING_POWER = power
        set_pair_order(project, PairOrder.MARGIN)
    by_prompt = {line["prompt"]: line for line in lines}
    team = enroll(project, people)
    # every vote at weight 1 (an admin's override): with overlap 1 and no gold the weight rule has
    # no evidence to weigh the annotators by
    Membership.objects.filter(project=project, user_id__in=[u.pk for u, _ in team]).update(weight_override=1.0)
    clock = None
    curve = []
    seen: set = set()
    hp = {"epochs": args.epochs, "batch_size": 8, "lr": args.lr, "beta": args.beta, "max_length": 64,
          "checkpoint_every": 0, "eval_fraction": 0.0, "min_pairs": 1, "seed": args.seed}
    for step in range(args.steps):
        t0 = time.time()
        session = annotate(project, team, utility=utility, max_judgments=args.step, start=clock,
                           seed=args.seed * 1000 + step)
        clock = session.ended
        served = _served(project, by_prompt, utility, seen)
        n = Comparison.objects.filter(project=project).exclude(n_judgments=0).count()
        run = launch_run(project, base_model=base, recipe="dpo", hyperparameters=hp, send=False,
                         export_params={"test_fraction": 0.0})
        if train_run(run.pk) != RunStatus.SUCCEEDED:
            run.refresh_from_db()
            raise SystemExit(f"run {run.pk} failed: {run.error}")
        run.refresh_from_db()
        scorer = MarginScorer(margin_model(project, run.output_model))
        acc = held_out_accuracy(scorer, held, utility)
        judged = sum(c for c in Comparison.objects.filter(project=project).values_list("n_judgments", flat=True))
        extra = (f"  served: {served['mixed']:.0%} mixed, mean gap {served['gap']:.2f}, "
                 f"{served['right']:.0%} of votes right")
        if arm not in ("random", "oracle"):
            job = PriorityJob.objects.filter(project=project).latest("pk")
            extra += f"  priorities: job {job.pk} {job.status} ({job.n_done} scored)"
        print(f"  {arm:>6} step {step + 1}: {judged} judgments on {n} comparisons, "
              f"accuracy {acc:.3f} ({time.time() - t0:.1f} s){extra}", flush=True)
        curve.append((judged, acc))
    return curve


def _served(project, by_prompt, utility, seen: set) -> dict:
    """What the last session served (the simulator's truth, read by the bench only): the share of
    mixed pairs, the mean utility gap, and the share of decided votes on the better response."""
    from annotate.models import Judgment

    rows = (Judgment.objects.filter(project=project).exclude(comparison_id__in=seen)
            .values_list("comparison_id", "comparison__prompt__text", "choice"))
    mixed, gaps, right, decided = 0, [], 0, 0
    ids = set()
    for cid, prompt, choice in rows:
        line = by_prompt[prompt]
        ids.add(cid)
        ua, ub = utility(line["response_a"]), utility(line["response_b"])
        gaps.append(abs(ua - ub))
        mixed += line["_tone"] == "mixed"
        if choice in ("a", "b"):
            decided += 1
            right += (choice == "a") == (ua > ub)
    seen |= ids
    n = max(len(gaps), 1)
    return {"mixed": mixed / n, "gap": sum(gaps) / n, "right": right / max(decided, 1)}


def judgments_to_reach(curve: list[tuple[int, float]], target: float):
    return next((n for n, acc in curve if acc >= target), None)


def plot(curves: dict, se: dict, args, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    labels = {"random": "random (arrival) order", "margin": "active: margin (the setting's order)",
              "information": "active: expected information",
              "oracle": "oracle: largest true utility gap first (bench only)",
              "strict": "active: smallest margin first (strict)"}
    for arm, curve in curves.items():
        x, y = [n for n, _ in curve], [a for _, a in curve]
        (line,) = ax.plot(x, y, marker="o", label=labels.get(arm, f"active: margin, {arm}"))
        if args.repeats > 1:
            ax.fill_between(x, [a - e for a, e in zip(y, se[arm])], [a + e for a, e in zip(y, se[arm])],
                            color=line.get_color(), alpha=0.15, linewidth=0)
    for target in args.targets:
        ax.axhline(target, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("judgments")
    ax.set_ylabel("held-out preference accuracy")
    ax.set_title(f"Active pair selection ({args.repeats} repeat{'s' if args.repeats > 1 else ''}, "
                 f"{args.candidates} candidates, {int(args.mixed * 100)}% mixed pairs)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main(argv=None) -> None:
    args = parse_args(argv)
    args.targets = [float(t) for t in str(args.target).split(",") if t.strip()]
    logging.disable(logging.WARNING)
    started = time.time()
    with bench_database("bench_prefloop_active", prefix="prefloop-bench-active-"):
        import numpy as np
        import torch
        from django.conf import settings

        from evaluation.stats.simulation import DEFAULT_POOLS, draw_annotators
        from training.loop.seed import synthetic_utility
        from training.services.registry import register_model
        from training.tiny_model import build_default_model

        torch.set_num_threads(1)
        settings.PREFLOOP_AUTO_QUALITY = False
        utility = synthetic_utility()
        arms = [a.strip() for a in args.arms.split(",") if a.strip()]
        for arm in arms:
            if arm != "random":
                arm_power(arm)
        default_power = settings.PREFLOOP_MARGIN_SAMPLING_POWER
        per_repeat = {arm: [] for arm in arms}
        for repeat in range(args.repeats):
            rng = random.Random(args.seed * 7919 + repeat)
            lines = make_lines(args.candidates, args.mixed, rng, utility)
            held = make_lines(args.held_out, args.mixed, rng, utility, start=args.candidates)
            texts = [f"{x['prompt']} {x['response_a']} {x['response_b']}" for x in lines + held]
            folder = build_default_model(Path(settings.PREFLOOP_MODELS_DIR) / f"bench-base-{repeat}", texts,
                                         vocab_size=400, hidden=args.hidden, layers=1, max_positions=128,
                                         seed=args.seed + repeat)
            base = register_model(f"bench-base-{repeat}", folder)
            people = draw_annotators(list(DEFAULT_POOLS), seed=args.seed * 31 + repeat)
            for arm in arms:
                settings.PREFLOOP_MARGIN_SAMPLING_POWER = default_power
                print(f"repeat {repeat + 1}/{args.repeats}, arm {arm}", flush=True)
                per_repeat[arm].append(run_arm(arm, lines, held, base, people, args, repeat))

        # the mean over repeats, step by step (each arm's judgment counts are step x k, up to abandons)
        curves, se = {}, {}
        for arm in arms:
            runs = per_repeat[arm]
            curves[arm] = [(int(round(np.mean([r[k][0] for r in runs]))), float(np.mean([r[k][1] for r in runs])))
                           for k in range(args.steps)]
            se[arm] = [float(np.std([r[k][1] for r in runs], ddof=1) / np.sqrt(len(runs))) if len(runs) > 1 else 0.0
                       for k in range(args.steps)]
    print()
    print(f"Held-out preference accuracy ({args.held_out} held-out pairs, {args.candidates} candidates, "
          f"{int(args.mixed * 100)}% mixed; mean of {args.repeats} repeat{'s' if args.repeats > 1 else ''})")
    base = arms[0]
    print(f"{'judgments':>10} | " + " | ".join(f"{arm:>14}" for arm in arms)
          + (f" | (arm - {base})" if len(arms) > 1 else "") + "   (± standard error over repeats)")
    for k in range(args.steps):
        ns = sorted({curves[arm][k][0] for arm in arms})
        n = "/".join(map(str, ns))
        cells = " | ".join(f"{curves[arm][k][1]:6.3f} ± {se[arm][k]:.3f}" for arm in arms)
        diffs = " ".join(f"{curves[arm][k][1] - curves[base][k][1]:+.3f}" for arm in arms[1:])
        print(f"{n:>10} | {cells}" + (f" | {diffs}" if diffs else ""))
    reach = {}
    for target in args.targets:
        reach[target] = {arm: judgments_to_reach(curves[arm], target) for arm in arms}
        for arm in arms:
            each = [judgments_to_reach(r, target) for r in per_repeat[arm]]
            got = reach[target][arm]
            print(f"judgments to reach accuracy {target:g}, {arm}: "
                  f"{got if got is not None else 'not reached in ' + str(curves[arm][-1][0])}"
                  f" (mean curve); per repeat: {', '.join('-' if e is None else str(e) for e in each)}")
    if len(arms) > 1 and args.repeats > 1:
        half = args.steps // 2
        for arm in arms[1:]:
            diff = np.array([[a for _, a in mine] for mine in per_repeat[arm]]) - \
                np.array([[a for _, a in theirs] for theirs in per_repeat[base]])
            parts = []
            for label, cols in (("whole curve", slice(None)), (f"steps {half + 1}-{args.steps}", slice(half, None))):
                per = diff[:, cols].mean(axis=1)
                parts.append(f"{label} {per.mean():+.3f} ± {per.std(ddof=1) / np.sqrt(len(per)):.3f}")
            print(f"{arm} - {base}, paired over repeats (mean ± standard error): " + ", ".join(parts))
    area = {arm: float(np.mean([a for _, a in curves[arm]])) for arm in arms}
    print("mean accuracy over the curve: " + ", ".join(f"{arm} {area[arm]:.3f}" for arm in arms))
    plot(curves, se, args, args.plot)
    print(f"plot: {args.plot}    ({time.time() - started:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "curves": curves, "se": se, "per_repeat": per_repeat,
                                               "reach": reach}, indent=1))


if __name__ == "__main__":
    main()
