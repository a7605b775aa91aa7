"""Middleware of prefloop's own.

``MessageMiddleware``: Django's messages (the "saved" notes shown on the next page) for the
pages, not for the REST API. Django's builds a cookie-and-session message store for every
request; an API request under ``/api/`` never adds or shows a message (its answer is JSON), so
it gets none, and an annotator's one request per judgment does not pay for it. Messages left by
a page stay in their store for the next page. (``django.contrib.messages.get_messages`` and the
``messages`` context processor give an empty list for a request without a store.)
"""
from __future__ import annotations

from django.contrib.messages.middleware import MessageMiddleware as DjangoMessageMiddleware

API_PREFIX = "/api/"


class MessageMiddleware(DjangoMessageMiddleware):
    def process_request(self, request):
        if not request.path_info.startswith(API_PREFIX):
            super().process_request(request)
