"""The unattended loop with simulated annotators: annotate → recompute → export → train → sample →
annotate, for N rounds, through the same services and Celery tasks as a human-run loop.

* ``seed`` -- a synthetic project to start from (prompts and round-0 pairs whose hidden utility
  varies, some of them gold).
* ``service`` -- starting a loop (validated) and advancing it one stage at a time.
* ``report`` -- a round's report: calibration against the simulator's truth, hidden utility of
  the round's samples, the annotators' verdict.
"""
