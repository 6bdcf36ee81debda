import pytest

from tests import serve_harness


@pytest.fixture(scope="module")
def serve_cluster():
    """A local Ray cluster + Serve HTTP proxy for one test module (torn down after it)."""
    serve_harness.start_cluster()
    yield serve_harness
    serve_harness.stop_cluster()
