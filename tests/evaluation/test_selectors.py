"""The one judgment loader, ``evaluation.selectors.load_judgments``, behind both the quality
statistics (all judgments, excluded annotators' included) and the exports (rounds / pools
filters, excluded annotators left out, prompt and round of every comparison).

Every test runs with the default batch size and with batches of two rows, so a table read in
many chunks is the same table.
"""

from __future__ import annotations

import numpy as np
import pytest

from annotate.models import Judgment, Membership, Project
from evaluation import selectors
from evaluation.selectors import load_judgments
from tests.factories import add_member, make_comparison, make_judgment, make_pool, make_project, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture(params=[selectors.LOAD_CHUNK, 2], ids=["one-batch", "batches-of-2"])
def chunk(request, monkeypatch):
    monkeypatch.setattr(selectors, "LOAD_CHUNK", request.param)
    return request.param


@pytest.fixture
def scene():
    """Two rounds, two pools, three members (one excluded), a non-member's imported votes,
    a gold comparison, an unjudged gold comparison, and another project's judgment."""
    project = make_project("loader")
    north, south = make_pool(project, "north"), make_pool(project, "south")
    u = {name: make_user(name) for name in ("ann", "ben", "cat", "outsider")}
    add_member(project, u["ann"], pool=north)
    add_member(project, u["ben"], pool=south)
    add_member(project, u["cat"], excluded=True)
    c = {
        "r0": make_comparison(project, "r0", text_a="short", text_b="a longer answer"),
        "gold": make_comparison(project, "gold", text_a="gold A text", text_b="gold B", gold="b"),
        "r1": make_comparison(project, "r1", text_a="x" * 30, text_b="y" * 7, round=1),
        "unjudged": make_comparison(project, "unjudged", text_a="1", text_b="2", gold="a"),
    }
    j = {
        "ann-r0": make_judgment(u["ann"], c["r0"], "a", pool=north, seconds=12.5, strength=2),
        "ben-r0": make_judgment(u["ben"], c["r0"], "b", pool=south, a_on_left=False),
        "cat-r0": make_judgment(u["cat"], c["r0"], "tie"),
        "ann-gold": make_judgment(u["ann"], c["gold"], "b", pool=north, strength=3),
        "ben-gold": make_judgment(u["ben"], c["gold"], "both_bad", pool=south, seconds=3.0),
        "ann-r1": make_judgment(u["ann"], c["r1"], "tie", pool=north),
        "outsider-r1": make_judgment(u["outsider"], c["r1"], "a", a_on_left=None),  # display order unknown
    }
    other = make_project("other")
    make_judgment(u["ann"], make_comparison(other, "elsewhere", text_a="p", text_b="q"), "a")
    return project, {"north": north, "south": south}, u, c, j


def rows(table) -> dict[int, dict]:
    """Judgment id -> what the table says about it, in database ids."""
    out = {}
    for k, jid in enumerate(table.judgment_ids.tolist()):
        i, w = table.item[k], table.worker[k]
        out[jid] = {
            "comparison": int(table.comparison_ids[i]),
            "annotator": int(table.annotator_ids[w]),
            "label": int(table.label[k]),
            "both_bad": bool(table.both_bad[k]),
            "a_left": bool(table.a_left[k]),
            "a_left_known": bool(table.a_left_known[k]),
            "seconds": None if np.isnan(table.seconds[k]) else float(table.seconds[k]),
            "strength": int(table.strength[k]),
            "pool": int(table.pool_of_judgment[k]),
        }
    return out


def test_loads_every_judgment_of_the_project_in_id_order(scene, chunk):
    project, pools, u, c, j = scene
    table = load_judgments(project)
    assert table.judgment_ids.tolist() == sorted(x.pk for x in j.values())  # not the other project's
    assert len(table) == 7 and table.n_items == 3 and table.n_workers == 4
    got = rows(table)
    north, south = pools["north"].pk, pools["south"].pk
    assert got[j["ann-r0"].pk] == {
        "comparison": c["r0"].pk,
        "annotator": u["ann"].pk,
        "label": 0,
        "both_bad": False,
        "a_left": True,
        "a_left_known": True,
        "seconds": 12.5,
        "strength": 2,
        "pool": north,
    }
    assert got[j["ben-r0"].pk] == {
        "comparison": c["r0"].pk,
        "annotator": u["ben"].pk,
        "label": 1,
        "both_bad": False,
        "a_left": False,
        "a_left_known": True,
        "seconds": None,  # unknown time
        "strength": 0,  # not asked
        "pool": south,
    }
    # tie and both-bad are both label 2; both_bad tells them apart.
    assert (got[j["cat-r0"].pk]["label"], got[j["cat-r0"].pk]["both_bad"]) == (2, False)
    assert (got[j["ben-gold"].pk]["label"], got[j["ben-gold"].pk]["both_bad"]) == (2, True)
    assert got[j["outsider-r1"].pk]["pool"] == -1  # imported vote, no pool
    # ... and no display order: a NULL a_on_left is unknown, never read as "A on the left".
    assert (got[j["outsider-r1"].pk]["a_left_known"], got[j["outsider-r1"].pk]["a_left"]) == (False, False)
    assert [k for k, v in got.items() if not v["a_left_known"]] == [j["outsider-r1"].pk]


def test_per_item_and_per_worker_facts(scene, chunk):
    project, pools, u, c, _ = scene
    table = load_judgments(project)
    item = {int(cid): i for i, cid in enumerate(table.comparison_ids)}
    assert list(item) == sorted(item) == sorted([c["r0"].pk, c["gold"].pk, c["r1"].pk])
    for name in ("r0", "gold", "r1"):
        i, cmp = item[c[name].pk], c[name]
        assert table.len_a[i] == len(cmp.response_a.text) and table.len_b[i] == len(cmp.response_b.text)
        assert table.item_prompt[i] == cmp.prompt_id and table.item_round[i] == cmp.round
    worker_pool = dict(zip(table.annotator_ids.tolist(), table.worker_pool.tolist()))
    assert worker_pool == {
        u["ann"].pk: pools["north"].pk,
        u["ben"].pk: pools["south"].pk,
        u["cat"].pk: -1,  # a member without a pool
        u["outsider"].pk: -1,  # not a member at all
    }


def test_gold_answers_are_labels_on_judged_items_only(scene, chunk):
    project, _, _, c, _ = scene
    table = load_judgments(project)
    gold = dict(zip(table.comparison_ids.tolist(), table.gold.tolist()))
    # "b" is label 1; the unjudged gold comparison is not in the table at all.
    assert gold == {c["r0"].pk: -1, c["gold"].pk: 1, c["r1"].pk: -1}


def test_excluded_annotators_are_in_by_default_and_out_on_request(scene, chunk):
    project, _, u, c, j = scene
    everyone = load_judgments(project)
    assert u["cat"].pk in everyone.annotator_ids
    kept = load_judgments(project, include_excluded=False)
    assert u["cat"].pk not in kept.annotator_ids
    assert set(kept.judgment_ids.tolist()) == {x.pk for x in j.values()} - {j["cat-r0"].pk}
    assert kept.n_items == 3 and kept.n_workers == 3
    # Excluding an annotator whose judgments were the only ones on a comparison drops it.
    Membership.objects.filter(project=project, user=u["ann"]).update(excluded=True)
    Judgment.objects.filter(pk=j["outsider-r1"].pk).delete()
    assert c["r1"].pk not in load_judgments(project, include_excluded=False).comparison_ids


def test_round_and_pool_filters(scene, chunk):
    project, pools, _, c, j = scene
    r1 = load_judgments(project, rounds=[1])
    assert r1.comparison_ids.tolist() == [c["r1"].pk] and r1.item_round.tolist() == [1]
    assert set(r1.judgment_ids.tolist()) == {j["ann-r1"].pk, j["outsider-r1"].pk}
    every = load_judgments(project).judgment_ids.tolist()
    assert load_judgments(project, rounds=[0, 1]).judgment_ids.tolist() == every
    south = load_judgments(project, pools=[pools["south"].pk])
    assert set(south.judgment_ids.tolist()) == {j["ben-r0"].pk, j["ben-gold"].pk}
    both = load_judgments(project, rounds=[0], pools=[pools["north"].pk])
    assert set(both.judgment_ids.tolist()) == {j["ann-r0"].pk, j["ann-gold"].pk}
    assert load_judgments(project, rounds=[7]).n_items == 0


def test_empty_table_has_the_usual_types(chunk):
    table = load_judgments(Project.objects.create(name="nothing yet"))
    assert len(table) == 0 and table.n_items == 0 and table.n_workers == 0
    assert table.label.dtype == np.int8 and table.seconds.dtype == np.float64
    assert table.item.dtype == np.int64 and table.gold.dtype == np.int8 and table.both_bad.dtype == bool
    assert table.a_left.dtype == bool and table.a_left_known.dtype == bool
