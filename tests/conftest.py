import pytest

from tests import serve_harness


@pytest.fixture(scope="module")
def serve_cluster():
    """A local Ray cluster + Serve HTTP proxy for one test module (torn down after it)."""
    serve_harness.start_cluster()
    yield serve_harness
    serve_harness.stop_cluster()


@pytest.fixture(autouse=True)
def _forget_in_process_state_gauges():
    """Tests that build a ZImageGenerator in the pytest process leave its StateGauges re-recording forever (a daemon
    thread); a later test that starts Ray in this process would then export them from the driver as stray series.
    Replicas run in their own processes and are unaffected."""
    from deployments.observability.metrics import StateGauge

    before = list(StateGauge._live)
    yield
    with StateGauge._lock:
        StateGauge._live[:] = before
