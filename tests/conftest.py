"""Shared fixtures. Nothing here reaches the network."""
import os
import threading
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from hypothesis import settings as hypothesis_settings  # noqa: E402

# CI (.ci/run sets HYPOTHESIS_PROFILE=ci) draws the same examples every run, so a submission's
# verdict does not depend on the draw; a local run draws new ones and so keeps finding new cases
# (add what it finds as an @example).
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip("../shared/data is not beside the checkout")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_data_dirs(request, tmp_path):
    """Exports, runs and models written by a test go to its own temporary folder."""
    if not request.config.pluginmanager.hasplugin("django"):
        return
    settings = request.getfixturevalue("settings")
    settings.PREFLOOP_EXPORTS_DIR = tmp_path / "exports"
    settings.PREFLOOP_RUNS_DIR = tmp_path / "runs"
    settings.PREFLOOP_MODELS_DIR = tmp_path / "models"
    settings.MEDIA_ROOT = tmp_path / "media"
    # Tests that want the automatic quality recomputation switch it on themselves.
    settings.PREFLOOP_AUTO_QUALITY = False
    # A fast hasher: the suite creates many users; real hashing is tested by Django itself.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _fresh_login_limits(request):
    """Each test starts with no API throttle counts (prefloop/login_limits.py), as the suite signs
    in and calls the API far more often than one client would; django-axes' failure counts live in
    the database and go with each test's rows."""
    if not request.config.pluginmanager.hasplugin("django"):
        return
    from django.core.cache import caches

    caches["throttle"].clear()


@pytest.fixture
def celery_eager(settings):
    """Tasks sent in this test run at once, in this process. Sets the Celery app's own
    configuration too: once an earlier test has read it, the Django setting alone is not seen."""
    from celery import current_app

    before = current_app.conf.task_always_eager
    settings.CELERY_TASK_ALWAYS_EAGER = True
    current_app.conf.task_always_eager = True
    yield
    current_app.conf.task_always_eager = before


@pytest.fixture
def run_at_once():
    """``run_at_once(fns)``: run the callables in threads released together (a barrier), each
    with its own database connection (closed when its thread ends); return their results in
    order, re-raise the first error, fail if a thread hangs (a deadlock). For the concurrency
    tests against PostgreSQL."""
    from django.db import connections

    def run(fns):
        barrier = threading.Barrier(len(fns))
        results = [None] * len(fns)
        errors = []

        def worker(i, fn):
            try:
                barrier.wait(timeout=30)
                results[i] = fn()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
            finally:
                connections.close_all()

        threads = [threading.Thread(target=worker, args=(i, fn)) for i, fn in enumerate(fns)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads), "a thread hung (deadlock?)"
        if errors:
            raise errors[0]
        return results

    return run
