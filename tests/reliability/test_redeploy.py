"""Redeploys and shutdown while requests are in flight (real Serve, tiny model on CPU, real HTTP).

Deployed the way production is: declaratively, from a Serve config (what `serve deploy` and KubeRay's serveConfigV2
send), with `import_path` pointing at `build_slow_app` below.
- A `user_config` change under open-loop load is applied live by `reconfigure()` on the running replica: no restart,
  every request 200, and the new batch size takes effect.
- An `args` change (a new code version) replaces both deployments: requests already in flight finish on the old
  replicas (their `graceful_shutdown_timeout_s` exceeds the longest batch), and load sent across the switch is all
  answered 200.
- Deleting the app drains it: requests in flight finish before the replicas go.
The one fake: a 1 s sleep per denoise call (`tests.fakes.WrappingFactory(sleep_s=1)`), a GPU-like batch time, so that
requests are really in flight (mid-batch) when the update or shutdown starts.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from ray import serve
from ray.serve import Application
from ray.serve._private.api import serve_start
from ray.serve.schema import ServeDeploySchema

from bench import loadgen as lg
from deployments.app import make_app
from deployments.config import AppConfig
from tests import serve_harness
from tests.fakes import WrappingFactory

SLEEP_S = 1.0
GEN = {
    "max_ongoing_requests": 8,
    "max_queued_requests": 64,
    "graceful_shutdown_timeout_s": 30,  # > the longest batch (~1.5 s here; size it to yours on a GPU)
    "user_config": {"cpu_max_batch_size": 4},
}
INGRESS = {"graceful_shutdown_timeout_s": 30}  # the ingress holds requests as long as the generator does
FACTORY = WrappingFactory(sleep_s=SLEEP_S)
pytestmark = pytest.mark.timeout(240)


def build_slow_app(args: dict) -> Application:
    """The real app with a slow denoise; `import_path: tests.test_reliability_redeploy:build_slow_app`."""
    args = dict(args)
    sleep_s = args.pop("test_sleep_s")
    return make_app(AppConfig.model_validate(args), WrappingFactory(sleep_s=sleep_s))


def _config(user_config: dict | None = None, **app_overrides) -> ServeDeploySchema:
    args = {**serve_harness.tiny_config(**app_overrides).model_dump(mode="json"), "test_sleep_s": SLEEP_S}
    generator = {"name": "Generator", **GEN, "user_config": user_config or GEN["user_config"]}
    return ServeDeploySchema.parse_obj(
        {
            "http_options": {"host": "127.0.0.1", "port": serve_harness.HTTP_PORT},
            "applications": [
                {
                    "name": "zimage",
                    "route_prefix": "/",
                    "import_path": f"{__name__}:build_slow_app",
                    "runtime_env": {"env_vars": serve_harness.WORKER_ENV},
                    "args": args,
                    "deployments": [generator, {"name": "Ingress", **INGRESS}],
                }
            ],
        }
    )


def _apply(config: ServeDeploySchema) -> None:
    """What `serve deploy config.yaml` does through the dashboard's REST API (no dashboard in these tests)."""
    serve_start().deploy_apps(config, _blocking=True)


@pytest.fixture(scope="module")
def service(serve_cluster):
    """One deployment for the module; the tests run in order on it: live update -> code update -> delete."""
    _apply(_config())
    serve_harness.wait_healthy()
    yield serve_harness.BASE_URL
    serve.delete("zimage")


def _info() -> dict:
    return httpx.get(f"{serve_harness.BASE_URL}/info", timeout=30).json()


async def _after(delay_s: float, fn, *args, **kwargs):
    await asyncio.sleep(delay_s)
    t = time.perf_counter()
    await asyncio.to_thread(fn, *args, **kwargs)
    return time.perf_counter() - t


def test_user_config_change_under_load_is_live_and_loses_nothing(service):
    before = _info()["generator"]

    async def scenario():
        return await asyncio.gather(
            lg.open_loop(serve_harness.BASE_URL, 1.5, 10.0, seed=5),
            _after(4.0, _apply, _config({"cpu_max_batch_size": 2})),
        )

    outcomes, update_s = asyncio.run(scenario())
    after = _info()["generator"]
    s = lg.summarize(outcomes)
    late = [o.batch_size for o in outcomes if o.due_s > 4.0 + update_s + 2 and o.batch_size]
    lg.save_result("redeploy_user_config", {"update_s": update_s, "summary": s, "late_batch_sizes": late}, outcomes)

    assert s["ok"] == s["sent"] > 0, s["codes"]
    assert after["replica"] == before["replica"], "a user_config change must not restart the replica"
    assert after["batching"]["effective_max_batch"] == 2 and before["batching"]["effective_max_batch"] == 4
    assert late and max(late) <= 2


def test_code_redeploy_finishes_in_flight_requests_and_loses_nothing(service):
    before = _info()["generator"]["replica"]

    async def burst():
        async with lg.make_client(serve_harness.BASE_URL, 120) as c:
            send, clock = lg.generate_request(), lg.Clock()
            return await asyncio.gather(*(lg.request_at(c, send, clock) for _ in range(8)))

    async def scenario():
        return await asyncio.gather(
            burst(),
            lg.open_loop(serve_harness.BASE_URL, 1.5, 20.0, seed=9),
            # Changing an app arg changes the app's code version: both deployments are replaced, rolling.
            _after(0.5, _apply, _config({"cpu_max_batch_size": 2}, model_name="z-image-turbo-v2")),
        )

    in_flight, steady, update_s = asyncio.run(scenario())
    after = _info()
    s_in, s_steady = lg.summarize(in_flight), lg.summarize(steady)
    lg.save_result(
        "redeploy_code",
        {"update_s": update_s, "in_flight_at_update": s_in, "load_across_update": s_steady},
        list(in_flight) + steady,
    )

    assert s_in["ok"] == s_in["sent"] == 8, s_in["codes"]
    assert s_steady["ok"] == s_steady["sent"] > 0, s_steady["codes"]
    assert after["model_name"] == "z-image-turbo-v2" and after["generator"]["replica"] != before
    assert before in s_in["replicas"], "the burst should have been served by the old replica"


def test_delete_drains_in_flight_requests(service):
    async def scenario():
        async with lg.make_client(serve_harness.BASE_URL, 120) as c:
            send, clock = lg.generate_request(), lg.Clock()
            tasks = [asyncio.create_task(lg.request_at(c, send, clock)) for _ in range(6)]
            delete_s = await _after(0.5, serve.delete, "zimage")
            return await asyncio.gather(*tasks), delete_s

    outcomes, delete_s = asyncio.run(scenario())
    s = lg.summarize(outcomes)
    lg.save_result("shutdown_drain", {"delete_s": delete_s, "summary": s}, list(outcomes))
    assert s["ok"] == s["sent"] == 6, s["codes"]
    assert delete_s >= SLEEP_S  # delete waited for the in-flight batch
