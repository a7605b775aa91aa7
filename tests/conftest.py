"""Shared fixtures. Nothing here reaches the network."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

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
