"""Celery application.

Two queues: ``default`` for web-side jobs (exports, statistics) and ``gpu`` for training.
By default the broker is kombu's file-system transport under ``var/celery`` so that one
command runs the whole app without a broker server; set ``CELERY_BROKER_URL`` (Redis,
RabbitMQ) in production.

Delivery (settings ``CELERY_*``, the reasons in docs/jobs.md): tasks are acknowledged late
(``acks_late``) and a message whose worker process died is rejected back to the queue
(``reject_on_worker_lost``); every task claims its row (:mod:`prefloop.jobs`), so a second
delivery never runs a job twice, and a job that keeps killing its worker is failed after a
few starts instead of looping. When a worker starts it recovers the jobs lost workers left
behind, and then sweeps for them every ``PREFLOOP_JOB_SWEEP_S`` seconds.
"""
import os

from celery import Celery
from celery.signals import worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "prefloop.settings")

app = Celery("prefloop")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Each app keeps its tasks in ``tasks.py``; evaluation keeps one per concern (quality, export).
app.autodiscover_tasks()
app.autodiscover_tasks(["evaluation.quality", "evaluation.export"])


@worker_ready.connect
def _recover_lost_jobs(sender=None, **kwargs) -> None:
    """Recover the jobs of workers that died (re-queue or fail them), then keep sweeping."""
    from django.db import close_old_connections

    from prefloop import jobs

    try:
        jobs.recover_all()
    finally:
        close_old_connections()
    jobs.start_sweeper()
