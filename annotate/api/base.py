"""The one base of every REST endpoint: project with role → serialize → paginate.

Every app's API (annotate, evaluation, training) builds its endpoints on these, so the
pattern is written once:

* ``ApiView``: token authentication first (an anonymous request gets 401 with
  ``WWW-Authenticate: Token``, not a bare 403), ``Paginator`` for lists, and ``fake`` for
  the moment drf-spectacular inspects the view without a request.
* The project and the user's role come from the permission classes of
  ``annotate.permissions`` (the one role lookup, shared with the pages' ``project_for``):
  a project-scoped view names ``project_pk`` in its URL and finds ``self.project`` and
  ``self.project_role`` set before its handler runs.
* Generic views name their rows in ``rows()`` (``get_queryset`` returns none while
  drf-spectacular inspects the view).
* ``ProjectContext``: a generic view's serializers get the project in their context.
* ``ApiView.valid(SerializerClass)``: the request body, validated (400 with field errors).
* ``ApiView.paginated(items, serialize)``: one page of a queryset or list, serialized, in
  the ``{"count", "next", "previous", "results"}`` envelope.
* ``Paginator``: ``?limit=`` / ``?offset=`` pagination that never fails on its parameters:
  non-numbers, zero and negatives fall back to the defaults, and numbers of any size are
  cut to the list's length before they reach the database (``?page=`` is not a parameter
  here and is ignored).
* ``int_param`` / ``int_list_param`` / ``bool_param``: query parameters; an integer outside the
  database's 64-bit range is a 400, never a 500.
* ``one_or_404``, ``refused``: the "no such X in this project" 404 and the 409 refusal.
* ``project_schema``, ``PROJECT_PARAM``, ``DENIED``, ``MISSING``, ``INVALID``,
  ``RefusalSerializer``: shared schema parts.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.authentication import SessionAuthentication
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

# A header scheme first: DRF answers anonymous requests with the first class's challenge, so
# this gives 401 + ``WWW-Authenticate: Token`` instead of a bare 403.
AUTHENTICATION_CLASSES = sorted(
    api_settings.DEFAULT_AUTHENTICATION_CLASSES, key=lambda cls: issubclass(cls, SessionAuthentication)
)

PROJECT_PARAM = OpenApiParameter(
    "project_pk", OpenApiTypes.INT, OpenApiParameter.PATH, description="Project id."
)
DENIED = OpenApiResponse(description="Not signed in (401) or not allowed in this project (403).")
MISSING = OpenApiResponse(description="No such project or object (or not yours).")
INVALID = OpenApiResponse(description="Invalid fields.")

# The range of the databases' integer columns (PostgreSQL bigint, SQLite INTEGER).
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


def project_schema(tag: str, summary: str, responses: dict, *, parameters=(), **kwargs):
    """``extend_schema`` of an endpoint under ``/api/projects/{project_pk}/``: its tag, its
    summary, its responses, and the project parameter before any other ``parameters``."""
    return extend_schema(
        tags=[tag], summary=summary, parameters=[PROJECT_PARAM, *parameters], responses=responses, **kwargs
    )


class RefusalSerializer(serializers.Serializer):
    detail = serializers.CharField(help_text="Why the change was refused, and what to do first.")


def refused(message) -> Response:
    """409 Conflict: the project refuses the change (``{"detail": message}``)."""
    return Response({"detail": str(message)}, status=status.HTTP_409_CONFLICT)


class Paginator(LimitOffsetPagination):
    """DRF's limit/offset pagination, safe for any ``limit`` and ``offset``.

    DRF already ignores non-numbers, zero and negatives (the default limit, offset 0); here the
    slice is also cut to the count, so that ``?limit=10**30`` or ``?offset=10**30`` gives the
    same page as the largest meaningful value instead of an integer overflow in the database.
    The envelope and the links are DRF's, unchanged."""

    def paginate_queryset(self, queryset, request, view=None):
        self.request = request
        self.limit = self.get_limit(request)
        if self.limit is None:
            return None
        self.count = self.get_count(queryset)
        self.offset = self.get_offset(request)
        if self.count > self.limit and self.template is not None:
            self.display_page_controls = True
        if self.count == 0 or self.offset >= self.count:
            return []
        return list(queryset[self.offset : min(self.offset + self.limit, self.count)])


# The classes below carry comments, not docstrings: drf-spectacular would show a docstring as
# the description of every endpoint built on them that has none of its own.


class ApiView(APIView):
    # Base of every endpoint: authentication, pagination of lists, the schema generator's fake
    # pass. A view that answers a whole list unpaginated sets ``pagination_class = None``, so
    # the schema does not describe a page.

    authentication_classes = AUTHENTICATION_CLASSES
    pagination_class = Paginator

    @property
    def fake(self) -> bool:
        """True while drf-spectacular inspects the view (no request user, no URL objects)."""
        return getattr(self, "swagger_fake_view", False)

    def valid(self, serializer_class, **kwargs) -> dict:
        """The request body validated by ``serializer_class`` (400 with its field errors)."""
        serializer = serializer_class(data=self.request.data, **kwargs)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data

    def get_queryset(self):
        # Generic views name their rows in ``rows()``; while the schema is generated there is
        # no user and no project, so there are none.
        if self.fake:
            return self.get_serializer_class().Meta.model.objects.none()
        return self.rows()

    def rows(self):
        raise NotImplementedError(f"{type(self).__name__} lists no rows")

    def paginated(self, items: Sequence | Any, serialize: Callable[[list], Any]) -> Response:
        """One page of ``items`` (a queryset or a list): ``serialize(page)`` in DRF's envelope."""
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(items, self.request, view=self)
        return paginator.get_paginated_response(serialize(page))


class ProjectContext:
    # Mixin for generic views: the serializer context carries the project resolved by the
    # permission class.

    def get_serializer_context(self):
        context = super().get_serializer_context()
        if not getattr(self, "swagger_fake_view", False):
            context["project"] = self.project
        return context


def one_or_404(queryset, message: str, **filters):
    """The one object of ``queryset`` matching ``filters`` (first by the queryset's order), or
    404 with ``message``."""
    found = queryset.filter(**filters).first()
    if found is None:
        raise NotFound(message)
    return found


def bool_param(request, name: str) -> bool | None:
    """A boolean query parameter: None when absent or empty; 1/true/yes/on are true."""
    value = request.query_params.get(name)
    if value is None or value == "":
        return None
    return value.strip().lower() in {"1", "true", "yes", "on"}


def int_param(request, name: str, message: str | list[str] = "Must be an integer.") -> int | None:
    """An integer query parameter: None when absent or empty; 400 (``{name: message}``, the
    message as given: a string or a one-item list) when it is not an integer or lies outside
    the database's integer range."""
    value = request.query_params.get(name)
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except ValueError:
        raise ValidationError({name: message}) from None
    if not INT_MIN <= number <= INT_MAX:
        out_of_range = "Out of range."
        raise ValidationError({name: [out_of_range] if isinstance(message, list) else out_of_range})
    return number


def int_list_param(request, name: str) -> list[int] | None:
    """A repeated integer query parameter (``?round=1&round=2``): None when absent; 400 naming
    the parameter when one is not an integer or lies outside the database's integer range."""
    values = request.query_params.getlist(name)
    if not values:
        return None
    numbers = []
    for value in values:
        try:
            number = int(value)
        except ValueError:
            raise ValidationError({name: "integers"}) from None
        if not INT_MIN <= number <= INT_MAX:
            raise ValidationError({name: "Out of range."})
        numbers.append(number)
    return numbers
