"""Fixtures shared by several test modules."""

import pytest
import torch


@pytest.fixture(scope="module")
def single_torch_thread():
    """One intra-op thread for a module's tests, like the onnxruntime sessions they compare with: on a
    busy 2-core machine OpenMP threads wait on each other far longer than the work takes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
