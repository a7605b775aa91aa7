"""Django on a throw-away database, for the benchmarks that drive the app in-process.

    with bench_database("bench_prefloop_x") as connection:
        ...

SQLite by default: a fresh ``db.sqlite3`` in a temporary ``PREFLOOP_DATA_DIR`` (exports and runs
go there too), migrated. With ``DATABASE_URL`` set: a PostgreSQL database named ``db_name`` on
that server, created for the run and dropped at the end; ``DATABASE_URL`` then names it, so that
child processes the benchmark starts use it too. DEBUG off, warnings-only logging.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager


@contextmanager
def bench_database(db_name: str, prefix: str = "prefloop-bench-"):
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "prefloop.settings")
        os.environ.setdefault("LOG_LEVEL", "ERROR")
        os.environ["PREFLOOP_DATA_DIR"] = tmp
        os.environ["DEBUG"] = "0"
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connection

        url = os.environ.get("DATABASE_URL")
        if url:
            original = connection.settings_dict["NAME"]
            connection.settings_dict["TEST"]["NAME"] = db_name
            name = connection.creation.create_test_db(verbosity=0, autoclobber=True, keepdb=False)
            os.environ["DATABASE_URL"] = url.rsplit("/", 1)[0] + "/" + name
        else:
            call_command("migrate", verbosity=0)
        try:
            yield connection
        finally:
            if url:
                connection.creation.destroy_test_db(original, verbosity=0)
                os.environ["DATABASE_URL"] = url
