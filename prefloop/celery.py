"""Celery application.

Two queues: ``default`` for web-side jobs (exports, statistics) and ``gpu`` for training.
By default the broker is kombu's file-system transport under ``var/celery`` so that one
command runs the whole app without a broker server; set ``CELERY_BROKER_URL`` (Redis,
RabbitMQ) in production.
"""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "prefloop.settings")

app = Celery("prefloop")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Each app keeps its tasks in ``tasks.py``; evaluation keeps one per concern (quality, export).
app.autodiscover_tasks()
app.autodiscover_tasks(["evaluation.quality", "evaluation.export"])
