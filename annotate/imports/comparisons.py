"""Importing comparisons: validated pairs written as prompts, responses, comparisons and gold
answers that do not exist yet (``write_pairs``, shared with the judgment import), in one
transaction retried once when a concurrent import wrote the same rows first."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from django.db import IntegrityError, transaction

from .. import gold
from ..models import Comparison, GoldAnswer, Project, Prompt, Response
from ..signals import comparisons_imported
from . import bulk
from .reading import comparison_columns, read_records
from .results import Errors, ImportResult, Progress
from .validation import Pair, comparison_line

@dataclass
class PairWrite:
    ids: dict[str, int]  # pair_hash -> comparison id
    created: set[str]
    prompts_created: int
    responses_created: int
    gold_created: int
    gold_marked: int = 0  # existing comparisons flagged gold (or re-answered) by gold lines
    #: keys of regular lines that joined a gold comparison with their texts (stored, or a gold
    #: line of the same file) under other model names, instead of becoming a regular copy of it
    gold_twins: set[str] = field(default_factory=set)


def _existing(project: Project, round_: int, pairs: list[Pair]) -> tuple[dict[str, int], dict[str, int]]:
    """The prompts (hash -> id) and comparisons (pair_hash -> id) of ``pairs`` already stored."""
    prompt_ids: dict[str, int] = {}
    for chunk in bulk.chunks(list(dict.fromkeys(p.prompt_key for p in pairs))):
        prompt_ids.update(
            Prompt.objects.filter(project=project, content_hash__in=chunk).values_list("content_hash", "pk")
        )
    comparison_ids: dict[str, int] = {}
    for chunk in bulk.chunks([p.key for p in pairs]):
        comparison_ids.update(
            Comparison.objects.filter(project=project, round=round_, pair_hash__in=chunk).values_list(
                "pair_hash", "pk"
            )
        )
    return prompt_ids, comparison_ids


def _responses_of(prompt_ids: Iterable[int]) -> Iterator[tuple[tuple[int, str, str], int]]:
    for chunk in bulk.chunks(sorted(set(prompt_ids))):
        for pid, h, m, pk in Response.objects.filter(prompt_id__in=chunk).values_list(
            "prompt_id", "content_hash", "model_name", "pk"
        ):
            yield (pid, h, m), pk


def write_pairs(project: Project, round_: int, pairs: list[Pair], tick_factory) -> PairWrite:
    """Create the prompts, responses, comparisons and gold answers of ``pairs`` (unique by key)
    that do not exist yet. Runs inside the caller's transaction."""
    prompt_ids, comparison_ids = _existing(project, round_, pairs)
    # a gold line whose pair is stored (any round, model names or order) flags it: never a copy
    gold_matches = gold.existing_pairs(project, [p for p in pairs if p.gold], prompt_ids)
    for key, matches in gold_matches.items():
        comparison_ids.setdefault(key, matches[0][0])
    # a regular line with a gold pair's texts (stored, or a gold line of this file) under other
    # model names joins that comparison: never a regular copy of a gold pair
    twins = gold.gold_twins(project, [p for p in pairs if p.key not in comparison_ids], prompt_ids)
    for key, matches in twins.items():
        comparison_ids.setdefault(key, matches[0][0])
    gold_in_file = {gold.text_key(p): p.key for p in pairs if p.gold}
    file_twins = {
        p.key: gold_in_file[gold.text_key(p)]
        for p in pairs
        if not p.gold and p.key not in comparison_ids and gold.text_key(p) in gold_in_file
    }
    new_pairs = [p for p in pairs if p.key not in comparison_ids and p.key not in file_twins]

    new_prompts: dict[str, tuple] = {}
    for p in new_pairs:
        if p.prompt_key not in prompt_ids and p.prompt_key not in new_prompts:
            new_prompts[p.prompt_key] = (project.pk, p.prompt_text, p.prompt_messages, p.prompt_key)
    # Responses of the prompts that already existed (new prompts have none yet).
    response_ids = dict(
        _responses_of(prompt_ids[p.prompt_key] for p in new_pairs if p.prompt_key in prompt_ids)
    )
    # Keyed by prompt *hash* until the new prompts have ids.
    new_responses: dict[tuple[str, str, str], str] = {}
    for p in new_pairs:
        pid = prompt_ids.get(p.prompt_key)
        for h, m, text in ((p.hash_a, p.model_a, p.text_a), (p.hash_b, p.model_b, p.text_b)):
            rk = (p.prompt_key, h, m)
            if rk not in new_responses and (pid is None or (pid, h, m) not in response_ids):
                new_responses[rk] = text
    golds = [p for p in new_pairs if p.gold]
    tick = tick_factory(len(new_prompts) + len(new_responses) + len(new_pairs) + len(golds))

    rows = bulk.insert_rows(
        Prompt,
        ["project", "text", "messages", "content_hash"],
        list(new_prompts.values()),
        tick,
        returning=("content_hash", "id"),
    )
    if rows is None:
        rows = _existing(project, round_, [p for p in new_pairs if p.prompt_key in new_prompts])[0].items()
    prompt_ids.update(rows)

    response_rows = [(prompt_ids[ph], text, m, h, round_) for (ph, h, m), text in new_responses.items()]
    rows = bulk.insert_rows(
        Response,
        ["prompt", "text", "model_name", "content_hash", "round"],
        response_rows,
        tick,
        returning=("prompt", "content_hash", "model_name", "id"),
    )
    if rows is None:
        response_ids.update(_responses_of(r[0] for r in response_rows))
    else:
        response_ids.update(((pid, h, m), pk) for pid, h, m, pk in rows)

    comparison_rows = []
    for p in new_pairs:
        pid = prompt_ids[p.prompt_key]
        comparison_rows.append(
            (
                project.pk,
                pid,
                response_ids[(pid, p.hash_a, p.model_a)],
                response_ids[(pid, p.hash_b, p.model_b)],
                round_,
                p.key,
                p.metadata,
                p.source_preference,
                bool(p.gold),
            )
        )
    rows = bulk.insert_rows(
        Comparison,
        [
            "project",
            "prompt",
            "response_a",
            "response_b",
            "round",
            "pair_hash",
            "metadata",
            "source_preference",
            "is_gold",
        ],
        comparison_rows,
        tick,
        returning=("pair_hash", "id"),
    )
    if rows is None:
        rows = _existing(project, round_, new_pairs)[1].items()
    comparison_ids.update(rows)
    for key, gold_key in file_twins.items():
        comparison_ids[key] = comparison_ids[gold_key]

    gold_rows = [(comparison_ids[p.key], p.gold) for p in golds]
    bulk.insert_rows(GoldAnswer, ["comparison", "answer"], gold_rows, tick)
    gold_marked = gold.mark_imported(project, pairs, gold_matches)
    return PairWrite(
        ids=comparison_ids,
        created={p.key for p in new_pairs},
        prompts_created=len(new_prompts),
        responses_created=len(response_rows),
        gold_created=len(golds),
        gold_marked=gold_marked,
        gold_twins=set(twins) | set(file_twins),
    )


def atomic_with_retry(write: Callable[[], Any]):
    """Run ``write`` in one transaction; retry once if a concurrent import inserted the same
    rows first (a unique constraint fired), re-reading what exists."""
    for attempt in (1, 2):
        try:
            with transaction.atomic():
                return write()
        except IntegrityError:
            if attempt == 2:
                raise


def import_comparisons(
    project: Project,
    fileobj,
    *,
    filename: str = "",
    fmt: str | None = None,
    round: int | None = None,  # noqa: A002 - the public name users know
    allow_empty_responses: bool = False,
    votes_source: str = "",
    progress: Progress | None = None,
) -> ImportResult:
    """Validate a JSONL or CSV file of comparisons and import it into ``project``.

    ``fileobj`` is any binary or text file-like object (an UploadedFile, ``open(path, "rb")``,
    io.BytesIO / io.StringIO). ``fmt`` is "jsonl" or "csv"; by default it is guessed from
    ``filename``'s extension, else from the content. ``round`` defaults to
    ``project.current_round``. Empty responses are refused unless ``allow_empty_responses``.
    ``progress(done, total)`` counts rows written and ends with ``done == total`` (``(0, 0)``
    when there was nothing new). Raises :class:`ImportValidationError` (nothing written) when
    any line is bad.

    ``votes_source`` (a name): also import each chosen/rejected line's preference as the vote of
    that source's pseudo-annotator (:mod:`annotate.imports.sources`); every line must then be a
    chosen/rejected line. ``votes_created`` / ``votes_reoriented`` in the result count them.
    """
    from .judgments import send_imported, write_votes
    from .sources import clean_source, source_votes

    round_ = project.current_round if round is None else int(round)
    if votes_source:
        votes_source = clean_source(project, votes_source)
    errors = Errors()
    _fmt, records = read_records(
        fileobj, filename or getattr(fileobj, "name", "") or "", fmt, errors, csv_header=comparison_columns
    )
    pairs: dict[str, Pair] = {}
    valid: list[tuple[Pair, int]] = []
    lines = 0
    for line, record in records:
        lines += 1
        pair = comparison_line(
            record, line, errors, allow_ties=project.allow_ties, allow_empty=allow_empty_responses
        )
        if pair is not None:
            valid.append((pair, line))
            first = pairs.setdefault(pair.key, pair)
            if pair.gold and not first.gold:  # a later gold line of the same pair still makes it gold
                first.gold = pair.gold if first.hash_a == pair.hash_a else gold.FLIP.get(pair.gold, pair.gold)
    if lines == 0 and not errors.items:
        errors.add(0, "", "the file has no comparisons")
    votes = source_votes(votes_source, pairs, valid, errors) if votes_source else []
    errors.raise_if_any()

    unique = list(pairs.values())
    tickers: list[bulk.Ticker] = []

    def tick_factory(total: int) -> bulk.Ticker:
        tickers.append(bulk.Ticker(total, progress))
        return tickers[-1]

    if votes:
        written = atomic_with_retry(lambda: write_votes(project, round_, unique, votes, progress))
        send_imported(project, written.judgments_created)
        result = written.pairs
    else:
        result = atomic_with_retry(lambda: write_pairs(project, round_, unique, tick_factory))
        bulk.finish(tickers, progress)
    created = len(result.created)
    if created:
        transaction.on_commit(lambda: comparisons_imported.send(sender=Comparison, project=project, count=created))
    return ImportResult(
        lines=lines,
        created=created,
        duplicates=lines - created,
        gold=result.gold_created,
        gold_marked=result.gold_marked,
        gold_twin_lines=sorted(line for pair, line in valid if pair.key in result.gold_twins),
        prompts_created=result.prompts_created,
        responses_created=result.responses_created,
        votes_source=votes_source,
        votes_created=written.judgments_created if votes else 0,
        votes_reoriented=written.reoriented if votes else 0,
    )
