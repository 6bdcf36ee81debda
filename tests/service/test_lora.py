"""LoRA adapters through real Serve on CPU (tiny model, real HTTP, the real `openai` client). The adapters are real:
made with peft on the tiny DiT and saved with diffusers' `save_lora_weights` (tests/lora_adapters.py).

Deployed the way production deploys (a Serve config with `import_path`, what `serve deploy` and KubeRay send), so that
a user_config change is applied live by `reconfigure()`: adding an adapter under load must cost no request an error
and must not restart the replica.
"""

from __future__ import annotations

import asyncio
import random
import time

import httpx
import numpy as np
import openai
import pytest
from ray import serve
from ray.serve._private.api import serve_start
from ray.serve.schema import ServeDeploySchema

from bench import loadgen as lg
from tests import serve_harness
from tests.http_client import b64_png_array
from tests.lora_adapters import save_tiny_adapter

pytestmark = pytest.mark.timeout(300)
PROMPT = "a lighthouse at dusk"


def _apply(loras: dict) -> None:
    args = serve_harness.tiny_config(lora={"max_rank": 8}).model_dump(mode="json")
    generator = {"name": "Generator", "user_config": {"cpu_max_batch_size": 4, "loras": loras}}
    schema = {
        "http_options": {"host": "127.0.0.1", "port": serve_harness.HTTP_PORT},
        "applications": [
            {
                "name": "zimage",
                "route_prefix": "/",
                "import_path": "deployments.app:build_app",
                "runtime_env": {"env_vars": serve_harness.WORKER_ENV},
                "args": args,
                "deployments": [generator],
            }
        ],
    }
    serve_start().deploy_apps(ServeDeploySchema.parse_obj(schema), _blocking=True)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    return {"ink": str(save_tiny_adapter(root / "ink", seed=1)), "film": str(save_tiny_adapter(root / "film", seed=2))}


@pytest.fixture(scope="module")
def service(serve_cluster, adapters):
    _apply({"ink": {"source": adapters["ink"], "scale": 0.9}})
    serve_harness.wait_healthy()
    yield serve_harness.BASE_URL
    serve.delete("zimage")


@pytest.fixture(scope="module")
def client(service):
    return openai.OpenAI(base_url=service + "/v1", api_key="x", max_retries=0, timeout=120)


def _generate(client, **extra) -> np.ndarray:
    result = client.images.generate(prompt=PROMPT, size="256x256", extra_body={"seed": 3, **extra})
    return b64_png_array(result.data[0].b64_json)


def test_the_openai_client_picks_an_adapter_per_request(client):
    base = _generate(client)
    ink = _generate(client, lora=[{"name": "ink", "scale": 1.0}])
    assert np.abs(ink.astype(int) - base.astype(int)).max() > 20
    assert np.array_equal(_generate(client, lora=[{"name": "ink", "scale": 0.0}]), base)
    default = _generate(client, lora=[{"name": "ink"}])  # the configured scale, 0.9
    assert np.array_equal(default, _generate(client, lora=[{"name": "ink", "scale": 0.9}]))


def test_models_and_info_list_the_adapters(client, service, adapters):
    ids = {m.id: m for m in client.models.list().data}
    assert ids["ink"].model_extra["parent"] == "z-image-turbo"
    rows = httpx.get(f"{service}/info", timeout=30).json()["generator"]["lora"]["adapters"]
    assert [(r["name"], r["status"], r["source"], r["scale"]) for r in rows] == [
        ("ink", "loaded", adapters["ink"], 0.9)
    ]


def test_an_unknown_adapter_is_a_422_naming_it_and_the_known_ones(service):
    r = httpx.post(f"{service}/generate", json={"prompt": PROMPT, "lora": [{"name": "nope", "scale": 1.0}]}, timeout=60)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["param"] == "lora[0].name" and err["limit"] == ["ink"] and "nope" in err["message"]


def test_adding_an_adapter_live_under_load_loses_nothing(service, adapters):
    replica = httpx.get(f"{service}/info", timeout=30).json()["generator"]["replica"]
    rng = random.Random(4)
    bodies = [{"prompt": PROMPT}, {"prompt": PROMPT, "lora": [{"name": "ink", "scale": 0.7}]}]

    def send(c):
        return c.post("/generate", json={**rng.choice(bodies), "seed": rng.randrange(1000)})

    async def apply_later(delay_s: float) -> float:
        await asyncio.sleep(delay_s)
        t = time.perf_counter()
        await asyncio.to_thread(
            _apply, {"ink": {"source": adapters["ink"], "scale": 0.9}, "film": {"source": adapters["film"]}}
        )
        return time.perf_counter() - t

    async def scenario():
        return await asyncio.gather(lg.open_loop(service, 2.0, 8.0, send=send, seed=3), apply_later(3.0))

    outcomes, update_s = asyncio.run(scenario())
    s = lg.summarize(outcomes)
    lg.save_result("lora_live_add", {"update_s": update_s, "summary": s}, outcomes)
    assert s["ok"] == s["sent"] > 0, s["codes"]
    info = httpx.get(f"{service}/info", timeout=30).json()["generator"]
    assert info["replica"] == replica, "a user_config change must not restart the replica"
    assert [r["name"] for r in info["lora"]["adapters"]] == ["film", "ink"]
    r = httpx.post(
        f"{service}/generate", json={"prompt": PROMPT, "seed": 1, "lora": [{"name": "film", "scale": 1.0}]}, timeout=60
    )
    assert r.status_code == 200, r.text
