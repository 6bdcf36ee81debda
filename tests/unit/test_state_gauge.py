"""StateGauge's re-recording thread: stopped and joined at exit, restarted by the next gauge.

Runs without a Ray cluster: Ray's metrics accept records before `ray.init` (nothing is exported).
"""

from __future__ import annotations

import subprocess
import sys

from deployments.observability.metrics import StateGauge


def test_the_refresh_thread_stops_and_the_next_gauge_starts_a_new_one():
    StateGauge("zimage_test_state_a", tag_keys=("k",)).set(1.0, {"k": "v"})
    first = StateGauge._thread
    assert first is not None and first.is_alive()
    StateGauge.stop_refreshing()
    assert not first.is_alive() and StateGauge._thread is None
    StateGauge("zimage_test_state_b")
    assert StateGauge._thread is not None and StateGauge._thread is not first and StateGauge._thread.is_alive()


def test_exit_stops_the_thread_before_ray_shuts_down():
    """atexit runs handlers last in, first out: ours must come after `import ray` registered ray.shutdown. A profile
    hook in a child interpreter records the order the two handlers are entered at exit."""
    code = """
import sys
from deployments.observability.metrics import StateGauge
StateGauge("zimage_test_state_exit").set(1.0)
thread = StateGauge._thread

def order(frame, event, arg):
    code = frame.f_code
    if event == "call" and (code.co_name == "stop_refreshing" or (
            code.co_name == "shutdown" and code.co_filename.endswith("_private/worker.py"))):
        print(code.co_name, "thread alive:", thread.is_alive(), flush=True)

sys.setprofile(order)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.splitlines() == ["stop_refreshing thread alive: True", "shutdown thread alive: False"], (
        out.stdout + out.stderr
    )
