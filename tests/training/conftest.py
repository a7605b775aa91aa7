"""Fixtures shared by the training tests."""

import pytest


@pytest.fixture(scope="module")
def one_cpu_thread():
    """Tiny models run fastest on one thread (and do not fight other test processes for cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
