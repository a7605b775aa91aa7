"""``/api/docs/`` works without internet (issue 11, item 6): Swagger UI's files are the app's own
static files (drf-spectacular-sidecar), its start-up script a same-origin request, nothing inline,
so the page renders under the Content-Security-Policy. The browser check (operations shown, no
violation, no request leaving the server) is in ``tests/browser/test_api_docs.py``."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.django_db


def test_the_docs_page_names_only_the_apps_own_files(client):
    page = client.get("/api/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Content-Security-Policy" in page and "'unsafe-inline'" not in page["Content-Security-Policy"]
    sources = re.findall(r'<(?:script|link)[^>]*(?:src|href)="([^"]+)"', html)
    assert len(sources) >= 5, sources
    for url in sources:
        assert url.startswith("/"), f"{url} is not served by the app"
        response = client.get(url)
        assert response.status_code == 200, url
        if url.endswith(".js") or "script" in url:
            assert b"SwaggerUI" in b"".join(response.streaming_content if response.streaming else [response.content])
    assert "//" not in "".join(re.findall(r'(?:src|href)="([^"]+)"', html)).replace("://", "")
    # no inline script or style for the policy to block
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html) and "<style" not in html and "style=" not in html


def test_the_start_up_script_points_at_the_schema(client):
    script = client.get("/api/docs/", {"script": ""})
    assert script.status_code == 200 and script["Content-Type"].startswith("application/javascript")
    assert b"/api/schema/" in script.content and b"SwaggerUIBundle" in script.content
