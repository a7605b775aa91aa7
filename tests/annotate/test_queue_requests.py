"""One request per judgment: ``POST /api/assignments/{id}/judgment/`` saves the judgment and
answers with the next item, in a bounded number of SQL queries.

The bound is the goal on PostgreSQL, the production database (the claim and the submit are a
few statements there, ``annotate.queue.postgres``); SQLite runs the plain ORM version and gets a
looser bound that only guards against regressions. ``transaction=True``: no test transaction
around the request, so no savepoints are counted that production would not run.
"""
from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotate import queue
from annotate.models import Comparison, GoldAnswer, Judgment, Membership, Pool, Project, Prompt, Response, Role, content_hash

pytestmark = pytest.mark.django_db(transaction=True)

User = get_user_model()

# PostgreSQL: token with assignment+project+membership, BEGIN, lock, judgment, claim with progress,
# COMMIT (and no health check: CONN_HEALTH_CHECKS is off, and the test client skips it anyway); a
# second claim when the drawn kind has nothing left for the annotator is not counted against it.
# SQLite: 23 for a regular item, one more when the drawn kind (gold at this gold rate) has nothing
# left for the annotator and the claim reads the other kind's candidates too.
MAX_QUERIES = {"postgresql": 6, "sqlite": 24}


def make_comparisons(project: Project, n: int, *, gold: bool = False) -> None:
    for i in range(n):
        tag = f"{'gold' if gold else 'regular'} {i}"
        prompt = Prompt.objects.create(project=project, text=f"Prompt {tag}?", content_hash=content_hash(tag))
        a, b = (
            Response.objects.create(prompt=prompt, text=f"{side} to {tag}", content_hash=content_hash(side + tag))
            for side in ("First answer", "Second answer")
        )
        c = Comparison.objects.create(
            project=project, prompt=prompt, response_a=a, response_b=b, pair_hash=content_hash("pair " + tag),
            is_gold=gold,
        )
        if gold:
            GoldAnswer.objects.create(comparison=c, answer="a")


def test_submit_with_next_is_one_request_in_a_bounded_number_of_queries():
    project = Project.objects.create(name="per-request", overlap=2, gold_rate=0.2, allow_ties=True)
    eu = Pool.objects.create(project=project, name="eu", target_share=0.6)
    Pool.objects.create(project=project, name="us", target_share=0.4)
    make_comparisons(project, 12)
    make_comparisons(project, 3, gold=True)
    user = User.objects.create_user("ann", password="pw")
    Membership.objects.create(project=project, user=user, role=Role.ANNOTATOR, pool=eu)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")

    item = client.get(reverse("annotate-api:next", args=[project.pk])).json()
    seen = {item["assignment_id"]}
    counts = []
    for i in range(6):
        with CaptureQueriesContext(connection) as ctx:
            r = client.post(
                reverse("annotate-api:submit-judgment", args=[item["assignment_id"]]),
                {"choice": ("left", "right", "tie")[i % 3], "strength": 2},
                format="json",
            )
        assert r.status_code == 201, r.content
        queries = [q["sql"] for q in ctx.captured_queries]
        counts.append(len(queries) - max(0, sum("prefloop_claim_" in q for q in queries) - 1))
        body = r.json()
        assert body["progress"]["done"] == i + 1
        p = queue.progress(user, project)  # read with the claim on PostgreSQL: the same as after it
        assert body["progress"] == {"done": p.done, "remaining": p.remaining}
        item = body["next"]
        assert item is not None and item["assignment_id"] not in seen  # a new item, not the one just judged
        seen.add(item["assignment_id"])
    assert Judgment.objects.filter(annotator=user).count() == 6
    limit = MAX_QUERIES.get(connection.vendor, MAX_QUERIES["sqlite"])
    assert max(counts) <= limit, (counts, [q["sql"][:120] for q in ctx.captured_queries])


def test_submit_answer_is_what_the_serializers_of_the_schema_say():
    """The submit answers with plain dicts built without DRF serializers (``queue_item_data``,
    ``own_judgment_data``); they are exactly what the serializers of the API schema give, for a
    chat prompt, a strength, a tie and both-bad, and for a judgment read back from the database."""
    from annotate import queue
    from annotate.serializers import OwnJudgmentSerializer, QueueItemSerializer, own_judgment_data, queue_item_data

    project = Project.objects.create(name="shapes", overlap=1, gold_rate=0.0, allow_ties=False)
    make_comparisons(project, 4)
    Prompt.objects.filter(project=project).update(messages=[{"role": "user", "content": "Hi"}])
    user = User.objects.create_user("ann", password="pw")
    Membership.objects.create(project=project, user=user, role=Role.ANNOTATOR)
    a = queue.next_assignment(user, project)
    for choice, strength in (("left", 3), ("both_bad", 2), ("right", None), ("left", 1)):
        progress = queue.progress(user, project)
        assert queue_item_data(a, project, progress) == QueueItemSerializer(
            a, context={"project": project, "progress": progress}
        ).data
        done = queue.submit_and_next(user, a.pk, choice=choice, strength=strength, rationale=" why ", seconds=2.5)
        stored = Judgment.objects.get(pk=done.judgment.pk)
        assert own_judgment_data(done.judgment) == OwnJudgmentSerializer(stored).data == own_judgment_data(stored)
        a = done.next
    assert a is None
