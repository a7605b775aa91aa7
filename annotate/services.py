"""Project set-up services: adding a member, removing a member, deleting a pool.

The members and pools pages (``annotate.views``) and the REST API (``annotate.api``) check the
admin role and call these; the rules live here once:

* **Adding a member** names an active user account that is not a member yet. An unknown name, an
  inactive account and an existing member all get the same answer, so that the form cannot be
  used to find out which usernames exist.
* **Removing a member** keeps their work. Their judgments stay (they are the data); the items
  they hold go back to the queue (``annotate.queue.release_assignments``); then the membership
  row is deleted, so the user no longer sees the project and gets 403 on its pages and API.
  A project keeps at least one admin: its last admin cannot be removed, not even by themselves.
  A member who is excluded or down-weighted by an override and has judgments cannot be removed
  either: that decision lives on the membership, and removing it would count their judgments
  at full weight again.
* **Changing the pair order** (``set_pair_order``) zeroes every comparison's priority in the same
  transaction (an arrival-order project has priority 0 everywhere, and an active order starts
  from arrival order until its first priorities are written), then, once it commits, sends
  ``annotate.signals.pair_order_changed``: ``training.active`` queues the computation.
* **Deleting a pool** is allowed only while nothing uses it: no member in it (move them to
  another pool first), no judgment made in it (a judgment records its pool; that history is
  kept, so such a pool stays) and no item that one of its annotators is still judging.
  ``Membership.pool``, ``Assignment.pool`` and ``Judgment.pool`` are ``SET_NULL``; nothing here
  relies on that: a pool is deleted only after the checks, under a lock on its row.

Each refusal is a ``Refused`` whose message is fit for the admin and says what to do.
"""
from __future__ import annotations

from dataclasses import dataclass

from django.db import connection, transaction

from . import queue
from .models import Assignment, AssignmentStatus, Comparison, Judgment, Membership, PairOrder, Pool, Project, Role
from .signals import pair_order_changed


class Refused(Exception):
    """A change the project refuses, with a message fit for the admin."""


class LastAdmin(Refused):
    pass


class QualityDecisionKept(Refused):
    """The member is excluded or has a weight override and has judgments: removing the
    membership would drop that decision and bring their judgments back at full weight."""


class PoolInUse(Refused):
    def __init__(self, message: str, usage: PoolUsage):
        super().__init__(message)
        self.usage = usage


def _n(count: int, singular: str, plural: str | None = None) -> str:
    return f"{count} {singular if count == 1 else (plural or singular + 's')}"


def _locked(qs):
    return qs.select_for_update() if connection.features.has_select_for_update else qs


# --------------------------------------------------------------------------------------------
# Members
# --------------------------------------------------------------------------------------------


class CannotAdd(Refused):
    """The username names no user that can be added (unknown, inactive, or already a member)."""


def user_to_add(project, username: str):
    """The active user called ``username`` who is not yet a member of ``project``; otherwise
    :class:`CannotAdd`, with one message whichever the reason (no probing of usernames)."""
    from django.contrib.auth import get_user_model

    username = (username or "").strip()
    user = get_user_model().objects.filter(username=username, is_active=True).first()
    if user is None or Membership.objects.filter(project=project, user=user).exists():
        raise CannotAdd(
            f"{username!r} cannot be added: it is not the username of an active account that is "
            f"not yet a member of this project."
        )
    return user


@dataclass(frozen=True)
class MemberUsage:
    judgments: int  # kept
    active: int  # items they hold now, released on removal


@dataclass(frozen=True)
class Removal:
    user_id: int
    username: str
    judgments: int  # kept
    released: int  # active assignments given back to the queue


def member_usage(membership: Membership) -> MemberUsage:
    mine = dict(project_id=membership.project_id, annotator_id=membership.user_id)
    return MemberUsage(
        judgments=Judgment.objects.filter(**mine).count(),
        active=Assignment.objects.filter(**mine, status=AssignmentStatus.ACTIVE).count(),
    )


def _last_admin_message(membership: Membership, by) -> str:
    if by is not None and membership.user_id == by.pk:
        return (
            "You are the last admin of this project and cannot remove yourself: "
            "make another member admin first."
        )
    return (
        f"{membership.user.username} is the last admin of this project and cannot be removed: "
        "make another member admin first."
    )


def _quality_decision_message(membership: Membership, judgments: int) -> str | None:
    """Refuse to remove a member whose exclusion or weight override their judgments depend on:
    both live on the membership, so removing it would count those judgments at full weight."""
    if not judgments or not (membership.excluded or membership.weight_override is not None):
        return None
    what = "excluded" if membership.excluded else "down-weighted by an override"
    return (
        f"{membership.user.username} is {what} and has {_n(judgments, 'judgment')}: removing them would drop "
        f"that decision and count their judgments with their computed weight again. Keep them "
        f"{'excluded' if membership.excluded else 'with the override'} instead: they are not served "
        f"{'and cannot submit' if membership.excluded else 'differently, and their judgments keep the override'}."
    )


def _is_last_admin(membership: Membership, admin_ids: list[int]) -> bool:
    return membership.role == Role.ADMIN and all(pk == membership.pk for pk in admin_ids)


def removal_refusal(membership: Membership, *, by=None, usage: MemberUsage | None = None) -> str | None:
    """Why the member cannot be removed (a message for the confirmation page), or None.
    ``usage``: their ``member_usage`` when the caller has it. ``remove_member`` checks again
    under its locks."""
    admin_ids = list(
        Membership.objects.filter(project_id=membership.project_id, role=Role.ADMIN).values_list("pk", flat=True)
    )
    if _is_last_admin(membership, admin_ids):
        return _last_admin_message(membership, by)
    return _quality_decision_message(membership, (usage or member_usage(membership)).judgments)


def remove_member(membership: Membership, *, by=None) -> Removal:
    """Remove the member from the project: release their active assignments to the queue,
    keep their judgments, delete the membership.

    ``by``: the user asking (for the wording of the last-admin refusal).
    Raises ``LastAdmin`` when the member is the project's last admin, and
    ``Membership.DoesNotExist`` when the membership is gone already.
    """
    project = membership.project
    with transaction.atomic():
        # Every admin row of the project, in one order: two admins removing each other at the
        # same time are serialized here, and the second sees that the first has gone.
        admin_ids = list(
            _locked(Membership.objects.filter(project=project, role=Role.ADMIN).order_by("pk")).values_list(
                "pk", flat=True
            )
        )
        target = _locked(Membership.objects.filter(pk=membership.pk, project=project)).first()
        if target is None:
            raise Membership.DoesNotExist("This member has been removed already.")
        if _is_last_admin(target, admin_ids):
            raise LastAdmin(_last_admin_message(target, by))
        judgments = Judgment.objects.filter(project=project, annotator_id=target.user_id).count()
        kept = _quality_decision_message(target, judgments)
        if kept:
            raise QualityDecisionKept(kept)
        released = queue.release_assignments(target.user, project)
        target.delete()
    return Removal(user_id=target.user_id, username=target.user.username, judgments=judgments, released=released)


# --------------------------------------------------------------------------------------------
# Pools
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolUsage:
    members: int  # memberships in the pool, any role
    judgments: int  # judgments made in the pool (the app's and imported ones)
    active: int  # items served from the pool that are still being judged

    @property
    def unused(self) -> bool:
        return not (self.members or self.judgments or self.active)


def pool_usage(pool: Pool) -> PoolUsage:
    return PoolUsage(
        members=Membership.objects.filter(pool=pool).count(),
        judgments=Judgment.objects.filter(pool=pool).count(),
        active=Assignment.objects.filter(pool=pool, status=AssignmentStatus.ACTIVE).count(),
    )


def pool_refusal(pool: Pool, usage: PoolUsage | None = None) -> str | None:
    """Why the pool cannot be deleted, naming what uses it and what to do; None if unused."""
    usage = usage or pool_usage(pool)
    if usage.unused:
        return None
    uses = []
    if usage.members:
        uses.append(_n(usage.members, "member"))
    if usage.judgments:
        uses.append(_n(usage.judgments, "judgment"))
    if usage.active:
        uses.append(_n(usage.active, "item") + " being judged")
    listed = uses[0] if len(uses) == 1 else ", ".join(uses[:-1]) + " and " + uses[-1]
    parts = [f"Pool “{pool.name}” cannot be deleted: it has {listed}."]
    if usage.members:
        parts.append(
            f"Move its {_n(usage.members, 'member')} to another pool (or to no pool) first."
            if usage.members > 1
            else "Move its member to another pool (or to no pool) first."
        )
    if usage.judgments:
        parts.append(
            "A pool with judgments is kept, since each judgment records the pool it was made in; "
            "set its target share to 0 to stop the queue balancing toward it."
        )
    elif usage.active:
        parts.append("Try again once those items are submitted or have expired.")
    return " ".join(parts)


def delete_pool(pool: Pool) -> None:
    """Delete the pool if nothing uses it (see ``pool_refusal``); else raise ``PoolInUse``.

    The pool's row is locked first (``FOR UPDATE``): a membership, assignment or judgment
    that would name the pool meanwhile waits for this transaction and then finds the pool
    gone, instead of being detached from it silently. Finished assignments (skipped or
    expired) of former members may still name the pool; they lose the reference, explicitly,
    since nothing reads the pool of a finished assignment without a judgment.
    Raises ``Pool.DoesNotExist`` when the pool is gone already.
    """
    with transaction.atomic():
        locked = _locked(Pool.objects.filter(pk=pool.pk, project_id=pool.project_id)).first()
        if locked is None:
            raise Pool.DoesNotExist("This pool has been deleted already.")
        usage = pool_usage(locked)
        message = pool_refusal(locked, usage)
        if message:
            raise PoolInUse(message, usage)
        Assignment.objects.filter(pool=locked).update(pool=None)
        locked.delete()


# --- pair order ------------------------------------------------------------------------------


def set_pair_order(project: Project, order: str, *, user=None) -> bool:
    """Serve ``project``'s open comparisons in ``order`` (a ``PairOrder`` value) from now on.

    When the order changes, every comparison's priority goes back to 0 in the same transaction
    (under a lock on the project row, which the priority writers share-lock, so a computation of
    the old order can never write after it), and ``pair_order_changed`` is sent once it commits.
    Returns whether the order changed."""
    if order not in PairOrder.values:
        raise Refused(f"Unknown pair order {order!r}; choose one of {', '.join(PairOrder.values)}.")
    with transaction.atomic():
        old = _locked(Project.objects.filter(pk=project.pk)).values_list("pair_order", flat=True).get()
        project.pair_order = order
        if old == order:
            return False
        Project.objects.filter(pk=project.pk).update(pair_order=order)
        Comparison.objects.filter(project_id=project.pk).exclude(priority=0.0).update(priority=0.0)
        transaction.on_commit(
            lambda: pair_order_changed.send(sender=Project, project=project, old=old, new=order, user=user)
        )
    return True
