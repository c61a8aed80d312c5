import os
from collections.abc import Iterator

import pytest

from simagents.threads import set_threads, threads

# Under pytest-xdist (`make test` runs `-n auto`) the workers share the cores: each gets its share
# of torch and numpy BLAS threads, and so do the processes it starts (the CLI, study workers,
# torchrun), so that two workers do not run four spinning threads on two cores.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _threads = max(1, len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    set_threads(_threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(_threads))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run slow learning tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow learning test: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """torch and numpy's BLAS on one thread for the test, as worker processes run: a matmul split
    over more threads sums in another order, so its last bits differ from a worker's."""
    with threads(1):
        yield
