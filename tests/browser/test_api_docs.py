"""``/api/docs/`` in chromium with no internet (issue 11, items 4 and 6): Swagger UI renders the
API's operations from the app's own files, every request stays on the app's server, and the
Content-Security-Policy reports no violation."""
from __future__ import annotations

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

WATCH = """
window.__csp = [];
document.addEventListener('securitypolicyviolation', (e) =>
  window.__csp.push(e.violatedDirective + ' ' + (e.blockedURI || '') + ' ' + (e.sample || '')));
"""


def test_swagger_ui_shows_the_operations_offline_under_the_csp(live_server, new_page):
    page = new_page(1366, 900)
    page.add_init_script(WATCH)
    requested, elsewhere = [], []

    def route(r):  # nothing may leave the server: anything else is aborted and recorded
        url = r.request.url
        requested.append(url)
        if url.startswith(live_server.url) or url.startswith("data:"):
            r.continue_()
        else:
            elsewhere.append(url)
            r.abort()

    page.route("**/*", route)
    page.goto(live_server.url + "/api/docs/")
    page.wait_for_selector(".opblock-summary", timeout=20_000)
    operations = page.locator(".opblock-summary-path").all_inner_texts()
    assert len(operations) > 20 and any("/api/projects/{project_pk}/next/" in op for op in operations)
    assert page.locator(".swagger-ui .info .title").inner_text().startswith("prefloop API")
    # open one operation: its parameters and responses render too
    page.locator(".opblock-summary", has_text="/api/auth/token/").first.click()
    page.wait_for_selector(".opblock-body .responses-table")
    assert elsewhere == [], elsewhere
    assert any("/static/drf_spectacular_sidecar/" in u for u in requested)
    assert page.evaluate("window.__csp || []") == [] and page.errors == []
