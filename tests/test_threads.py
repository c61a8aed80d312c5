"""simagents.threads: torch's threads and numpy's BLAS threads are set, and restored, together."""

import numpy as np
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from simagents.threads import threads


def blas_threads() -> set[int]:
    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


def test_threads_sets_torch_and_numpys_blas_and_restores_both() -> None:
    np.ones(2) @ np.ones(2)  # numpy's BLAS is loaded
    assert blas_threads(), "numpy should come with a BLAS that threadpoolctl sees"
    before = torch.get_num_threads()
    with threadpool_limits(2, user_api="blas"):
        torch.set_num_threads(2)
        try:
            with threads(1):
                assert torch.get_num_threads() == 1 and blas_threads() == {1}
            assert torch.get_num_threads() == 2 and blas_threads() == {2}
            with threads(0):  # 0: leave both as they are
                assert torch.get_num_threads() == 2 and blas_threads() == {2}
        finally:
            torch.set_num_threads(before)
