import os
from pathlib import Path

import pytest

from tests import serve_harness

# Tests in this process compare images bit for bit too (a saved model against the one in memory, batched against
# alone): MKL's strict reproducibility must hold before this process's first GEMM, not only once a module has
# started a cluster (start_cluster sets it for the workers and, as a side effect, here).
os.environ.setdefault("MKL_CBWR", serve_harness.WORKER_ENV["MKL_CBWR"])

TESTS = Path(__file__).resolve().parent
pytest_plugins = ["tests.hard_exit"]  # ends the process once results are in (why: tests/hard_exit.py)
GROUPS = ("unit", "service", "reliability")  # tests/<group>/: marked by directory (`pytest -m unit`)


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = Path(item.path).resolve()
        parts = path.relative_to(TESTS).parts if path.is_relative_to(TESTS) else ()
        if len(parts) > 1 and parts[0] in GROUPS:
            item.add_marker(getattr(pytest.mark, parts[0]))
    # Modules on the shared cluster run back to back, then those that start their own: every switch restarts Ray
    # (~7 s on 2 cores). Files keep their order within each group, and unit tests (no cluster) come last as before.
    shared = {item.path for item in items if "serve_cluster" in item.fixturenames}
    unit = {item.path for item in items if item.get_closest_marker("unit")}
    items.sort(key=lambda item: (item.path in unit, item.path not in shared))


@pytest.fixture(scope="session")
def _ray_session():
    """Stops whatever cluster is still running when the session ends."""
    yield
    import ray

    if ray.is_initialized():
        serve_harness.stop_cluster()


@pytest.fixture(scope="module")
def serve_cluster(_ray_session):
    """A local Ray cluster + Serve HTTP proxy for one test module. The cluster is shared by consecutive modules
    (tests/serve_harness.shared_cluster); each module's applications are deleted after it."""
    serve_harness.shared_cluster()
    yield serve_harness
    serve_harness.delete_apps()


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
