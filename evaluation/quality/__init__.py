"""Annotator quality: compute and store reliability, bias and agreement (``compute``), the
debounced recomputation (``scheduling``, ``tasks``, ``signals``), the weight rule and admin
actions (``services``), the dashboard's reads (``selectors``), and its pages and REST API.
"""
