import time, collections
import pytest
from tests.annotate.test_permissions import Scene, _all_gets
pytestmark = pytest.mark.django_db
def test_prof():
    s = Scene()
    t = time.perf_counter(); per = collections.Counter(); n = collections.Counter()
    it = _all_gets(s, s.ann1)
    last = time.perf_counter()
    for route, path, headers, resp, body in it:
        now = time.perf_counter(); per[route] += now - last; n[route] += 1; last = now
    for r, v in per.most_common(12): print(f"{v:6.2f}s {n[r]:4d} {r}")
    print(sum(n.values()))
