"""Quality pages and API: roles, the dashboard's table and SVG plots, admin actions, recompute."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from annotate.models import Judgment, Membership, Pool, Project, Role
from evaluation.models import AnnotatorQuality, JobStatus, QualityReport
from evaluation.quality.compute import recompute_quality
from evaluation.quality.selectors import GOLD_BINS, SORT_KEYS, AnnotatorRow
from evaluation.quality.services import effective_weights
from evaluation.quality.views import ANNOTATORS_PER_PAGE, GOLD_CHART_MAX_POINTS
from prefloop import jobs
from tests.evaluation.hand_made import hand_made_project
from tests.factories import add_member, make_project

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def site(settings):
    """A project with two pools, three annotators who judged six comparisons, an admin, a
    researcher and an outsider (see test_quality_services for the numbers)."""
    settings.PREFLOOP_AUTO_QUALITY = False
    settings.PREFLOOP_QUALITY_MIN_GOLD = 3
    settings.PREFLOOP_QUALITY_BOOTSTRAP = 30
    settings.PREFLOOP_QUALITY_BOOTSTRAP_TIME = 10
    settings.PREFLOOP_QUALITY_BOOTSTRAP_BT = 5
    project, users, comparisons = hand_made_project("views", readers=True)
    return project, users, comparisons


def client_for(client, user):
    client.force_login(user)
    return client


def url(name, project, *args):
    return reverse(name, args=[project.pk, *args])


# --------------------------------------------------------------------------- roles


def test_annotators_and_outsiders_get_403_on_the_dashboard_and_actions(site, client):
    project, users, _ = site
    for who in ("a1", "outsider"):
        c = client_for(client, users[who])
        assert c.get(url("quality_dashboard", project)).status_code == 403
        assert c.post(url("quality_recompute", project)).status_code == 403
        assert c.post(url("quality_exclude", project, users["a2"].pk)).status_code == 403
        assert c.post(url("quality_override", project, users["a2"].pk), {"weight": "0.5"}).status_code == 403
        assert c.post(url("quality_clear_override", project, users["a2"].pk)).status_code == 403
    m = Membership.objects.get(project=project, user=users["a2"])
    assert not m.excluded and m.weight_override is None


def test_anonymous_is_sent_to_login(site, client):
    project, _, _ = site
    response = client.get(url("quality_dashboard", project))
    assert response.status_code == 302 and "login" in response["Location"]


def test_researcher_reads_but_cannot_change(site, client):
    project, users, _ = site
    recompute_quality(project)
    c = client_for(client, users["researcher"])
    response = c.get(url("quality_dashboard", project))
    assert response.status_code == 200
    assert b"a2" in response.content
    assert b"Exclude" not in response.content  # no admin column
    for name in ("quality_exclude", "quality_include", "quality_clear_override"):
        assert c.post(url(name, project, users["a2"].pk)).status_code == 403
    assert c.post(url("quality_override", project, users["a2"].pk), {"weight": "0.5"}).status_code == 403
    assert not Membership.objects.get(project=project, user=users["a2"]).excluded


def test_get_only_and_post_only(site, client):
    project, users, _ = site
    c = client_for(client, users["admin"])
    assert c.post(url("quality_dashboard", project)).status_code == 405
    assert c.get(url("quality_exclude", project, users["a2"].pk)).status_code == 405


# --------------------------------------------------------------------------- dashboard


def test_dashboard_empty_state_before_any_computation(site, client):
    project, users, _ = site
    response = client_for(client, users["admin"]).get(url("quality_dashboard", project))
    assert response.status_code == 200
    body = response.content.decode()
    assert "No quality figures yet" in body and "Recompute now" in body
    assert 'id="annotator-table"' in body and body.count('class="q-row') == 3  # annotators listed anyway


def test_dashboard_renders_table_figures_and_svg_plots(site, client):
    project, users, _ = site
    recompute_quality(project)
    response = client_for(client, users["admin"]).get(url("quality_dashboard", project))
    assert response.status_code == 200
    body = response.content.decode()
    # Headline agreement and the annotator table.
    assert re.search(r'data-stat="raw_agreement">0\.33<', body)
    for name in ("a1", "a2", "a3"):
        assert f">{name}</strong>" in body
    assert "71%" in body and "29%" in body and "86%" in body  # gold accuracies 5/7, 2/7, 6/7
    assert "0.43" in body and "0.71" in body  # weights 3/7, 5/7
    # a2 is highlighted and flagged.
    row = re.search(rf'<tr id="annotator-{users["a2"].pk}"[^>]*>', body).group(0)
    assert "q-below" in row
    assert "Low accuracy" in body and "Low weight" in body
    # Plots: agreement over time, pool heatmap, gold intervals, round win rates.
    assert body.count("<svg") >= 4
    assert 'aria-label="Agreement over time"' in body
    assert "chart-heatmap" in body and "chart-interval" in body and "chart-bar" in body
    assert "Pool × pool disagreement" in body and "north" in body and "south" in body
    assert "Last computed" in body and "Exclude" in body
    assert "css/quality.css" in body


def test_table_sorts_and_htmx_gets_the_table_partial(site, client):
    project, users, _ = site
    recompute_quality(project)
    c = client_for(client, users["admin"])
    response = c.get(
        url("quality_dashboard", project),
        {"sort": "weight", "dir": "desc"},
        HTTP_HX_TARGET="annotator-table",
        **HX,
    )
    body = response.content.decode()
    assert response.status_code == 200
    assert body.lstrip().startswith('<div id="annotator-table"') and "<html" not in body
    order = re.findall(r"<strong>(a\d)</strong>", body)
    assert order == ["a3", "a1", "a2"]
    body = c.get(url("quality_dashboard", project), {"sort": "gold_accuracy", "dir": "asc"}).content.decode()
    assert re.findall(r"<strong>(a\d)</strong>", body) == ["a2", "a1", "a3"]
    assert c.get(url("quality_dashboard", project), {"sort": "nonsense"}).status_code == 200


# --------------------------------------------------------------------------- pages of the table

N_CROWD = 2 * ANNOTATORS_PER_PAGE + 7  # three pages: full, full, 7 rows


@pytest.fixture
def crowd():
    """More annotators than fit on two pages, each with a distinct judgment count that does
    not follow the name order, and an admin to look at them."""
    User = get_user_model()
    project = Project.objects.create(name="crowd")
    users = User.objects.bulk_create([User(username=f"ann-{i:03d}") for i in range(N_CROWD)])
    Membership.objects.bulk_create([Membership(project=project, user=u, role=Role.ANNOTATOR) for u in users])
    AnnotatorQuality.objects.bulk_create(
        [
            AnnotatorQuality(project=project, annotator=u, n_judgments=(i * 37) % N_CROWD)
            for i, u in enumerate(users)
        ]
    )
    admin = User.objects.create(username="crowd-admin")
    Membership.objects.create(project=project, user=admin, role=Role.ADMIN)
    by_count = sorted(users, key=lambda u: -((int(u.username[4:]) * 37) % N_CROWD))
    return project, admin, [u.username for u in by_count]


def names(body: str) -> list[str]:
    return re.findall(r"<strong>(ann-\d+)</strong>", body)


def table_page(c, project, **params) -> str:
    response = c.get(url("quality_dashboard", project), params, HTTP_HX_TARGET="annotator-table", **HX)
    assert response.status_code == 200
    return response.content.decode()


def test_table_pages_keep_the_sort(crowd, client):
    project, admin, by_count = crowd
    c = client_for(client, admin)
    sort = {"sort": "n_judgments", "dir": "desc"}
    pages = [table_page(c, project, **sort, page=n) for n in (1, 2, 3)]
    shown = [names(body) for body in pages]
    assert [len(p) for p in shown] == [ANNOTATORS_PER_PAGE, ANNOTATORS_PER_PAGE, 7]
    assert not set(shown[0]) & set(shown[1])  # page 2 shows other annotators
    # The pages, one after the other, are the whole table in the chosen order.
    assert shown[0] + shown[1] + shown[2] == by_count
    assert f"Annotators {ANNOTATORS_PER_PAGE + 1}–{2 * ANNOTATORS_PER_PAGE} of {N_CROWD}" in pages[1]
    # Page links carry the sort, swap the table with HTMX and update the address bar.
    nxt = re.search(r'<a [^>]*rel="next"[^>]*>', pages[0]).group(0)
    assert 'hx-get="?sort=n_judgments&amp;dir=desc&amp;page=2"' in nxt
    assert 'hx-target="#annotator-table"' in nxt and 'hx-push-url="true"' in nxt
    assert 'rel="prev"' not in pages[0] and 'rel="next"' not in pages[2]
    # Another sort starts again from its own first page.
    by_name = names(table_page(c, project, sort="annotator", dir="asc", page=1))
    assert by_name == sorted(by_count)[:ANNOTATORS_PER_PAGE]


def test_out_of_range_page_gives_the_last_page_and_a_bad_one_the_first(crowd, client):
    project, admin, by_count = crowd
    c = client_for(client, admin)
    sort = {"sort": "n_judgments", "dir": "desc"}
    assert names(table_page(c, project, **sort, page=99)) == by_count[2 * ANNOTATORS_PER_PAGE :]
    assert names(table_page(c, project, **sort, page="nope")) == by_count[:ANNOTATORS_PER_PAGE]


def test_full_dashboard_renders_one_page_of_annotators(crowd, client, site):
    project, admin, by_count = crowd
    body = client_for(client, admin).get(url("quality_dashboard", project), {"page": 2}).content.decode()
    assert "<html" in body and body.count('class="q-row') == ANNOTATORS_PER_PAGE
    assert names(body) == sorted(by_count)[ANNOTATORS_PER_PAGE : 2 * ANNOTATORS_PER_PAGE]
    # A table that fits on one page has no page links.
    small, users, _ = site
    client.force_login(users["admin"])
    assert "q-pager" not in client.get(url("quality_dashboard", small)).content.decode()


# --------------------------------------------------------------------------- admin actions


def test_admin_excludes_and_includes_an_annotator(site, client):
    project, users, _ = site
    recompute_quality(project)
    c = client_for(client, users["admin"])
    a2 = users["a2"]
    response = c.post(url("quality_exclude", project, a2.pk))
    assert response.status_code == 302
    m = Membership.objects.get(project=project, user=a2)
    assert m.excluded
    assert Judgment.objects.filter(annotator=a2).count() == 6  # kept
    body = c.get(url("quality_dashboard", project)).content.decode()
    assert "badge-excluded" in body and "is excluded" in body  # the flash message

    # HTMX: the updated row comes back.
    response = c.post(url("quality_include", project, a2.pk), **HX)
    body = response.content.decode()
    assert response.status_code == 200 and body.lstrip().startswith(f'<tr id="annotator-{a2.pk}"')
    assert "included again" in body and "badge-excluded" not in body
    assert not Membership.objects.get(project=project, user=a2).excluded
    assert c.post(url("quality_exclude", project, 10**9)).status_code == 404


def test_admin_sets_validates_and_clears_a_weight_override(site, client):
    project, users, _ = site
    recompute_quality(project)
    c = client_for(client, users["admin"])
    a1 = users["a1"]
    m = Membership.objects.get(project=project, user=a1)
    for bad in ("1.5", "-0.2", "abc", ""):
        response = c.post(url("quality_override", project, a1.pk), {"weight": bad}, **HX)
        assert response.status_code == 200 and "Weight not saved" in response.content.decode()
        m.refresh_from_db()
        assert m.weight_override is None
    response = c.post(url("quality_override", project, a1.pk), {"weight": "1.5"})
    assert response.status_code == 302
    m.refresh_from_db()
    assert m.weight_override is None

    response = c.post(url("quality_override", project, a1.pk), {"weight": "0.25"}, **HX)
    body = response.content.decode()
    assert "<strong>0.25</strong>" in body and "computed 0.43" in body
    m.refresh_from_db()
    assert m.weight_override == 0.25
    assert effective_weights(project)[a1.pk] == 0.25

    response = c.post(url("quality_clear_override", project, a1.pk))
    assert response.status_code == 302
    m.refresh_from_db()
    assert m.weight_override is None


# --------------------------------------------------------------------------- recompute


def test_recompute_button_queues_and_runs_the_task(site, client, celery_eager, django_capture_on_commit_callbacks):
    project, users, _ = site
    c = client_for(client, users["researcher"])
    with django_capture_on_commit_callbacks(execute=True):
        response = c.post(url("quality_recompute", project), **HX)
    assert response.status_code == 200
    report = QualityReport.objects.get(project=project)
    assert f'data-report="{report.pk}"' in response.content.decode()
    report.refresh_from_db()
    assert report.status == JobStatus.SUCCEEDED  # the eager task ran after commit
    progress = c.get(url("quality_progress", project, report.pk), **HX)
    assert progress.status_code == 200 and progress["HX-Refresh"] == "true"
    body = c.get(url("quality_dashboard", project)).content.decode()
    assert "No quality figures yet" not in body and "<svg" in body


def test_progress_polls_while_queued(site, client, settings):
    project, users, _ = site
    c = client_for(client, users["admin"])
    settings.CELERY_TASK_ALWAYS_EAGER = False
    report = QualityReport.objects.create(  # held by a live worker (this process)
        project=project,
        status=JobStatus.RUNNING,
        progress=0.4,
        message="Computing agreement",
        worker=jobs.worker_id(),
        heartbeat_at=timezone.now(),
    )
    response = c.get(url("quality_progress", project, report.pk), **HX)
    body = response.content.decode()
    assert 'hx-trigger="every 2s"' in body and "Computing agreement" in body and "40%" in body
    assert "HX-Refresh" not in response
    # The dashboard shows the running report's progress box.
    assert 'hx-trigger="every 2s"' in c.get(url("quality_dashboard", project)).content.decode()
    other = make_project("other")
    add_member(other, users["admin"], Role.ADMIN)
    assert c.get(reverse("quality_progress", args=[other.pk, report.pk])).status_code == 404


def test_non_htmx_recompute_redirects(site, client, monkeypatch):
    project, users, _ = site
    from evaluation.quality.tasks import recompute_quality_task

    monkeypatch.setattr(recompute_quality_task, "apply_async", lambda *a, **k: None)
    response = client_for(client, users["admin"]).post(url("quality_recompute", project))
    assert response.status_code == 302 and response["Location"] == url("quality_dashboard", project)
    assert QualityReport.objects.filter(project=project, status=JobStatus.QUEUED).count() == 1


# --------------------------------------------------------------------------- my quality


def test_my_quality_page_rules(site, client):
    project, users, comparisons = site
    recompute_quality(project)
    c = client_for(client, users["a1"])
    body = c.get(url("my_quality", project)).content.decode()
    assert "does not show accuracy" in body and "71%" not in body

    project.show_accuracy_after = 4
    project.save()
    response = c.get(url("my_quality", project))
    # (CSRF tokens are random text: drop them before looking for short strings.)
    body = re.sub(
        r'"X-CSRFToken": "[^"]*"|name="csrfmiddlewaretoken" value="[^"]*"', "", response.content.decode()
    )
    assert response.status_code == 200 and "71%" in body
    # Nobody else's numbers, and nothing that identifies items.
    assert "a2" not in body and "a3" not in body and "29%" not in body and "86%" not in body
    for comp in comparisons:
        assert f"/comparisons/{comp.pk}" not in body and f'data-comparison="{comp.pk}"' not in body
    assert "p0" not in body and "answer A" not in body
    # HTMX gets just the card.
    frag = c.get(url("my_quality", project), **HX).content.decode()
    assert frag.lstrip().startswith('<section class="card q-mine"') and "71%" in frag

    project.show_accuracy_after = 5
    project.save()
    assert "71%" not in c.get(url("my_quality", project)).content.decode()
    assert client_for(client, users["outsider"]).get(url("my_quality", project)).status_code == 403


# --------------------------------------------------------------------------- API


def test_api_roles_table_labels_and_actions(site, client):
    project, users, comparisons = site
    recompute_quality(project)
    base = f"/api/projects/{project.pk}/quality"
    annot = client_for(client, users["a1"])
    assert annot.get(f"{base}/").status_code == 403
    assert annot.get(f"{base}/annotators/").status_code == 403
    assert annot.get(f"{base}/labels/").status_code == 403
    mine = annot.get(f"{base}/mine/").json()
    assert mine["enabled"] is False and mine["accuracy"] is None

    res = client_for(client, users["researcher"])
    report = res.get(f"{base}/").json()
    assert report["status"] == "succeeded"
    assert report["data"]["agreement"]["overall"]["raw_agreement"]["value"] == pytest.approx(1 / 3)
    table = res.get(f"{base}/annotators/", {"sort": "weight", "dir": "desc"}).json()
    assert table["count"] == 3
    assert [r["username"] for r in table["results"]] == ["a3", "a1", "a2"]
    assert table["results"][1]["weight"] == pytest.approx(3 / 7)
    assert table["results"][2]["below_threshold"] is True
    labels = res.get(f"{base}/labels/", {"method": "majority"}).json()
    assert labels["count"] == 2  # gold comparisons are for admins only
    assert all("is_gold" not in r for r in labels["results"])
    assert res.get(f"{base}/labels/", {"method": "nope"}).status_code == 400
    assert (
        res.patch(
            f"{base}/annotators/{users['a2'].pk}/", {"excluded": True}, content_type="application/json"
        ).status_code
        == 403
    )

    adm = client_for(client, users["admin"])
    labels = adm.get(f"{base}/labels/", {"method": "dawid_skene", "pool_balanced": "true"}).json()
    assert labels["count"] == 6 and sum(r["is_gold"] for r in labels["results"]) == 4
    r = adm.patch(
        f"{base}/annotators/{users['a2'].pk}/",
        {"excluded": True, "weight_override": 0.5},
        content_type="application/json",
    )
    assert r.status_code == 200 and r.json()["excluded"] is True and r.json()["weight"] == 0.0
    assert r.json()["weight_override"] == 0.5
    bad = adm.patch(
        f"{base}/annotators/{users['a2'].pk}/", {"weight_override": 2}, content_type="application/json"
    )
    assert bad.status_code == 400
    assert (
        adm.patch(
            f"{base}/annotators/{10**9}/", {"excluded": True}, content_type="application/json"
        ).status_code
        == 404
    )


# --------------------------------------------------------------------------- at scale


def make_crowd(n: int, name: str = "big"):
    """A project whose annotator table has ``n`` annotator members plus a former member and
    an admin who judged (both with statistics), as :func:`recompute_quality` would
    leave it but written directly: every column has ties, missing values (10% of members
    have no statistics yet; some statistics are NULL), mixed-case names, members without a
    pool, excluded members (some whose stored flags predate it, some included again since),
    weight overrides; and a report with the per-annotator extras. Returns (project, admin)."""
    User = get_user_model()
    project = Project.objects.create(name=name)
    pools = [Pool.objects.create(project=project, name=p) for p in ("North", "south", "Experts")] + [None]
    prefixes = ("Ann", "bea", "Cy", "dot")
    users = User.objects.bulk_create(
        [User(username=f"{name}-{prefixes[i % 4]}-{(i * 7919) % n:05d}") for i in range(n)]
    )
    Membership.objects.bulk_create(
        [
            Membership(
                project=project,
                user=u,
                role=Role.ANNOTATOR,
                pool=pools[i % 4],
                excluded=i % 17 == 0,
                weight_override=(0.2, 1.0, 0.0)[i % 3] if i % 13 == 0 else None,
            )
            for i, u in enumerate(users)
        ]
    )
    admin = User.objects.create(username=f"{name}-admin")
    Membership.objects.create(project=project, user=admin, role=Role.ADMIN)
    former = User.objects.create(username=f"{name}-Former")
    flag_sets = (
        [],
        ["low_accuracy"],
        ["low_weight", "too_fast"],
        ["excluded"],
        ["position_bias", "excluded"],
    )
    qualities, extras = [], {}
    for i, u in enumerate([*users, former, admin]):
        if i % 10 == 9:
            continue  # no statistics yet
        gold = None if i % 5 == 0 else ((i * 37) % 20) / 20
        qualities.append(
            AnnotatorQuality(
                project=project,
                annotator=u,
                n_judgments=(i * 7) % 5 * 10,
                n_gold=0 if gold is None else 10,
                gold_correct=0 if gold is None else round(gold * 10),
                gold_accuracy=gold,
                gold_accuracy_low=None if gold is None else max(0.0, gold - 0.1),
                gold_accuracy_high=None if gold is None else min(1.0, gold + 0.1),
                estimated_accuracy=((i * 11) % 10) / 10,
                position_bias=None if i % 6 == 0 else ((i * 13) % 21 - 10) / 100,
                length_bias=((i * 5) % 9 - 4) / 50,
                tie_rate=((i * 3) % 4) / 10,
                median_seconds=None if i % 7 == 0 else float((i * 17) % 30),
                flags=flag_sets[i % len(flag_sets)],
                weight=((i * 11) % 6) / 5,
            )
        )
        extras[str(u.pk)] = {"accuracy_source": "gold", "accuracy_used": gold, "factors": {"base": 0.5}}
    AnnotatorQuality.objects.bulk_create(qualities)
    QualityReport.objects.create(
        project=project,
        status=JobStatus.SUCCEEDED,
        n_judgments=1000,
        data={"n_judgments": 1000, "n_items": 200, "n_annotators": len(qualities), "annotators": extras},
        finished_at=timezone.now(),
    )
    return project, admin


def python_order(project, key: str, descending: bool) -> list[int]:
    """User ids in the order the dashboard had before it sorted in the database: every row
    built in Python and sorted by :meth:`AnnotatorRow.value`, rows without a value last by name."""
    memberships = {
        m.user_id: m for m in Membership.objects.filter(project=project).select_related("user", "pool")
    }
    qualities = {
        q.annotator_id: q
        for q in AnnotatorQuality.objects.filter(project=project).select_related("annotator")
    }
    rows = []
    for uid in set(qualities) | {u for u, m in memberships.items() if m.role == Role.ANNOTATOR}:
        m, q = memberships.get(uid), qualities.get(uid)
        rows.append(
            AnnotatorRow(
                user_id=uid,
                username=(m.user if m else q.annotator).get_username(),
                pool=m.pool.name if m and m.pool else "—",
                membership=m,
                quality=q,
            )
        )
    present = [r for r in rows if r.value(key) is not None]
    missing = [r for r in rows if r.value(key) is None]
    present.sort(key=lambda r: (r.value(key), r.username.lower()), reverse=descending)
    missing.sort(key=lambda r: r.username.lower())
    return [r.user_id for r in present + missing]


def row_ids(body: str) -> list[int]:
    return [int(u) for u in re.findall(r'<tr id="annotator-(\d+)"', body)]


@pytest.fixture
def small_crowd(client):
    project, admin = make_crowd(2 * ANNOTATORS_PER_PAGE + 30, "small")
    client.force_login(admin)
    return project, client


@pytest.mark.parametrize("descending", [False, True])
def test_every_column_sorts_across_pages_as_the_full_python_sort(small_crowd, descending):
    project, c = small_crowd
    for key in SORT_KEYS:
        expected = python_order(project, key, descending)
        assert len(expected) == 2 * ANNOTATORS_PER_PAGE + 30 + 2  # + the former member and the admin
        shown = []
        for n in (1, 2, 3):
            shown += row_ids(table_page(c, project, sort=key, dir="desc" if descending else "asc", page=n))
        assert shown == expected, key


@pytest.mark.parametrize("descending", [False, True])
def test_api_sorts_every_column_across_pages_as_the_full_python_sort(small_crowd, descending):
    project, c = small_crowd
    base = f"/api/projects/{project.pk}/quality/annotators/"
    for key in SORT_KEYS:
        expected = python_order(project, key, descending)
        shown = []
        for offset in range(0, len(expected) + 40, 40):
            params = {"sort": key, "dir": "desc" if descending else "asc", "limit": 40, "offset": offset}
            body = c.get(base, params)
            assert body.status_code == 200 and body.json()["count"] == len(expected)
            shown += [r["user"] for r in body.json()["results"]]
        assert shown == expected, key


def test_page_rows_show_flags_as_exclusion_is_now_and_the_reports_extras(small_crowd):
    project, c = small_crowd
    members = Membership.objects.filter(project=project)
    excluded = set(members.filter(excluded=True).values_list("user_id", flat=True))
    with_stats = set(AnnotatorQuality.objects.filter(project=project).values_list("annotator_id", flat=True))
    stale = (
        set(  # flagged "excluded" by the last computation, included again since
            AnnotatorQuality.objects.filter(project=project, flags__icontains="excluded").values_list(
                "annotator_id", flat=True
            )
        )
        - excluded
    )
    assert stale and excluded - with_stats and excluded & with_stats
    seen = set()
    for n in (1, 2, 3):
        body = table_page(c, project, sort="flags", dir="desc", page=n)
        for uid in row_ids(body):
            row = re.search(rf'<tr id="annotator-{uid}".*?</tr>', body, re.S).group(0)
            assert ("q-flag-excluded" in row) == (uid in excluded)
            # The weight's explanation: the report's per-annotator extras, for this page's rows.
            assert ("base ×0.50" in row) == (uid in with_stats)
            seen.add(uid)
    assert stale <= seen


def queries_of(c, path, **headers) -> int:
    with CaptureQueriesContext(connection) as ctx:
        response = c.get(path, **headers)
    assert response.status_code == 200
    return len(ctx.captured_queries)


def page_queries(c, project) -> dict:
    dash = url("quality_dashboard", project)
    api = f"/api/projects/{project.pk}/quality/annotators/"
    one = AnnotatorQuality.objects.filter(project=project).first().annotator_id
    return {
        "page": queries_of(c, dash),
        "sorted page": queries_of(c, dash + "?sort=gold_accuracy&dir=desc&page=3"),
        "table": queries_of(c, dash + "?sort=weight&page=2", HTTP_HX_TARGET="annotator-table", **HX),
        "api": queries_of(c, api),
        "api sorted": queries_of(c, api + "?sort=position_bias&dir=desc&offset=40"),
        "api one": queries_of(c, api + f"{one}/"),
    }


def test_queries_do_not_grow_with_annotators(client):
    counts = {}
    for n in (60, 600):
        project, admin = make_crowd(n, f"n{n}")
        client.force_login(admin)
        counts[n] = page_queries(client, project)
    assert counts[60] == counts[600]
    assert max(counts[600].values()) <= 16, counts


def test_gold_chart_is_a_histogram_above_the_threshold_with_the_same_queries(client):
    project, admin = make_crowd(60, "few")
    client.force_login(admin)
    few = page_queries(client, project)
    body = client.get(url("quality_dashboard", project)).content.decode()
    n_gold = AnnotatorQuality.objects.filter(project=project, gold_accuracy__isnull=False).count()
    chart = re.search(r"<svg[^>]*chart-interval.*?</svg>", body, re.S).group(0)
    assert chart.count("<circle") == n_gold  # one mark per annotator, as before
    assert "chart-histogram" not in body and "Each annotator: posterior mean" in body

    project, admin = make_crowd(GOLD_CHART_MAX_POINTS * 3 // 2, "many")
    stats = list(AnnotatorQuality.objects.filter(project=project))
    below = [q for q in stats if {"low_accuracy", "low_weight"} & set(q.flags)]
    n_gold = sum(q.gold_accuracy is not None for q in stats)
    n_gold_below = sum(q.gold_accuracy is not None for q in below)
    assert n_gold > GOLD_CHART_MAX_POINTS
    client.force_login(admin)
    assert page_queries(client, project) == few
    body = client.get(url("quality_dashboard", project)).content.decode()
    assert "chart-interval" not in body
    chart = re.search(r"<svg[^>]*chart-histogram.*?</svg>", body, re.S).group(0)
    # Binned: a bar (two parts at most) per bin, whatever the number of annotators.
    assert "<circle" not in chart and chart.count("<rect") <= 2 * GOLD_BINS + 2
    assert f"<title>Gold accuracy of {n_gold:,} annotators: number per bin of 0.05</title>" in chart
    desc = re.search(r"<desc>(.*?)</desc>", chart).group(1)
    assert desc.startswith(f"{n_gold:,} in {GOLD_BINS} bins, {n_gold_below:,} of them below threshold. ")
    bars = re.findall(r"<g><title>([\d.]+)–([\d.]+): ([\d,]+)", chart)
    assert sum(int(n.replace(",", "")) for _, _, n in bars) == n_gold
    caption = re.search(r"<figcaption[^>]*>(.*?)</figcaption>", body[body.index("chart-histogram") :], re.S)
    assert "Histogram" in caption.group(1) and "rather than one mark per annotator" in caption.group(1)
    assert "more than 1,000" in caption.group(1)
    assert f'<span class="q-below-count">{len(below)} below threshold</span>' in body
