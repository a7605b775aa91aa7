"""The per-request shortcuts of the API (issue 12: CPU per judgment) answer exactly what the
general code answers.

* ``annotate.serializers.judgment_input``: the submit's body without a serializer instance for
  the usual JSON object, the serializer for everything else; the same validated data and the
  same 400s as ``JudgmentInputSerializer``.
* ``prefloop.negotiation.ContentNegotiation``: ``Accept: application/json`` / ``*/*`` / none
  get DRF's answer at once; every other request is negotiated by DRF.
* ``prefloop.middleware.MessageMiddleware``: pages keep Django's messages, /api/ has none.
"""
from __future__ import annotations

import pytest
from django.contrib import messages
from hypothesis import given, settings
from hypothesis import strategies as st
from django.test import RequestFactory
from rest_framework import serializers
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BrowsableAPIRenderer, JSONRenderer
from rest_framework.request import Request

from annotate.serializers import MAX_RATIONALE_CHARS, JudgmentInputSerializer, judgment_input
from prefloop.negotiation import ContentNegotiation

BODIES = [
    {"choice": "left"},
    {"choice": "right", "strength": 2},
    {"choice": "tie", "strength": None, "rationale": "  because  ", "seconds": 3},
    {"choice": "both_bad", "seconds": 2.5, "rationale": ""},
    {"choice": "left", "strength": 3, "rationale": "   ", "seconds": 0},
    {"choice": "left", "strength": 1, "seconds": None, "extra": "ignored"},
    {"choice": "left", "rationale": "Ünïcode — fine ✓"},
    {"choice": "left", "rationale": "x" * MAX_RATIONALE_CHARS},
    {"choice": "left", "rationale": "  " + "x" * MAX_RATIONALE_CHARS + "  "},
    # Through the serializer (not the shortcut), valid or not:
    {"choice": "left", "strength": "2"},
    {"choice": "left", "strength": True},
    {"choice": "left", "strength": 4},
    {"choice": "left", "strength": 2.0},
    {"choice": "left", "seconds": "3.5"},
    {"choice": "left", "seconds": True},
    {"choice": "left", "seconds": -1},
    {"choice": "left", "seconds": float("nan")},
    {"choice": "left", "seconds": float("inf")},
    {"choice": "left", "seconds": 10**400},
    {"choice": "left", "rationale": None},
    {"choice": "left", "rationale": 12},
    {"choice": "left", "rationale": "x" * (MAX_RATIONALE_CHARS + 1)},
    {"choice": "left", "rationale": "nul \x00 inside"},
    {"choice": "left", "rationale": "surrogate \ud800 inside"},
    {"choice": "middle"},
    {"choice": None},
    {"choice": 1},
    {"choice": ""},
    {"strength": 2},
    {},
    [],
    "left",
    None,
]


def _serializer(data):
    s = JudgmentInputSerializer(data=data)
    if s.is_valid():
        return "valid", dict(s.validated_data)
    return "invalid", s.errors


def _shortcut(data):
    try:
        return "valid", dict(judgment_input(data))
    except serializers.ValidationError as exc:
        return "invalid", exc.detail


@pytest.mark.parametrize("data", BODIES, ids=range(len(BODIES)))
def test_judgment_input_is_the_serializer(data):
    assert _shortcut(data) == _serializer(data)


VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["left", "right", "tie", "both_bad", "a", "b", "", " left", "LEFT", "2"]),
    st.text(max_size=8), st.text(alphabet="x \x00", min_size=MAX_RATIONALE_CHARS - 2, max_size=MAX_RATIONALE_CHARS + 3),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["choice", "strength", "rationale", "seconds", "other"]), VALUES))
def test_judgment_input_is_the_serializer_for_any_json_object(data):
    """Any JSON object, valid or not: the shortcut and the serializer never disagree."""
    assert _shortcut(data) == _serializer(data)


def test_judgment_input_keeps_types_and_key_order():
    data = judgment_input({"seconds": 3, "rationale": " r ", "strength": 2, "choice": "left"})
    assert list(data) == ["choice", "strength", "rationale", "seconds"]
    assert type(data["seconds"]) is float and data["rationale"] == "r"


RENDERERS = [JSONRenderer(), BrowsableAPIRenderer()]
ACCEPTS = [
    None, "*/*", "application/json", "text/html", "application/json; indent=4", "text/html, */*",
    "application/*", "image/png", "application/json, text/html;q=0.9", " application/json",
]


@pytest.mark.parametrize("accept", ACCEPTS)
@pytest.mark.parametrize("query", ["", "format=json", "format=api"])
def test_negotiation_is_drfs(accept, query):
    factory = RequestFactory()
    headers = {} if accept is None else {"HTTP_ACCEPT": accept}

    def answer(negotiator):
        request = Request(factory.get("/api/x/?" + query, **headers))
        try:
            renderer, media_type = negotiator.select_renderer(request, RENDERERS)
        except Exception as exc:  # NotAcceptable, 404 for an unknown format
            return type(exc).__name__
        return type(renderer).__name__, media_type

    assert answer(ContentNegotiation()) == answer(DefaultContentNegotiation())


@pytest.mark.parametrize("accept", ["*/*", "application/json", "text/html"])
@pytest.mark.parametrize("suffix", ["json", "api"])
def test_negotiation_keeps_a_format_suffix(accept, suffix):
    def answer(negotiator):
        request = Request(RequestFactory().get(f"/api/x.{suffix}", HTTP_ACCEPT=accept))
        try:
            renderer, media_type = negotiator.select_renderer(request, RENDERERS, format_suffix=suffix)
        except Exception as exc:
            return type(exc).__name__
        return type(renderer).__name__, media_type

    assert answer(ContentNegotiation()) == answer(DefaultContentNegotiation())
    if accept == "*/*":  # the suffix, not the first renderer
        assert answer(ContentNegotiation())[0] == ("BrowsableAPIRenderer" if suffix == "api" else "JSONRenderer")


@pytest.mark.django_db
def test_pages_keep_messages_and_the_api_has_none(client, django_user_model):
    from prefloop.middleware import MessageMiddleware

    seen = {}

    def view(request):
        seen[request.path] = hasattr(request, "_messages")
        if hasattr(request, "_messages"):
            messages.info(request, "saved")
        from django.http import HttpResponse

        return HttpResponse("ok")

    factory = RequestFactory()
    for path in ("/projects/", "/api/projects/"):
        request = factory.get(path)
        request.session = {}
        MessageMiddleware(view)(request)
    assert seen == {"/projects/": True, "/api/projects/": False}
    assert list(messages.get_messages(factory.get("/api/x/"))) == []
