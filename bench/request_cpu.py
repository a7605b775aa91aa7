"""CPU per API request, in-process: what one judgment costs in Python around the service layer.

    .venv/bin/python bench/request_cpu.py --db-name prefloop_me            # fill once, measure
    .venv/bin/python bench/request_cpu.py --db-name prefloop_me --reuse    # measure again
    .venv/bin/python bench/request_cpu.py --db-name prefloop_me --reuse --profile 30

Calls Django's WSGI application directly (no HTTP server, no test client: the request goes
through exactly the middleware, DRF and view code a gunicorn worker runs, DEBUG off) and
reports ``time.process_time`` per request, best of ``--rounds`` rounds of ``--n`` requests, for

* ``POST /api/assignments/{id}/judgment/`` with token authentication, answering with the next
  item (one request per judgment, as the bench's clients do), and
* ``GET /accounts/login/``, the peer page of bench/queue.py.

The first run creates the PostgreSQL database ``--db-name`` and fills it with bench/queue.py's
``fill`` (20k comparisons, 20 annotators by default); ``--reuse`` keeps it. ``--profile K``
prints the top K functions by own time (cProfile on process time) over one more round. Before
that, the SQL round trips of a judgment request are counted over ``--count`` more (0: none).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import importlib.util
import io
import json
import os
import time

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PG = "postgres://postgres@127.0.0.1:5432"


def bench_queue():
    spec = importlib.util.spec_from_file_location("bench_queue", ROOT / "bench" / "queue.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def environ(method: str, path: str, token: str | None = None, body: bytes = b"") -> dict:
    env = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1", "HTTP_ACCEPT": "application/json", "HTTP_CONNECTION": "keep-alive",
        "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr,
        "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False, "wsgi.version": (1, 0),
    }
    if token:
        env["HTTP_AUTHORIZATION"] = f"Token {token}"
    if body:
        env["CONTENT_TYPE"] = "application/json"
        env["CONTENT_LENGTH"] = str(len(body))
    return env


def call(app, env) -> tuple[str, bytes]:
    status = {}

    def start_response(s, headers, exc_info=None):
        status["s"] = s

    result = app(env, start_response)
    try:
        body = b"".join(result)
    finally:
        if hasattr(result, "close"):
            result.close()
    return status["s"], body


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db-name", default="prefloop_reqcpu")
    ap.add_argument("--reuse", action="store_true", help="keep the database filled by an earlier run")
    ap.add_argument("--comparisons", type=int, default=20_000)
    ap.add_argument("--annotators", type=int, default=20)
    ap.add_argument("--n", type=int, default=300, help="requests per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--profile", type=int, default=0, help="print the top K functions of one profiled round")
    ap.add_argument("--profile-out", help="also write that round's cProfile stats to this file")
    ap.add_argument("--count", type=int, default=100, help="judgments over which to count SQL round trips (0: none)")
    args = ap.parse_args()

    os.environ.update({
        "DATABASE_URL": f"{PG}/{args.db_name}", "DEBUG": "0", "ALLOWED_HOSTS": "127.0.0.1",
        "SECRET_KEY": "request-cpu-bench-" + "x" * 40, "LOG_LEVEL": "ERROR",
    })
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "prefloop.settings")
    import psycopg

    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [args.db_name]).fetchone()
        if not (args.reuse and exists):
            conn.execute(f'DROP DATABASE IF EXISTS "{args.db_name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{args.db_name}"')
            exists = None
    import django

    django.setup()
    from django.core.management import call_command
    from django.core.wsgi import get_wsgi_application
    from rest_framework.authtoken.models import Token

    from annotate.models import Project

    if not exists:
        call_command("migrate", verbosity=0)
        bench_queue().fill(args.comparisons, args.annotators, 0)
    project = Project.objects.get(name="bench")
    tokens = list(Token.objects.filter(user__username__startswith="bench").order_by("user__username")
                  .values_list("key", flat=True))
    app = get_wsgi_application()

    choices = [b'{"choice": "left"}', b'{"choice": "right", "strength": 2}', b'{"choice": "tie"}']
    items: dict[str, dict] = {}

    def judgment(i: int) -> None:
        token = tokens[i % len(tokens)]
        item = items.get(token)
        if item is None:
            status, body = call(app, environ("GET", f"/api/projects/{project.pk}/next/", token))
            assert status.startswith("200"), (status, body[:300])
            item = json.loads(body)
        status, body = call(app, environ("POST", f"/api/assignments/{item['assignment_id']}/judgment/", token,
                                         choices[i % 3]))
        assert status.startswith(("200", "201")), (status, body[:300])
        items[token] = json.loads(body)["next"]

    def login(i: int) -> None:
        status, body = call(app, environ("GET", "/accounts/login/"))
        assert status.startswith("200"), status

    for i in range(3 * len(tokens)):  # warm: every annotator holds an item; imports, statements
        judgment(i)
    for i in range(20):
        login(i)

    from django.db import connection

    with connection.cursor() as cur:  # the PostgreSQL backend serving this process (same machine)
        cur.execute("SELECT pg_backend_pid()")
        stat = Path(f"/proc/{cur.fetchone()[0]}/stat")
    tick = 1.0 / os.sysconf("SC_CLK_TCK")

    def backend_cpu() -> float:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * tick

    results = {}
    for name, fn in (("judgment", judgment), ("login", login)):
        per, pg = [], 0.0
        for _ in range(args.rounds):
            b0, t0 = backend_cpu(), time.process_time()
            for i in range(args.n):
                fn(i)
            per.append(1000.0 * (time.process_time() - t0) / args.n)
            pg += backend_cpu() - b0
        results[name] = per
        print(f"{name:>9}: CPU per request, best {min(per):.3f} ms, median {sorted(per)[len(per) // 2]:.3f} ms "
              f"({args.rounds} rounds of {args.n}: {', '.join(f'{x:.3f}' for x in per)}); "
              f"PostgreSQL backend {1000.0 * pg / (args.rounds * args.n):.3f} ms (mean, 10 ms ticks)")
    print(f"judgment/login CPU ratio (best): {min(results['judgment']) / min(results['login']):.2f}")
    if args.count:
        # Every statement the connection sends is logged (BEGIN and COMMIT included), and Django's
        # health check (``CONN_HEALTH_CHECKS``), which bypasses the log, is counted beside it:
        # the PostgreSQL round trips of one judgment request.
        checks = [0]
        usable = connection.is_usable

        def counted_is_usable():
            checks[0] += 1
            return usable()

        from django.core.signals import request_started
        from django.db import reset_queries

        connection.is_usable = counted_is_usable
        connection.force_debug_cursor = True
        request_started.disconnect(reset_queries)  # (it empties the log at every request)
        try:
            connection.queries_log.clear()
            for i in range(args.count):
                judgment(i)
            logged = len(connection.queries_log)
        finally:
            request_started.connect(reset_queries)
            connection.force_debug_cursor = False
            del connection.is_usable
        print(f"SQL round trips per judgment request: {(logged + checks[0]) / args.count:.2f} "
              f"({logged / args.count:.2f} logged statements + {checks[0] / args.count:.2f} health checks)")
    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile(time.process_time)
        prof.enable()
        for i in range(args.n):
            judgment(i)
        prof.disable()
        if args.profile_out:
            prof.dump_stats(args.profile_out)
        stats = pstats.Stats(prof)
        stats.sort_stats("tottime").print_stats(args.profile)
        stats.sort_stats("cumulative").print_stats(args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
