"""The worker's side of active pair selection: what each open comparison's priority is.

* ``margin`` -- the implicit-reward margin of the project's latest DPO-trained model version
  (:func:`margin_model` says which, with its reference and β), from the sequence
  log-probabilities of both responses under the policy and under the reference
  (``training.worker.metrics._sequence_logps``, batched, responses of similar length together),
  tokenized exactly as the DPO trainer tokenized its pairs (``training.data.tokenize_pair`` with
  the run's ``max_length`` / ``max_prompt_length``). The math is
  :func:`evaluation.stats.active.margin_priority`.
* ``information`` -- the same model's margins (as Fisher weights) and a feature of each pair
  (:meth:`MarginScorer.score`), of the open pairs and of every decided vote so far
  (:func:`judged_regular`), through :func:`evaluation.stats.active.information_priority`.
* ``disagreement`` -- the pools' votes so far (excluded annotators left out), through
  :func:`evaluation.stats.active.disagreement_priority`.

torch is imported inside :class:`MarginScorer`, never at module level.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from annotate.models import Comparison, Project
from evaluation.selectors import load_judgments, pool_groups
from evaluation.stats.active import implicit_margin, margin_priority, neutral_value, pool_spread

from ..models import ModelKind, ModelVersion, Recipe, RunStatus
from ..services.hyperparameters import effective_config

#: Recipes whose output model is a DPO policy with a known reference (its implicit reward is
#: defined). A PPO or SFT-only model has none.
MARGIN_RECIPES = (Recipe.DPO, Recipe.SFT_DPO)
#: Dimensions of the expected-information order's pair features (wider models are projected).
FEATURE_DIM = 256


@dataclass
class MarginModel:
    """A DPO-trained model version and what its implicit reward needs."""

    version: ModelVersion
    policy_path: str
    reference_path: str
    beta: float
    max_length: int
    max_prompt_length: int | None


def _reference_path(version: ModelVersion) -> str:
    """The model DPO was anchored to: the run's base model (recipe ``dpo``), or the SFT model the
    run trained first (``sft+dpo``: ``<out_dir>/sft``)."""
    run = version.training_run
    if run.recipe == Recipe.SFT_DPO:
        sft = Path(run.out_dir) / "sft"
        if not (sft / ".complete").exists():
            raise ValueError(f"the SFT model run {run.pk} anchored DPO to ({sft}) is gone; "
                             f"margins of {version.name} cannot be computed")
        return str(sft)
    return run.base_model.path


def margin_model(project: Project, version: ModelVersion | None = None) -> MarginModel | None:
    """``version`` (default: the project's latest language model produced by a succeeded DPO or
    SFT+DPO run) with its reference and hyperparameters; None when the project has no such model."""
    if version is None:
        version = (
            ModelVersion.objects.filter(
                project=project,
                kind=ModelKind.POLICY,
                training_run__status=RunStatus.SUCCEEDED,
                training_run__recipe__in=MARGIN_RECIPES,
            )
            .select_related("training_run__base_model")
            .order_by("-created_at", "-pk")
            .first()
        )
        if version is None:
            return None
    if version.training_run is None or version.training_run.recipe not in MARGIN_RECIPES:
        raise ValueError(f"{version.name} was not trained by DPO: it has no implicit reward")
    cfg = effective_config(version.training_run)
    return MarginModel(
        version=version,
        policy_path=version.path,
        reference_path=_reference_path(version),
        beta=float(cfg["beta"]),
        max_length=int(cfg["max_length"]),
        max_prompt_length=cfg.get("max_prompt_length"),
    )


def open_regular(project_id: int, after: int = 0):
    """The project's open, non-gold comparisons with ids above ``after``, in id order."""
    return Comparison.objects.filter(project_id=project_id, is_open=True, is_gold=False, pk__gt=after).order_by("pk")


def judged_regular(project_id: int) -> dict[int, int]:
    """``{comparison id: decided votes}`` of the project: every comparison with a vote for A or
    B by an annotator who is not excluded (the votes a DPO export trains on), each with how many
    it has."""
    from django.db.models import Count

    from annotate.models import Choice, Judgment, Membership

    excluded = Membership.objects.filter(project_id=project_id, excluded=True).values("user_id")
    rows = (Judgment.objects.filter(project_id=project_id, choice__in=(Choice.A, Choice.B))
            .exclude(annotator_id__in=excluded)
            .values("comparison_id").annotate(n=Count("pk")).values_list("comparison_id", "n"))
    return dict(rows)


def rows_by_id(pks) -> list[dict | None]:
    """The :func:`pair_rows` row of each comparison in ``pks``, in that order (None for one that
    no longer exists)."""
    found = dict(pair_rows(Comparison.objects.filter(pk__in=list(pks))))
    return [found.get(pk) for pk in pks]


def pair_rows(comparisons) -> list[tuple[int, dict]]:
    """``(id, {"prompt", "chosen": response A, "rejected": response B})`` per comparison, as the
    export's rows give them to the trainer (a chat prompt as its messages)."""
    rows = comparisons.values_list("pk", "prompt__text", "prompt__messages", "response_a__text", "response_b__text")
    return [(pk, {"prompt": messages if messages else text, "chosen": a, "rejected": b})
            for pk, text, messages, a, b in rows]


class MarginScorer:
    """The policy and reference of a :class:`MarginModel`, loaded once, scoring batches of pairs."""

    def __init__(self, mm: MarginModel, *, batch_size: int = 32, device: str | None = None):
        import torch

        from ..tiny_model import load_model_and_tokenizer

        self.mm = mm
        self.batch_size = batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.policy, self.tokenizer = load_model_and_tokenizer(mm.policy_path)
        self.reference, ref_tok = load_model_and_tokenizer(mm.reference_path)
        if ref_tok.get_vocab() != self.tokenizer.get_vocab():
            raise ValueError(f"{mm.policy_path} and its reference {mm.reference_path} have different tokenizers")
        for model in (self.policy, self.reference):
            model.eval().to(self.device)
        hidden = int(self.policy.config.hidden_size)
        self.feature_dim = min(hidden, FEATURE_DIM)
        # a fixed Gaussian projection (Johnson–Lindenstrauss) keeps the expected-information
        # order's d x d precision small for wide models; the same matrix for every job
        self.projection = (np.random.default_rng(0).standard_normal((hidden, FEATURE_DIM)) / np.sqrt(FEATURE_DIM)
                           if hidden > FEATURE_DIM else None)

    def logps(self, rows: list[dict]) -> tuple[np.ndarray, list[bool]]:
        """``[n, 4]`` summed log-probs (policy A, reference A, policy B, reference B) of each row,
        and whether it could be tokenized (a row that cannot -- an empty response, a prompt that
        leaves no room -- has zeros)."""
        lp, ok, _ = self.score(rows)
        return lp, ok

    def score(self, rows: list[dict], features: bool = False) -> tuple[np.ndarray, list[bool], np.ndarray | None]:
        """:meth:`logps`, and with ``features`` each row's feature difference φ(A) − φ(B)
        (``[n, d]``; zeros where it could not be tokenized): φ is the policy's final hidden state
        summed over the positions that predict the response (:func:`_sequence_logps`), projected
        to :data:`FEATURE_DIM` dimensions by a fixed random matrix when the model is wider."""
        from ..data import tokenize_pair
        from ..worker.metrics import _sequence_logps

        prompts, responses, ok = [], [], []
        for i, row in enumerate(rows):
            try:
                t = tokenize_pair(self.tokenizer, row, i, self.mm.max_length, self.mm.max_prompt_length)
            except ValueError:
                ok.append(False)
                continue
            ok.append(True)
            prompts += [t.prompt_ids, t.prompt_ids]
            responses += [t.chosen_ids, t.rejected_ids]
        out = np.zeros((len(rows), 4))
        feats = np.zeros((len(rows), self.feature_dim)) if features else None
        if not prompts:
            return out, ok, feats
        order = sorted(range(len(prompts)), key=lambda k: len(prompts[k]) + len(responses[k]))
        p_sorted = [prompts[k] for k in order]
        r_sorted = [responses[k] for k in order]
        seq = np.zeros((len(prompts), 2))
        rows_ok = np.flatnonzero(ok)
        for col, model in enumerate((self.policy, self.reference)):
            if features and col == 0:
                values, hidden = _sequence_logps(model, p_sorted, r_sorted, self.batch_size, features=True)
                phi = np.zeros_like(hidden)
                phi[order] = hidden
                if self.projection is not None:
                    phi = phi @ self.projection
                feats[rows_ok] = phi[0::2] - phi[1::2]
            else:
                values = _sequence_logps(model, p_sorted, r_sorted, self.batch_size)
            seq[order, col] = values
        out[rows_ok, 0], out[rows_ok, 1] = seq[0::2, 0], seq[0::2, 1]
        out[rows_ok, 2], out[rows_ok, 3] = seq[1::2, 0], seq[1::2, 1]
        return out, ok, feats

    def margins(self, lp: np.ndarray) -> np.ndarray:
        """The implicit-reward margin of each row of :meth:`logps`."""
        return implicit_margin(lp[:, 0], lp[:, 1], lp[:, 2], lp[:, 3], self.mm.beta)

    def priorities(self, rows: list[dict]) -> tuple[np.ndarray, int]:
        """The margin priority of each row (0 where it cannot be scored) and how many could not."""
        lp, ok = self.logps(rows)
        prio = margin_priority(lp[:, 0], lp[:, 1], lp[:, 2], lp[:, 3], self.mm.beta)
        prio[~np.asarray(ok, dtype=bool)] = 0.0
        return prio, len(ok) - int(sum(ok))


def disagreement_priorities(project: Project) -> tuple[dict[int, float], float]:
    """``({comparison id: disagreement priority}, neutral)``: the priority of every comparison
    with judgments (excluded annotators left out), and the neutral value that a comparison no two
    pools voted on gets (:func:`evaluation.stats.active.neutral_value`)."""
    table = load_judgments(project, include_excluded=False)
    if not len(table):
        return {}, 0.0
    pool_index, _ = pool_groups(project, table)
    n_pools = int(pool_index.max()) + 1
    spread, measured = pool_spread(table.item, pool_index[table.worker], table.label, table.n_items, n_pools)
    neutral = neutral_value(spread, measured)
    prio = np.where(measured, spread, neutral)
    return dict(zip(table.comparison_ids.tolist(), prio.tolist())), neutral
