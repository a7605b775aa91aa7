"""Calibrated export, end to end: import → judgments through the queue → export task →
``datasets.load_from_disk`` / JSONL / Parquet / CSV read back with the documented fields and
values; the split, pseudonyms, rationales, ties, gold, the content hash, empty filters and
failed builds."""

from __future__ import annotations

import csv
import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from django.contrib.auth import get_user_model

from annotate import queue
from annotate.imports import import_comparisons
from annotate.models import Comparison, GoldAnswer, Judgment, Membership, Pool, Project, Role
from evaluation.export.downloads import available_downloads, download_file, may_download
from evaluation.export.folder import (
    JUDGMENT_FIELDS,
    PAIR_FIELDS,
    WEIGHT_RULE,
    default_folder,
    folder_hash,
    pair_jsonl_files,
    verify_folder,
)
from evaluation.export.options import ExportError, clean_options
from evaluation.export.selection import split_prompts
from evaluation.export.services import build_export, create_export
from evaluation.export.tasks import build_export_task
from evaluation.models import Export, JobStatus

pytestmark = pytest.mark.django_db
User = get_user_model()

# Distinctive identities: neither may appear in any exported byte.
ANNOTATORS = [
    ("alice-zq-secret-name", 987654301, "north"),
    ("bob-xk-secret-name", 987654302, "north"),
    ("carol-vw-secret-name", 987654303, "south"),
]
RATIONALE = "RATIONALE-MARKER-QX7 the right answer cites its source"
N_PROMPTS = 20


def _plan() -> list[dict]:
    """Comparisons (one import line each) and what each annotator says about them."""
    lines = []
    for i in range(N_PROMPTS):
        prompt = f"Question number {i}: explain topic {i} briefly."
        lines.append(
            {
                "prompt": prompt,
                "response_a": f"Answer A{i} from model one.",
                "response_b": f"Answer B{i} from model two.",
                "model_a": "model-one",
                "model_b": "model-two",
                # votes of alice, bob, carol in terms of the underlying responses
                "votes": ["b", "b", "b"]
                if i % 3 == 0
                else ["a", "a", "a"]
                if i % 3 == 1
                else ["a", "a", "b"],
            }
        )
    # A second comparison on prompt 0 (same prompt, other responses): the split keeps them together.
    lines.append(
        {
            "prompt": lines[0]["prompt"],
            "response_a": "Another answer C0.",
            "response_b": "Another answer D0.",
            "model_a": "model-three",
            "model_b": "model-four",
            "votes": ["a", "a", "a"],
        }
    )
    lines.append(
        {
            "prompt": "Which is better, a tie?",
            "response_a": "Same one.",
            "response_b": "Same two.",
            "model_a": "m1",
            "model_b": "m2",
            "votes": ["tie", "tie", "tie"],
        }
    )
    lines.append(
        {
            "prompt": "Both are bad here.",
            "response_a": "Wrong one.",
            "response_b": "Wrong two.",
            "model_a": "m1",
            "model_b": "m2",
            "votes": ["both_bad", "both_bad", "both_bad"],
        }
    )
    return lines


def _shown(a_on_left: bool, underlying: str) -> str:
    if underlying in ("tie", "both_bad"):
        return underlying
    return ("left" if a_on_left else "right") if underlying == "a" else ("right" if a_on_left else "left")


@pytest.fixture(autouse=True)
def _quick_bootstrap(settings):
    settings.PREFLOOP_EXPORT_BOOTSTRAP = 100


def make_project(
    name: str = "Export project", *, plan=None, license_: str = "cc-by-4.0", via_queue: bool = False
) -> dict:
    """Import the plan's comparisons, then judge them: through the queue (``via_queue``, as
    annotators do, with random display order) or by writing the judgments directly."""
    plan = plan or _plan()
    project = Project.objects.create(name=name, overlap=3, gold_rate=0.0, license=license_)
    pools = {n: Pool.objects.create(project=project, name=n) for n in ("north", "south")}
    users = []
    for username, pk, pool in ANNOTATORS:
        user = User.objects.filter(pk=pk).first() or User.objects.create_user(username, id=pk)
        Membership.objects.create(project=project, user=user, role=Role.ANNOTATOR, pool=pools[pool])
        users.append(user)
    researcher = User.objects.create_user(f"researcher-{project.pk}")
    Membership.objects.create(project=project, user=researcher, role=Role.RESEARCHER)
    body = "\n".join(json.dumps({k: v for k, v in line.items() if k != "votes"}) for line in plan)
    import_comparisons(project, io.BytesIO(body.encode()), filename="pairs.jsonl")
    by_texts = {(line["response_a"], line["response_b"]): line["votes"] for line in plan}
    if not via_queue:
        judgments = []
        for n, c in enumerate(
            Comparison.objects.filter(project=project).select_related("response_a", "response_b")
        ):
            votes = by_texts.get((c.response_a.text, c.response_b.text))
            if votes is None:
                votes = [
                    {"a": "b", "b": "a"}.get(v, v) for v in by_texts[(c.response_b.text, c.response_a.text)]
                ]
            for k, user in enumerate(users):
                judgments.append(
                    Judgment(
                        project=project,
                        comparison=c,
                        annotator=user,
                        pool=pools[ANNOTATORS[k][2]],
                        a_on_left=(n + k) % 2 == 0,
                        choice=votes[k],
                        strength=2 if votes[k] in ("a", "b") else None,
                        rationale=RATIONALE if k == 0 else "",
                        seconds=4.0 + k,
                    )
                )
        Judgment.objects.bulk_create(judgments)
        Comparison.objects.filter(project=project).update(n_judgments=3, slots_taken=3, is_open=False)
        return {"project": project, "users": users, "researcher": researcher, "pools": pools, "plan": plan}
    for k, user in enumerate(users):
        while True:
            assignment = queue.next_assignment(user, project)
            if assignment is None:
                break
            c = assignment.comparison
            votes = by_texts.get((c.response_a.text, c.response_b.text))
            if votes is None:  # the import may have swapped a/b: it de-duplicates order-independently
                votes = [
                    {"a": "b", "b": "a"}.get(v, v) for v in by_texts[(c.response_b.text, c.response_a.text)]
                ]
            underlying = votes[k]
            queue.submit_judgment(
                user,
                assignment.pk,
                choice=_shown(assignment.a_on_left, underlying),
                strength=2 if underlying in ("a", "b") else None,
                rationale=RATIONALE if k == 0 else "",
                seconds=0.5,
            )
    return {"project": project, "users": users, "researcher": researcher, "pools": pools, "plan": plan}


def run_export(project, user=None, **options) -> Export:
    export = create_export(project, user, options, enqueue=False)
    assert build_export_task.apply(args=(export.pk,)).get() == "succeeded", Export.objects.get(
        pk=export.pk
    ).error
    export.refresh_from_db()
    return export


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def read_pairs(folder: Path) -> list[dict]:
    """Every pair of an export's JSONL files (one per split), in comparison id order."""
    files = pair_jsonl_files(folder)
    assert files and all(f.name.startswith("preferences-") for f in files)
    return sorted((r for f in files for r in read_jsonl(f)), key=lambda r: r["comparison_id"])


def all_bytes(folder: Path) -> bytes:
    out = []
    for root, _, files in os.walk(folder):
        for name in files:
            out.append((Path(root) / name).read_bytes())
    return b"\n".join(out)


@pytest.fixture
def scene():
    return make_project()


def test_round_trip_every_format():
    """Import → judgments through the queue → export → read back."""
    import pyarrow.parquet as pq
    from datasets import DatasetDict, load_from_disk

    scene = make_project(via_queue=True)
    project = scene["project"]
    export = run_export(
        project,
        scene["researcher"],
        formats=["jsonl", "parquet", "hf", "csv", "judgments"],
        test_fraction=0.25,
        seed=3,
    )
    assert export.status == JobStatus.SUCCEEDED and export.progress == 1.0 and export.error == ""
    folder = Path(export.path)
    assert folder == Path(default_folder(export)).resolve()
    rows = read_pairs(folder)
    # 21 decided comparisons; the tie and the both-bad are excluded by default.
    assert len(rows) == export.n_rows == N_PROMPTS + 1
    assert export.stats["removed"] == {"gold": 0, "min_confidence": 0, "ties": 1, "both_bad": 1}
    assert list(rows[0]) == list(PAIR_FIELDS)
    for r in rows:
        assert (
            isinstance(r["prompt"], str) and isinstance(r["chosen"], str) and isinstance(r["rejected"], str)
        )
        assert r["label"] == "preference" and r["split"] in ("train", "test")
        assert 0.5 < r["p_chosen"] <= 1 and r["confidence"] >= r["p_chosen"] - 1e-9
        assert 0 <= r["weight"] <= r["p_chosen"] + 1e-9
        assert r["n_judgments"] == 3

    # 3/3 annotators chose B: chosen is response B, with a high probability.
    c0 = Comparison.objects.get(project=project, response_a__text="Answer A0 from model one.")
    r0 = next(r for r in rows if r["comparison_id"] == c0.pk)
    assert r0["chosen"] == "Answer B0 from model two." and r0["rejected"] == "Answer A0 from model one."
    assert (
        r0["chosen_response"] == "b"
        and r0["model_chosen"] == "model-two"
        and r0["model_rejected"] == "model-one"
    )
    assert r0["p_chosen"] > 0.9 and r0["agreement"] == 1.0 and r0["round"] == 0
    assert r0["prompt"] == "Question number 0: explain topic 0 briefly."
    # A 2-1 split: chosen is the majority's pick, with less agreement.
    c2 = Comparison.objects.get(project=project, response_a__text="Answer A2 from model one.")
    r2 = next(r for r in rows if r["comparison_id"] == c2.pk)
    assert r2["chosen"] == "Answer A2 from model one." and abs(r2["agreement"] - 2 / 3) < 1e-6
    assert r2["p_chosen"] < r0["p_chosen"]

    # datasets.load_from_disk reads back the same rows, split into train and test.
    ds = load_from_disk(str(folder / "hf"))
    assert isinstance(ds, DatasetDict) and set(ds) == {"train", "test"}
    assert ds["train"].column_names == list(PAIR_FIELDS)
    assert len(ds["train"]) == export.stats["n_train"] and len(ds["test"]) == export.stats["n_test"]
    assert len(ds["train"]) + len(ds["test"]) == len(rows) and len(ds["test"]) > 0
    by_id = {r["comparison_id"]: r for r in rows}
    for split in ("train", "test"):
        for rec in ds[split]:
            assert rec["split"] == split
            assert rec == by_id[rec["comparison_id"]]

    # Parquet and CSV hold the same rows.
    table = pq.read_table(folder / "preferences.parquet")
    assert table.num_rows == len(rows) and table.column_names == list(PAIR_FIELDS)
    assert table.to_pylist() == rows
    with open(folder / "preferences.csv", newline="", encoding="utf-8") as f:
        csv_rows = list(csv.DictReader(f))
    assert [int(r["comparison_id"]) for r in csv_rows] == [r["comparison_id"] for r in rows]
    assert csv_rows[0]["chosen"] == rows[0]["chosen"]

    # Judgments: one row per judgment (the tie and both-bad comparisons included).
    judgments = read_jsonl(folder / "judgments.jsonl")
    assert len(judgments) == Judgment.objects.filter(project=project).count() == 3 * (N_PROMPTS + 3)
    assert set(judgments[0]) == set(JUDGMENT_FIELDS) - {"rationale"}
    j0 = [j for j in judgments if j["comparison_id"] == c0.pk]
    assert {j["choice"] for j in j0} == {"b"} and {j["pool"] for j in j0} == {"north", "south"}
    for j in j0:
        assert j["choice_shown"] == ("right" if j["display_order"] == "AB" else "left")
        assert j["strength"] == 2 and j["seconds"] is not None
    assert {j["choice"] for j in judgments} == {"a", "b", "tie", "both_bad"}

    # The dataset card is generated from the data.
    card = (folder / "README.md").read_text()
    assert 'license: "cc-by-4.0"' in card and f"| pairs | {len(rows)} (train {len(ds['train'])}" in card
    assert "load_from_disk" in card and 'load_dataset("json"' in card and "DPOTrainer" in card
    assert "Krippendorff" in card and "ties excluded / included | 1 / 0" in card
    assert "north" in card and "south" in card and WEIGHT_RULE.splitlines()[0] in card


def test_unknown_display_order_is_null_in_the_judgments_file(scene):
    # Alice's votes come without a display order (imported: a_on_left NULL). The judgments
    # file says so (null), never "AB"; her a/b choices have no screen side either.
    project, alice = scene["project"], scene["users"][0]
    assert Judgment.objects.filter(project=project, annotator=alice).update(a_on_left=None) == N_PROMPTS + 3
    export = run_export(project, formats=["jsonl", "judgments"], method="dawid_skene_debiased")
    judgments = read_jsonl(Path(export.path) / "judgments.jsonl")
    assert len(judgments) == 3 * (N_PROMPTS + 3)
    hers = [j for j in judgments if j["seconds"] == 4.0]  # alice's seconds (make_project)
    others = [j for j in judgments if j["seconds"] != 4.0]
    assert len(hers) == N_PROMPTS + 3
    assert {j["display_order"] for j in hers} == {None}
    for j in hers:
        assert j["choice_shown"] == (None if j["choice"] in ("a", "b") else j["choice"])
    assert {j["choice"] for j in hers} >= {"a", "b"}
    assert {j["display_order"] for j in others} == {"AB", "BA"}
    for j in others:
        assert j["choice_shown"] == _shown(j["display_order"] == "AB", j["choice"])
    card = (Path(export.path) / "README.md").read_text()
    assert "null if the display order was not recorded" in card


def test_split_is_by_prompt_and_seeded(scene):
    project = scene["project"]
    a = run_export(project, formats=["jsonl"], test_fraction=0.3, seed=1)
    b = run_export(project, formats=["jsonl"], test_fraction=0.3, seed=1)
    c = run_export(project, formats=["jsonl"], test_fraction=0.3, seed=2)
    rows_a = read_pairs(Path(a.path))
    train = {r["prompt_id"] for r in rows_a if r["split"] == "train"}
    test = {r["prompt_id"] for r in rows_a if r["split"] == "test"}
    assert train and test and not (train & test)
    assert len(test) == round(0.3 * len(train | test))
    # Both comparisons of prompt 0 are on the same side.
    p0 = [r for r in rows_a if r["prompt"].startswith("Question number 0:")]
    assert len(p0) == 2 and p0[0]["split"] == p0[1]["split"]

    def split_of(e):
        return {r["comparison_id"]: r["split"] for r in read_pairs(Path(e.path))}

    assert split_of(a) == split_of(b)  # same seed, same split
    assert split_of(a) != split_of(c)


def test_split_helper_never_puts_a_prompt_on_both_sides():
    rng = np.random.default_rng(0)
    prompts = rng.integers(1, 5000, size=20000)
    is_test = split_prompts(prompts, prompts, 0.2, seed=7)
    test_prompts, train_prompts = set(prompts[is_test]), set(prompts[~is_test])
    assert not (test_prompts & train_prompts)
    assert abs(len(test_prompts) / len(set(prompts)) - 0.2) < 0.01
    assert not split_prompts(prompts, prompts, 0.0, seed=7).any()


def test_pseudonyms_stable_within_an_export_and_not_across(scene):
    project = scene["project"]
    opts = dict(formats=["jsonl", "parquet", "hf", "csv", "judgments"])
    first = run_export(project, **opts)
    second = run_export(project, **opts)
    names = []
    for export in (first, second):
        folder = Path(export.path)
        blob = all_bytes(folder)
        for username, pk, _ in ANNOTATORS:
            assert username.encode() not in blob and str(pk).encode() not in blob
        assert RATIONALE.encode() not in blob  # rationales are off by default
        judgments = read_jsonl(folder / "judgments.jsonl")
        assert all(j["annotator"].startswith("ann-") and len(j["annotator"]) == 20 for j in judgments)
        # Stable within the export: three annotators, three pseudonyms, each judging every comparison once.
        per = {}
        for j in judgments:
            per.setdefault(j["annotator"], set()).add(j["comparison_id"])
        assert len(per) == 3 and all(len(v) == N_PROMPTS + 3 for v in per.values())
        names.append(set(per))
    assert not (names[0] & names[1])  # a different key per export

    stable1 = run_export(project, stable_pseudonyms=True, formats=["judgments"])
    stable2 = run_export(project, stable_pseudonyms=True, formats=["judgments"])
    n1 = {j["annotator"] for j in read_jsonl(Path(stable1.path) / "judgments.jsonl")}
    n2 = {j["annotator"] for j in read_jsonl(Path(stable2.path) / "judgments.jsonl")}
    assert n1 == n2 and not (n1 & names[0])
    # The per-export key never leaves the database.
    for export in (first, second):
        assert export.salt and export.salt.encode() not in all_bytes(Path(export.path))


def test_rationales_only_when_asked(scene):
    export = run_export(scene["project"], formats=["judgments"], include_rationales=True)
    judgments = read_jsonl(Path(export.path) / "judgments.jsonl")
    assert sum(j["rationale"] == RATIONALE for j in judgments) == N_PROMPTS + 3  # alice's
    with pytest.raises(ExportError, match="include_rationales"):
        create_export(scene["project"], None, {"formats": ["jsonl"], "include_rationales": True})


def test_ties_and_both_bad_included_on_request(scene):
    project = scene["project"]
    export = run_export(
        project, formats=["jsonl", "hf"], include_ties=True, include_both_bad=True, test_fraction=0
    )
    rows = read_pairs(Path(export.path))
    assert len(rows) == N_PROMPTS + 3 and export.stats["removed"] == {
        "gold": 0,
        "min_confidence": 0,
        "ties": 0,
        "both_bad": 0,
    }
    tie = next(r for r in rows if r["label"] == "tie")
    bad = next(r for r in rows if r["label"] == "both_bad")
    for r, text in ((tie, "Same one."), (bad, "Wrong one.")):
        assert r["p_chosen"] == 0.5 and r["p_rejected"] == 0.5 and r["p_tie"] > 0.5
        assert r["chosen_response"] == "a" and r["chosen"] == text
    assert export.stats["n_ties_included"] == 1 and export.stats["n_both_bad_included"] == 1
    from datasets import load_from_disk

    ds = load_from_disk(str(Path(export.path) / "hf"))
    assert set(ds) == {"train"} and len(ds["train"]) == N_PROMPTS + 3
    only_ties = run_export(project, formats=["jsonl"], include_ties=True)
    assert {r["label"] for r in read_pairs(Path(only_ties.path))} == {
        "preference",
        "tie",
    }


def test_conversational_format_for_chat_prompts():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a prime."}]
    plan = [
        {
            "prompt": messages,
            "response_a": "7",
            "response_b": "Eight.",
            "model_a": "x",
            "model_b": "y",
            "votes": ["a", "a", "a"],
        },
        {
            "prompt": "Plain prompt here.",
            "response_a": "Plain A.",
            "response_b": "Plain B.",
            "model_a": "x",
            "model_b": "y",
            "votes": ["b", "b", "b"],
        },
    ]
    project = make_project("Chat project", plan=plan)["project"]
    export = run_export(project, formats=["jsonl", "parquet", "hf"], test_fraction=0)
    rows = {r["chosen"][0]["content"]: r for r in read_pairs(Path(export.path))}
    chat, plain = rows["7"], rows["Plain B."]
    assert chat["prompt"] == messages
    assert chat["chosen"] == [{"role": "assistant", "content": "7"}]
    assert chat["rejected"] == [{"role": "assistant", "content": "Eight."}]
    assert plain["prompt"] == [{"role": "user", "content": "Plain prompt here."}]
    assert export.stats["style"] == "conversational"
    from datasets import load_from_disk
    from trl.data_utils import is_conversational

    ds = load_from_disk(str(Path(export.path) / "hf"))
    assert is_conversational(ds["train"][0])


def test_content_hash_recorded_stable_and_immutable(scene):
    export = run_export(scene["project"], formats=["jsonl", "parquet", "hf", "judgments"])
    folder = Path(export.path)
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["content_hash"] == export.content_hash == folder_hash(folder)[0]
    assert len(export.content_hash) == 64 and verify_folder(folder)
    assert [f["path"] for f in meta["files"]] == sorted(f["path"] for f in meta["files"])
    assert "metadata.json" not in [f["path"] for f in meta["files"]]
    assert {
        "README.md",
        "preferences-train.jsonl",
        "preferences-test.jsonl",
        "preferences.parquet",
        "judgments.jsonl",
        "hf/dataset_dict.json",
    } <= {f["path"] for f in meta["files"]}
    assert meta["options"] == export.params and meta["stats"]["n_pairs"] == export.n_rows
    # Read-only files; the task does nothing for a built export; a rebuild is refused.
    assert not os.access(folder / "preferences-train.jsonl", os.W_OK) or os.geteuid() == 0
    assert not (os.stat(folder / "preferences-train.jsonl").st_mode & 0o222)
    assert build_export_task.apply(args=(export.pk,)).get() == "skipped (already built)"
    with pytest.raises(ExportError, match="immutable"):
        build_export(export)
    export.refresh_from_db()
    assert folder_hash(folder)[0] == export.content_hash and export.status == JobStatus.SUCCEEDED
    # Tampering shows.
    path = folder / "preferences-train.jsonl"
    path.chmod(0o644)
    path.write_text(path.read_text() + "\n")
    assert not verify_folder(folder)


def test_downloads_and_archives(scene):
    export = run_export(scene["project"], formats=["jsonl", "hf", "judgments"])
    assert available_downloads(export) == [
        "jsonl",
        "jsonl-test",
        "hf",
        "judgments",
        "card",
        "metadata",
        "zip",
        "tar.gz",
    ]
    for what, split in (("jsonl", "train"), ("jsonl-test", "test")):
        path, name, ctype = download_file(export, what)
        assert path.read_bytes() == (Path(export.path) / f"preferences-{split}.jsonl").read_bytes()
        assert name == f"prefloop-export-{export.pk}-preferences-{split}.jsonl" and ctype == "application/x-ndjson"
        assert {r["split"] for r in read_jsonl(path)} == {split}
    zpath, zname, _ = download_file(export, "zip")
    with zipfile.ZipFile(zpath) as z:
        names = set(z.namelist())
        meta = json.loads(z.read(f"prefloop-export-{export.pk}/metadata.json"))
    assert meta["content_hash"] == export.content_hash
    assert {f"prefloop-export-{export.pk}/{f['path']}" for f in meta["files"]} | {
        f"prefloop-export-{export.pk}/metadata.json"
    } == names
    tpath, _, _ = download_file(export, "tar.gz")
    with tarfile.open(tpath) as t:
        assert f"prefloop-export-{export.pk}/README.md" in t.getnames()
    hpath, _, _ = download_file(export, "hf")
    with tarfile.open(hpath) as t:
        assert f"prefloop-export-{export.pk}-hf/dataset_dict.json" in t.getnames()
    with pytest.raises(ExportError, match="no parquet"):
        download_file(export, "parquet")
    # Archives live outside the hashed folder: the hash still holds.
    assert verify_folder(Path(export.path))


def test_filters_that_leave_nothing_are_named(scene):
    project = scene["project"]
    before = Export.objects.count()
    with pytest.raises(ExportError, match=r"no comparisons match: rounds=\[7\]"):
        create_export(project, None, {"rounds": [7]})
    other = Pool.objects.create(project=project, name="west")
    with pytest.raises(ExportError, match=r"no comparisons match: pools=\['west'\]"):
        create_export(project, None, {"pools": ["west"]})
    with pytest.raises(ExportError, match="pools: no pool 'east'"):
        create_export(project, None, {"pools": ["east"]})
    Membership.objects.filter(project=project, role=Role.ANNOTATOR).update(excluded=True)
    with pytest.raises(ExportError, match="excluded annotator"):
        create_export(project, None, {})
    assert Export.objects.count() == before and other.pk
    empty = Project.objects.create(name="Empty")
    with pytest.raises(ExportError, match="has no comparisons"):
        create_export(empty, None, {})
    for bad, field in (
        ({"method": "vote"}, "method"),
        ({"min_confidence": 2}, "min_confidence"),
        ({"formats": ["xml"]}, "formats"),
        ({"test_fraction": 1}, "test_fraction"),
        ({"unknown": 1}, "unknown option"),
    ):
        with pytest.raises(ExportError, match=field):
            clean_options(project, bad)


def test_min_confidence_and_tie_filters_fail_the_build_with_the_reason():
    split_plan = [
        {
            "prompt": f"Split {i}",
            "response_a": f"SA{i}",
            "response_b": f"SB{i}",
            "model_a": "x",
            "model_b": "y",
            "votes": ["a", "b", "tie"],
        }
        for i in range(4)
    ]
    p2 = make_project("Split project", plan=split_plan)["project"]
    # Every vote weighs 1 (an admin's override replaces the computed weight): shares are 1/3 each.
    Membership.objects.filter(project=p2, role=Role.ANNOTATOR).update(weight_override=1.0)
    export = create_export(p2, None, {"min_confidence": 0.9, "method": "majority"}, enqueue=False)
    assert build_export_task.apply(args=(export.pk,)).get() == "failed"
    export.refresh_from_db()
    assert export.status == JobStatus.FAILED
    assert export.error.startswith("no comparisons match: min_confidence=0.9 removes all 4")
    assert not Path(default_folder(export)).exists()

    ties_plan = [
        {
            "prompt": f"Tie {i}",
            "response_a": f"TA{i}",
            "response_b": f"TB{i}",
            "model_a": "x",
            "model_b": "y",
            "votes": ["tie", "tie", "both_bad"],
        }
        for i in range(3)
    ]
    p3 = make_project("Tie project", plan=ties_plan)["project"]
    export = create_export(p3, None, {}, enqueue=False)
    assert build_export_task.apply(args=(export.pk,)).get() == "failed"
    export.refresh_from_db()
    assert "are ties or both-bad" in export.error and "include_ties=False" in export.error


def test_failed_task_marks_the_export_failed_and_leaves_no_files(scene, monkeypatch, settings):
    export = create_export(scene["project"], None, {"formats": ["jsonl", "parquet"]}, enqueue=False)

    def boom(*args, **kwargs):
        raise OSError("disk full while writing")

    monkeypatch.setattr("evaluation.export.services.write_pairs", boom)
    assert build_export_task.apply(args=(export.pk,)).get() == "failed"
    export.refresh_from_db()
    assert export.status == JobStatus.FAILED and export.error == "OSError: disk full while writing"
    assert export.finished_at is not None and export.content_hash == "" and export.path == ""
    root = Path(settings.PREFLOOP_EXPORTS_DIR)
    assert not root.exists() or not any(root.iterdir())
    # A redelivered message rebuilds a failed export from scratch.
    monkeypatch.undo()
    assert build_export_task.apply(args=(export.pk,)).get() == "succeeded"
    export.refresh_from_db()
    assert export.status == JobStatus.SUCCEEDED and export.error == "" and verify_folder(Path(export.path))
    assert [p.name for p in root.iterdir()] == [str(export.pk)]
    # Data deleted between creation and build: the task fails with the named reason.
    late = create_export(scene["project"], None, {"rounds": [0]}, enqueue=False)
    Judgment.objects.filter(project=scene["project"]).delete()
    assert build_export_task.apply(args=(late.pk,)).get() == "failed"
    late.refresh_from_db()
    assert late.error.startswith("no comparisons match")
    assert build_export_task.apply(args=(123456,)).get() == "missing"


def test_gold_comparisons_left_out_unless_an_admin_asks(scene):
    project = scene["project"]
    c = Comparison.objects.get(project=project, response_a__text="Answer A1 from model one.")
    GoldAnswer.objects.create(comparison=c, answer="b")  # the annotators said a; gold says b
    Comparison.objects.filter(pk=c.pk).update(is_gold=True)
    export = run_export(project, formats=["jsonl", "judgments"])
    rows = read_pairs(Path(export.path))
    assert c.pk not in {r["comparison_id"] for r in rows} and export.stats["removed"]["gold"] == 1
    assert c.pk not in {j["comparison_id"] for j in read_jsonl(Path(export.path) / "judgments.jsonl")}
    with pytest.raises(ExportError, match="only project admins"):
        create_export(project, scene["researcher"], {"include_gold": True})
    admin = User.objects.create_user("project-admin")
    Membership.objects.create(project=project, user=admin, role=Role.ADMIN)
    export = run_export(project, admin, formats=["jsonl"], include_gold=True)
    row = next(r for r in read_pairs(Path(export.path)) if r["comparison_id"] == c.pk)
    assert row["gold"] is True and row["chosen_response"] == "b" and row["p_chosen"] == 1.0
    assert not may_download(export, Role.RESEARCHER) and may_download(export, Role.ADMIN)


def test_weights_follow_the_annotator_weight_rule(scene):
    project = scene["project"]
    alice = scene["users"][0]
    base = run_export(project, formats=["jsonl", "judgments"], method="majority")
    Membership.objects.filter(project=project, user=alice).update(weight_override=0.0)
    down = run_export(project, formats=["jsonl", "judgments"], method="majority")
    w_base = {r["comparison_id"]: r for r in read_pairs(Path(base.path))}
    w_down = {r["comparison_id"]: r for r in read_pairs(Path(down.path))}
    for cid, r in w_down.items():
        # alice's vote no longer counts: the mean annotator weight on every pair drops.
        assert r["weight"] < w_base[cid]["weight"]
    weights = {j["annotator_weight"] for j in read_jsonl(Path(down.path) / "judgments.jsonl")}
    assert 0.0 in weights
    # On a 2-1 split where alice is in the majority of two, the majority vote without her is a 1-1 split.
    c2 = Comparison.objects.get(project=project, response_a__text="Answer A2 from model one.").pk
    assert w_down[c2]["p_chosen"] < w_base[c2]["p_chosen"]


def test_excluded_annotators_are_left_out_unless_asked(scene):
    """The export reads judgments through the quality dashboard's loader, with its own defaults:
    an excluded annotator's judgments stay out of the file unless include_excluded is on."""
    project = scene["project"]
    carol = scene["users"][2]
    Membership.objects.filter(project=project, user=carol).update(excluded=True)
    out = run_export(project, formats=["jsonl", "judgments"], method="majority", test_fraction=0.0)
    judged = read_jsonl(Path(out.path) / "judgments.jsonl")
    assert len({j["annotator"] for j in judged}) == 2
    per_pair = {}
    for j in judged:
        per_pair[j["comparison_id"]] = per_pair.get(j["comparison_id"], 0) + 1
    assert set(per_pair.values()) == {2}  # alice and bob only
    # Without carol's dissent, every 2-1 split (i % 3 == 2) is unanimous.
    rows = read_pairs(Path(out.path))
    assert all(r["agreement"] == 1.0 for r in rows)
    facts = dict(Comparison.objects.filter(project=project).values_list("pk", "prompt_id"))
    assert all(r["prompt_id"] == facts[r["comparison_id"]] and r["round"] == 0 for r in rows)

    kept = run_export(
        project, formats=["judgments", "jsonl"], method="majority", test_fraction=0.0, include_excluded=True
    )
    judged = read_jsonl(Path(kept.path) / "judgments.jsonl")
    assert len(judged) == 3 * len(per_pair) and len({j["annotator"] for j in judged}) == 3
    # carol's judgments are in the file, weighing 0 (an excluded annotator's weight).
    zero = {j["annotator"] for j in judged if j["annotator_weight"] == 0.0}
    assert len(zero) == 1 and sum(j["annotator"] in zero for j in judged) == len(per_pair)
    assert any(r["agreement"] < 1.0 for r in read_pairs(Path(kept.path)))


def test_management_command_streams_to_a_folder(scene, tmp_path, capsys):
    from django.core.management import CommandError, call_command

    out = tmp_path / "cli-export"
    call_command(
        "export_preferences",
        "--project",
        scene["project"].name,
        "--format",
        "jsonl,parquet,hf",
        "--judgments",
        "--out",
        str(out),
        "--method",
        "majority",
        "--min-confidence",
        "0.5",
        "--test-fraction",
        "0.2",
        "--no-progress",
    )
    printed = capsys.readouterr().out
    export = Export.objects.latest("created_at")
    assert export.status == JobStatus.SUCCEEDED and Path(export.path) == out.resolve()
    assert f"export {export.pk}: {export.n_rows} pairs" in printed and export.content_hash in printed
    assert export.params["method"] == "majority" and export.params["min_confidence"] == 0.5
    assert {p.name for p in out.iterdir()} == {
        "preferences-train.jsonl",
        "preferences-test.jsonl",
        "preferences.parquet",
        "hf",
        "judgments.jsonl",
        "README.md",
        "metadata.json",
    }
    assert verify_folder(out)
    # By id too; an existing non-empty folder and filters that leave nothing are refused.
    with pytest.raises(CommandError, match="not an empty folder"):
        call_command("export_preferences", "--project", str(scene["project"].pk), "--out", str(out))
    with pytest.raises(CommandError, match=r"no comparisons match: rounds=\[9\]"):
        call_command(
            "export_preferences",
            "--project",
            str(scene["project"].pk),
            "--out",
            str(tmp_path / "x"),
            "--rounds",
            "9",
        )
    assert not (tmp_path / "x").exists()
    with pytest.raises(CommandError, match="no project"):
        call_command("export_preferences", "--project", "nope", "--out", str(tmp_path / "y"))
