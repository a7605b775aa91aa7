"""The REST API against its own OpenAPI schema, with schemathesis (issue 11, items 10 and 11).

The live test server's ``/api/schema/`` is loaded as a client would load it; every operation
gets a bounded number of generated requests (``EXAMPLES``) with an admin's token and with an
annotator's token, half of them aimed at the real objects of a small project (its id, a pool, a
membership, an assignment, a built export, a run) so that the handlers run past their 404s.
Every answer must be no server error (5xx), match the documented schema of its status code and
carry a documented media type. Failures are collected over all operations and reported together.
The jobs that requests queue go to an in-memory broker (no worker): the answers are under test.
"""

from __future__ import annotations

import io
import json
import os
from collections import defaultdict

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from annotate import imports, queue
from annotate.models import Assignment, Membership, Pool, Role
from tests.factories import add_member, make_pool, make_project, make_user

pytestmark = [pytest.mark.django_db(transaction=True)]

#: Generated requests per operation and token (two tokens, about fifty operations); more, and
#: a random instead of the fixed seed, with PREFLOOP_SCHEMA_EXAMPLES / PREFLOOP_SCHEMA_RANDOM=1.
EXAMPLES = int(os.environ.get("PREFLOOP_SCHEMA_EXAMPLES", "8"))
DERANDOMIZE = os.environ.get("PREFLOOP_SCHEMA_RANDOM") != "1"


@pytest.fixture
def world(settings):
    from celery import current_app
    from rest_framework.authtoken.models import Token

    from evaluation.export.services import create_export
    from evaluation.export.tasks import build_export_task
    from training.models import ModelVersion, RunStatus, TrainingRun

    project = make_project("schema world")
    pool = make_pool(project, "pool-a", target_share=1.0)
    admin = make_user("schema-admin")
    annotators = [make_user(f"schema-ann{i}") for i in range(3)]
    add_member(project, admin, Role.ADMIN)
    for user in annotators:
        add_member(project, user, Role.ANNOTATOR, pool=pool)
    lines = [
        {"prompt": f"Question {i}?", "response_a": f"Answer A{i}.", "response_b": f"Answer B{i}, longer.",
         "model_a": "m1", "model_b": "m2", **({"gold": "a"} if i == 0 else {})}
        for i in range(8)
    ]
    imports.import_comparisons(project, io.BytesIO("\n".join(map(json.dumps, lines)).encode()), filename="x.jsonl")
    for user in annotators:
        for _ in range(4):
            item = queue.next_assignment(user, project)
            if item is None:
                break
            queue.submit_judgment(user, item.pk, choice="left", strength=2, seconds=3.0)
    held = queue.next_assignment(annotators[0], project)
    export = create_export(project, admin, {"formats": ["jsonl", "csv"]}, enqueue=False)
    build_export_task.apply(args=(export.pk,))
    base = ModelVersion.objects.create(name="schema-base", path="/nonexistent/schema-base")
    out = ModelVersion.objects.create(name="schema-out", path="/nonexistent/schema-out", parent=base, project=project)
    run = TrainingRun.objects.create(project=project, base_model=base, recipe="dpo", status=RunStatus.SUCCEEDED,
                                     output_model=out, export=export, created_by=None)
    TrainingRun.objects.create(project=project, base_model=base, recipe="sft", status=RunStatus.QUEUED)
    # Jobs the requests queue (exports, recomputes, sampling) go to an in-memory broker that no
    # worker reads: the API's answers are under test here, not the jobs (tested on their own).
    app = current_app
    saved = {k: app.conf[k] for k in ("broker_url", "broker_transport_options", "task_always_eager")}
    app.conf.update(broker_url="memory://", broker_transport_options={}, task_always_eager=False)
    app._pool, app.amqp._producer_pool = None, None
    yield {
        "tokens": {"admin": Token.objects.create(user=admin).key,
                   "annotator": Token.objects.create(user=annotators[0]).key},
        "ids": {
            "project_pk": project.pk,
            "assignment_pk": (held or Assignment.objects.filter(annotator=annotators[0]).first()).pk,
            "export_pk": export.pk,
            "run_pk": run.pk,
            "user_pk": annotators[1].pk,
        },
        "pool": pool.pk,
        "membership": Membership.objects.filter(project=project, user=annotators[2]).get().pk,
    }
    if app._pool is not None:
        app._pool.force_close_all()
    app._pool, app.amqp._producer_pool = None, None
    app.conf.update(**saved)


def _real_ids(world, path: str) -> dict:
    ids = dict(world["ids"])
    if "{id}" in path:
        ids["id"] = world["pool"] if "/pools/" in path else world["membership"]
    return {k: v for k, v in ids.items() if "{" + k + "}" in path}


def test_every_operation_matches_its_schema(live_server, world):
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.core.failures import FailureGroup
    from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

    checks = [not_a_server_error, response_schema_conformance, content_type_conformance]
    schema = schemathesis.openapi.from_url(live_server.url + "/api/schema/")
    failures: dict[str, set[str]] = defaultdict(set)
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        real = _real_ids(world, operation.path)
        strategy = operation.as_strategy()
        if real:
            strategy = st.one_of(strategy, operation.as_strategy(path_parameters=real))
        for who, token in world["tokens"].items():

            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=DERANDOMIZE,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def call(case):
                response = case.call(base_url=live_server.url, headers={"Authorization": f"Token {token}"})
                try:
                    case.validate_response(response, checks=checks)
                except FailureGroup as group:  # collected, reported together below
                    for failure in group.exceptions:
                        failures[f"{operation.label} as {who} -> {response.status_code}"].add(
                            f"{failure.title}: {str(failure.message)[:300]}"
                        )

            call()
    assert operations >= 45
    report = "\n".join(f"{where}: {'; '.join(sorted(titles))}" for where, titles in sorted(failures.items()))
    assert not failures, f"{len(failures)} operation(s) disagree with the schema:\n{report}"
