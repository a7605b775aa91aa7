"""Content-Security-Policy: pages run only the app's own scripts and styles.

Every response gets a ``Content-Security-Policy`` header (``settings.CSP_POLICY``): scripts,
styles, fonts and connections from the app's own origin only, no inline ``<script>``, no
``style="…"`` attribute, no ``eval`` (so ``'unsafe-inline'`` and ``'unsafe-eval'`` are never
needed), no plugins, no framing, forms posting only to the app. Templates therefore load
behaviour from ``static/js/`` files, draw bars in SVG (``{% bar %}``) instead of inline
widths, and HTMX runs with ``allowEval``, ``allowScriptTags`` and ``includeIndicatorStyles``
off (the ``htmx-config`` meta tag in ``base.html``; the indicator CSS is in ``app.css``).

``CSP_REPORT_ONLY=1`` sends the same policy as ``Content-Security-Policy-Report-Only``
(violations are reported in the browser console, nothing is blocked) to try a change first.
A view that sets its own header keeps it.
"""
from __future__ import annotations

from django.conf import settings

DEFAULT_POLICY: dict[str, tuple[str, ...]] = {
    "default-src": ("'self'",),
    "script-src": ("'self'",),
    "style-src": ("'self'",),
    # data: for the small inline SVG icons of the API docs (Swagger UI); never a remote host.
    "img-src": ("'self'", "data:"),
    "font-src": ("'self'",),
    "connect-src": ("'self'",),
    "object-src": ("'none'",),
    "base-uri": ("'none'",),
    "form-action": ("'self'",),
    "frame-ancestors": ("'none'",),
}


def policy_header(policy: dict[str, tuple[str, ...]]) -> str:
    return "; ".join(f"{name} {' '.join(values)}".strip() for name, values in policy.items())


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response
        self.header = policy_header(getattr(settings, "CSP_POLICY", None) or DEFAULT_POLICY)
        self.name = (
            "Content-Security-Policy-Report-Only"
            if getattr(settings, "CSP_REPORT_ONLY", False)
            else "Content-Security-Policy"
        )

    def __call__(self, request):
        response = self.get_response(request)
        if "Content-Security-Policy" not in response and "Content-Security-Policy-Report-Only" not in response:
            response[self.name] = self.header
        return response
