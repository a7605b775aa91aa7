"""Calibrated preference exports: options, selection, streaming writers, dataset card, hash.

One service (:mod:`.services`) behind the export UI (:mod:`.views`), the REST API
(:mod:`.api`), the Celery task (:mod:`.tasks`) and ``manage.py export_preferences``:
options and their validation in :mod:`.options`, selection and weighting in
:mod:`.selection`, one writer per format in :mod:`.writers`, the folder's files, fields and
content hash in :mod:`.folder`, the dataset card in :mod:`.card`, downloads in
:mod:`.downloads`.

How an export is built (:func:`build_export`)
    1. **Select.** The judgments of the project that pass the filters (rounds, pools, excluded
       annotators) are loaded as numpy arrays (:func:`evaluation.selectors.load_judgments`,
       the streaming loader the quality statistics use too) and aggregated per comparison
       with the chosen method (:mod:`evaluation.stats.aggregation`).
       Undecided comparisons (every voter has weight 0: no label) are never exported;
       comparisons below ``min_confidence`` and (unless asked for) ties / both-bad are dropped.
       An included tie / both-bad row has ``p_chosen`` = 0.5 and the ``tie`` column true.
       A filter that leaves nothing raises :class:`ExportError` naming that filter, before any
       file is written.
    2. **Split by prompt.** Every prompt gets a seeded 64-bit hash; the ``test_fraction`` of the
       selected pairs' prompts with the smallest hashes form the test split (at least one prompt
       when there are two or more). A prompt's comparisons are therefore all on one side.
    3. **Stream.** The texts are never held in memory: selected comparison ids are read back in
       chunks of :data:`CHUNK` rows (a ``pk`` range scan, :func:`rows_by_id`) and each chunk is written to
       every requested format at once (JSONL line by line, one file per split, Parquet with
       ``ParquetWriter``, CSV, and two Arrow IPC streams that become the ``datasets`` folder,
       whose ``state.json`` fingerprints are then derived from the data so a retried build
       has the same bytes). Memory is the judgment
       arrays (a few numbers per judgment) plus one chunk of texts.
    4. **Card, hash, metadata.** ``README.md`` (the dataset card) is generated from the data;
       the content hash is SHA-256 over every file except ``metadata.json``, in sorted path
       order (:func:`folder_hash`); ``metadata.json`` records it next to the options and counts.
       The folder is built under a temporary name and renamed into place, the files are made
       read-only, and a built export is never rebuilt: it is immutable.

The weight rule (:data:`WEIGHT_RULE`)
    Annotator weights ``w_j`` are the effective weights of docs/quality.md
    (``evaluation.quality.services.effective_weight``): 0 for an excluded annotator, else an admin's
    override, else the computed weight of :func:`evaluation.stats.bias.annotator_weights` (gold or
    Dawid–Skene accuracy scaled to [0, 1], times position-bias, length-bias and speed
    factors). The computed weights are the quality dashboard's stored ones
    (``AnnotatorQuality.weight``) when the project has them, else computed with the same
    function on the exported judgments. Then, per pair::

        p_chosen = P(chosen better)  from the aggregation (majority: votes weighted by w_j)
        support  = sum_j w_j / n_judgments          mean annotator weight on the pair, in [0, 1]
        weight   = p_chosen * support               (ties: p_tie * support)

    So a pair that three reliable annotators agree on weighs about 1, a pair decided by a
    coin-flip posterior or by down-weighted annotators weighs less.

Pseudonyms
    Annotators appear only as ``ann-`` + 16 hex digits of ``HMAC-SHA256(key, user id)``. The key
    is a random per-export secret (``Export.salt``, never written to a file or an API), so the
    same person has different pseudonyms in two exports; with ``stable_pseudonyms`` the key
    is derived from ``SECRET_KEY`` and the project id, so pseudonyms match across that
    project's exports (until the secret key changes).
"""
