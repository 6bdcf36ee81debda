import pytest

from tests import serve_harness


@pytest.fixture(scope="module", autouse=True)
def _no_cluster():
    """Unit tests need no Ray cluster. They run after the service modules (tests/conftest.py orders them): stop the
    cluster those left running, so the unit tests run as they do alone (`pytest -m unit`), without Ray's processes
    on the same cores."""
    import ray

    if ray.is_initialized():
        serve_harness.stop_cluster()
    yield
