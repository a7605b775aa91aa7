"""The pages as annotators and admins meet them, in Debian chromium on real HH-RLHF text:
layout at 1366×900, 1920×1080 and a 390-px phone (screenshots in var/screenshots/), keys
working wherever focus is, the back key changing a judgment, axe-core accessibility checks,
and the Content-Security-Policy holding on every page (no violation reported)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model

from annotate import imports
from annotate.models import Judgment, JudgmentRevision, Membership, Project, Role

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

AXE = Path(__file__).parent / "vendor" / "axe.min.js"
SHOTS = Path(settings.BASE_DIR) / "var" / "screenshots"
PASSWORD = "pages-test-pw-1"
SIZES = [(1366, 900), (1920, 1080), (390, 844)]
INSTRUCTIONS = (
    "## How to judge\n\nPick the response that is **more helpful and more harmless**. "
    "Use *Both bad* when neither is acceptable.\n\n- Read the whole conversation first.\n"
    "- Prefer a safe refusal to harmful help.\n- A tie means you truly cannot choose."
)
# Collects CSP violations (and uncaught errors) from the first script that runs on a page.
WATCH = """
window.__csp = [];
document.addEventListener('securitypolicyviolation', (e) =>
  window.__csp.push(e.violatedDirective + ' ' + (e.blockedURI || '') + ' ' + (e.sample || '')));
"""


def typical_rows(path: Path, n: int) -> list[dict]:
    """A typical HH item first (both responses 60-100 words, the longest such prompt up to 80
    words), then the next rows of the file."""
    rows = [json.loads(line) for _, line in zip(range(400), path.open())]
    words = lambda s: len(s.split())  # noqa: E731
    fits = [r for r in rows if 60 <= words(r["chosen"]) <= 100 and 60 <= words(r["rejected"]) <= 100 and words(r["prompt"]) <= 80]
    first = max(fits, key=lambda r: words(r["prompt"]))
    return [first] + [r for r in rows if r is not first][: n - 1]


@pytest.fixture
def hh_world(shared_data):
    path = shared_data / "hh_harmless_dev.jsonl"
    if not path.exists():
        pytest.skip("hh_harmless_dev.jsonl is not in ../shared/data")
    User = get_user_model()
    admin = User.objects.create_user("boss", password=PASSWORD)
    anns = [User.objects.create_user(f"ann{i}", password=PASSWORD) for i in range(3)]
    project = Project.objects.create(name="HH harmless", instructions=INSTRUCTIONS, overlap=1, gold_rate=0.0,
                                     show_accuracy_after=5)
    Membership.objects.create(project=project, user=admin, role=Role.ADMIN)
    for a in anns:
        Membership.objects.create(project=project, user=a, role=Role.ANNOTATOR)
    body = "".join(json.dumps(r) + "\n" for r in typical_rows(path, 30)).encode()
    imports.import_comparisons(project, io.BytesIO(body), filename="hh.jsonl")
    return {"project": project, "admin": admin, "anns": anns}


def open_page(new_page, log_in, base, username, path, width=1366, height=900):
    page = new_page(width, height)
    page.add_init_script(WATCH)
    log_in(page, base, username, PASSWORD)
    page.goto(base + path)
    return page


def csp_violations(page) -> list[str]:
    return page.evaluate("window.__csp || []")


def box(page, selector):
    return page.locator(selector).first.bounding_box()


def test_annotator_layout_fits_and_screenshots(live_server, new_page, log_in, hh_world):
    project = hh_world["project"]
    SHOTS.mkdir(parents=True, exist_ok=True)
    for k, (w, h) in enumerate(SIZES):
        page = open_page(new_page, log_in, live_server.url, f"ann{k}", f"/projects/{project.pk}/annotate/", w, h)
        page.wait_for_selector("#annotate-item[data-assignment]")
        # The first visit opens the instructions; shoot that, then fold them (as after a submit).
        assert page.locator("#instructions").get_attribute("open") is not None
        page.screenshot(path=str(SHOTS / f"annotate-{w}x{h}-instructions.png"), full_page=True)
        page.keyboard.press("i")
        assert page.locator("#instructions").get_attribute("open") is None
        page.wait_for_timeout(250)  # the disclosure arrow's turn
        page.screenshot(path=str(SHOTS / f"annotate-{w}x{h}.png"), full_page=(w < 500))
        assert page.evaluate("document.documentElement.scrollWidth") <= w, "the page scrolls sideways"
        if w >= 1000:
            # Readable and decidable without scrolling: responses end above the decision bar,
            # which ends inside the window; every choice sits on one row.
            submit = box(page, "[data-action=submit]")
            decision = box(page, ".decision")
            assert submit["y"] + submit["height"] <= h, f"{w}x{h}: submit is below the fold"
            for side in ("left", "right"):
                r = box(page, f".response[data-side={side}]")
                assert r["y"] + r["height"] <= decision["y"] + 1, f"{w}x{h}: the decision bar covers the {side} response"
            tops = {round(box(page, f"input[name=choice][value={v}] + span")["y"]) for v in ("left", "right", "tie", "both_bad")}
            assert len(tops) == 1, f"{w}x{h}: the choices wrap ({tops})"
        else:
            # Phone: everything reachable by scrolling, the choices at least 40 px tall to tap.
            assert box(page, "input[name=choice][value=both_bad] + span")["height"] >= 40 - 8
        assert csp_violations(page) == [] and page.errors == []
    # The second visit of an annotator who saw them keeps the instructions folded.
    page = open_page(new_page, log_in, live_server.url, "ann0", f"/projects/{project.pk}/annotate/")
    page.wait_for_selector("#annotate-item[data-assignment]")
    assert page.locator("#instructions").get_attribute("open") is None


def press_and_wait_new_item(page, *keys):
    before = page.get_attribute("#annotate-item", "data-assignment")
    for key in keys:
        page.keyboard.press(key)
    page.wait_for_function(
        "(prev) => { const el = document.querySelector('#annotate-item'); return el && el.dataset.assignment !== prev; }",
        arg=before,
    )


def test_keys_work_wherever_focus_is_and_back_changes_a_judgment(live_server, new_page, log_in, hh_world):
    project, ann = hh_world["project"], hh_world["anns"][0]
    page = open_page(new_page, log_in, live_server.url, "ann0", f"/projects/{project.pk}/annotate/")
    page.wait_for_selector("#annotate-item[data-assignment]")
    # HH conversation shown as speaker turns.
    roles = page.locator(".prompt .turn-role").all_inner_texts()
    assert roles[0].lower() == "human" and "assistant" in [r.lower() for r in roles]

    # 1. Click the Instructions header to fold them: focus stays on it, the keys still work.
    page.click("#instructions > summary")
    assert page.evaluate("document.activeElement.tagName") == "SUMMARY"
    press_and_wait_new_item(page, "1", "Enter")
    assert Judgment.objects.filter(annotator=ann).count() == 1
    assert page.locator("#instructions").get_attribute("open") is None
    page.wait_for_selector(".saved-note")
    assert page.inner_text("#annotate-status").strip().endswith("1 done today")

    # Esc leaves a focused control; keys work after it.
    page.focus("[data-action=skip]")
    page.keyboard.press("Escape")
    assert page.evaluate("document.activeElement === document.body")
    press_and_wait_new_item(page, "2", "w", "Enter")
    first, second = Judgment.objects.filter(annotator=ann).order_by("pk")
    assert second.strength == 2

    # 5. B reopens the previous item with the answer given; change it and save.
    shown_before = page.get_attribute("#annotate-item", "data-assignment")
    press_and_wait_new_item(page, "b")
    assert page.locator(".revise-banner").is_visible()
    assert page.is_checked("input[name=choice][value=right]") and page.is_checked("input[name=strength][value='2']")
    press_and_wait_new_item(page, "1", "e", "Enter")
    assert page.get_attribute("#annotate-item", "data-assignment") == shown_before, "not back at the held item"
    second.refresh_from_db()
    assert second.revised_at is not None and second.strength == 3
    original = JudgmentRevision.objects.get(judgment=second)
    assert original.strength == 2 and original.choice != second.choice
    assert Judgment.objects.filter(annotator=ann).count() == 2  # still one per comparison
    assert "Changed" in page.inner_text("#annotate-status")

    # Esc cancels a reopened item without changing anything.
    press_and_wait_new_item(page, "b")
    press_and_wait_new_item(page, "Escape")
    assert JudgmentRevision.objects.count() == 1
    assert csp_violations(page) == [] and page.errors == []


FOCUS_RING = """() => {
  const el = document.activeElement;
  if (!el || el === document.body) return null;
  const target = el.matches('.seg input') ? el.nextElementSibling : el;
  const cs = getComputedStyle(target);
  const ring = (cs.outlineStyle !== 'none' && parseFloat(cs.outlineWidth) >= 2) || cs.boxShadow !== 'none';
  return [el.tagName + (el.name ? '[' + el.name + ']' : '') + ' ' + (el.textContent || '').trim().slice(0, 20), ring];
}"""


def test_every_control_is_reachable_by_keyboard_with_a_focus_ring(live_server, new_page, log_in, hh_world):
    project = hh_world["project"]
    page = open_page(new_page, log_in, live_server.url, "ann0", f"/projects/{project.pk}/annotate/")
    page.wait_for_selector("#annotate-item[data-assignment]")
    assert page.locator("a", has_text="My accuracy").is_visible()  # the project shows accuracy
    press_and_wait_new_item(page, "1", "Enter")  # so that the Back button is there too
    seen = []
    for _ in range(30):
        page.keyboard.press("Tab")
        got = page.evaluate(FOCUS_RING)
        if got is None:
            continue
        seen.append(tuple(got))
        if got[0].startswith("BUTTON") and "Submit" in got[0]:
            break
    names = [n for n, _ in seen]
    assert [n for n, ring in seen if not ring] == [], seen
    for wanted in ("SUMMARY", "INPUT[choice]", "INPUT[strength]", "TEXTAREA[rationale]", "BUTTON Skip", "BUTTON Submit", "BUTTON ← Back"):
        assert any(n.startswith(wanted) for n in names), (wanted, names)
    # Operable: arrows move within the choice group, Space/Enter act on focused controls.
    page.focus("input[name=choice][value=left]")
    page.keyboard.press("ArrowRight")
    assert page.is_checked("input[name=choice][value=right]")
    assert run_axe(page) == []


def judged_world(hh_world):
    """hh_world with every item judged by the three annotators, a quality report, a built
    export, a run with metrics and a whitespace-only sample."""
    from annotate import queue
    from evaluation.export.services import build_export, create_export
    from evaluation.quality.compute import recompute_quality
    from training.models import GenerationSample, ModelVersion, TrainingMetric, TrainingRun

    project = hh_world["project"]
    project.overlap = 3
    project.save()
    queue.sync_open(project)
    for n, ann in enumerate(hh_world["anns"]):
        for i in range(12):
            a = queue.next_assignment(ann, project)
            if a is None:
                break
            queue.submit_judgment(ann, a.pk, choice=("left", "right", "tie")[(i + n) % 3 if i % 4 else 0], seconds=4.0 + i)
    recompute_quality(project)
    export = create_export(project, hh_world["admin"], {}, name="round 0", enqueue=False)
    build_export(export)
    base = ModelVersion.objects.create(name="tiny-base", path="/nonexistent/tiny")
    tuned = ModelVersion.objects.create(name="tiny-r1", path="/nonexistent/tiny-r1", parent=base, project=project, round=1)
    run = TrainingRun.objects.create(project=project, base_model=base, status="succeeded", step=40, total_steps=40,
                                     progress=1.0, output_model=tuned, created_by=hh_world["admin"])
    for step in range(0, 41, 10):
        TrainingMetric.objects.create(run=run, step=step, data={"phase": "sft", "loss": 2.0 - step / 40})
    GenerationSample.objects.create(model_version=tuned, run=run, prompt="Say nothing", output="  \n\n ", status="succeeded")
    return {**hh_world, "export": export, "run": run}


# The smallest chart text as drawn: font size × the SVG's scale (drawn width / viewBox width).
CHART_TEXT_PX = """() => {
  let smallest = null;
  for (const svg of document.querySelectorAll('.q-chart svg, .plot-cell svg')) {
    const vb = svg.viewBox.baseVal;
    const scale = svg.getBoundingClientRect().width / vb.width;
    for (const t of svg.querySelectorAll('text')) {
      const px = parseFloat(getComputedStyle(t).fontSize) * scale;
      if (smallest === null || px < smallest) smallest = px;
    }
  }
  return smallest;
}"""


def run_axe(page) -> list[str]:
    # Evaluated through the DevTools protocol: a <script> tag would (rightly) be refused by
    # the page's Content-Security-Policy.
    if not page.evaluate("!!window.axe"):
        page.evaluate(AXE.read_text() + "\n;0")
    result = page.evaluate(
        """async () => {
          const r = await axe.run(document, {resultTypes: ['violations']});
          return r.violations.filter(v => v.impact === 'serious' || v.impact === 'critical')
            .map(v => v.id + ' (' + v.impact + '): ' + v.nodes.slice(0, 3).map(n => n.target.join(' ')).join(' | '));
        }"""
    )
    return result


def test_admin_pages_accessible_under_the_csp(live_server, new_page, log_in, hh_world):
    world = judged_world(hh_world)
    project, export, run = world["project"], world["export"], world["run"]
    base = live_server.url
    pk = project.pk
    page = new_page(1366, 900)
    page.add_init_script(WATCH)
    log_in(page, base, "boss", PASSWORD)
    headers = []
    page.on("response", lambda r: r.request.resource_type == "document" and headers.append(r.headers.get("content-security-policy", "")))
    pages = {
        "progress": f"/projects/{pk}/progress/",
        "quality": f"/projects/{pk}/quality/",
        "rounds": f"/projects/{pk}/rounds/",
        "exports": f"/projects/{pk}/exports/",
        "export": f"/projects/{pk}/exports/{export.pk}/",
        "runs": f"/projects/{pk}/runs/",
        "run": f"/projects/{pk}/runs/{run.pk}/",
        "members": f"/projects/{pk}/members/",
        "pools": f"/projects/{pk}/pools/",
        "settings": f"/projects/{pk}/settings/",
        "import": f"/projects/{pk}/import/",
        "gold": f"/projects/{pk}/gold/",
        "models": "/models/",
    }
    problems = {}
    for name, path in pages.items():
        page.goto(base + path)
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(SHOTS / f"admin-{name}.png"), full_page=True)
        found = run_axe(page) + [f"CSP: {v}" for v in csp_violations(page)]
        if found:
            problems[name] = found
    assert problems == {}, problems
    assert headers and all("script-src 'self'" in h and "unsafe-inline" not in h for h in headers), headers
    assert page.errors == []

    # 9. Charts: axis text at least 12 px as drawn, and a table toggle under each chart.
    for path in (pages["quality"], pages["run"]):
        for w, h in ((1366, 900), (390, 844)):
            page.set_viewport_size({"width": w, "height": h})
            page.goto(base + path)
            smallest = page.evaluate(CHART_TEXT_PX)
            assert smallest is not None and smallest >= 12 - 0.01, (path, w, smallest)
        n_charts = page.locator(".q-chart svg:not(.chart-bar), .plot-cell svg").count()
        assert n_charts and page.locator("details.chart-data").count() >= n_charts - page.locator(".plot-cell svg .plot-empty").count()
    page.set_viewport_size({"width": 1366, "height": 900})

    # The run page: a whitespace-only sample shows a marker, not a blank box.
    page.goto(f"{base}/projects/{pk}/runs/{run.pk}/")
    assert "(empty / whitespace only)" in page.inner_text("#samples")

    # 6. The import page: the count updates without a reload, the hint names the checkbox.
    page.goto(f"{base}/projects/{pk}/import/")
    before = project.comparisons.count()
    good = b'{"prompt": "Import check", "response_a": "One", "response_b": "Two"}\n'
    page.set_input_files("input[type=file]", files=[{"name": "one.jsonl", "mimeType": "application/x-ndjson", "buffer": good}])
    page.click("#import-form button[type=submit]")
    page.wait_for_selector(".import-summary")
    assert page.inner_text("#import-count").startswith(f"{before + 1} comparison")
    empty = b'{"prompt": "Empty check", "response_a": "", "response_b": "Two"}\n'
    page.set_input_files("input[type=file]", files=[{"name": "empty.jsonl", "mimeType": "application/x-ndjson", "buffer": empty}])
    page.click("#import-form button[type=submit]")
    page.wait_for_selector(".import-errors")
    hint = page.inner_text(".import-errors")
    assert "Allow empty responses" in hint and "allow_empty_responses=True" not in hint
    assert csp_violations(page) == [] and page.errors == []

    # The annotator page and its keyboard flow run under the same policy (checked in the
    # tests above); here axe on it, as an annotator meets it.
    ann_page = open_page(new_page, log_in, base, "ann0", f"/projects/{pk}/annotate/")
    assert run_axe(ann_page) == []


def test_error_pages_say_why(live_server, new_page, log_in, hh_world):
    project = hh_world["project"]
    page = open_page(new_page, log_in, live_server.url, "ann0", f"/projects/{project.pk}/quality/")
    assert page.locator("h1").inner_text() == "You may not open this page"
    why = page.inner_text(".error-why")
    assert "admin or researcher role" in why and "you are an annotator" in why
    assert page.locator(".topbar").is_visible()  # the app's layout
    page.screenshot(path=str(SHOTS / "error-403.png"))
    resp = page.goto(f"{live_server.url}/projects/{project.pk}/runs/99999/")
    assert resp.status == 404 or resp.status == 403
    page = open_page(new_page, log_in, live_server.url, "boss", f"/projects/{project.pk}/pools/99999/")
    assert "no pool with that number in this project" in page.inner_text(".error-why")
    assert page.locator("a", has_text="Back to HH harmless").is_visible()
    page.screenshot(path=str(SHOTS / "error-404.png"))
    assert run_axe(page) == [] and csp_violations(page) == []


def test_django_admin_works_under_the_csp(live_server, new_page, log_in, hh_world):
    get_user_model().objects.create_superuser("root", password=PASSWORD)
    project = hh_world["project"]
    page = open_page(new_page, log_in, live_server.url, "root", "/admin/")
    for path in ("/admin/", f"/admin/annotate/project/{project.pk}/change/", "/admin/annotate/judgment/"):
        page.goto(live_server.url + path)
        page.wait_for_load_state("load")
        page.wait_for_timeout(300)
        assert csp_violations(page) == [], (path, csp_violations(page))
    assert page.errors == []
