import pytest

from tests import serve_harness


@pytest.fixture(scope="module", autouse=True)
def _no_cluster():
    """Unit tests need no Ray cluster. They run after the service modules (tests/conftest.py orders them), so stop
    the cluster those left running: its idle processes would share the CI's 2 cores with Inductor's compiles here,
    and the driver's Ray threads would run on beside them until the process exits."""
    import ray

    if ray.is_initialized():
        serve_harness.stop_cluster()
    yield
