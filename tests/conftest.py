"""Settings for the whole test session.

Every test runs with one intra-op thread, in this process (torch) and in the processes it starts
(``OMP_NUM_THREADS``): a result then does not depend on how many cores the machine has, and on a
busy 2-core machine OpenMP threads do not wait on each other far longer than the work takes. The
onnxruntime sessions the tests open take one thread too.
"""

import os

import torch


def pytest_configure() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
