"""DRF content negotiation with a shortcut for the usual API request.

DRF's ``DefaultContentNegotiation`` parses the ``Accept`` header into media types, orders them
by precedence and matches each against every renderer, on every request. An API client almost
always sends ``Accept: application/json`` or ``*/*`` (or nothing, which DRF reads as ``*/*``)
and no ``?format=``; for those the answer is always the view's first renderer with its own
media type, so it is returned at once. Every other request (another or a composite ``Accept``
header, media-type parameters, a format suffix or ``?format=``) is negotiated by DRF as before.
"""
from __future__ import annotations

from rest_framework.negotiation import DefaultContentNegotiation


class ContentNegotiation(DefaultContentNegotiation):
    def select_renderer(self, request, renderers, format_suffix=None):
        if renderers and not format_suffix:
            override = self.settings.URL_FORMAT_OVERRIDE
            if not (override and request.query_params.get(override)):
                accept = request.META.get("HTTP_ACCEPT", "*/*")
                first = renderers[0]
                if accept == "*/*" or accept == first.media_type:
                    return first, first.media_type
        return super().select_renderer(request, renderers, format_suffix)
