#!/usr/bin/env bash
# Starts a Celery worker (embedded file-system broker) and the web server; Ctrl-C stops both.
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
"$BIN/python" manage.py runserver 127.0.0.1:8000
