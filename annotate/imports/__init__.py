"""Import comparisons and externally collected judgments from JSONL or CSV files.

The one service behind the import page, the REST API and the ``import_comparisons`` /
``import_judgments`` management commands::

    import_comparisons(project, fileobj, *, filename="", fmt=None, round=None,
                       allow_empty_responses=False, votes_source="", progress=None) -> ImportResult
    import_judgments(project, fileobj, *, filename="", fmt=None, source="", round=None,
                     on_duplicate="error", allow_empty_responses=True, progress=None) -> JudgmentImportResult

Guarantees (what a user notices):

* **A CSV header is checked first**: a column the whole file lacks is one error naming it.
* **Validated whole, written whole.** Every line is checked before anything is written; a file
  with errors raises :class:`ImportValidationError` carrying up to :data:`MAX_ERRORS`
  :class:`LineError` s (line, field, message — ``str()`` gives
  ``line 12, field 'response_b': must be a non-empty string``) and the database is left
  unchanged. The writes run in one ``transaction.atomic()``.
* **De-duplicated by content.** Prompts by (project, sha256 of the text — of the canonical JSON
  for a chat prompt), responses by (prompt, sha256 of the text, model name), comparisons by
  (project, round, :func:`pair_hash`) — order-independent, so ``a, b`` and ``b, a`` are one
  comparison. Duplicates within the file and against the database are counted and skipped:
  importing the same file twice creates nothing the second time. The first occurrence wins.
* **Fast.** Lines are parsed and hashed in Python, existing rows are looked up with chunked
  ``__in`` queries, new rows are written with one multi-row INSERT per batch of
  :data:`bulk.BATCH_SIZE` (see :func:`bulk.insert_rows`); ``progress(done, total)`` is called after each
  batch, counting rows written (prompts, responses, comparisons, gold answers, judgments).

Line numbers are 1-based physical lines of the file. In a CSV file the header is line 1 and a
record is numbered by the line it starts on (a quoted field may span several lines).

Comparison lines (JSONL, one object per line; CSV with a header naming the same columns)::

    {"prompt": ..., "response_a": ..., "response_b": ...,
     "model_a": "...", "model_b": "...", "metadata": {...}, "gold": "a"|"b"|"tie"}
    {"prompt": ..., "chosen": ..., "rejected": ...}            # TRL / HH-RLHF style

* ``prompt`` is a string or a list of chat messages ``[{"role", "content"}, ...]`` (TRL's
  conversational format): the list is stored in ``Prompt.messages`` and ``Prompt.text`` is
  the flattened ``"role: content"`` turns separated by blank lines. A ``chosen``/``rejected``
  value may be a list of messages too; its text is the message contents joined the same way.
  In CSV a prompt is always plain text and ``metadata`` is a JSON string; an empty cell of an
  optional column is an absent value.
* ``chosen``/``rejected`` lines become a comparison whose a/b order is drawn from an RNG seeded
  by the line's content (re-importing gives the same order); which side got the chosen
  response is kept in ``Comparison.source_preference`` ("a" or "b") and never shown. They
  take no ``gold``, ``model_a`` or ``model_b``. With ``votes_source="NAME"`` the preference is
  also imported as the vote of the source NAME (``sources``: the pseudo-annotator
  ``source:NAME`` in its own pool), so the file can be weighed, exported and trained on.
* An empty or whitespace-only response is refused unless ``allow_empty_responses`` (the
  HH-RLHF file has four empty "chosen" answers: saying nothing was the harmless choice). A
  prompt may never be empty.
* Keys other than the ones above are kept in the comparison's ``metadata`` (an explicit
  ``metadata`` object wins on a clash).

Judgment lines (:func:`import_judgments`), e.g. ``../shared/data/pandalm_votes.jsonl``::

    {"source", "item_id", "prompt", "response_a", "response_b", "model_a", "model_b",
     "annotator_id", "label": "a"|"b"|"tie"|"both_bad", "strength": null|"slight"|"clear"|"much",
     "extra": {...}, optional "pool", "seconds", "rationale", "display": "a_left"|"b_left",
     "choice" (an alias of "label", e.g. "both_bad"), "metadata"}

They are validated like comparison lines with three deliberate differences, because they
record what humans already judged: empty responses are accepted by default (PandaLM has 54
items where a model answered nothing), a response that is a JSON boolean or number is taken
as its JSON text (PandaLM has ``true``), and the two responses may have the same text when they
come from different models (Tulu 1 has 40 such votes). Each is reported in
``JudgmentImportResult.warnings``. ``label`` is the choice in terms of the line's own response_a/response_b,
whatever side they were shown on; a vote listing them in the other order than the stored
comparison (an earlier line, or a comparison imported before) is re-oriented: its a/b label and
display order are mapped to the stored order and ``JudgmentImportResult.reoriented`` counts it. The display order is unknown unless ``display`` says
it: ``Judgment.a_on_left`` is then stored as NULL (``"a_left"`` gives True, ``"b_left"``
False), and ``display_unknown`` counts those rows. The statistics leave unknown-order judgments
out of the position-bias estimate and give them no position term in debiased Dawid–Skene.
``item_id`` and ``source`` go into a new comparison's metadata; ``extra`` is validated but not
stored (Judgment has no field for it).

The package, in the order a file goes through it: ``reading`` (file → records), ``validation``
(record → pair or vote, the content hashes), ``comparisons`` (writing pairs;
``import_comparisons``), ``judgments`` (``import_judgments``, ``write_votes``), ``sources`` (a
file's preferences as a source's votes), on top of ``bulk`` (fast
multi-row INSERTs, progress) and ``results`` (errors and results). The names below are its API.
"""
from .comparisons import import_comparisons
from .judgments import ON_DUPLICATE, import_judgments
from .results import MAX_ERRORS, ImportResult, ImportValidationError, JudgmentImportResult, LineError
from .validation import flatten_messages, pair_hash, prompt_hash

__all__ = [
    "LineError",
    "ImportValidationError",
    "ImportResult",
    "JudgmentImportResult",
    "import_comparisons",
    "import_judgments",
    "pair_hash",
    "prompt_hash",
    "flatten_messages",
    "MAX_ERRORS",
    "ON_DUPLICATE",
]
