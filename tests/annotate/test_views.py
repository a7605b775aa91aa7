"""The server-rendered pages: the annotator's page and its HTMX submit, the project set-up
pages (settings, pools, members, import), progress, roles on every page, safe Markdown and
``manage.py load_demo``."""
from __future__ import annotations

import io
import re
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from annotate import queue
from annotate.models import Assignment, AssignmentStatus, Comparison, GoldAnswer, Judgment, Membership, Pool
from annotate.models import Project, Prompt, Response, Role
from annotate.rendering import render_markdown
from tests import factories
from tests.factories import TEST_PASSWORD, make_pool, make_project, make_team

pytestmark = pytest.mark.django_db

User = get_user_model()
HX = {"HTTP_HX_REQUEST": "true"}
SECRET_MODEL = "MODEL-SECRET-ALPHA"
SECRET_MODEL_B = "MODEL-SECRET-BETA"
SECRET_META = "META-SECRET-42"
OTHER_RATIONALE = "OTHER-RATIONALE-SECRET-7"


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


def make_comparison(project, i, *, text_a=None, text_b=None, prompt=None, **kwargs):
    """A comparison whose model names and metadata are secrets an annotator must never see."""
    return factories.make_comparison(
        project,
        i,
        prompt=prompt or f"Prompt number {i}: explain something",
        text_a=text_a or f"Answer alpha {i}",
        text_b=text_b or f"Answer beta {i}",
        model_a=SECRET_MODEL,
        model_b=SECRET_MODEL_B,
        metadata={"note": SECRET_META},
        **kwargs,
    )


@pytest.fixture
def world():
    """A project with an admin, a researcher, two annotators in a pool, an outsider; three
    regular comparisons (one with a TRL source preference) and one gold comparison."""
    project = make_project("Views test", instructions="Be **careful**.", overlap=2, allow_ties=True)
    pool = make_pool(project, "EU", attributes={"region": "EU"}, target_share=1.0)
    team = make_team(
        project, admin="boss", researcher="sci", annotators=("ann", "ann2"), pool=pool, password=TEST_PASSWORD
    )
    comps = [make_comparison(project, i, source_preference="a" if i == 1 else "") for i in range(3)]
    gold = make_comparison(project, 99, gold="b", text_a="Calibration left text", text_b="Calibration right text")
    return {"project": project, "pool": pool, "users": team.users, "comps": comps, "gold": gold}


def login(client, user):
    client.force_login(user)
    return client


def annotate_url(project):
    return reverse("annotate", args=[project.pk])


def assignment_id(html: str) -> int:
    m = re.search(r'data-assignment="(\d+)"', html)
    assert m, "no item on the page"
    return int(m.group(1))


def counter(html: str) -> tuple[int, int]:
    done = int(re.search(r'class="counter-done">(\d+)<', html).group(1))
    remaining = int(re.search(r'class="counter-remaining">(\d+)<', html).group(1))
    return done, remaining


def assert_no_secrets(html: str) -> None:
    lowered = html.lower()
    for secret in (SECRET_MODEL, SECRET_MODEL_B, SECRET_META, OTHER_RATIONALE):
        assert secret not in html
    for word in ("gold", "source_preference", "is_gold", "a_on_left", "model_name", "response_a", "response_b"):
        assert word not in lowered, word


# --------------------------------------------------------------------------------------------
# The annotator's page
# --------------------------------------------------------------------------------------------


def test_annotate_page_renders_the_item_without_hidden_data(client, world):
    project, ann, ann2 = world["project"], world["users"]["ann"], world["users"]["ann2"]
    # Another annotator judged the first comparison with a rationale this one must not see.
    other = queue.next_assignment(ann2, project)
    queue.submit_judgment(ann2, other.pk, choice="left", rationale=OTHER_RATIONALE)

    html = login(client, ann).get(annotate_url(project)).content.decode()

    a = Assignment.objects.get(annotator=ann, status=AssignmentStatus.ACTIVE)
    left, right = queue.shown_pair(a)
    assert assignment_id(html) == a.pk
    assert a.comparison.prompt.text in html
    assert html.index(left.text) < html.index(right.text)  # display order as recorded
    assert "Response 1 <span class=\"side\">(left)</span>" in html
    assert "Response 2 <span class=\"side\">(right)</span>" in html
    assert "<strong>careful</strong>" in html  # instructions rendered
    assert_no_secrets(html)


def test_gold_item_looks_like_any_other(client, world):
    project, ann = world["project"], world["users"]["ann"]
    project.gold_rate = 1.0
    project.save()
    html = login(client, ann).get(annotate_url(project)).content.decode()
    a = Assignment.objects.get(annotator=ann, status=AssignmentStatus.ACTIVE)
    assert a.comparison.is_gold
    assert "Calibration left text" in html and "Calibration right text" in html
    assert_no_secrets(html)
    # The HTMX partial of the same item is just as clean.
    assert_no_secrets(client.get(annotate_url(project), **HX).content.decode())


def test_keyboard_legend_and_controls_present(client, world):
    html = login(client, world["users"]["ann"]).get(annotate_url(world["project"])).content.decode()
    assert 'class="shortcut-legend"' in html
    for key in ("<kbd>1</kbd> left", "<kbd>2</kbd> right", "<kbd>3</kbd> tie", "<kbd>0</kbd> both bad", "<kbd>S</kbd> skip"):
        assert key in html
    assert "<kbd>Enter</kbd> submit" in html
    for value in ("left", "right", "tie", "both_bad"):
        assert f'name="choice" value="{value}"' in html
    assert 'name="strength" value="3"' in html and 'name="rationale"' in html
    assert 'hx-post="' + annotate_url(world["project"]) in html
    assert "X-CSRFToken" in html and "csrfmiddlewaretoken" in html
    assert "js/annotate.js" in html and "vendor/htmx.min.js" in html


def test_ties_hidden_when_not_allowed(client, world):
    project = world["project"]
    project.allow_ties = False
    project.save()
    html = login(client, world["users"]["ann"]).get(annotate_url(project)).content.decode()
    assert 'value="tie"' not in html and "<kbd>3</kbd> tie" not in html


def test_htmx_submit_returns_the_next_item_partial(client, world):
    project, ann = world["project"], world["users"]["ann"]
    html = login(client, ann).get(annotate_url(project)).content.decode()
    first = assignment_id(html)
    done0, _ = counter(html)

    r = client.post(
        annotate_url(project),
        {"assignment": first, "choice": "left", "strength": "2", "rationale": "  clearer  ", "seconds": "2.5"},
        **HX,
    )
    assert r.status_code == 200
    body = r.content.decode()
    assert "<html" not in body and body.lstrip().startswith('<section id="annotate-item"')
    second = assignment_id(body)
    assert second != first
    assert counter(body)[0] == done0 + 1
    j = Judgment.objects.get(annotator=ann)
    a = Assignment.objects.get(pk=first)
    assert j.choice == ("a" if a.a_on_left else "b")
    assert (j.strength, j.rationale, j.seconds) == (2, "clearer", 2.5)
    assert Assignment.objects.get(pk=second).status == AssignmentStatus.ACTIVE
    assert_no_secrets(body)


def test_double_submit_creates_one_judgment_and_shows_the_next_item(client, world):
    project, ann = world["project"], world["users"]["ann"]
    first = assignment_id(login(client, ann).get(annotate_url(project)).content.decode())
    data = {"assignment": first, "choice": "right"}
    r1 = client.post(annotate_url(project), data, **HX)
    r2 = client.post(annotate_url(project), data, **HX)
    assert r1.status_code == r2.status_code == 200
    assert Judgment.objects.filter(annotator=ann).count() == 1
    assert assignment_id(r2.content.decode()) == assignment_id(r1.content.decode()) != first
    assert counter(r2.content.decode())[0] == 1
    # Without HTMX too: a redirect, never an error page.
    r3 = client.post(annotate_url(project), data)
    assert r3.status_code == 302 and Judgment.objects.filter(annotator=ann).count() == 1


def test_plain_post_redirects_back_to_the_page(client, world):
    project, ann = world["project"], world["users"]["ann"]
    first = assignment_id(login(client, ann).get(annotate_url(project)).content.decode())
    r = client.post(annotate_url(project), {"assignment": first, "choice": "both_bad"})
    assert r.status_code == 302 and r["Location"] == annotate_url(project)
    assert Judgment.objects.get(annotator=ann).choice == "both_bad"
    page = client.get(r["Location"]).content.decode()
    assert assignment_id(page) != first


def test_submit_without_a_choice_keeps_the_item_with_a_message(client, world):
    project, ann = world["project"], world["users"]["ann"]
    first = assignment_id(login(client, ann).get(annotate_url(project)).content.decode())
    body = client.post(annotate_url(project), {"assignment": first}, **HX).content.decode()
    assert assignment_id(body) == first
    assert "Pick which response is better" in body
    assert not Judgment.objects.exists()


def test_skip_serves_the_next_item(client, world):
    project, ann = world["project"], world["users"]["ann"]
    first = assignment_id(login(client, ann).get(annotate_url(project)).content.decode())
    body = client.post(reverse("annotate_skip", args=[project.pk]), {"assignment": first}, **HX).content.decode()
    assert assignment_id(body) != first
    assert Assignment.objects.get(pk=first).status == AssignmentStatus.SKIPPED
    assert "Skipped" in body
    # Skipping twice is harmless.
    again = client.post(reverse("annotate_skip", args=[project.pk]), {"assignment": first}, **HX)
    assert again.status_code == 200 and not Judgment.objects.exists()


def test_someone_elses_assignment_gives_a_message_and_my_next_item(client, world):
    project, ann, ann2 = world["project"], world["users"]["ann"], world["users"]["ann2"]
    theirs = queue.next_assignment(ann2, project)
    body = login(client, ann).post(annotate_url(project), {"assignment": theirs.pk, "choice": "left"}, **HX)
    text = body.content.decode()
    assert body.status_code == 200 and "not assigned to you" in text
    mine = Assignment.objects.get(annotator=ann, status=AssignmentStatus.ACTIVE)
    assert assignment_id(text) == mine.pk
    assert not Judgment.objects.exists()


def test_expired_and_taken_item_shows_a_message_and_the_next_item(client, world):
    project, ann = world["project"], world["users"]["ann"]
    first = assignment_id(login(client, ann).get(annotate_url(project)).content.decode())
    a = Assignment.objects.get(pk=first)
    Assignment.objects.filter(pk=first).update(expires_at=timezone.now() - timedelta(seconds=5))
    queue.expire_stale(project)
    # Others filled the comparison meanwhile.
    Comparison.objects.filter(pk=a.comparison_id).update(slots_taken=project.overlap, is_open=False)
    body = client.post(annotate_url(project), {"assignment": first, "choice": "left"}, **HX).content.decode()
    assert "expired" in body
    assert assignment_id(body) != first
    assert not Judgment.objects.exists()


def test_all_done_partial(client, world):
    project, ann = world["project"], world["users"]["ann"]
    login(client, ann)
    html = client.get(annotate_url(project)).content.decode()
    for _ in range(10):
        if 'data-assignment="' not in html:
            break
        html = client.post(annotate_url(project), {"assignment": assignment_id(html), "choice": "tie"}, **HX).content.decode()
    assert "All done" in html
    # Three regular comparisons and, once they are exhausted, the gold one.
    assert counter(html) == (4, 0)
    assert Judgment.objects.filter(annotator=ann).count() == 4


def test_excluded_annotator_sees_a_paused_message(client, world):
    project, ann = world["project"], world["users"]["ann"]
    Membership.objects.filter(user=ann).update(excluded=True)
    r = login(client, ann).get(annotate_url(project))
    assert r.status_code == 200 and "paused" in r.content.decode()
    assert not Assignment.objects.filter(annotator=ann).exists()


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------

XSS = (
    "<script>alert('x')</script>\n\n<img src=x onerror=alert(1)>\n\n"
    "[click](javascript:alert(1)) <a href=\"javascript:alert(2)\">a</a> <iframe src=//evil></iframe>\n\n"
    "```python\nprint('<b>hi</b>')\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
)


def test_render_markdown_is_sanitized():
    html = str(render_markdown(XSS))
    lowered = html.lower()
    for bad in ("<script", "onerror=", "<iframe", "<img", "href=\"javascript", "src="):
        assert bad not in lowered, bad
    # No tag carries an event handler or a javascript: URL (as text, escaped, it is harmless).
    for tag in re.findall(r"<[^>]+>", html):
        assert not re.search(r"\son\w+\s*=", tag) and "javascript" not in tag.lower(), tag
    assert '<pre><code class="language-python">' in html
    assert "&lt;b&gt;hi&lt;/b&gt;" in html  # code shown, not parsed
    assert "<table>" in html and "<td>1</td>" in html
    assert "&lt;script&gt;" in html  # raw HTML is shown as text


def test_render_markdown_keeps_safe_links_and_basic_markup():
    html = str(render_markdown("**bold** and [docs](https://example.com)\nnext line"))
    assert "<strong>bold</strong>" in html
    assert 'href="https://example.com"' in html and 'rel="noopener noreferrer nofollow"' in html
    assert "<br" in html
    assert str(render_markdown("")) == "" and str(render_markdown(None)) == ""


def test_hostile_response_is_inert_on_the_annotate_page(client, world):
    project, ann = world["project"], world["users"]["ann"]
    Comparison.objects.all().delete()
    make_comparison(project, 7, text_a=XSS, text_b="Plain answer")
    html = login(client, ann).get(annotate_url(project)).content.decode()
    item = html[html.index('id="annotate-item"'):html.index("</section>")]
    assert "<script" not in item and "onerror=" not in item and 'href="javascript' not in item
    assert 'class="language-python"' in item


# --------------------------------------------------------------------------------------------
# Import page
# --------------------------------------------------------------------------------------------

GOOD_LINE = '{"prompt": "P1", "response_a": "A1", "response_b": "B1"}'
BAD_FILE = "\n".join(
    [
        GOOD_LINE,
        '{"prompt": "P2", "response_a": "A2"}',
        '{"prompt": "P3", "response_a": "A3", "response_b": "B3", "gold": "maybe"}',
    ]
)


def upload(name, text):
    f = io.BytesIO(text.encode("utf-8"))
    f.name = name
    return f


def test_import_page_lists_line_and_field_errors_and_imports_nothing(client, world):
    project = world["project"]
    before = Comparison.objects.filter(project=project).count()
    url = reverse("project_import", args=[project.pk])
    r = login(client, world["users"]["boss"]).post(url, {"file": upload("bad.jsonl", BAD_FILE)})
    html = r.content.decode()
    assert r.status_code == 200
    assert "Nothing was imported" in html
    assert "Line 2" in html and "<code>response_b</code>" in html
    assert "Line 3" in html and "<code>gold</code>" in html
    assert Comparison.objects.filter(project=project).count() == before
    assert not Prompt.objects.filter(text="P1").exists()


def test_import_page_htmx_returns_the_result_partial(client, world):
    project = world["project"]
    url = reverse("project_import", args=[project.pk])
    r = login(client, world["users"]["boss"]).post(url, {"file": upload("bad.jsonl", BAD_FILE), "token": "t1"}, **HX)
    body = r.content.decode()
    assert "<html" not in body and "Line 2" in body


def test_import_page_success_summary(client, world):
    project = world["project"]
    text = GOOD_LINE + '\n{"prompt": "P2", "response_a": "A2", "response_b": "B2", "gold": "a"}\n'
    url = reverse("project_import", args=[project.pk])
    r = login(client, world["users"]["boss"]).post(url, {"file": upload("good.jsonl", text), "token": "abc"})
    html = r.content.decode()
    assert "Imported good.jsonl" in html
    assert Prompt.objects.filter(project=project, text="P1").exists()
    assert Comparison.objects.filter(project=project, is_gold=True).count() == 2
    # The progress endpoint answers (nothing running now).
    p = client.get(reverse("project_import_progress", args=[project.pk]), {"token": "abc"})
    assert p.status_code == 200


def test_import_page_csv(client, world):
    project = world["project"]
    text = "prompt,response_a,response_b\nCSV prompt,yes,no\n"
    url = reverse("project_import", args=[project.pk])
    login(client, world["users"]["boss"]).post(url, {"file": upload("x.csv", text)})
    assert Prompt.objects.filter(project=project, text="CSV prompt").exists()


# --------------------------------------------------------------------------------------------
# Project set-up pages
# --------------------------------------------------------------------------------------------


def test_staff_creates_a_project_and_becomes_its_admin(client, world):
    staff = User.objects.create_user("staffer", password=TEST_PASSWORD, is_staff=True)
    r = login(client, staff).post(
        reverse("project_create"),
        {"name": "New one", "instructions": "# Hi", "overlap": 3, "gold_rate": 0.1, "allow_ties": "on",
         "assignment_timeout_s": 600, "license": "CC-BY-4.0"},
    )
    project = Project.objects.get(name="New one")
    assert r.status_code == 302
    assert Membership.objects.get(project=project, user=staff).role == Role.ADMIN
    assert project.created_by == staff


def test_non_staff_cannot_create_projects(client, world):
    r = login(client, world["users"]["boss"]).get(reverse("project_create"))
    assert r.status_code == 403


def test_settings_page_validates_and_saves(client, world):
    project = world["project"]
    url = reverse("project_settings", args=[project.pk])
    login(client, world["users"]["boss"])
    data = {"name": "Renamed", "instructions": "x", "overlap": 4, "gold_rate": 1.5, "assignment_timeout_s": 600}
    r = client.post(url, data)
    assert r.status_code == 200 and "between 0 and 1" in r.content.decode()
    data["gold_rate"] = 0.2
    assert client.post(url, data).status_code == 302
    project.refresh_from_db()
    assert (project.name, project.overlap, project.gold_rate, project.allow_ties) == ("Renamed", 4, 0.2, False)


def test_pools_create_edit_and_shares(client, world):
    project = world["project"]
    login(client, world["users"]["boss"])
    url = reverse("project_pools", args=[project.pk])
    r = client.post(url, {"name": "US", "attributes": "[1, 2]", "target_share": 0.5})
    assert "must be a JSON object" in r.content.decode()
    r = client.post(url, {"name": "US", "attributes": '{"region": "US"}', "target_share": 0.5})
    assert r.status_code == 302
    us = Pool.objects.get(project=project, name="US")
    assert us.attributes == {"region": "US"}
    page = client.get(url).content.decode()
    assert "1.50" in page  # shares shown with their sum
    r = client.post(reverse("project_pool_edit", args=[project.pk, us.pk]),
                    {"name": "US", "attributes": "{}", "target_share": 0.0})
    assert r.status_code == 302
    us.refresh_from_db()
    assert us.target_share == 0.0
    dup = client.post(url, {"name": "eu", "attributes": "{}", "target_share": 0.1})
    assert "already has a pool" in dup.content.decode()


def test_members_add_change_exclude(client, world):
    project, pool = world["project"], world["pool"]
    login(client, world["users"]["boss"])
    url = reverse("project_members", args=[project.pk])
    newbie = User.objects.create_user("newbie", password=TEST_PASSWORD)
    r = client.post(url, {"username": "nobody", "role": "annotator"})
    assert "cannot be added" in r.content.decode()
    r = client.post(url, {"username": "newbie", "role": "annotator", "pool": pool.pk})
    assert r.status_code == 302
    m = Membership.objects.get(project=project, user=newbie)
    assert (m.role, m.pool_id) == (Role.ANNOTATOR, pool.pk)
    edit = reverse("project_member_edit", args=[project.pk, m.pk])
    client.post(edit, {f"m{m.pk}-role": "researcher", f"m{m.pk}-pool": ""})
    m.refresh_from_db()
    assert (m.role, m.pool_id) == (Role.RESEARCHER, None)
    # Exclusion keeps the judgments.
    ann = world["users"]["ann"]
    a = queue.next_assignment(ann, project)
    queue.submit_judgment(ann, a.pk, choice="left")
    ma = Membership.objects.get(project=project, user=ann)
    client.post(reverse("project_member_edit", args=[project.pk, ma.pk]), {"action": "exclude"})
    ma.refresh_from_db()
    assert ma.excluded and Judgment.objects.filter(annotator=ann).count() == 1
    client.post(reverse("project_member_edit", args=[project.pk, ma.pk]), {"action": "include"})
    ma.refresh_from_db()
    assert not ma.excluded
    # An admin cannot demote themselves.
    mb = Membership.objects.get(project=project, user=world["users"]["boss"])
    client.post(reverse("project_member_edit", args=[project.pk, mb.pk]), {f"m{mb.pk}-role": "annotator"})
    mb.refresh_from_db()
    assert mb.role == Role.ADMIN


def test_progress_page_counts(client, world):
    project, ann = world["project"], world["users"]["ann"]
    a = queue.next_assignment(ann, project)
    queue.submit_judgment(ann, a.pk, choice="left")
    for who in ("boss", "sci"):
        html = login(client, world["users"][who]).get(reverse("project_progress", args=[project.pk])).content.decode()
        assert "Judgments per pool" in html and "EU" in html
        assert re.search(r"<td>ann</td>\s*<td>EU</td>\s*<td class=\"num\"><strong>1</strong>", html)


def test_home_lists_projects_with_roles(client, world):
    html = login(client, world["users"]["ann"]).get(reverse("home")).content.decode()
    assert "Views test" in html and "Start annotating" in html
    html = login(client, world["users"]["sci"]).get(reverse("home")).content.decode()
    assert "Researcher" in html and "Start annotating" not in html
    html = login(client, world["users"]["outsider"]).get(reverse("home")).content.decode()
    assert "Views test" not in html


def test_project_detail_redirects_by_role(client, world):
    project = world["project"]
    url = reverse("project_detail", args=[project.pk])
    assert login(client, world["users"]["ann"]).get(url)["Location"] == annotate_url(project)
    assert login(client, world["users"]["sci"]).get(url)["Location"] == reverse("project_progress", args=[project.pk])


# --------------------------------------------------------------------------------------------
# Roles on every page
# --------------------------------------------------------------------------------------------

ADMIN_PAGES = ["project_settings", "project_pools", "project_members", "project_import", "project_import_progress"]
READER_PAGES = ["project_progress"]
ANNOTATOR_PAGES = ["annotate"]
REMOVALS = ["project_member_remove", "project_pool_delete"]  # GET: a confirm page; POST: the removal


def project_urls(world):
    project, pool = world["project"], world["pool"]
    m = Membership.objects.get(project=project, user=world["users"]["ann"])
    urls = {name: ("get", reverse(name, args=[project.pk])) for name in ADMIN_PAGES + READER_PAGES + ANNOTATOR_PAGES}
    urls["project_detail"] = ("get", reverse("project_detail", args=[project.pk]))
    urls["project_pool_edit"] = ("get", reverse("project_pool_edit", args=[project.pk, pool.pk]))
    urls["project_member_edit"] = ("post", reverse("project_member_edit", args=[project.pk, m.pk]))
    urls["project_member_remove"] = ("post", reverse("project_member_remove", args=[project.pk, m.pk]))
    urls["project_pool_delete"] = ("post", reverse("project_pool_delete", args=[project.pk, pool.pk]))
    urls["annotate_skip"] = ("post", reverse("annotate_skip", args=[project.pk]))
    urls["annotate_post"] = ("post", reverse("annotate", args=[project.pk]))
    return urls


def test_anonymous_users_are_sent_to_login_everywhere(client, world):
    for name, (method, url) in list(project_urls(world).items()) + [("home", ("get", "/")), ("create", ("get", reverse("project_create")))]:
        r = getattr(client, method)(url)
        assert r.status_code == 302, name
        assert r["Location"].startswith(reverse("login")), name
    assert client.get(reverse("login")).status_code == 200


def test_anonymous_htmx_request_gets_a_client_redirect(client, world):
    r = client.post(annotate_url(world["project"]), {"assignment": 1, "choice": "left"}, **HX)
    assert r.status_code == 200 and r["HX-Redirect"].startswith(reverse("login"))


def test_outsider_gets_403_on_every_project_page(client, world):
    login(client, world["users"]["outsider"])
    for name, (method, url) in project_urls(world).items():
        assert getattr(client, method)(url).status_code == 403, name


def test_annotator_gets_403_on_admin_and_reader_pages(client, world):
    login(client, world["users"]["ann"])
    urls = project_urls(world)
    for name in ADMIN_PAGES + READER_PAGES + ["project_pool_edit", "project_member_edit", *REMOVALS]:
        method, url = urls[name]
        assert getattr(client, method)(url).status_code == 403, name
    for name in REMOVALS:  # the confirm pages too
        assert client.get(urls[name][1]).status_code == 403, name
    assert client.get(urls["annotate"][1]).status_code == 200


def test_researcher_reads_progress_only(client, world):
    login(client, world["users"]["sci"])
    urls = project_urls(world)
    assert client.get(urls["project_progress"][1]).status_code == 200
    others = ["project_pool_edit", "project_member_edit", "annotate_skip", *REMOVALS]
    for name in ADMIN_PAGES + ANNOTATOR_PAGES + others:
        method, url = urls[name]
        assert getattr(client, method)(url).status_code == 403, name


def test_admin_is_not_an_annotator(client, world):
    login(client, world["users"]["boss"])
    urls = project_urls(world)
    for name in ADMIN_PAGES + READER_PAGES + ["project_pool_edit", *REMOVALS]:  # the removals' confirm pages
        assert client.get(urls[name][1]).status_code == 200, name
    assert client.get(urls["annotate"][1]).status_code == 403


def test_missing_project_is_404(client, world):
    login(client, world["users"]["boss"])
    assert client.get(reverse("project_settings", args=[999999])).status_code == 404


# --------------------------------------------------------------------------------------------
# load_demo
# --------------------------------------------------------------------------------------------


def counts():
    return (
        User.objects.count(),
        Project.objects.count(),
        Pool.objects.count(),
        Membership.objects.count(),
        Prompt.objects.count(),
        Response.objects.count(),
        Comparison.objects.count(),
        GoldAnswer.objects.count(),
    )


def test_load_demo_is_idempotent():
    out = io.StringIO()
    call_command("load_demo", stdout=out)
    assert "prefloop-demo" in out.getvalue() and "DEMO" in out.getvalue()
    first = counts()
    call_command("load_demo", stdout=io.StringIO())
    assert counts() == first

    project = Project.objects.get(name="Demo: helpful assistant")
    assert (project.overlap, project.gold_rate, project.allow_ties) == (3, 0.15, True)
    pools = list(project.pools.all())
    assert len(pools) == 3 and abs(sum(p.target_share for p in pools) - 1.0) < 1e-9
    for p in pools:
        assert Membership.objects.filter(project=project, pool=p, role=Role.ANNOTATOR).count() == 2
    assert User.objects.get(username="admin").is_superuser
    assert Membership.objects.get(project=project, user__username="admin").role == Role.ADMIN
    assert Membership.objects.get(project=project, user__username="researcher").role == Role.RESEARCHER
    assert User.objects.get(username="annot1").check_password("prefloop-demo")
    regular = Comparison.objects.filter(project=project, is_gold=False).count()
    gold = Comparison.objects.filter(project=project, is_gold=True).count()
    assert regular >= 24 and 4 <= gold <= 8
    assert Response.objects.filter(prompt__project=project, model_name="tiny-llama-r0").exists()
    assert Response.objects.filter(text__contains="```").exists()  # code blocks in the data


def test_demo_annotator_can_work_through_the_page(client):
    call_command("load_demo", stdout=io.StringIO())
    project = Project.objects.get(name="Demo: helpful assistant")
    login(client, User.objects.get(username="annot1"))
    html = client.get(annotate_url(project)).content.decode()
    assert_no_secrets(html)
    assert "tiny-llama" not in html and "baseline" not in html
    for _ in range(3):
        html = client.post(annotate_url(project), {"assignment": assignment_id(html), "choice": "left"}, **HX).content.decode()
        assert "tiny-llama" not in html and "baseline" not in html
        assert_no_secrets(html)
    assert counter(html)[0] == 3


def test_import_without_a_file_says_so(client, world):
    url = reverse("project_import", args=[world["project"].pk])
    login(client, world["users"]["boss"])
    assert "This field is required" in client.post(url, {}).content.decode()
    assert "This field is required" in client.post(url, {}, **HX).content.decode()


def test_import_page_real_hh_file_needs_the_empty_response_option(client, world, shared_data):
    """Four HH-RLHF lines have an empty chosen response: refused by name, with a hint, until
    the admin ticks "Allow empty responses"; then all 1,150 lines import."""
    project = world["project"]
    raw = (shared_data / "hh_harmless_dev.jsonl").read_text(encoding="utf-8")
    url = reverse("project_import", args=[project.pk])
    admin = login(client, world["users"]["boss"])
    before = Comparison.objects.filter(project=project).count()
    html = admin.post(url, {"file": upload("hh.jsonl", raw)}).content.decode()
    assert "Line 87, field <code>chosen</code>" in html and "Nothing was imported" in html
    assert "allow" in html.lower()
    assert Comparison.objects.filter(project=project).count() == before
    html = admin.post(url, {"file": upload("hh.jsonl", raw), "allow_empty_responses": "on"}).content.decode()
    assert "Imported hh.jsonl" in html
    assert Comparison.objects.filter(project=project).count() == before + 1150
