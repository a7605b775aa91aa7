import random, time
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from annotate import queue
pytestmark = pytest.mark.django_db
import importlib.util
spec = importlib.util.spec_from_file_location("tq", __file__.replace("test_zz_tmp.py", "test_queue.py"))
tq = importlib.util.module_from_spec(spec); spec.loader.exec_module(tq)

def test_prof():
    rng = random.Random(11)
    project = tq.make_project(overlap=20, gold_rate=0.2)
    tq.make_comparisons(project, 110)
    tq.make_comparisons(project, 100, gold=True)
    annotators = tq.make_annotators(project, 2)
    t = time.perf_counter()
    with CaptureQueriesContext(connection) as ctx:
        for user in annotators:
            for _ in range(20):
                a = queue.next_assignment(user, project, rng=rng)
                queue.submit_judgment(user, a.pk, choice="left")
    dt = time.perf_counter() - t
    print("\n40 draws", dt, len(ctx.captured_queries))
    import collections
    c = collections.Counter()
    for q in ctx.captured_queries: c[q["sql"][:90]] += float(q["time"])
    for k, v in c.most_common(8): print(f"{v:.3f} {k}")
