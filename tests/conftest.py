"""Shared pytest set-up: a non-interactive matplotlib backend and one thread per test worker."""

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
torch.set_num_threads(1)


@pytest.fixture
def one_thread():
    """Bit-identical comparisons need the same reduction order: one intra-op thread, restored
    afterwards. A test file opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
