"""How many threads simagents computes on: torch's and numpy's BLAS, set together.

Acting does its few-row products in numpy (:class:`~simagents.model.Context`), and numpy's
OpenBLAS keeps a thread pool of its own, sized to the machine and deaf to
``torch.set_num_threads``. Measured on a 2-core machine: a product of 5 rows by 6 features
took 1.5 us of wall time on 1.9 cores' CPU time, 1.2 us on one with one BLAS thread; of 5 rows
by 1,686, 75 us on 2.0 cores against 67 us on one. When an observation's 1,680 features still
went through such a product, ``rl`` fine-tuning used 29 s of CPU in 17 s, and two Connect Four
runs side by side, each told to use one thread, fine-tuned in 1,070 and 950 s against 106 s
alone. So wherever simagents is told a thread count, both libraries get it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from threadpoolctl import threadpool_limits


def set_threads(n: int) -> None:
    """torch and numpy's BLAS on ``n`` threads each, from now on (a worker process's setting)."""
    torch.set_num_threads(n)
    threadpool_limits(n, user_api="blas")


@contextmanager
def threads(n: int) -> Iterator[None]:
    """Run the block on ``n`` threads each for torch and numpy's BLAS, restored afterwards;
    0 leaves both as they are."""
    if n < 1:
        yield
        return
    before = torch.get_num_threads()
    blas = threadpool_limits(n, user_api="blas")
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        blas.restore_original_limits()
