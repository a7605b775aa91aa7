"""Brute-force limits on signing in: django-axes for passwords, DRF throttling for the API.

* **Passwords** (the login page, the admin's login and ``POST /api/auth/token/``): django-axes
  counts failed sign-ins per *username and client address together*
  (``AXES_LOCKOUT_PARAMETERS``), in the database. After ``PREFLOOP_LOGIN_FAILURE_LIMIT`` (10)
  failures within ``PREFLOOP_LOGIN_COOLOFF_MINUTES`` (15) the next try of that username from that
  address is refused with 429 -- even with the right password -- until the cool-off has passed,
  while the same user signing in from another address is not affected (an attacker cannot lock
  a colleague out). A successful sign-in clears the count. :class:`LoginLimitBackend` is the
  axes backend; an ``authenticate()`` without an HTTP request (the shell, a management command,
  the test client's ``login``) has no client to count and is not limited.
* **The API** (DRF throttling, counters in the ``throttle`` cache): the token endpoint takes
  ``PREFLOOP_LOGIN_RATE`` requests per client address (:class:`LoginRateThrottle`; it also
  slows down guessing many usernames from one address), other anonymous requests
  ``PREFLOOP_API_ANON_RATE`` per address, a signed-in user ``PREFLOOP_API_USER_RATE``
  (:class:`UserRateThrottle`). Over the rate: 429 with ``Retry-After``.
* **The client address** is ``REMOTE_ADDR``, or behind ``PREFLOOP_PROXY_COUNT`` reverse proxies
  the address they saw (:func:`client_ip`, the same rule as DRF's ``NUM_PROXIES``), so that
  clients behind one proxy are not counted as one.
"""
from __future__ import annotations

from axes.backends import AxesStandaloneBackend
from django.conf import settings
from django.core.cache import caches
from rest_framework import throttling


def client_ip(request) -> str:
    """The client's address: ``REMOTE_ADDR``, or with ``PREFLOOP_PROXY_COUNT`` = n > 0 the n-th
    address from the right of ``X-Forwarded-For`` (what the outermost trusted proxy saw)."""
    meta = getattr(request, "META", {})
    remote = meta.get("REMOTE_ADDR", "") or ""
    proxies = int(getattr(settings, "PREFLOOP_PROXY_COUNT", 0) or 0)
    forwarded = meta.get("HTTP_X_FORWARDED_FOR", "")
    if proxies > 0 and forwarded:
        addresses = [a.strip() for a in forwarded.split(",") if a.strip()]
        if addresses:
            return addresses[-min(proxies, len(addresses))]
    return remote


class LoginLimitBackend(AxesStandaloneBackend):
    """django-axes' check before the password backends; a call without an HTTP request (no client
    to count) is passed on to them unchecked instead of being an error."""

    def authenticate(self, request=None, username=None, password=None, **kwargs):
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)


class _Throttle:
    cache = caches["throttle"]

    def get_ident(self, request):
        return client_ip(request)


class LoginRateThrottle(_Throttle, throttling.SimpleRateThrottle):
    """Requests to the token endpoint per client address (scope ``login``)."""

    scope = "login"

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class AnonRateThrottle(_Throttle, throttling.AnonRateThrottle):
    """Anonymous API requests per client address (scope ``anon``)."""


class UserRateThrottle(_Throttle, throttling.UserRateThrottle):
    """A signed-in user's API requests (scope ``user``); anonymous ones count per address."""
