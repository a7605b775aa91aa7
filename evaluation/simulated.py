"""Simulated annotators at work in a project: enrolling them, and letting them judge through the
queue's own services, so that overlap, gold mixing and expiry are exercised as with people.

:func:`enroll` makes one user and membership per :class:`~evaluation.stats.simulation.SimulatedAnnotator`
in a pool of the project named after their :class:`~evaluation.stats.simulation.PoolSpec`.
:func:`annotate` then runs them on a simulated clock: the annotator whose clock is earliest asks
``annotate.queue.next_assignment`` for an item, judges the texts shown to them by the hidden
utility (left and right as displayed), and answers with ``annotate.queue.submit_judgment`` after
their judging time; an abandoned item is left until its assignment expires and the queue hands
its slot to someone else. It stops when the queue has nothing left for anyone (or after
``max_judgments``). What each annotator truly did is returned, for the loop's report to set
against what the calibration recovered.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from heapq import heappop, heappush

import numpy as np
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from annotate.models import Membership, Pool, Project, Role
from annotate.queue import AssignmentGone, NotAnAnnotator, next_assignment, shown_pair, submit_judgment

from .stats.simulation import KeywordUtility, SimulatedAnnotator

User = get_user_model()


@dataclass
class Worked:
    """What one simulated annotator did in one :func:`annotate` call (their truth included)."""

    user_id: int
    username: str
    person: SimulatedAnnotator
    judgments: int = 0
    gold: int = 0
    abandoned: int = 0
    left_clicks: int = 0
    content_decided: int = 0  # content judgments of pairs with different utilities
    content_right: int = 0  # ... that picked the higher-utility side
    decided: int = 0  # all non-tie judgments of pairs with different utilities
    right: int = 0  # ... that picked the higher-utility side (the annotator's true accuracy)

    @property
    def true_accuracy(self) -> float:
        return self.right / self.decided if self.decided else float("nan")

    def as_dict(self) -> dict:
        return {
            "user_id": self.user_id,
            "username": self.username,
            **{f"true_{k}": v for k, v in asdict(self.person).items() if k not in ("index", "seed")},
            "true_position_bias": self.person.expected_position_bias,
            "true_accuracy": self.true_accuracy,
            "judgments": self.judgments,
            "gold": self.gold,
            "abandoned": self.abandoned,
            "left_clicks": self.left_clicks,
        }


@dataclass
class Session:
    """The outcome of :func:`annotate`."""

    workers: list[Worked]
    judgments: int = 0
    abandoned: int = 0
    started: datetime | None = None
    ended: datetime | None = None
    by_comparison: dict = field(default_factory=dict)  # comparison id -> judgments made here
    abandoned_assignments: list = field(default_factory=list)  # ids of the assignments left to expire


def username_for(project: Project, person: SimulatedAnnotator) -> str:
    return f"sim-{project.pk}-{person.name}"


def enroll(project: Project, people: list[SimulatedAnnotator]) -> list[tuple]:
    """(user, person) for each simulated annotator: a user without a usable password, an
    annotator membership in the pool named like their pool spec (created when missing).
    Calling it again finds the same users and memberships."""
    out = []
    with transaction.atomic():
        pools = {}
        for person in people:
            if person.pool not in pools:
                pools[person.pool], _ = Pool.objects.get_or_create(
                    project=project, name=person.pool, defaults={"attributes": {"simulated": True}}
                )
            user, created = User.objects.get_or_create(username=username_for(project, person))
            if created:
                user.set_unusable_password()
                user.save(update_fields=["password"])
            Membership.objects.update_or_create(
                project=project, user=user, defaults={"role": Role.ANNOTATOR, "pool": pools[person.pool]}
            )
            out.append((user, person))
    return out


def annotate(
    project: Project,
    team: list[tuple],
    *,
    utility=None,
    max_judgments: int | None = None,
    start: datetime | None = None,
    seed: int = 0,
    progress=None,
) -> Session:
    """Let the enrolled ``team`` ((user, person) pairs from :func:`enroll`) judge the project's
    open comparisons through the queue until nothing is left for any of them.

    Time is simulated: each annotator has a clock starting at ``start`` (default now) that
    moves by their judging time per item, and by the project's assignment timeout (plus a
    second) when they abandon an item; the queue is called with these clocks as ``now``.
    ``progress(n)`` is called after each judgment.
    """
    utility = utility or KeywordUtility()
    start = start or timezone.now()
    project.refresh_from_db()
    timeout = timedelta(seconds=project.assignment_timeout_s + 1)
    queue_rng = random.Random(seed)
    workers = [Worked(user.pk, user.username, person) for user, person in team]
    rngs = [np.random.default_rng([person.seed, seed]) for _, person in team]
    session = Session(workers=workers, started=start)
    clocks: list = []
    for k in range(len(team)):
        heappush(clocks, (start + timedelta(seconds=float(rngs[k].uniform(0, 5))), k))
    last = start
    while clocks and (max_judgments is None or session.judgments < max_judgments):
        now, k = heappop(clocks)
        last = max(last, now)
        user, person = team[k]
        worked, rng = workers[k], rngs[k]
        try:
            assignment = next_assignment(user, project, now=now, rng=queue_rng)
        except NotAnAnnotator:
            continue
        if assignment is None:
            continue  # nothing left for this annotator
        if rng.random() < person.abandon_rate:
            worked.abandoned += 1
            session.abandoned += 1
            session.abandoned_assignments.append(assignment.pk)
            heappush(clocks, (now + timeout, k))
            continue
        left, right = shown_pair(assignment)
        decision = person.judge(left.text, right.text, utility, rng)
        done_at = now + timedelta(seconds=decision.seconds)
        try:
            submit_judgment(
                user,
                assignment.pk,
                choice=decision.choice,
                strength=decision.strength,
                seconds=decision.seconds,
                now=done_at,
                project=project,
            )
        except AssignmentGone:
            heappush(clocks, (done_at, k))
            continue
        _count(worked, decision, utility(left.text), utility(right.text), assignment.comparison.is_gold)
        session.judgments += 1
        cid = assignment.comparison_id
        session.by_comparison[cid] = session.by_comparison.get(cid, 0) + 1
        if progress is not None:
            progress(session.judgments)
        heappush(clocks, (done_at, k))
    session.ended = last
    return session


def _count(worked: Worked, decision, u_left: float, u_right: float, gold: bool) -> None:
    worked.judgments += 1
    worked.gold += int(gold)
    worked.left_clicks += int(decision.choice == "left")
    if u_left == u_right or decision.choice == "tie":
        return
    right = (decision.choice == "left") == (u_left > u_right)
    worked.decided += 1
    worked.right += int(right)
    if decision.reason == "content":
        worked.content_decided += 1
        worked.content_right += int(right)
