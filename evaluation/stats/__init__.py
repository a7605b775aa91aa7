"""The statistics of evaluation, pure numpy/scipy with no Django import.

Judgments and posteriors (``judgments``), label aggregation (``aggregation``, with
Dawid–Skene EM in ``dawid_skene``), inter-annotator agreement (``agreement``), annotator
reliability, bias and weight (``bias``), Bradley–Terry rankings (``ranking``) and synthetic
judgments with known truth (``simulation``). Each is testable alone with tiny arrays.
"""
