"""Removing a member and deleting a pool: the pages (members, pools), the services behind them
(``annotate.services``, ``annotate.queue.release_assignments``) and, on PostgreSQL, the same
under concurrent requests."""
from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from annotate import queue, services
from annotate.models import Assignment, AssignmentStatus, Comparison, Judgment, Membership, Pool, Project
from annotate.models import Role
from tests.factories import make_comparison, make_pool, make_project, make_team

User = get_user_model()


class World:
    """Overlap 1, two comparisons; ``ann`` judged the first and holds the second, so ``ann2``
    finds nothing to do until ``ann`` lets the second go."""

    def __init__(self):
        self.project = make_project("Removal", overlap=1)
        self.pool = make_pool(self.project, "EU", target_share=1.0)
        team = make_team(self.project, admin="boss", researcher="sci", annotators=("ann", "ann2"), pool=self.pool)
        self.users = team.users
        self.m = team.memberships
        self.comps = [make_comparison(self.project, i) for i in range(2)]

    def work(self):
        """``ann`` judges one comparison and holds the other; returns (judgment, held)."""
        ann = self.users["ann"]
        first = queue.next_assignment(ann, self.project)
        judgment = queue.submit_judgment(ann, first.pk, choice="left")
        held = queue.next_assignment(ann, self.project)
        assert held is not None and held.comparison_id != judgment.comparison_id
        return judgment, held

    def url(self, name, *args):
        return reverse(name, args=[self.project.pk, *args])


@pytest.fixture
def world(db):
    return World()


def as_user(client, user):
    client.force_login(user)
    return client


def page_text(response) -> str:
    return response.content.decode()


# --------------------------------------------------------------------------------------------
# Removing a member
# --------------------------------------------------------------------------------------------


def test_remove_member_releases_the_held_item_and_keeps_judgments(client, world):
    judgment, held = world.work()
    comparison = Comparison.objects.get(pk=held.comparison_id)
    assert (comparison.slots_taken, comparison.is_open) == (1, False)
    assert queue.next_assignment(world.users["ann2"], world.project) is None  # everything is taken

    as_user(client, world.users["boss"])
    url = world.url("project_member_remove", world.m["ann"].pk)
    confirm = page_text(client.get(url))
    assert "Remove ann from the project?" in confirm
    assert "1 judgment stays" in confirm and "1 item they hold now goes back to the queue" in confirm
    assert "csrfmiddlewaretoken" in confirm and "Remove from project" in confirm

    r = client.post(url, follow=True)
    assert r.redirect_chain[-1][0] == world.url("project_members")
    assert "ann removed from the project (1 judgment kept; 1 held item returned to the queue)." in page_text(r)
    assert not Membership.objects.filter(pk=world.m["ann"].pk).exists()
    # The judgment stays, with its pool; the held assignment expired and its slot is free.
    assert Judgment.objects.filter(pk=judgment.pk, pool=world.pool).exists()
    assert Comparison.objects.get(pk=judgment.comparison_id).slots_taken == 1
    held.refresh_from_db()
    comparison.refresh_from_db()
    assert held.status == AssignmentStatus.EXPIRED
    assert (comparison.slots_taken, comparison.is_open) == (0, True)
    # Another annotator is served the released item.
    served = queue.next_assignment(world.users["ann2"], world.project)
    assert served is not None and served.comparison_id == held.comparison_id


def test_removed_member_gets_403_everywhere_and_no_longer_sees_the_project(client, world):
    judgment, held = world.work()
    services.remove_member(world.m["ann"])
    as_user(client, world.users["ann"])
    assert "Removal" not in page_text(client.get(reverse("home")))
    for name in ("project_detail", "annotate", "project_progress"):
        assert client.get(world.url(name)).status_code == 403, name
    r = client.post(world.url("annotate"), {"assignment": held.pk, "choice": "left"})
    assert r.status_code == 403
    api = lambda name, *args: reverse(f"annotate-api:{name}", args=args)  # noqa: E731
    assert client.get(api("next", world.project.pk)).status_code == 403
    assert client.get(api("my-judgments", world.project.pk)).status_code == 403
    assert client.get(api("assignment-detail", held.pk)).status_code == 403
    assert client.post(api("submit-judgment", held.pk), {"choice": "left"}).status_code == 403
    assert client.get(api("project-list")).json()["results"] == []
    assert Judgment.objects.filter(annotator=world.users["ann"]).count() == 1
    # A late submit through the service is refused too, and takes no slot.
    with pytest.raises(Assignment.DoesNotExist):
        queue.submit_judgment(world.users["ann"], held.pk, choice="left")
    assert Comparison.objects.get(pk=held.comparison_id).slots_taken == 0


def test_removal_after_expiry_does_not_release_twice(world):
    _, held = world.work()
    assert queue.expire_stale(world.project, now=timezone.now() + timedelta(days=1)) == 1
    assert Comparison.objects.get(pk=held.comparison_id).slots_taken == 0
    removal = services.remove_member(world.m["ann"])
    assert (removal.released, removal.judgments) == (0, 1)
    assert Comparison.objects.get(pk=held.comparison_id).slots_taken == 0


def test_release_assignments_keeps_the_queue_invariants(world):
    _, held = world.work()
    assert queue.release_assignments(world.users["ann"], world.project) == 1
    assert queue.release_assignments(world.users["ann"], world.project) == 0
    assert_invariants(world.project)
    # The annotator is still a member here (this is the queue's part only) and may be served again.
    again = queue.next_assignment(world.users["ann"], world.project)
    assert again is not None and again.comparison_id == held.comparison_id
    assert_invariants(world.project)


def test_last_admin_cannot_be_removed_not_even_by_themselves(client, world):
    boss = world.users["boss"]
    as_user(client, boss)
    url = world.url("project_member_remove", world.m["boss"].pk)
    confirm = page_text(client.get(url))
    assert "You are the last admin of this project and cannot remove yourself" in confirm
    assert "Remove from project" not in confirm
    r = client.post(url, follow=True)
    assert "You are the last admin of this project and cannot remove yourself" in page_text(r)
    assert Membership.objects.filter(pk=world.m["boss"].pk, role=Role.ADMIN).exists()

    # A superuser gets the same answer: the project keeps an admin member.
    root = User.objects.create_superuser("root", "root@example.org", "pw")
    as_user(client, root)
    r = client.post(url, follow=True)
    assert "boss is the last admin of this project and cannot be removed" in page_text(r)
    assert Membership.objects.filter(pk=world.m["boss"].pk).exists()
    with pytest.raises(services.LastAdmin):
        services.remove_member(world.m["boss"])


def test_an_admin_may_leave_when_another_admin_remains(client, world):
    Membership.objects.filter(pk=world.m["sci"].pk).update(role=Role.ADMIN)
    as_user(client, world.users["boss"])
    r = client.post(world.url("project_member_remove", world.m["boss"].pk))
    assert r.status_code == 302 and r["Location"] == reverse("home")
    assert not Membership.objects.filter(pk=world.m["boss"].pk).exists()
    assert client.get(world.url("project_members")).status_code == 403
    # The remaining admin is now the last one.
    with pytest.raises(services.LastAdmin):
        services.remove_member(Membership.objects.get(pk=world.m["sci"].pk))


def test_an_excluded_or_overridden_member_with_judgments_is_kept(client, world):
    """Exclusion and weight overrides live on the membership: removing it would bring the
    judgments back at full weight, so it is refused, on the page and in the service."""
    world.work()
    Membership.objects.filter(pk=world.m["ann"].pk).update(excluded=True)
    as_user(client, world.users["boss"])
    confirm = page_text(client.get(world.url("project_member_remove", world.m["ann"].pk)))
    assert "ann is excluded and has" in confirm and "Keep them excluded instead" in confirm
    assert "Remove from project</button>" not in confirm
    r = client.post(world.url("project_member_remove", world.m["ann"].pk))
    assert r.status_code == 302 and Membership.objects.filter(pk=world.m["ann"].pk).exists()
    Membership.objects.filter(pk=world.m["ann"].pk).update(excluded=False, weight_override=0.2)
    with pytest.raises(services.QualityDecisionKept, match="override"):
        services.remove_member(Membership.objects.get(pk=world.m["ann"].pk))
    assert Membership.objects.filter(pk=world.m["ann"].pk).exists()
    plain = page_text(client.get(world.url("project_member_remove", world.m["ann2"].pk)))
    assert "ann2 is excluded" not in plain and "Remove from project</button>" in plain


def test_members_page_links_to_removal(client, world):
    html = page_text(as_user(client, world.users["boss"]).get(world.url("project_members")))
    for m in world.m.values():
        assert world.url("project_member_remove", m.pk) in html


def test_member_of_another_project_is_404(client, world):
    other = Project.objects.create(name="Elsewhere")
    foreign = Membership.objects.create(project=other, user=world.users["outsider"], role=Role.ADMIN)
    as_user(client, world.users["boss"])
    assert client.get(world.url("project_member_remove", foreign.pk)).status_code == 404
    assert client.post(world.url("project_member_remove", foreign.pk)).status_code == 404
    assert Membership.objects.filter(pk=foreign.pk).exists()


# --------------------------------------------------------------------------------------------
# Deleting a pool
# --------------------------------------------------------------------------------------------


def test_pool_with_members_cannot_be_deleted(client, world):
    as_user(client, world.users["boss"])
    url = world.url("project_pool_delete", world.pool.pk)
    confirm = page_text(client.get(url))
    assert "it has 2 members" in confirm and "Move its 2 members to another pool" in confirm
    assert "Delete pool</button>" not in confirm
    r = client.post(url, follow=True)
    assert r.redirect_chain[-1][0] == world.url("project_pools")
    assert "Pool “EU” cannot be deleted: it has 2 members." in page_text(r)
    assert Pool.objects.filter(pk=world.pool.pk).exists()
    assert Membership.objects.filter(pool=world.pool).count() == 2  # nothing was detached


def test_pool_with_judgments_but_no_members_is_kept(client, world):
    judgment, _ = world.work()
    queue.release_assignments(world.users["ann"], world.project)
    Membership.objects.filter(pool=world.pool).update(pool=None)
    as_user(client, world.users["boss"])
    r = client.post(world.url("project_pool_delete", world.pool.pk), follow=True)
    text = page_text(r)
    assert "Pool “EU” cannot be deleted: it has 1 judgment." in text
    assert "A pool with judgments is kept" in text and "Move its" not in text
    assert Pool.objects.filter(pk=world.pool.pk).exists()
    assert Judgment.objects.get(pk=judgment.pk).pool_id == world.pool.pk


def test_pool_with_an_item_still_being_judged_is_kept(world):
    held = queue.next_assignment(world.users["ann"], world.project)
    Membership.objects.filter(pool=world.pool).update(pool=None)  # its members moved away meanwhile
    with pytest.raises(services.PoolInUse) as refused:
        services.delete_pool(world.pool)
    assert "it has 1 item being judged" in str(refused.value)
    assert refused.value.usage == services.PoolUsage(members=0, judgments=0, active=1)
    assert Assignment.objects.get(pk=held.pk).pool_id == world.pool.pk


def test_pool_refusal_names_members_and_judgments_together(world):
    world.work()
    message = services.pool_refusal(world.pool)
    assert message.startswith("Pool “EU” cannot be deleted: it has 2 members, 1 judgment and 1 item being judged.")
    assert "Move its 2 members to another pool" in message and "A pool with judgments is kept" in message


def test_unused_pool_is_deleted(client, world):
    spare = Pool.objects.create(project=world.project, name="Spare", target_share=0.0)
    as_user(client, world.users["boss"])
    html = page_text(client.get(world.url("project_pools")))
    assert world.url("project_pool_delete", spare.pk) in html
    url = world.url("project_pool_delete", spare.pk)
    confirm = page_text(client.get(url))
    assert "Nothing uses this pool" in confirm and "Delete pool</button>" in confirm
    r = client.post(url, follow=True)
    assert r.redirect_chain[-1][0] == world.url("project_pools")
    assert "Pool “Spare” deleted." in page_text(r)
    assert not Pool.objects.filter(pk=spare.pk).exists()
    assert client.post(url).status_code == 404


def test_pool_whose_members_only_skipped_can_be_deleted(world):
    """Finished assignments without a judgment (skipped, expired) do not keep a pool alive;
    they lose their pool explicitly, and nothing else changes."""
    ann = world.users["ann"]
    a = queue.next_assignment(ann, world.project)
    queue.skip(ann, a.pk)
    Membership.objects.filter(pool=world.pool).update(pool=None)
    services.delete_pool(world.pool)
    a.refresh_from_db()
    assert (a.status, a.pool_id) == (AssignmentStatus.SKIPPED, None)
    assert Comparison.objects.get(pk=a.comparison_id).slots_taken == 0


def test_pool_of_another_project_is_404(client, world):
    other = Project.objects.create(name="Elsewhere")
    foreign = Pool.objects.create(project=other, name="Far")
    as_user(client, world.users["boss"])
    assert client.post(world.url("project_pool_delete", foreign.pk)).status_code == 404
    assert Pool.objects.filter(pk=foreign.pk).exists()


# --------------------------------------------------------------------------------------------
# Only admins
# --------------------------------------------------------------------------------------------


def test_non_admins_get_403_and_change_nothing(client, world):
    spare = Pool.objects.create(project=world.project, name="Spare")
    urls = [
        world.url("project_member_remove", world.m["ann2"].pk),
        world.url("project_member_remove", world.m["boss"].pk),
        world.url("project_pool_delete", spare.pk),
    ]
    for who in ("sci", "ann", "ann2", "outsider"):
        as_user(client, world.users[who])
        for url in urls:
            assert client.get(url).status_code == 403, (who, url)
            assert client.post(url).status_code == 403, (who, url)
    client.logout()
    for url in urls:
        r = client.post(url)
        assert r.status_code == 302 and r["Location"].startswith(reverse("login"))
    assert Membership.objects.filter(project=world.project).count() == 4
    assert Pool.objects.filter(pk=spare.pk).exists()


def test_removal_needs_csrf(world):
    from django.test import Client

    c = Client(enforce_csrf_checks=True)
    c.force_login(world.users["boss"])
    assert c.post(world.url("project_member_remove", world.m["ann2"].pk)).status_code == 403
    assert Membership.objects.filter(pk=world.m["ann2"].pk).exists()


# --------------------------------------------------------------------------------------------
# Concurrent requests (PostgreSQL)
# --------------------------------------------------------------------------------------------


def assert_invariants(project):
    project.refresh_from_db()
    active = Counter(
        Assignment.objects.filter(project=project, status=AssignmentStatus.ACTIVE).values_list(
            "comparison_id", flat=True
        )
    )
    judged = Counter(Judgment.objects.filter(project=project).values_list("comparison_id", flat=True))
    for c in Comparison.objects.filter(project=project):
        assert c.slots_taken == active[c.pk] + judged[c.pk], (c.pk, c.slots_taken, active[c.pk], judged[c.pk])
        assert c.is_open == (c.is_gold or c.slots_taken < project.overlap), c.pk


def _postgres_only():
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (set DATABASE_URL)")


def _outcome(fn):
    try:
        fn()
        return "ok"
    except services.Refused as exc:
        return type(exc).__name__
    except queue.NotAnAnnotator:
        return "not-an-annotator"


def _postgres_world(n_annotators=8, n_comparisons=6, overlap=2):
    project = Project.objects.create(name="Concurrent removal", overlap=overlap, gold_rate=0.0)
    for i in range(n_comparisons):
        make_comparison(project, i)
    admins = [User.objects.create_user(f"admin{i}") for i in range(2)]
    for u in admins:
        Membership.objects.create(project=project, user=u, role=Role.ADMIN)
    annotators = [User.objects.create_user(f"ann{i}") for i in range(n_annotators)]
    for u in annotators:
        Membership.objects.create(project=project, user=u, role=Role.ANNOTATOR)
    return project, admins, annotators


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_admins_removing_each_other_at_once_leave_one(run_at_once):
    _postgres_only()
    for _ in range(5):
        Project.objects.all().delete()
        User.objects.all().delete()
        project, (a, b), _ = _postgres_world(n_annotators=0)
        ma, mb = (Membership.objects.get(project=project, user=u) for u in (a, b))
        outcomes = run_at_once([
            lambda: _outcome(lambda: services.remove_member(mb, by=a)),
            lambda: _outcome(lambda: services.remove_member(ma, by=b)),
        ])
        assert sorted(outcomes) == ["LastAdmin", "ok"], outcomes
        assert Membership.objects.filter(project=project, role=Role.ADMIN).count() == 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_removals_during_claims_and_submits_keep_the_slot_counts(run_at_once):
    """Half the annotators are removed while everyone claims and submits: no slot is lost or
    counted twice, and no removed annotator is left holding an item."""
    _postgres_only()
    for _ in range(3):
        Project.objects.all().delete()
        User.objects.all().delete()
        project, (admin, _), annotators = _postgres_world()
        held = {u.pk: queue.next_assignment(u, project) for u in annotators[::2]}  # some hold an item already

        def work(user):
            def go():
                a = held.get(user.pk) or queue.next_assignment(user, project)
                if a is not None:
                    queue.submit_judgment(user, a.pk, choice="left")
                queue.next_assignment(user, project)

            return _outcome(lambda: _ignore_gone(go))

        leaving = annotators[: len(annotators) // 2]
        memberships = {u.pk: Membership.objects.get(project=project, user=u) for u in leaving}
        run_at_once(
            [lambda u=u: work(u) for u in annotators]
            + [lambda u=u: _outcome(lambda: services.remove_member(memberships[u.pk], by=admin)) for u in leaving]
        )
        assert_invariants(project)
        gone = [u.pk for u in leaving]
        assert not Membership.objects.filter(project=project, user_id__in=gone).exists()
        assert not Assignment.objects.filter(annotator_id__in=gone, status=AssignmentStatus.ACTIVE).exists()


def _ignore_gone(fn):
    try:
        fn()
    except Assignment.DoesNotExist:  # removed between the claim and the submit
        pass
