"""A database connection dropped under a running web process (a PostgreSQL restart, or its
backend terminated) costs API clients nothing and a page at most one failed request per thread.

The web processes keep connections (``CONN_MAX_AGE``) without Django's ``SELECT 1`` health check
before each request (``CONN_HEALTH_CHECKS`` off, settings.py): the token lookup, the first query
of an API request, reconnects and retries; any other first query fails its request, and Django
closes the connection when that request ends. Requests go through Django's WSGI application, as
under gunicorn (the test client would skip the connection handling at request start and end).
"""
from __future__ import annotations

import io
import json
import sys

import psycopg
import pytest
from django.core.wsgi import get_wsgi_application
from django.db import connection
from django.test import Client
from rest_framework.authtoken.models import Token

from annotate.models import Role
from tests.factories import add_member, make_comparisons, make_project, make_user

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="terminates a PostgreSQL backend"),
]


def call(app, method: str, path: str, headers: dict, body: bytes = b"") -> tuple[int, bytes]:
    env = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": "",
        "SERVER_NAME": "testserver", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "testserver", "HTTP_ACCEPT": "application/json", "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr, "wsgi.multithread": True,
        "wsgi.multiprocess": True, "wsgi.run_once": False, "wsgi.version": (1, 0), **headers,
    }
    if body:
        env.update({"CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body))})
    got = {}
    result = app(env, lambda status, _headers, exc_info=None: got.setdefault("status", status))
    try:
        content = b"".join(result)
    finally:
        result.close()
    return int(got["status"].split()[0]), content


def drop_connection() -> None:
    """Terminate this thread's PostgreSQL backend from another connection, as a restart would."""
    with connection.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
    s = connection.settings_dict
    with psycopg.connect(
        dbname=s["NAME"], user=s["USER"], password=s["PASSWORD"] or None, host=s["HOST"] or None,
        port=s["PORT"] or None, autocommit=True,
    ) as other:
        assert other.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone()[0]


def test_a_dropped_connection_fails_no_api_request_and_at_most_one_page_request(monkeypatch):
    monkeypatch.setitem(connection.settings_dict, "CONN_HEALTH_CHECKS", False)  # as settings.py has them
    monkeypatch.setitem(connection.settings_dict, "CONN_MAX_AGE", 60)
    project = make_project(name="restart", overlap=1)
    make_comparisons(project, 6)
    ann = make_user("ann", password="pw")
    add_member(project, ann, Role.ANNOTATOR)
    token = {"HTTP_AUTHORIZATION": f"Token {Token.objects.create(user=ann).key}"}
    client = Client()
    client.force_login(ann)
    page = {"HTTP_COOKIE": f"sessionid={client.cookies['sessionid'].value}", "HTTP_ACCEPT": "text/html"}
    app = get_wsgi_application()
    connection.close()  # from here on, the connection is the one the requests open and keep

    status, body = call(app, "GET", f"/api/projects/{project.pk}/next/", token)
    assert status == 200, body
    item = json.loads(body)
    for i in range(3):  # the submit-with-next, the first request after each drop, never fails
        drop_connection()
        status, body = call(
            app, "POST", f"/api/assignments/{item['assignment_id']}/judgment/", token, b'{"choice": "left"}'
        )
        assert status == 201, body
        item = json.loads(body)["next"]
        assert item is not None

    assert call(app, "GET", "/", page)[0] == 200
    drop_connection()
    statuses = [call(app, "GET", "/", page)[0] for _ in range(3)]
    assert statuses[1:] == [200, 200] and statuses[0] in (200, 500), statuses
