"""Browser tests: Debian's chromium driven by the playwright Python package.

Never ``playwright install``: the tests use /usr/bin/chromium (``make chromium`` or
``apt-get install chromium``) and skip, saying why, where it is missing.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from django.core.servers.basehttp import ThreadedWSGIServer
from django.test.testcases import LiveServerThread

# The sync playwright API runs an asyncio event loop in this thread; Django's guard against
# ORM calls from async code would otherwise refuse the test's own database queries.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


class NoDelayWSGIServer(ThreadedWSGIServer):
    """Django's threaded test server with TCP_NODELAY on each connection, as gunicorn (the
    production server, see the README) sets it. Without it the server's separate writes of
    headers and body meet the browser's delayed ACK (Nagle's algorithm), and back-to-back
    requests on one keep-alive connection wait about 40 ms for nothing: a test-server
    artefact that would swamp the submit → next-item time the annotator test measures."""

    def get_request(self):
        conn, addr = super().get_request()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, addr


# pytest-django's live_server builds a LiveServerThread; serve it with the server above.
LiveServerThread.server_class = NoDelayWSGIServer

CHROMIUM = Path(os.environ.get("PREFLOOP_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"Debian chromium not found at {CHROMIUM}: run `make chromium` (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - playwright is in requirements-dev.txt
        pytest.skip("the playwright Python package is not installed")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def new_page(browser):
    """A factory of pages, each in its own browser context (own cookies = own login)."""
    contexts = []

    def make(width: int = 1400, height: int = 900):
        ctx = browser.new_context(viewport={"width": width, "height": height})
        ctx.set_default_timeout(15_000)
        contexts.append(ctx)
        page = ctx.new_page()
        page.errors = []  # uncaught page errors, checked by the tests
        page.on("pageerror", lambda exc: page.errors.append(str(exc)))
        return page

    yield make
    for ctx in contexts:
        ctx.close()


@pytest.fixture
def log_in():
    """``log_in(page, base_url, username, password="prefloop-demo")`` through the login form."""
    return _log_in


def _log_in(page, base_url: str, username: str, password: str = "prefloop-demo") -> None:
    page.goto(f"{base_url}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    with page.expect_navigation():
        page.click("button[type=submit]")
    assert "/accounts/login/" not in page.url, f"login as {username} failed"
