"""The annotate REST API: projects, pools, memberships, comparisons (import), the annotator's
queue and progress. Mounted under ``/api/`` by ``annotate.api.urls``.

Thin by design: every endpoint checks the project role (``annotate.permissions``), parses its
input with a serializer, calls one service (``annotate.queue``, ``annotate.imports``,
``annotate.services``) or selector (``annotate.selectors``) and serializes the result. The
annotator endpoints speak only in shown terms (left/right) and never return response
identities (a/b), model names, gold answers, provenance or anybody else's judgments.

* ``base``: what every endpoint of every app shares (authentication, the role, pagination,
  query parameters, schema parts).
* ``projects``: the token, projects, pools, memberships.
* ``comparisons``: the comparison list, gold answers, the import.
* ``judging``: the annotator's next item, assignments, submit, skip, own judgments.
* ``progress``: the annotator's or the project's progress.

Conventions:

* Authentication: ``Authorization: Token <key>`` (``POST /api/auth/token/`` gives the key) or
  the browser session. Anonymous requests get 401.
* Lists are paginated with ``?limit=`` and ``?offset=`` (``{"count", "next", "previous",
  "results"}``); numbers of any size give a page, never an error.
* ``GET /api/projects/{id}/next/`` answers **204 No Content** when the annotator's queue is
  empty; the judgment and skip responses carry ``"next": null`` then.
* Errors: 400 with field errors (DRF's shape) or ``{"detail": ...}``; the import answers 400
  with ``{"errors": [{"line", "field", "message"}]}`` and imports nothing.
* ``DELETE`` answers 204, or **409 Conflict** with ``{"detail": ...}`` when the project refuses
  (a pool still in use, a project's last admin); the message says what to do first.
"""
