"""The comparison import (annotate.imports.import_comparisons) and its management command."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import CommandError, call_command

from annotate.imports import (
    MAX_ERRORS,
    ImportValidationError,
    LineError,
    import_comparisons,
    pair_hash,
)
from annotate.models import Comparison, GoldAnswer, Project, Prompt, Response, content_hash

pytestmark = pytest.mark.django_db


@pytest.fixture
def project():
    return Project.objects.create(name="imports")


def jsonl(*rows) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode("utf-8")


def run(project, data, filename="data.jsonl", **kwargs):
    fileobj = io.BytesIO(data) if isinstance(data, bytes) else io.StringIO(data)
    return import_comparisons(project, fileobj, filename=filename, **kwargs)


def counts():
    return (
        Prompt.objects.count(),
        Response.objects.count(),
        Comparison.objects.count(),
        GoldAnswer.objects.count(),
    )


def errors_of(project, data, filename="data.jsonl", **kwargs) -> list[str]:
    before = counts()
    with pytest.raises(ImportValidationError) as info:
        run(project, data, filename, **kwargs)
    assert counts() == before, "a rejected file must not write anything"
    return [str(e) for e in info.value.errors]


GOOD = [
    {
        "prompt": "What is 2+2?",
        "response_a": "4",
        "response_b": "5",
        "model_a": "m1",
        "model_b": "m2",
        "metadata": {"topic": "math"},
    },
    {"prompt": "What is 2+2?", "response_a": "4", "response_b": "four", "gold": "tie"},
    {"prompt": "Capital of France?", "response_a": "Paris", "response_b": "Lyon", "gold": "a", "id": "q3"},
]


# ------------------------------------------------------------------------------- good files


def test_good_jsonl(project):
    result = run(project, jsonl(*GOOD))
    assert (result.lines, result.created, result.duplicates, result.gold) == (3, 3, 0, 2)
    assert (result.prompts_created, result.responses_created) == (2, 6)

    first = Comparison.objects.get(metadata__topic="math")
    assert first.prompt.text == "What is 2+2?"
    assert (first.response_a.text, first.response_a.model_name) == ("4", "m1")
    assert (first.response_b.text, first.response_b.model_name) == ("5", "m2")
    assert first.round == project.current_round
    assert first.is_open and not first.is_gold and first.source_preference == ""
    assert first.slots_taken == first.n_judgments == 0

    gold = {c.response_b.text: c.gold.answer for c in Comparison.objects.filter(is_gold=True)}
    assert gold == {"four": "tie", "Lyon": "a"}
    # Keys beyond the known ones are kept in the metadata.
    assert Comparison.objects.get(response_b__text="Lyon").metadata == {"id": "q3"}


def test_good_csv_with_quoted_newlines_and_json_metadata(project):
    data = (
        "prompt,response_a,response_b,model_a,model_b,metadata,gold\n"
        '"Write a haiku","line one\nline two","another, with a comma",m1,m2,"{""k"": 1}",\n'
        "Say hi,Hi,Hello,,,,b\n"
    )
    result = run(project, data.encode(), filename="pairs.csv")
    assert (result.lines, result.created, result.gold) == (2, 2, 1)
    haiku = Comparison.objects.get(prompt__text="Write a haiku")
    assert haiku.response_a.text == "line one\nline two"
    assert haiku.response_b.text == "another, with a comma"
    assert haiku.metadata == {"k": 1} and not haiku.is_gold
    hi = Comparison.objects.get(prompt__text="Say hi")
    assert hi.gold.answer == "b" and hi.response_a.model_name == ""


def test_format_is_guessed_from_content_and_text_files_work(project):
    csv_text = "prompt,chosen,rejected\nP,good,bad\n"
    assert run(project, csv_text, filename="").created == 1  # a StringIO, no file name
    assert (
        run(project, jsonl({"prompt": "Q", "response_a": "x", "response_b": "y"}), filename="upload").created
        == 1
    )
    bom = "\ufeff".encode() + jsonl({"prompt": "B", "response_a": "x", "response_b": "y"})
    assert run(project, bom).created == 1


def test_round_defaults_to_current_round_and_can_be_given(project):
    project.current_round = 2
    project.save()
    run(project, jsonl(GOOD[0]))
    run(project, jsonl(GOOD[0]), round=3)
    assert sorted(Comparison.objects.values_list("round", flat=True)) == [2, 3]
    # The second round reuses the prompt and responses.
    assert Prompt.objects.count() == 1 and Response.objects.count() == 2
    assert set(Response.objects.values_list("round", flat=True)) == {2}


def test_progress_is_reported_per_batch_up_to_the_total(project):
    calls = []
    run(project, jsonl(*GOOD), progress=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1][0] == calls[-1][1] == 2 + 6 + 3 + 2  # prompts, responses, comparisons, gold
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    calls.clear()
    run(project, jsonl(*GOOD), progress=lambda done, total: calls.append((done, total)))
    assert calls == [(0, 0)]  # nothing new to write: one final report


# ------------------------------------------------------------------------------- bad files

A_B = {"prompt": "p", "response_a": "x", "response_b": "y"}


@pytest.mark.parametrize(
    "line, expected",
    [
        (
            '{"prompt": "p", "response_a": "x" "response_b": "y"}',
            "line 2: invalid JSON: Expecting ',' delimiter (column 35)",
        ),
        (
            "[1, 2]",
            "line 2: must be a JSON object, not a list; "
            "the file must have one JSON object per line (JSON Lines)",
        ),
        ('"just a string"', "line 2: must be a JSON object, not a string"),
        ({"prompt": "p", "response_a": "x"}, "line 2, field 'response_b': is missing"),
        ({"response_a": "x", "response_b": "y"}, "line 2, field 'prompt': is missing"),
        ({**A_B, "prompt": ""}, "line 2, field 'prompt': must be a non-empty string"),
        ({**A_B, "response_b": "  \n\t"}, "line 2, field 'response_b': must be a non-empty string"),
        ({**A_B, "response_a": 42}, "line 2, field 'response_a': must be a string, not a number"),
        ({**A_B, "response_a": None}, "line 2, field 'response_a': must be a string, not null"),
        (
            {**A_B, "prompt": {"text": "p"}},
            "line 2, field 'prompt': must be a string or a list of chat messages, not an object",
        ),
        ({**A_B, "model_a": 7}, "line 2, field 'model_a': must be a string, not a number"),
        ({**A_B, "gold": "c"}, "line 2, field 'gold': must be one of 'a', 'b', 'tie' (got \"c\")"),
        ({**A_B, "gold": 1}, "line 2, field 'gold': must be one of 'a', 'b', 'tie' (got 1)"),
        ({"prompt": "p", "answer": "x"}, "line 2: needs response_a and response_b (or chosen and rejected)"),
        (
            {"prompt": "p", "response_a": "x", "response_b": "y", "chosen": "x"},
            "line 2: mixes response_a/response_b with chosen/rejected; use one pair",
        ),
        ({**A_B, "metadata": "topic=math"}, "line 2, field 'metadata': must be a JSON object, not a string"),
        ({**A_B, "response_b": "x"}, "line 2, field 'response_b': is identical to response_a"),
        ({"prompt": "p", "chosen": "x", "rejected": "x"}, "line 2, field 'rejected': is identical to chosen"),
        (
            {"prompt": "p", "chosen": "x", "rejected": "y", "gold": "a"},
            "line 2, field 'gold': is only allowed on response_a/response_b lines",
        ),
        (
            {
                "prompt": [{"role": "user", "content": "hi"}, {"content": "x"}],
                "response_a": "x",
                "response_b": "y",
            },
            "line 2, field 'prompt[1].role': must be a non-empty string",
        ),
        (
            {"prompt": [], "response_a": "x", "response_b": "y"},
            "line 2, field 'prompt': must be a non-empty string or a non-empty list of chat messages",
        ),
        (
            '{"prompt": "p", "response_a": "x", "response_b": "y", "metadata": {"score": NaN}}',
            "line 2: invalid JSON: NaN is not allowed",
        ),
        (
            {**A_B, "response_a": "x\u0000y"},
            "line 2, field 'response_a': must not contain the NUL character (\\u0000)",
        ),
        (
            {**A_B, "metadata": {"k": ["\u0000"]}},
            "line 2, field 'metadata': must not contain the NUL character (\\u0000)",
        ),
        (
            '{"prompt": "\\ud800", "response_a": "x", "response_b": "y"}',
            "line 2, field 'prompt': must not contain unpaired UTF-16 surrogates (e.g. \\ud800)",
        ),
    ],
)
def test_bad_line_is_rejected_with_its_line_and_field(project, line, expected):
    assert errors_of(project, jsonl(A_B, line, A_B)) == [expected]


def test_all_errors_are_collected_in_line_order(project):
    data = jsonl(A_B, {"prompt": "p", "response_a": ""}, "{oops", {**A_B, "gold": "x"})
    assert errors_of(project, data) == [
        "line 2, field 'response_a': must be a non-empty string",
        "line 2, field 'response_b': is missing",
        "line 3: invalid JSON: Expecting property name enclosed in double quotes (column 2)",
        "line 4, field 'gold': must be one of 'a', 'b', 'tie' (got \"x\")",
    ]


def test_errors_are_capped_and_the_message_lists_the_first_twenty(project):
    data = jsonl(*[{"prompt": "p", "response_a": "x"}] * 150)
    with pytest.raises(ImportValidationError) as info:
        run(project, data)
    exc = info.value
    assert len(exc.errors) == MAX_ERRORS and exc.truncated
    assert exc.errors[0] == LineError(1, "response_b", "is missing")
    message = str(exc).splitlines()
    assert message[0] == "100+ errors in the file; nothing was imported."
    assert message[1] == "line 1, field 'response_b': is missing"
    assert message[21] == "... and 80 more"
    assert message[22] == "(validation stopped after 100 errors)"


def test_oversize_line(project, settings):
    settings.PREFLOOP_MAX_IMPORT_LINE_BYTES = 200
    big = {"prompt": "p", "response_a": "é" * 100, "response_b": "y"}  # é is two bytes in UTF-8
    size = len(json.dumps(big, ensure_ascii=False).encode())
    data = (json.dumps(A_B) + "\n" + json.dumps(big, ensure_ascii=False) + "\n").encode()
    assert errors_of(project, data) == [f"line 2: is {size} bytes, over the limit of 200 bytes"]


@pytest.mark.parametrize("data", [b"", b"\n\n  \n", "".encode()])
def test_empty_file(project, data):
    assert errors_of(project, data) == ["the file is empty"]


def test_header_only_csv_has_no_comparisons(project):
    assert errors_of(project, b"prompt,response_a,response_b\n", filename="x.csv") == [
        "the file has no comparisons"
    ]


def test_not_utf8(project):
    data = jsonl(A_B) + '{"prompt": "caf'.encode() + b"\xe9" + b'", "response_a": "x", "response_b": "y"}\n'
    assert errors_of(project, data) == ["line 2: is not valid UTF-8 (byte 0xe9); save the file as UTF-8"]


def test_gold_tie_in_a_project_without_ties(project):
    project.allow_ties = False
    project.save()
    assert errors_of(project, jsonl({**A_B, "gold": "tie"})) == [
        "line 1, field 'gold': is 'tie' but this project does not allow ties"
    ]


def test_empty_responses_are_refused_unless_allowed(project):
    data = jsonl({"prompt": "p", "chosen": " ", "rejected": "Sure, here is how."})
    with pytest.raises(ImportValidationError) as info:
        run(project, data)
    assert [str(e) for e in info.value.errors] == ["line 1, field 'chosen': must be a non-empty string"]
    assert "allow_empty_responses=True" in str(info.value)
    assert run(project, data, allow_empty_responses=True).created == 1
    assert Response.objects.filter(text=" ").exists()
    # Prompts must never be empty.
    assert errors_of(
        project, jsonl({"prompt": " ", "chosen": "a", "rejected": "b"}), allow_empty_responses=True
    ) == ["line 1, field 'prompt': must be a non-empty string"]


@pytest.mark.parametrize(
    "data, expected",
    [
        (
            b"prompt,response_a,response_b,metadata\np,x,y,{bad\n",
            [
                "line 2, field 'metadata': must be a JSON object: invalid JSON: "
                "Expecting property name enclosed in double quotes (column 2)"
            ],
        ),
        (
            b"prompt,response_a,response_b,metadata\np,x,y,[1]\n",
            ["line 2, field 'metadata': must be a JSON object, not a list"],
        ),
        (b"prompt,response_a,response_b\np,x,y,z\n", ["line 2: has 4 fields but the header has 3"]),
        (b"prompt,response_a\np,x\n", ["line 1, field 'response_b': the header has no column 'response_b' (it has 'response_a')"]),
        (
            b'prompt,response_a,response_b\np,x,y\n"multi\nline",,y\n',
            ["line 3, field 'response_a': must be a non-empty string"],
        ),
        (
            b'prompt,response_a,response_b\n"p\nq",x,y\nr,x,y,\n',
            ["line 4: has 4 fields but the header has 3"],
        ),
        (b"prompt,prompt,response_b\np,x,y\n", ["line 1: the header names the column 'prompt' twice"]),
    ],
)
def test_bad_csv(project, data, expected):
    assert [e for e in errors_of(project, data, filename="x.csv") if "allow_empty" not in e] == expected


@pytest.mark.parametrize(
    "header, expected",
    [
        ("prompt,response_a", ["line 1, field 'response_b': the header has no column 'response_b' (it has 'response_a')"]),
        ("prompt,rejected", ["line 1, field 'chosen': the header has no column 'chosen' (it has 'rejected')"]),
        ("response_a,response_b", ["line 1, field 'prompt': the header has no column 'prompt'"]),
        ("prompt,answer", ["line 1: the header has no response columns: name response_a and response_b, or chosen and rejected"]),
    ],
)
def test_a_csv_missing_a_whole_column_is_one_header_error(project, header, expected):
    """Not one error per row: 500 rows lacking a column give one error, naming the column."""
    n = header.count(",") + 1
    data = header + "\n" + "".join(",".join(f"v{i}{k}" for k in range(n)) + "\n" for i in range(500))
    assert errors_of(project, data.encode(), filename="x.csv") == expected


def test_a_votes_csv_missing_a_whole_column_is_one_header_error(project):
    from annotate.imports import import_judgments

    data = "prompt,response_a,response_b,annotator_id\n" + "".join(f"p{i},x,y,ann\n" for i in range(300))
    with pytest.raises(ImportValidationError) as info:
        import_judgments(project, io.BytesIO(data.encode()), filename="votes.csv")
    assert [str(e) for e in info.value.errors] == ["line 1, field 'label': the header has no column 'label' (or 'choice')"]


# ------------------------------------------------------------------------------- transactions


def test_a_bad_last_line_leaves_the_database_unchanged(project):
    run(project, jsonl(GOOD[0]))
    before = counts()
    lines = [
        {"prompt": f"p{i}", "response_a": f"a{i}", "response_b": f"b{i}", "gold": "a"} for i in range(500)
    ]
    with pytest.raises(ImportValidationError) as info:
        run(project, jsonl(*lines, {"prompt": "last", "response_a": "x"}))
    assert [str(e) for e in info.value.errors] == ["line 501, field 'response_b': is missing"]
    assert counts() == before


@pytest.mark.django_db(transaction=True)
def test_a_failure_while_writing_rolls_everything_back(monkeypatch):
    from annotate.imports import bulk

    project = Project.objects.create(name="rollback")
    real_insert = bulk.insert_rows

    def failing_insert(model, *args, **kwargs):
        if model is GoldAnswer:  # the last table written
            raise RuntimeError("disk full")
        return real_insert(model, *args, **kwargs)

    monkeypatch.setattr(bulk, "insert_rows", failing_insert)
    with pytest.raises(RuntimeError, match="disk full"):
        run(project, jsonl(*GOOD))
    assert counts() == (0, 0, 0, 0)  # prompts, responses and comparisons were written, then rolled back
    monkeypatch.setattr(bulk, "insert_rows", real_insert)
    assert run(project, jsonl(*GOOD)).created == 3


# ------------------------------------------------------------------------------- de-duplication


def test_same_file_twice_creates_nothing_the_second_time(project):
    first = run(project, jsonl(*GOOD))
    before = counts()
    second = run(project, jsonl(*GOOD))
    assert (second.lines, second.created, second.duplicates, second.gold) == (3, 0, 3, 0)
    assert (second.prompts_created, second.responses_created) == (0, 0)
    assert counts() == before and first.created == 3


def test_duplicates_within_a_file_in_either_order(project):
    a_b = {"prompt": "p", "response_a": "x", "response_b": "y"}
    b_a = {"prompt": "p", "response_a": "y", "response_b": "x"}
    result = run(project, jsonl(a_b, a_b, b_a))
    assert (result.lines, result.created, result.duplicates) == (3, 1, 2)
    c = Comparison.objects.get()
    assert (c.response_a.text, c.response_b.text) == ("x", "y")  # the first occurrence wins


def test_response_text_reused_across_comparisons(project):
    result = run(
        project,
        jsonl(
            {"prompt": "p", "response_a": "shared", "response_b": "one"},
            {"prompt": "p", "response_a": "two", "response_b": "shared"},
            {"prompt": "q", "response_a": "shared", "response_b": "one"},
        ),
    )
    assert (result.created, result.prompts_created, result.responses_created) == (3, 2, 5)
    p = Prompt.objects.get(text="p")
    assert p.responses.filter(text="shared").count() == 1
    assert p.content_hash == content_hash("p")


def test_same_text_from_different_models_is_a_different_response(project):
    result = run(
        project,
        jsonl(
            {"prompt": "p", "response_a": "x", "response_b": "y", "model_a": "m1"},
            {"prompt": "p", "response_a": "x", "response_b": "y", "model_a": "m2"},
        ),
    )
    assert (result.created, result.responses_created) == (2, 3)


def test_pair_hash_is_order_independent():
    h = pair_hash("p", "ha", "m1", "hb", "m2")
    assert h == pair_hash("p", "hb", "m2", "ha", "m1")
    assert h != pair_hash("p", "ha", "m2", "hb", "m1")
    assert h != pair_hash("q", "ha", "m1", "hb", "m2")


def test_a_file_in_the_other_project_is_imported_again(project):
    run(project, jsonl(*GOOD))
    other = Project.objects.create(name="other")
    assert run(other, jsonl(*GOOD)).created == 3
    assert Prompt.objects.count() == 4


# ------------------------------------------------------------------------------- TRL / chat


def test_trl_lines_keep_the_source_preference_and_randomize_the_order(project):
    lines = [{"prompt": f"prompt {i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(64)]
    result = run(project, jsonl(*lines))
    assert result.created == 64 and result.gold == 0
    sides = set()
    for c in Comparison.objects.select_related("response_a", "response_b"):
        chosen = c.response_a if c.source_preference == "a" else c.response_b
        rejected = c.response_b if c.source_preference == "a" else c.response_a
        assert chosen.text.startswith("good") and rejected.text.startswith("bad")
        assert not c.is_gold
        sides.add(c.source_preference)
    assert sides == {"a", "b"}
    # Seeded by content: the same line gets the same order in another project.
    other = Project.objects.create(name="other")
    run(other, jsonl(*lines))

    def order(p):
        return dict(Comparison.objects.filter(project=p).values_list("prompt__text", "source_preference"))

    assert order(project) == order(other)


def test_conversational_prompts(project):
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    result = run(
        project,
        jsonl(
            {"prompt": chat, "response_a": "Hello.", "response_b": "Hi there, how can I help you today?"},
            {
                "prompt": chat,
                "chosen": [{"role": "assistant", "content": "Hey."}],
                "rejected": [{"role": "assistant", "content": "Go away."}],
            },
            {"prompt": "system: Be brief.\n\nuser: Hi?", "response_a": "Hello.", "response_b": "Yo."},
        ),
    )
    assert (result.created, result.prompts_created) == (3, 2)  # the plain-text twin is its own prompt
    prompt = Prompt.objects.get(messages__isnull=False)
    assert prompt.messages == chat
    assert prompt.text == "system: Be brief.\n\nuser: Hi?"
    trl = Comparison.objects.get(prompt=prompt, source_preference__in=["a", "b"])
    assert {trl.response_a.text, trl.response_b.text} == {"Hey.", "Go away."}


def test_real_hh_file(project, shared_data):
    path = shared_data / "hh_harmless_dev.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    distinct = {(r["prompt"], frozenset((r["chosen"], r["rejected"]))) for r in rows}

    # Four lines have an empty ("  ") chosen response: refused by default, named by line.
    with path.open("rb") as fh, pytest.raises(ImportValidationError) as info:
        import_comparisons(project, fh, filename=path.name)
    assert [str(e) for e in info.value.errors] == [
        f"line {n}, field 'chosen': must be a non-empty string" for n in (87, 517, 926, 1104)
    ]
    assert Comparison.objects.count() == 0

    with path.open("rb") as fh:
        result = import_comparisons(project, fh, filename=path.name, allow_empty_responses=True)
    assert len(rows) == 1150
    assert result.lines == 1150 and result.created == len(distinct) == 1150 and result.duplicates == 0
    assert Comparison.objects.filter(project=project).count() == 1150
    prefs = list(Comparison.objects.values_list("source_preference", flat=True))
    assert 450 < prefs.count("a") < 700 and prefs.count("a") + prefs.count("b") == 1150
    with path.open("rb") as fh:
        again = import_comparisons(project, fh, filename=path.name, allow_empty_responses=True)
    assert (again.created, again.duplicates) == (0, 1150)


# ------------------------------------------------------------------------------- scale


def synthetic(n: int, seed: int = 0) -> bytes:
    out = io.StringIO()
    for i in range(n):
        row = {
            "prompt": f"Prompt {i % (n // 2 or 1)} seed {seed}: explain something in detail.",
            "response_a": f"Answer A{i} " + "lorem ipsum " * 20,
            "response_b": f"Answer B{i} " + "dolor sit " * 20,
            "model_a": "m1",
            "model_b": "m2",
        }
        if i % 10 == 0:
            row["gold"] = "a"
        out.write(json.dumps(row) + "\n")
    return out.getvalue().encode()


def test_five_thousand_lines_in_few_queries(project, django_assert_max_num_queries):
    data = synthetic(5000)
    # Batched: about one INSERT per 76-166 rows on SQLite (its 999-variable limit), per 2000 on
    # PostgreSQL; a per-line import would need over 17,000 queries.
    with django_assert_max_num_queries(250):
        result = run(project, data)
    assert (result.created, result.gold, result.prompts_created, result.responses_created) == (
        5000,
        500,
        2500,
        10000,
    )
    assert Comparison.objects.count() == 5000 and GoldAnswer.objects.count() == 500
    with django_assert_max_num_queries(40):
        assert run(project, data).duplicates == 5000


# ------------------------------------------------------------------------------- the command


def test_command_imports_and_prints_a_summary(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(jsonl(*GOOD))
    out, err = io.StringIO(), io.StringIO()
    call_command(
        "import_comparisons", str(path), "--project", "cmd", "--create-project", stdout=out, stderr=err
    )
    project = Project.objects.get(name="cmd")
    assert project.comparisons.count() == 3
    assert out.getvalue().strip() == (
        "Imported pairs.jsonl into project 'cmd' (round 0): 3 lines, 3 comparisons created (2 gold), "
        "0 duplicates skipped, 2 prompts and 6 responses created."
    )
    assert "13/13" in err.getvalue()  # the tqdm bar reached its total
    call_command(
        "import_comparisons", str(path), "--project", str(project.pk), "--round", "1", stdout=out, stderr=err
    )
    # the regular pair is copied into round 1; the two gold pairs stay one comparison each, still gold
    # (a second, gold copy of a pair would tell an annotator who met both which one is gold)
    assert project.comparisons.filter(round=1).count() == 1
    assert project.comparisons.filter(is_gold=True).count() == 2 and project.comparisons.count() == 4
    assert "2 existing comparisons made gold" in out.getvalue()


def test_command_reports_errors_and_exits_non_zero(tmp_path, project):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(jsonl(A_B, {"prompt": "p", "response_a": "x", "response_b": ""}, {"prompt": "q"}))
    err = io.StringIO()
    with pytest.raises(CommandError) as info:
        call_command(
            "import_comparisons", str(path), "--project", project.name, stdout=io.StringIO(), stderr=err
        )
    assert str(info.value) == "bad.jsonl was not imported: 2 errors; nothing was written."
    assert err.getvalue().splitlines() == [
        "line 2, field 'response_b': must be a non-empty string",
        "line 3: needs response_a and response_b (or chosen and rejected)",
        "Empty responses are refused unless allowed: import with allow_empty_responses=True "
        "(--allow-empty-responses) if the file means them.",
    ]
    assert Comparison.objects.count() == 0


def test_command_unknown_project(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(jsonl(A_B))
    with pytest.raises(CommandError, match="No project with id or name 'nope'"):
        call_command(
            "import_comparisons", str(path), "--project", "nope", stdout=io.StringIO(), stderr=io.StringIO()
        )


def test_command_allow_empty_responses(tmp_path, project):
    path = tmp_path / "x.jsonl"
    path.write_bytes(jsonl({"prompt": "p", "chosen": " ", "rejected": "y"}))
    err = io.StringIO()
    with pytest.raises(CommandError):
        call_command(
            "import_comparisons", str(path), "--project", project.name, stdout=io.StringIO(), stderr=err
        )
    assert "--allow-empty-responses" in err.getvalue()
    call_command(
        "import_comparisons",
        str(path),
        "--project",
        project.name,
        "--allow-empty-responses",
        stdout=io.StringIO(),
        stderr=io.StringIO(),
    )
    assert Comparison.objects.count() == 1


def test_databases_without_insert_returning_reread_the_ids(project, monkeypatch):
    from django.db import connection

    monkeypatch.setattr(type(connection.features), "can_return_rows_from_bulk_insert", False)
    result = run(project, jsonl(*GOOD, {"prompt": "p", "chosen": "x", "rejected": "y"}))
    assert (result.created, result.gold, result.prompts_created, result.responses_created) == (4, 2, 3, 8)
    for c in Comparison.objects.select_related("prompt", "response_a", "response_b"):
        assert c.response_a.prompt_id == c.response_b.prompt_id == c.prompt_id
    assert {g.comparison.response_b.text for g in GoldAnswer.objects.all()} == {"four", "Lyon"}
