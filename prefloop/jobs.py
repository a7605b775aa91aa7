"""Background jobs: the one owner + heartbeat + stale-detection mechanism every job row shares
(exports, quality reports, training runs, generated samples, sampling jobs and unattended
loops; docs/jobs.md).

A job is a database row with a ``status`` (:class:`JobStatus`) and the fields of
:class:`OwnedJob`: ``worker`` (``host:pid`` of the process that runs it), ``heartbeat_at`` (the
last sign of life) and ``attempts`` (how many times a worker started it). The row is the source
of truth; the Celery message only says "look at row N". The life of a job:

``queued``
    ``heartbeat_at`` is when its message was (last) sent. A queued job whose message is older
    than :func:`resend_s` is sent again: a worker killed while holding the message (the
    embedded file-system broker never redelivers it; an ETA'd message lives in the worker's
    memory) would otherwise leave it queued forever. A duplicate message is harmless (below).
``running``
    :func:`claim` took it under a row lock: ``worker`` is this process, ``attempts`` went up by
    one. While the work runs, :class:`Heartbeat` (a thread) refreshes ``heartbeat_at`` every
    :data:`HEARTBEAT_INTERVAL_S`. Every write that ends the job (:func:`finish`) is *fenced*:
    it applies only while the row still names this worker and attempt, so a worker that was
    (wrongly) presumed dead can never overwrite the job's new owner.
``succeeded`` / ``failed``
    Final. Only an explicit retry (a person) puts a failed job back to *queued*.

**Stale detection** (:func:`owner_is_dead`): the owner of a running job is dead when its
heartbeat is older than :func:`stale_s` (default :data:`DEFAULT_STALE_S`), or at once when it ran
on this host under a pid that no longer exists. **Recovery** (:func:`recover`): a job with a dead
owner has its partial output removed (:meth:`JobKind.cleanup`), then is re-queued and sent again
(:meth:`JobKind.send`) -- or marked *failed* with the reason when it was superseded by a newer job
(:meth:`JobKind.superseded`) or its workers were lost :attr:`JobKind.max_attempts` times (a job
that kills its worker, e.g. out of memory, must not loop).

**Who recovers, and how fast.** Every worker recovers all kinds when it starts (``worker_ready``)
and then every :func:`sweep_s` seconds (:func:`start_sweeper`); the pages and API endpoints that
show a job apply :func:`recover_one` to it when they read it. So a job whose worker died is
re-run or failed within ``stale_s + sweep_s`` (120 s + 30 s by default) while any worker is up,
at once when a worker restarts on the same host, and is never shown "running" by a page for longer
than ``stale_s``. Duplicate deliveries (a re-send, the broker's redelivery after its visibility
timeout, ``reject_on_worker_lost``) meet in :func:`claim`, which lets one of them run the job.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

from django.conf import settings
from django.db import connection, models, transaction
from django.utils import timezone

log = logging.getLogger(__name__)

#: Seconds between the heartbeats a running job's worker writes.
HEARTBEAT_INTERVAL_S = 5.0
#: A running job whose heartbeat is older than this (seconds) has lost its worker.
DEFAULT_STALE_S = 120
#: A queued job whose message was sent longer ago than this (seconds) is sent again.
DEFAULT_RESEND_S = 600
#: Seconds between two recovery sweeps of a worker.
DEFAULT_SWEEP_S = 30


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class OwnedJob(models.Model):
    """The owner and heartbeat fields of a background job (see the module docstring)."""

    worker = models.CharField(max_length=255, blank=True, default="", help_text="host:pid of the worker.")
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0, help_text="How many times a worker started it.")

    class Meta:
        abstract = True


def stale_s() -> int:
    return int(getattr(settings, "PREFLOOP_JOB_STALE_S", DEFAULT_STALE_S))


def resend_s() -> int:
    return int(getattr(settings, "PREFLOOP_JOB_RESEND_S", DEFAULT_RESEND_S))


def sweep_s() -> float:
    return float(getattr(settings, "PREFLOOP_JOB_SWEEP_S", DEFAULT_SWEEP_S))


# --------------------------------------------------------------------------- owner and staleness


def worker_id() -> str:
    """This process, as a job's owner: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_is_dead(job, now=None, stale: float | None = None) -> bool:
    """The job's worker is gone: its heartbeat is older than ``stale`` seconds (:func:`stale_s`),
    or it ran on this host under a pid that no longer exists."""
    now = now or timezone.now()
    stale = stale_s() if stale is None else stale
    if job.heartbeat_at is None or job.heartbeat_at < now - timedelta(seconds=stale):
        return True
    host, _, pid = (job.worker or "").rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        return int(pid) != os.getpid() and not pid_alive(int(pid))
    return False


# --------------------------------------------------------------------------- kinds of job


@dataclass
class JobKind:
    """How one kind of job is sent, cleaned up and recovered. Subclass to override the hooks."""

    name: str
    model: type
    #: The registered name of the Celery task that runs a job; it is sent the row's id.
    task: str
    #: Starts (attempts) after which a job that lost its worker is failed instead of re-run.
    max_attempts: int = 3
    #: Statuses :func:`claim` may take besides *queued* and a dead *running* (e.g. *failed*,
    #: when a redelivered message should rebuild a failed export).
    also_claims: tuple = ()

    def send(self, pk: int, countdown: int = 0) -> None:
        from celery import current_app

        current_app.tasks[self.task].apply_async((pk,), countdown=max(0, int(countdown)))

    def cleanup(self, job) -> None:
        """Remove what a lost worker left half-written (called under the row lock)."""

    def superseded(self, job) -> str:
        """Why a lost job should not be re-run at all ("" = re-run it)."""
        return ""

    def failed_fields(self, reason: str) -> dict:
        """The fields of a job marked failed; kinds name their own message field."""
        return {"error": reason[:4000]}

    def claim_fields(self, job) -> dict:
        """Fields set when a worker takes the job, besides status, owner and attempts."""
        return {}

    def requeue_fields(self, job) -> dict:
        """Fields set when a lost job goes back to *queued*."""
        return {}


_KINDS: dict[str, JobKind] = {}


def register(kind: JobKind) -> JobKind:
    """Make ``kind`` part of every recovery sweep (:func:`recover_all`)."""
    _KINDS[kind.name] = kind
    return kind


_EXTRA_RECOVERERS: dict[str, Callable[[], object]] = {}


def register_recoverer(name: str, fn: Callable[[], object]) -> None:
    """A recovery function of a job that keeps its own policy (training runs resume from their
    last checkpoint) but the same owner and staleness rules; called by every sweep."""
    _EXTRA_RECOVERERS[name] = fn


# --------------------------------------------------------------------------- the worker's side


def claim(kind: JobKind, pk: int):
    """Take job ``pk`` for this process, or return None when it must not run here: missing,
    finished, running on a live worker, or lost too many times (then marked failed)."""
    now = timezone.now()
    with transaction.atomic():
        job = kind.model.objects.select_for_update().filter(pk=pk).first()
        if job is None:
            return None
        if job.status == JobStatus.RUNNING:
            if not owner_is_dead(job, now):
                return None
            kind.cleanup(job)
            if job.attempts >= kind.max_attempts:
                _fail_locked(kind, job, lost_reason(job))
                return None
        elif job.status != JobStatus.QUEUED and job.status not in kind.also_claims:
            return None
        fields = {
            "status": JobStatus.RUNNING,
            "worker": worker_id(),
            "heartbeat_at": now,
            "attempts": job.attempts + 1,
            **kind.claim_fields(job),
        }
        for name, value in fields.items():
            setattr(job, name, value)
        kind.model.objects.filter(pk=pk).update(**fields)
    return job


def fenced(job):
    """The queryset of ``job``'s row while this claim still holds it (same worker and attempt)."""
    return type(job).objects.filter(
        pk=job.pk, status=JobStatus.RUNNING, worker=job.worker, attempts=job.attempts
    )


def finish(job, **fields) -> bool:
    """End a claimed job with ``fields`` (status, results...); False when it is no longer ours."""
    return bool(fenced(job).update(**fields))


class Heartbeat(threading.Thread):
    """``with Heartbeat(job):`` keeps the claimed job's ``heartbeat_at`` fresh while the body runs.

    ``beat`` replaces the plain fenced update (a training run's reporter also refreshes its
    progress row); ``name`` names the thread."""

    def __init__(self, job=None, interval: float = HEARTBEAT_INTERVAL_S, beat=None, name: str | None = None):
        super().__init__(daemon=True, name=name or f"heartbeat-{type(job).__name__}-{job.pk}")
        self.beat = beat or (lambda: fenced(job).update(heartbeat_at=timezone.now()))
        self.interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopped.wait(self.interval):
                try:
                    self.beat()
                except Exception:  # noqa: BLE001 - a missed heartbeat is not fatal
                    log.warning("%s failed", self.name, exc_info=True)
        finally:
            connection.close()

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=10)

    def __enter__(self) -> Heartbeat:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# --------------------------------------------------------------------------- recovery


def lost_reason(job) -> str:
    n = job.attempts
    times = f"{n} time{'s' if n != 1 else ''}"
    return f"its worker was lost {times} (last: {job.worker}); no more automatic retries"


def _fail_locked(kind: JobKind, job, reason: str) -> None:
    fields = {"status": JobStatus.FAILED, "finished_at": timezone.now(), **kind.failed_fields(reason)}
    kind.model.objects.filter(pk=job.pk).update(**fields)
    for name, value in fields.items():
        setattr(job, name, value)
    log.warning("%s %s failed: %s", kind.name, job.pk, reason)


def requeue(kind: JobKind, job, **fields) -> None:
    """Put ``job`` back to *queued* (attempts kept) and send it once the transaction commits."""
    now = timezone.now()
    values = {"status": JobStatus.QUEUED, "worker": "", "heartbeat_at": now}
    values.update(kind.requeue_fields(job), **fields)
    kind.model.objects.filter(pk=job.pk).update(**values)
    for name, value in values.items():
        setattr(job, name, value)
    pk = job.pk
    transaction.on_commit(lambda: kind.send(pk))


def recover_one(kind: JobKind, job, now=None) -> str:
    """Recover ``job`` if it needs it: ``"requeued"``, ``"failed"``, ``"resent"`` or ``""``.

    A running job with a dead owner: partial output removed, then failed (superseded, or lost
    :attr:`JobKind.max_attempts` times) or re-queued and sent. A queued job whose message is
    older than :func:`resend_s`: sent again. ``job`` is refreshed in place.
    """
    now = now or timezone.now()
    if job.status not in (JobStatus.RUNNING, JobStatus.QUEUED):
        return ""
    if job.status == JobStatus.RUNNING and not owner_is_dead(job, now):
        return ""
    if job.status == JobStatus.QUEUED:
        sent = job.heartbeat_at or getattr(job, "created_at", None)
        if sent is not None and sent >= now - timedelta(seconds=resend_s()):
            return ""
    outcome = ""
    with transaction.atomic():
        fresh = kind.model.objects.select_for_update().filter(pk=job.pk).first()
        if fresh is None:
            return ""
        if fresh.status == JobStatus.RUNNING and owner_is_dead(fresh, now):
            kind.cleanup(fresh)
            reason = kind.superseded(fresh)
            if reason or fresh.attempts >= kind.max_attempts:
                _fail_locked(
                    kind,
                    fresh,
                    f"its worker ({fresh.worker}) was lost; {reason}" if reason else lost_reason(fresh),
                )
                outcome = "failed"
            else:
                log.warning("%s %s lost its worker %s; re-queued", kind.name, fresh.pk, fresh.worker)
                requeue(kind, fresh)
                outcome = "requeued"
        elif fresh.status == JobStatus.QUEUED:
            sent = fresh.heartbeat_at or getattr(fresh, "created_at", None)
            if sent is None or sent < now - timedelta(seconds=resend_s()):
                if reason := kind.superseded(fresh):
                    _fail_locked(kind, fresh, reason)
                    outcome = "failed"
                else:
                    requeue(kind, fresh)
                    outcome = "resent"
    if outcome:
        job.refresh_from_db()
    return outcome


def recover(kind: JobKind) -> dict[str, list[int]]:
    """:func:`recover_one` for every running or queued job of ``kind``; ids by outcome."""
    now = timezone.now()
    out: dict[str, list[int]] = {"requeued": [], "failed": [], "resent": []}
    fields = ["pk", "status", "worker", "heartbeat_at", "attempts"]
    if _has(kind.model, "created_at"):
        fields.append("created_at")
    rows = kind.model.objects.filter(status__in=[JobStatus.RUNNING, JobStatus.QUEUED]).only(*fields)
    for job in list(rows):
        outcome = recover_one(kind, job, now)
        if outcome:
            out[outcome].append(job.pk)
    return out


def _has(model, name: str) -> bool:
    return any(f.name == name for f in model._meta.get_fields())


def recover_all() -> dict[str, object]:
    """One recovery sweep over every registered kind; never raises (a sweep must not kill a
    worker). Returns what it did, by kind."""
    done: dict[str, object] = {}
    for name, kind in list(_KINDS.items()):
        try:
            result = recover(kind)
        except Exception:  # noqa: BLE001 - e.g. no tables yet
            log.warning("recovering %s jobs failed", name, exc_info=True)
            continue
        if any(result.values()):
            done[name] = result
    for name, fn in list(_EXTRA_RECOVERERS.items()):
        try:
            result = fn()
        except Exception:  # noqa: BLE001
            log.warning("recovering %s jobs failed", name, exc_info=True)
            continue
        if result:
            done[name] = result
    if done:
        log.warning("recovered background jobs left by lost workers: %s", done)
    return done


class Sweeper(threading.Thread):
    """Runs :func:`recover_all` every ``interval`` seconds in a worker (a daemon thread)."""

    def __init__(self, interval: float):
        super().__init__(daemon=True, name="job-recovery-sweep")
        self.interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                recover_all()
            finally:
                connection.close()


_sweeper: Sweeper | None = None


def start_sweeper(interval: float | None = None) -> Sweeper | None:
    """Start this process's recovery sweep (once); ``PREFLOOP_JOB_SWEEP_S = 0`` turns it off."""
    global _sweeper
    interval = sweep_s() if interval is None else interval
    if interval <= 0 or (_sweeper is not None and _sweeper.is_alive()):
        return _sweeper
    _sweeper = Sweeper(interval)
    _sweeper.start()
    return _sweeper
