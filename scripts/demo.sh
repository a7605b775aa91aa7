#!/usr/bin/env bash
# Starts a Celery worker (embedded file-system broker) and the web server (gunicorn); Ctrl-C
# stops both.
set -euo pipefail
BIN=${BIN:-.venv/bin}
mkdir -p var/log
"$BIN/celery" -A prefloop worker -Q default,gpu --concurrency 1 --loglevel INFO >var/log/celery.log 2>&1 &
WORKER=$!
trap 'kill $WORKER 2>/dev/null || true' EXIT INT TERM
cat <<TEXT

  prefloop is running at http://127.0.0.1:8000/
  API docs:             http://127.0.0.1:8000/api/docs/
  Celery worker log:    var/log/celery.log

  Demo logins (password: prefloop-demo)
    admin        project admin (also Django admin at /admin/)
    researcher   researcher: dashboards, exports
    annot1..6    annotators in three pools

TEXT
# gunicorn, as in production (README): one process, so the per-process cache (import progress)
# is shared by all its threads; it sets TCP_NODELAY, which Django's runserver does not (there,
# back-to-back requests on one connection wait ~40 ms on delayed ACKs).
"$BIN/gunicorn" prefloop.wsgi -b 127.0.0.1:8000 --workers 1 --threads 8 -k gthread \
  --access-logfile var/log/access.log --error-logfile - --log-level warning
