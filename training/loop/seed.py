"""A synthetic project for the loop to start from: prompts, and round-0 pairs of responses whose
hidden utility (``evaluation.stats.simulation.KeywordUtility``) varies, imported through
``annotate.imports.import_comparisons`` like any user's file; some pairs are gold, answered by
the utility."""

from __future__ import annotations

import io
import json
import random

from annotate.imports import import_comparisons
from annotate.models import Project
from evaluation.stats.simulation import BAD_WORDS, GOOD_WORDS, KeywordUtility

TOPICS = "apple river stone cloud green table music light paper window garden silver quiet ocean forest".split()
NEUTRAL = "the a of and to it is this that with about for you we some more".split()


def synthetic_utility(**fields) -> KeywordUtility:
    """The hidden utility of the synthetic project: the default lexicon score, and each word
    outside the synthetic texts' vocabulary costs ``unknown_penalty`` (a model's gibberish loses)."""
    known = frozenset(NEUTRAL + TOPICS + "question tell me".split())
    return KeywordUtility(**{"known": known, "unknown_penalty": 0.25, **fields})


def _response(rng: random.Random, tone: str) -> str:
    """A few neutral words with lexicon words: a kind response has 1-3 good words, an unkind one
    1-2 bad words, a mixed one up to 2 of each."""
    words = [rng.choice(NEUTRAL + TOPICS) for _ in range(rng.randint(3, 8))]
    n_good, n_bad = {"kind": (rng.randint(1, 3), 0), "unkind": (0, rng.randint(1, 2)),
                     "mixed": (rng.randint(0, 2), rng.randint(0, 2))}[tone]
    words += rng.sample(sorted(GOOD_WORDS), n_good) + rng.sample(sorted(BAD_WORDS), n_bad)
    rng.shuffle(words)
    return " ".join(words).capitalize() + "."


def synthetic_lines(n_prompts: int, *, gold_fraction: float = 0.1, seed: int = 0, utility=None) -> list[dict]:
    """``n_prompts`` import lines (response_a/response_b, no model: written, not sampled), a ``gold_fraction`` of
    them gold with the higher-utility side as the answer (pairs of equal utility are never gold)."""
    utility = utility or synthetic_utility()
    rng = random.Random(seed)
    lines = []
    for i in range(n_prompts):
        # Most pairs set a kind response against an unkind one (in random order), the rest two mixed ones.
        tones = ["kind", "unkind"] if rng.random() < 0.8 else ["mixed", "mixed"]
        rng.shuffle(tones)
        a, b = _response(rng, tones[0]), _response(rng, tones[1])
        while a == b:
            b = _response(rng, tones[1])
        line = {
            "prompt": f"Question {i}: tell me about the {rng.choice(TOPICS)}.",
            "response_a": a,
            "response_b": b,
        }
        ua, ub = utility(a), utility(b)
        if ua != ub and rng.random() < gold_fraction:
            line["gold"] = "a" if ua > ub else "b"
        lines.append(line)
    return lines


def seed_project(
    name: str, n_prompts: int = 60, *, overlap: int = 3, gold_rate: float = 0.1, seed: int = 0, utility=None
) -> Project:
    """Create project ``name`` with ``n_prompts`` synthetic round-0 comparisons (see
    :func:`synthetic_lines`); gold items are served at ``gold_rate``."""
    project = Project.objects.create(
        name=name, overlap=overlap, gold_rate=gold_rate, allow_ties=True,
        instructions="Simulated annotators: pick the better response.",
    )
    lines = synthetic_lines(n_prompts, gold_fraction=max(gold_rate, 0.1) if gold_rate else 0.0, seed=seed,
                            utility=utility)
    body = "".join(json.dumps(line) + "\n" for line in lines).encode()
    import_comparisons(project, io.BytesIO(body), filename="synthetic-round-0.jsonl")
    return project
