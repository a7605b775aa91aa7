"""Agreement statistics on hand-made cases and on the real PandaLM / Tulu 1 votes."""

import json
from pathlib import Path

import numpy as np
import pytest

from evaluation.stats.agreement import (
    agreement_report,
    agreement_summary,
    between_group_agreement,
    class_counts,
    cohen_kappa_pairs,
    fleiss_kappa,
    fleiss_kappa_from_counts,
    krippendorff_alpha,
    mean_cohen_kappa,
    raw_agreement,
    vote_pairs,
)
from evaluation.stats.judgments import TIE, A, B, Judgments

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def J(rows, **kw):
    item, worker, label = np.array(rows).T
    return Judgments(item=item, worker=worker, label=label, **kw)


def _small():
    # item 0: A, A, B   item 1: A, A   item 2: B, tie   item 3: A (alone: cannot agree, ignored)
    rows = [(0, 0, A), (0, 1, A), (0, 2, B), (1, 0, A), (1, 1, A), (2, 0, B), (2, 1, TIE), (3, 0, A)]
    return J(rows)


def test_raw_agreement_by_hand():
    # Pairs: item 0 has 3 (1 agreeing: the two A's), item 1 has 1 (agreeing), item 2 has 1 (not):
    #   2 / 5 = 0.4. Without ties item 2 keeps one vote and drops out: 2 / 4 = 0.5.
    j = _small()
    assert raw_agreement(j) == pytest.approx(0.4)
    assert raw_agreement(j, include_ties=False) == pytest.approx(0.5)


def test_fleiss_kappa_by_hand():
    # P_i = sum_c n(n-1) / (m(m-1)): item 0: 2/6 = 1/3, item 1: 2/2 = 1, item 2: 0 -> P_bar = 4/9.
    # Class shares over items with >= 2 votes: A 4, B 2, tie 1 of 7 -> P_e = (16+4+1)/49 = 3/7.
    # kappa = (4/9 - 3/7) / (1 - 3/7) = (1/63) / (4/7) = 1/36.
    assert fleiss_kappa(_small()) == pytest.approx(1 / 36)


def test_fleiss_kappa_equals_textbook_formula_with_constant_raters():
    # Fleiss (1971) with 4 raters on every item: the varying-raters form must reduce to it.
    rng = np.random.default_rng(1)
    counts = rng.multinomial(4, [0.5, 0.3, 0.2], size=50).astype(float)
    p_i = ((counts * (counts - 1)).sum(axis=1) / 12).mean()
    p_c = counts.sum(axis=0) / counts.sum()
    expected = (p_i - (p_c**2).sum()) / (1 - (p_c**2).sum())
    assert fleiss_kappa_from_counts(counts) == pytest.approx(expected)


def test_krippendorff_alpha_by_hand():
    # Coincidences on the diagonal: item 0: A 2*1/(3-1) = 1, item 1: A 2*1/(2-1) = 2, item 2: 0
    #   -> sum o_cc = 3. n_c = (4, 2, 1), n = 7.
    # alpha = 1 - (n-1)(n - sum o_cc) / (n^2 - sum n_c^2) = 1 - 6*4/(49 - 21) = 1 - 24/28 = 1/7.
    assert krippendorff_alpha(_small()) == pytest.approx(1 / 7)


def test_perfect_agreement():
    j = J([(0, 0, A), (0, 1, A), (1, 0, B), (1, 1, B), (2, 0, TIE), (2, 1, TIE)])
    assert raw_agreement(j) == 1.0
    assert krippendorff_alpha(j) == pytest.approx(1.0)
    assert fleiss_kappa(j) == pytest.approx(1.0)


def test_no_pairable_items_gives_nan():
    j = J([(0, 0, A), (1, 1, B)])
    assert np.isnan(raw_agreement(j)) and np.isnan(krippendorff_alpha(j)) and np.isnan(fleiss_kappa(j))


def test_vote_pairs_enumerates_within_item_pairs():
    # item 0 has 3 votes -> 3 pairs; item 1 has 2 -> 1; worker 1 voting twice on item 2 pairs with
    # worker 0 twice but never with themself.
    j = J([(0, 0, A), (0, 1, B), (0, 2, A), (1, 2, B), (1, 0, B), (2, 0, A), (2, 1, A), (2, 1, B)])
    p = vote_pairs(j)
    got = sorted(
        zip(
            p.item.tolist(),
            p.worker_a.tolist(),
            p.worker_b.tolist(),
            p.label_a.tolist(),
            p.label_b.tolist(),
            strict=True,
        )
    )
    assert got == [
        (0, 0, 1, A, B),
        (0, 0, 2, A, A),
        (0, 1, 2, B, A),
        (1, 0, 2, B, B),
        (2, 0, 1, A, A),
        (2, 0, 1, A, B),
    ]


def test_cohen_kappa_by_hand():
    # Workers 0 and 1 share 4 items: w0 says A, A, B, B; w1 says A, B, B, B.
    # Observed agreement 3/4; expected (w0 half A, w1 a quarter A) = 1/2*1/4 + 1/2*3/4 = 1/2.
    # kappa = (3/4 - 1/2) / (1 - 1/2) = 1/2. Worker 2 shares one item only: below min_shared.
    rows = [(0, 0, A), (1, 0, A), (2, 0, B), (3, 0, B), (0, 1, A), (1, 1, B), (2, 1, B), (3, 1, B), (0, 2, A)]
    pairs = cohen_kappa_pairs(J(rows), min_shared=2)
    assert pairs.worker_a.tolist() == [0] and pairs.worker_b.tolist() == [1]
    assert pairs.n_shared.tolist() == [4]
    np.testing.assert_allclose(pairs.agreement, [0.75])
    np.testing.assert_allclose(pairs.kappa, [0.5])
    assert mean_cohen_kappa(J(rows), min_shared=2) == pytest.approx(0.5)
    assert np.isnan(mean_cohen_kappa(J(rows), min_shared=5))


def test_between_groups_by_hand():
    # One item: group 0 says A, A; group 1 says A, B.
    # Across groups: 2 x 2 = 4 pairs, agreeing A-A pairs 2*1 = 2 -> 1/2.
    # Within group 0: 1 pair, agreeing -> 1; within group 1: 1 pair, disagreeing -> 0.
    j = J([(0, 0, A), (0, 1, A), (0, 2, A), (0, 3, B)])
    out = between_group_agreement(j, np.array([0, 0, 1, 1]), n_boot=0)
    np.testing.assert_allclose(out["raw_agreement"], [[1.0, 0.5], [0.5, 0.0]])
    assert out["n_pairs"].tolist() == [[1, 4], [4, 1]]


def test_bootstrap_intervals_are_seeded_and_cover_the_estimate():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, 300)
    item = np.repeat(np.arange(300), 3)
    worker = np.tile(np.arange(3), 300)
    label = np.where(rng.random(900) < 0.8, truth[item], 1 - truth[item])
    j = Judgments(item=item, worker=worker, label=label)
    s1 = agreement_summary(j, n_boot=300, seed=1)
    s2 = agreement_summary(j, n_boot=300, seed=1)
    assert s1 == s2
    for name in (
        "krippendorff_alpha",
        "fleiss_kappa",
        "raw_agreement",
        "raw_agreement_no_ties",
        "cohen_kappa",
    ):
        stat = s1[name]
        assert stat["low"] < stat["value"] < stat["high"], name
        assert stat["high"] - stat["low"] < 0.25, name
    # 80%-accurate binary votes agree with probability .8^2 + .2^2 = 0.68.
    assert s1["raw_agreement"]["low"] < 0.68 < s1["raw_agreement"]["high"]


def test_agreement_report_shapes():
    rows = [(i, w, (i + (w == 2)) % 2) for i in range(40) for w in range(4)]
    j = J(rows, pool=np.array([0, 0, 1, 1]))
    report = agreement_report(j, n_boot=50)
    assert set(report) == {"overall", "per_group", "between_groups"}
    assert set(report["per_group"]) == {0, 1}
    assert report["per_group"][0]["raw_agreement"]["value"] == 1.0  # workers 0, 1 always agree
    assert report["per_group"][1]["raw_agreement"]["value"] == 0.0  # worker 2 always flips
    assert report["between_groups"]["raw_agreement"].shape == (2, 2)
    np.testing.assert_allclose(report["between_groups"]["raw_agreement"][0, 1], 0.5)


# --------------------------------------------------------------------------- real votes


def load_votes(name: str):
    """Votes file -> Judgments (one vote per annotator and item: a repeated vote replaces the first)."""
    path = DATA / name
    if not path.exists():
        pytest.skip(f"{path} not available")
    codes = {"a": A, "b": B, "tie": TIE}
    last: dict[tuple[str, str], int] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        last[(row["item_id"], row["annotator_id"])] = codes[row["label"]]
    items = {k: i for i, k in enumerate(sorted({i for i, _ in last}))}
    workers = {k: i for i, k in enumerate(sorted({w for _, w in last}))}
    return Judgments(
        item=[items[i] for i, _ in last], worker=[workers[w] for _, w in last], label=list(last.values())
    ), len(workers)


def test_pandalm_agreement():
    j, n_workers = load_votes("pandalm_votes.jsonl")
    assert (j.n, j.n_items, n_workers) == (2997, 999, 3)
    # The data README: raw pairwise agreement over these votes is 0.92.
    assert round(raw_agreement(j), 2) == 0.92
    pairs = cohen_kappa_pairs(j)
    print("PandaLM pairwise Cohen's kappa:", pairs.kappa, "mean", pairs.kappa.mean())
    # The authors report 0.85-0.88 after removing high-disagreement items; on all items each of
    # the three pairs still falls in that range (0.852, 0.862, 0.879).
    assert pairs.kappa.shape == (3,)
    assert np.all((pairs.kappa > 0.85) & (pairs.kappa < 0.88))
    # With 3 raters on every item, alpha and Fleiss' kappa sit next to the mean Cohen's kappa.
    assert krippendorff_alpha(j) == pytest.approx(pairs.kappa.mean(), abs=0.01)
    assert fleiss_kappa(j) == pytest.approx(pairs.kappa.mean(), abs=0.01)


def test_tulu_three_way_agreement():
    j, n_workers = load_votes("tulu1_votes.jsonl")
    assert n_workers == 16
    counts = class_counts(j)
    assert int((counts.sum(axis=1) >= 2).sum()) == 121  # the README's "121 pairs with 2+ votes"
    # The README: three-way raw agreement (ties included) on pairs with two votes is 0.57.
    assert round(raw_agreement(j), 2) == 0.57
    assert raw_agreement(j, include_ties=False) > raw_agreement(j)
