"""The RLHF recipes as phases: ``rm``, ``ppo``, ``sft+rm+ppo`` and the hybrid ``sft+dpo+ppo``.

``train_rlhf`` has ``training.trainer.train``'s signature and result, so the Celery task, the
launcher subprocess and ``manage.py train`` run these recipes exactly like ``sft+dpo``. Phases, each
in its own folder of ``out_dir`` (resumed on its own; a finished phase is skipped):

==============  ==========================================================================
recipe          phases
==============  ==========================================================================
``rm``          ``rm/``: a reward model from the base model (the run's output is the RM)
``ppo``         ``ppo/``: PPO from the base model against the reward model ``reward_model``
``sft+rm+ppo``  ``sft/`` (SFT on the chosen responses), ``rm/`` (the reward model, initialised
                from the SFT model as in Stiennon et al. 2020 and normalised against its
                samples), ``ppo/`` (PPO from the SFT model, the SFT model as reference)
``sft+dpo+ppo`` ``sft+dpo/`` (SFT then DPO), ``rm/`` (from the SFT model, unless
                ``reward_model`` names one), ``ppo/`` (PPO from the DPO model, with the DPO
                model as the KL reference)
==============  ==========================================================================

Steps are numbered across phases (SFT and DPO steps, reward-model steps, PPO iterations), and
every metric row carries its ``phase``. ``tokenizer_problem`` compares two model folders'
tokenizers without torch, for the web process's checks before a run is created.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

RL_RECIPES = ("rm", "ppo", "sft+rm+ppo", "sft+dpo+ppo")  # the recipes of config.RECIPES not in RECIPE_PHASES


def tokenizer_problem(policy_dir, reward_dir) -> str | None:
    """Why the two folders' tokenizers differ (vocabulary, special tokens), or None. Reads the
    files with the ``tokenizers`` library only (no torch, no transformers)."""
    from tokenizers import Tokenizer

    def load(folder):
        folder = Path(folder)
        f = folder / "tokenizer.json"
        if not f.exists():
            return None, {}
        cfg = folder / "tokenizer_config.json"
        special = {}
        if cfg.exists():
            data = json.loads(cfg.read_text())
            for k in ("eos_token", "pad_token", "bos_token"):
                v = data.get(k)
                special[k] = v.get("content") if isinstance(v, dict) else v
        return Tokenizer.from_file(str(f)).get_vocab(with_added_tokens=True), special

    (va, sa), (vb, sb) = load(policy_dir), load(reward_dir)
    if va is None or vb is None:
        return None  # not comparable without torch; the worker checks again with transformers
    if len(va) != len(vb):
        return f"vocabulary sizes {len(va)} vs {len(vb)}"
    if va != vb:
        return f"{sum(1 for t in va if vb.get(t) != va[t])} tokens have other ids"
    for k in ("eos_token", "pad_token", "bos_token"):
        if sa.get(k) != sb.get(k):
            return f"{k} {sa.get(k)!r} vs {sb.get(k)!r}"
    return None


class _Offset:
    """Callbacks of one phase: steps shifted by the phases before, the run's total steps."""

    def __init__(self, callbacks, offset: int, total: int):
        self.cb, self.offset, self.total = callbacks, offset, total

    def _fwd(self, name, *args):
        fn = getattr(self.cb, name, None) if self.cb is not None else None
        return fn(*args) if fn is not None else None

    def on_step(self, metrics):
        m = dict(metrics)
        if m.get("phase") in ("sft", "dpo"):  # training.trainer numbers its own steps from 1
            m["step"] = m["step"] + self.offset
            if m.get("eta_s") is not None and m.get("total_steps"):
                m["eta_s"] = m["eta_s"] * (self.total - m["step"]) / max(1, m["total_steps"] + self.offset - m["step"])
        m["total_steps"] = self.total
        self._fwd("on_step", m)

    def on_eval(self, metrics):
        self._fwd("on_eval", metrics)

    def should_stop(self):
        return bool(self._fwd("should_stop"))

    def on_checkpoint(self, path):
        self._fwd("on_checkpoint", path)

    def on_log(self, message):
        self._fwd("on_log", message)


def _phases(recipe: str, reward_model) -> list[str]:
    return {"rm": ["rm"], "ppo": ["ppo"], "sft+rm+ppo": ["sft", "rm", "ppo"],
            "sft+dpo+ppo": ["sft+dpo"] + ([] if reward_model else ["rm"]) + ["ppo"]}[recipe]


def plan_phase_steps(cfg, pairs, eval_pairs) -> dict[str, int]:
    """Steps of each phase (PPO: iterations), known before any compute."""
    from .ppo_trainer import n_iterations
    from .reward_model import plan_steps, split_eval

    n_train = len(pairs) if eval_pairs is not None else len(split_eval(len(pairs), cfg)[0])
    out = {}
    for ph in _phases(cfg.recipe, cfg.reward_model):
        if ph == "sft":
            out[ph] = len(plan_steps(n_train, cfg, "sft"))
        elif ph == "sft+dpo":
            out[ph] = len(plan_steps(n_train, cfg, "sft")) + len(plan_steps(n_train, cfg, "dpo"))
        elif ph == "rm":
            rm_cfg = dataclasses.replace(cfg, max_steps=cfg.rm_max_steps, epochs=cfg.rm_epochs)
            out[ph] = len(plan_steps(n_train, rm_cfg, "rm"))
        else:
            prompts = {json.dumps(r.get("prompt"), sort_keys=True) for r in pairs if r.get("prompt")}
            out[ph] = n_iterations(cfg, max(1, len(prompts)))
    return out


def train_rlhf(cfg, model_path, pairs, out_dir, callbacks=None, eval_pairs=None):
    """Run an RLHF recipe (see the module docstring); returns a ``training.trainer.TrainResult``."""
    from .ppo_trainer import train_ppo, validate_ppo_inputs
    from .reward_model import train_reward_model
    from .reward_model import _write_json, split_eval

    from .trainer.loop import train
    from .trainer.state import TrainResult

    cfg.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.recipe == "ppo" and not cfg.reward_model:
        raise ValueError("recipe 'ppo' needs a reward model: set the hyperparameter reward_model")
    if cfg.reward_model:
        validate_ppo_inputs(cfg, model_path, reward_model_path=cfg.reward_model)
    if eval_pairs is not None:
        train_rows, eval_rows = list(pairs), list(eval_pairs)
    else:
        tr, ev = split_eval(len(pairs), cfg)
        train_rows, eval_rows = [pairs[i] for i in tr], [pairs[i] for i in ev]
    steps = plan_phase_steps(cfg, pairs, eval_pairs)
    total = sum(steps.values())
    _write_json(out / "config.json", {"config": cfg.to_dict(), "model_path": str(model_path), "phases": steps,
                                      "num_pairs": len(pairs), "total_steps": total})
    offset = 0
    sft_model = policy = str(model_path)
    reward_model = cfg.reward_model
    reports, last, evals = [], {}, {}
    final = None
    status = "succeeded"
    for ph, n in steps.items():
        cb = _Offset(callbacks, offset, total)
        if ph in ("sft", "sft+dpo"):
            sub = dataclasses.replace(cfg, recipe=ph)
            res = train(sub, policy, train_rows, out / ph, cb, eval_pairs=eval_rows)
            report = {"phase": ph, "status": res.status, "steps": res.steps, "out": res.final_path}
            evals.update(res.eval_metrics or {})
            last = res.metrics or last
            if res.status == "succeeded":
                policy = res.final_path
                sft_model = str(out / ph / "sft") if ph == "sft+dpo" else res.final_path
        elif ph == "rm":
            report = train_reward_model(cfg, sft_model, train_rows, out / "rm", cb, eval_pairs=eval_rows,
                                        policy_path=sft_model, step_offset=offset, total_steps=total)
            evals["rm"] = {k: v for k, v in (report.get("eval_metrics") or {}).items() if k != "eval_calibration"}
            reward_model = report["out"]
        else:
            report = train_ppo(cfg, policy, train_rows, out / "ppo", cb, reward_model_path=reward_model,
                               ref_path=policy, step_offset=offset, total_steps=total)
        report["phase"] = ph
        reports.append({k: v for k, v in report.items() if k in ("phase", "status", "steps", "out")})
        last = report.get("metrics") or last
        if report["status"] != "succeeded":
            status = report["status"]
            break
        offset += n
        final = report["out"]
    result = TrainResult(status=status, out_dir=str(out), final_path=final if status == "succeeded" else None,
                         adapter_path=None, steps=offset if status == "succeeded" else last.get("step", offset),
                         total_steps=total, metrics={k: v for k, v in last.items() if k != "samples"},
                         eval_metrics=evals, phases=reports)
    _write_json(out / "result.json", result.to_dict())
    return result


__all__ = ["RL_RECIPES", "train_rlhf", "tokenizer_problem", "plan_phase_steps"]
