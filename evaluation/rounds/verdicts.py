"""The verdicts of the annotators on the models of each round, overall and per pool.

Every judgment of a comparison between two responses from differently named models is a game
(A better: A scores 1; B better: 0; tie or both bad: ½ each), weighted by its annotator's
effective weight (``evaluation.quality.services.effective_weights``: calibrated reliability
and bias, an admin's override, 0 when excluded). Intervals are percentile bootstraps that
resample prompts (``evaluation.stats.ranking``), so a prompt judged by five people counts as
one prompt, not five independent clicks.

* :func:`round_verdicts` -- per round, the round's new model (the model on side A of its
  sampled pairs, ``training.services.sampling`` puts it there) and its win rate against the
  other side, overall and in each pool.
* :func:`leaderboard` -- Bradley–Terry strengths of every model over all rounds, overall and per
  pool, with each model's win rate.

Pure numbers come from ``evaluation.stats.ranking``; this module only reads the database.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from annotate.models import Judgment, Pool, Project

from ..quality.services import effective_weights
from ..stats import ranking

OUTCOME = {"a": 0, "b": 1, "tie": 2, "both_bad": 2}
#: Bootstrap draws for the intervals.
N_BOOT = 300


@dataclass(eq=False)
class Games:
    """The project's model-vs-model judgments as arrays (one row per judgment)."""

    round: np.ndarray
    prompt: np.ndarray
    model_a: np.ndarray  # indices into ``models``
    model_b: np.ndarray
    outcome: np.ndarray  # 0 A / 1 B / 2 tie
    weight: np.ndarray
    pool: np.ndarray  # pool id, 0 = no pool
    models: list[str]

    def subset(self, keep: np.ndarray) -> Games:
        return Games(
            self.round[keep], self.prompt[keep], self.model_a[keep], self.model_b[keep], self.outcome[keep],
            self.weight[keep], self.pool[keep], self.models,
        )

    def __len__(self) -> int:
        return int(self.round.shape[0])


def load_games(project: Project) -> Games:
    """Every judgment of a comparison whose two responses come from two differently named models."""
    rows = list(
        Judgment.objects.filter(project=project)
        .exclude(comparison__response_a__model_name="")
        .exclude(comparison__response_b__model_name="")
        .values_list(
            "comparison__round", "comparison__prompt_id", "comparison__response_a__model_name",
            "comparison__response_b__model_name", "choice", "annotator_id", "pool_id",
        )
    )
    rows = [r for r in rows if r[2] != r[3]]
    weights = effective_weights(project)
    models = sorted({r[2] for r in rows} | {r[3] for r in rows})
    index = {m: i for i, m in enumerate(models)}
    return Games(
        round=np.array([r[0] for r in rows], dtype=np.int64),
        prompt=np.array([r[1] for r in rows], dtype=np.int64),
        model_a=np.array([index[r[2]] for r in rows], dtype=np.int64),
        model_b=np.array([index[r[3]] for r in rows], dtype=np.int64),
        outcome=np.array([OUTCOME[r[4]] for r in rows], dtype=np.int64),
        weight=np.array([weights.get(r[5], 1.0) for r in rows], dtype=np.float64),
        pool=np.array([r[6] or 0 for r in rows], dtype=np.int64),
        models=models,
    )


def _num(v) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _groups(project: Project, games: Games) -> list[tuple[str, np.ndarray]]:
    """("All annotators", everything) then one (pool name, its judgments) per pool with games."""
    out = [("All annotators", np.ones(len(games), dtype=bool))]
    names = dict(Pool.objects.filter(project=project).values_list("pk", "name"))
    for pk in sorted(set(games.pool.tolist())):
        out.append((names.get(pk, "No pool"), games.pool == pk))
    return out


def _win_rate(games: Games, model: int, seed: int) -> dict:
    """The model's weighted win rate against whoever it met, with its interval over prompts."""
    mine = (games.model_a == model) | (games.model_b == model)
    g = games.subset(mine & (games.weight > 0))
    if not len(g):
        return {"win_rate": None, "low": None, "high": None, "n_judgments": 0, "n_prompts": 0}
    # Recode as "this model" (0) against "the other" (1).
    other = np.ones(len(g), dtype=np.int64)
    mine_a = g.model_a == model
    a = np.where(mine_a, 0, other)
    b = np.where(mine_a, other, 0)
    w = ranking.win_rates(a, b, g.outcome, n_models=2, weights=g.weight, groups=g.prompt, n_boot=N_BOOT, seed=seed)
    return {
        "win_rate": _num(w.rate[0]),
        "low": _num(w.low[0]),
        "high": _num(w.high[0]),
        "n_judgments": len(g),
        "n_prompts": int(np.unique(g.prompt).size),
    }


def round_verdicts(project: Project, games: Games | None = None, seed: int = 0) -> list[dict]:
    """Per round with model-vs-model games: ``{"round", "model", "against", "groups": [{"name",
    "win_rate", "low", "high", "n_judgments", "n_prompts"}]}`` -- the round's new model (the
    most frequent model on side A) and its win rate, overall then per pool."""
    games = load_games(project) if games is None else games
    out = []
    for r in sorted(set(games.round.tolist())):
        in_round = games.subset(games.round == r)
        new = Counter(in_round.model_a.tolist()).most_common(1)[0][0]
        against = sorted({games.models[m] for m in np.concatenate([in_round.model_a, in_round.model_b]) if m != new})
        groups = []
        for name, keep in _groups(project, in_round):
            groups.append({"name": name, **_win_rate(in_round.subset(keep), new, seed)})
        out.append({"round": int(r), "model": games.models[new], "against": against, "groups": groups})
    return out


def leaderboard(project: Project, games: Games | None = None, seed: int = 0) -> list[dict]:
    """Bradley–Terry over every round: ``[{"name" (group), "models": [{"name", "strength",
    "low", "high", "elo", "win_rate", "n_judgments"}] (strongest first)}]``, overall then per pool."""
    games = load_games(project) if games is None else games
    out = []
    for name, keep in _groups(project, games):
        g = games.subset(keep & (games.weight > 0))
        if not len(g):
            continue
        # Only the models this group judged take part (the strengths are centred over them).
        present, codes = np.unique(np.concatenate([g.model_a, g.model_b]), return_inverse=True)
        a, b = codes[: len(g)], codes[len(g):]
        n = present.size
        bt = ranking.bradley_terry(
            a, b, g.outcome, n_models=n, weights=g.weight, groups=g.prompt, n_boot=N_BOOT, seed=seed
        )
        w = ranking.win_rates(a, b, g.outcome, n_models=n, weights=g.weight, n_boot=0)
        played = np.bincount(a, minlength=n) + np.bincount(b, minlength=n)
        models = [
            {
                "name": games.models[present[i]],
                "strength": _num(bt.strength[i]),
                "low": _num(bt.low[i]),
                "high": _num(bt.high[i]),
                "elo": _num(bt.elo[i]),
                "win_rate": _num(w.rate[i]),
                "n_judgments": int(played[i]),
            }
            for i in range(n)
            if played[i] > 0
        ]
        models.sort(key=lambda m: -m["strength"])
        out.append({"name": name, "models": models})
    return out
