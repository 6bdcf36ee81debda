"""Bad input and security, against one real deployment with an API key (tiny model on CPU, real HTTP).

- Fuzzing: schemathesis generates valid and invalid requests from the service's own OpenAPI schema, and hypothesis
  sends arbitrary bytes and JSON: nothing may answer 5xx, and every 4xx is the typed JSON error.
- Oversized bodies get 413 (declared Content-Length or chunked); Chinese and mixed-script prompts work.
- Security: the bearer key is required on every route but /healthz (401 otherwise, before the body is read); the
  model source is fixed by config (a request naming a path or hub id is refused); the replica logs hold neither the
  key nor prompts at INFO, unless `log_prompts` is on (positive control, so the log check can fail).
The key reaches the replicas as a process environment variable (as a Kubernetes Secret would), not via runtime_env.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path

import httpx
import pytest
import ray
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ray import serve
from schemathesis import GenerationMode

from bench import loadgen as lg
from deployments.app import make_app
from tests import serve_harness
from tests.http_client import png_array

KEY_ENV, KEY = serve_harness.API_KEY_ENV, serve_harness.API_KEY  # in every worker's environment from the start
AUTH = {"Authorization": f"Bearer {KEY}"}
POST_ROUTES = ("/generate", "/v1/images/generations")
BODY_LIMIT = 40_000  # not the default (64 KiB): proves the configured limit reaches the middleware
FUZZ_EXAMPLES = int(os.environ.get("ZIMAGE_FUZZ_EXAMPLES", "30"))  # per operation and mode; ~15 s in all
MIXED_PROMPTS = [
    "一只红色跑车停在山路上，夕阳 sunset 4k",
    "写着“你好，世界”的霓虹灯招牌，雨夜街道",
    "東京の夜景 neon city, 8k",
    "قطة على الشاطئ cat on a beach",
    "🚗 on a mountain road 🌄",
]


def _deploy(**overrides) -> None:
    """serve_harness.deploy() polls /info without a key; here /info needs one."""
    limits = {"max_side": 512, "max_steps": 16, "max_images_per_request": 4, "max_body_bytes": BODY_LIMIT}
    config = serve_harness.tiny_config(api_key_env=KEY_ENV, limits=limits, **overrides)
    app = make_app(config, None, *serve_harness.with_fast_shutdown(None, None))
    serve.run(app, name="zimage", route_prefix="/", blocking=False)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{serve_harness.BASE_URL}/info", headers=AUTH, timeout=10).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError("service not healthy")


@pytest.fixture(scope="module")
def service(serve_cluster):
    _deploy()
    return serve_harness.BASE_URL


@pytest.fixture(scope="module")
def http(service):
    with httpx.Client(base_url=service, timeout=120) as client:
        yield client


def _is_typed_error(resp) -> bool:
    try:
        err = resp.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(err.get("message"), str) and isinstance(err.get("type"), str)


# ---- security: API key ---------------------------------------------------------------------------------------------
def test_api_key_is_required_on_every_route_but_healthz(http):
    schema = http.get("/openapi.json", headers=AUTH).json()
    routes = [(m.upper(), p) for p, ops in schema["paths"].items() for m in ops]
    routes += [("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/redoc"), ("GET", "/no-such-route")]
    assert ("POST", "/generate") in routes and ("GET", "/info") in routes
    bad_auth = [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}, {"Authorization": KEY}]
    for method, path in routes:
        for headers in bad_auth:
            resp = http.request(method, path, headers=headers, json={"prompt": "x"})
            if path == "/healthz":
                assert resp.status_code == 200
                continue
            assert resp.status_code == 401, (method, path, headers, resp.status_code)
            assert (
                resp.headers["www-authenticate"] == "Bearer" and resp.json()["error"]["type"] == "authentication_error"
            )
    # Auth is checked before the body is read: an unauthenticated huge body is a 401, not a 413.
    assert http.post("/generate", content=b"x" * 200_000).status_code == 401
    for path in ("/healthz", "/info", "/v1/models", "/openapi.json"):
        assert http.get(path, headers=AUTH).status_code == 200, path
    assert http.get("/docs", headers=AUTH).status_code == 404  # interactive docs are off (they need a CDN)
    assert http.get("/info", headers={"Authorization": f"bearer {KEY}"}).status_code == 200  # scheme is case-blind
    assert http.get("/info", headers=AUTH).json()["auth"] is True


# ---- bad input ----------------------------------------------------------------------------------------------------
def _schemathesis_cases(http) -> st.SearchStrategy:
    schema = schemathesis.openapi.from_dict(http.get("/openapi.json", headers=AUTH).json())
    # Negative multipart bodies crash schemathesis 4.32 itself (its validator cannot read its own file objects), so
    # the edits route gets schema-valid forms here (random bytes as images) and its invalid ones from
    # tests/unit/test_edit_validation.py and tests/service/test_edits.py.
    negative = schema.exclude(path="/v1/images/edits")
    return st.one_of(
        schema.as_strategy(generation_mode=GenerationMode.POSITIVE), negative.as_strategy(GenerationMode.NEGATIVE)
    )


def test_schema_fuzzing_never_gets_a_5xx(http):
    """schemathesis cases (valid and invalid per the OpenAPI schema) on every operation, sent over real HTTP."""
    seen: dict[int, int] = {}
    started = time.perf_counter()

    @settings(
        max_examples=FUZZ_EXAMPLES * 2 * 5,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(case=_schemathesis_cases(http))
    def run(case):
        # Sent with requests directly: schemathesis 4.32's own `case.call` trips over this urllib3 build.
        resp = session.request(**case.as_transport_kwargs(base_url=serve_harness.BASE_URL, headers=AUTH), timeout=120)
        seen[resp.status_code] = seen.get(resp.status_code, 0) + 1
        assert resp.status_code < 500, (case.method, case.path, case.body, resp.status_code, resp.text[:300])
        if resp.status_code >= 400:
            assert _is_typed_error(resp), resp.text[:300]

    with requests.Session() as session:
        run()
    lg.save_result("fuzz_schemathesis", {"statuses": seen, "wall_s": time.perf_counter() - started})
    assert seen.get(200, 0) > 0 and sum(v for k, v in seen.items() if 400 <= k < 500) > 0, seen


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=12,
)
FIELDS = ("prompt", "width", "height", "num_inference_steps", "seed", "n", "size", "model", "response_format")
near_valid = st.fixed_dictionaries(
    {"prompt": st.text(max_size=60)}, optional={f: json_values for f in FIELDS if f != "prompt"}
)


def test_arbitrary_bodies_never_get_a_5xx(http):
    """Raw bytes, any JSON, and near-valid objects with wrong-typed or out-of-range fields, on both POST routes."""
    seen: dict[int, int] = {}
    bodies = st.one_of(
        st.binary(max_size=300),
        json_values.map(lambda v: json.dumps(v).encode()),
        near_valid.map(lambda v: json.dumps(v).encode()),
    )

    @settings(max_examples=300, deadline=None, derandomize=True, database=None)
    @given(route=st.sampled_from(POST_ROUTES), body=bodies)
    def run(route, body):
        resp = http.post(route, content=body, headers={**AUTH, "content-type": "application/json"})
        seen[resp.status_code] = seen.get(resp.status_code, 0) + 1
        assert resp.status_code < 500, (route, body[:200], resp.status_code, resp.text[:300])
        assert resp.status_code == 200 or _is_typed_error(resp), resp.text[:300]

    run()
    lg.save_result("fuzz_hypothesis", {"statuses": seen})
    assert sum(v for k, v in seen.items() if 400 <= k < 500) > 0


@pytest.mark.parametrize("prompt", ["\ud800", "a \udfff b"])
def test_lone_surrogates_are_a_422_not_a_500(http, prompt):
    body = json.dumps({"prompt": prompt}).encode()  # json.dumps escapes them: valid JSON, invalid text
    for route in POST_ROUTES:
        resp = http.post(route, content=body, headers={**AUTH, "content-type": "application/json"})
        assert resp.status_code == 422 and resp.json()["error"]["param"] == "prompt", resp.text


def test_oversized_bodies_get_413(http):
    limit = BODY_LIMIT
    big = json.dumps({"prompt": "x" * (limit + 10)}).encode()
    resp = http.post("/generate", content=big, headers={**AUTH, "content-type": "application/json"})
    assert resp.status_code == 413 and resp.json()["error"]["limit"] == limit

    def chunked():  # no Content-Length: the guard must count what it reads
        for _ in range(50):
            yield b"x" * 1024

    resp = http.post("/v1/images/generations", content=chunked(), headers={**AUTH, "content-type": "application/json"})
    assert resp.status_code == 413
    # Under the body limit but over the prompt limit: a 422 naming the limit.
    resp = http.post("/generate", json={"prompt": "x" * 5000}, headers=AUTH)
    assert resp.status_code == 422 and resp.json()["error"]["limit"] == 2000


@pytest.mark.parametrize("prompt", MIXED_PROMPTS)
def test_chinese_and_mixed_script_prompts_work(http, prompt):
    resp = http.post("/generate", json={"prompt": prompt, "seed": 7}, headers=AUTH)
    assert resp.status_code == 200 and png_array(resp.content).shape == (256, 256, 3)
    resp = http.post("/v1/images/generations", json={"prompt": prompt, "n": 2, "size": "256x256"}, headers=AUTH)
    assert resp.status_code == 200 and len(resp.json()["data"]) == 2


# ---- security: model source, logs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["/tmp/evil-model", "../../etc", "random:full", "hub:someone/else"])
def test_a_request_cannot_choose_the_model_source(http, model):
    resp = http.post("/v1/images/generations", json={"prompt": "x", "model": model}, headers=AUTH)
    assert resp.status_code == 422 and resp.json()["error"]["param"] == "model"
    resp = http.post("/generate", json={"prompt": "x", "model": model}, headers=AUTH)
    assert resp.status_code == 422 and resp.json()["error"]["param"] == "model"


def test_the_hub_id_is_only_an_alias_for_the_served_model(http):
    """OpenAI clients often send the Hub id as `model`: accepted, and the configured model still answers."""
    resp = http.post("/v1/images/generations", json={"prompt": "x", "model": "Tongyi-MAI/Z-Image-Turbo"}, headers=AUTH)
    assert resp.status_code == 200 and len(resp.json()["data"]) == 1
    source = http.get("/info", headers=AUTH).json()["model_source"]
    assert source.startswith("random:"), source


def _logs() -> Path:
    return Path(ray._private.worker.global_worker.node.get_logs_dir_path())


def _grep_logs(needle: str) -> list[str]:
    """Files of this cluster's session logs (Serve replica, proxy, controller, worker stdout/err) holding `needle`."""
    hits = []
    for f in _logs().rglob("*"):
        if f.is_file() and f.suffix in (".log", ".out", ".err", ".txt", ""):
            try:
                if needle in f.read_text(errors="replace"):
                    hits.append(str(f.relative_to(_logs())))
            except OSError:
                pass
    return hits


def test_logs_hold_no_secret_and_no_prompt_unless_log_prompts(http):
    marker = f"secret-prompt-{secrets.token_hex(6)}"
    assert http.post("/generate", json={"prompt": f"a red car {marker}"}, headers=AUTH).status_code == 200
    assert http.post("/generate", json={"prompt": "x"}, headers={"Authorization": "Bearer not-the-key"}).status_code
    time.sleep(1.5)  # let the log handlers flush
    assert list((_logs() / "serve").glob("replica_zimage_Ingress_*.log")), "no Serve replica logs found"
    assert _grep_logs(KEY) == [], "the API key appears in the logs"
    assert _grep_logs(marker) == [], "a prompt appears in the logs"

    # Positive control: with log_prompts on, the same check finds the prompt (so the check above can fail).
    _deploy(log_prompts=True)
    marker = f"logged-prompt-{secrets.token_hex(6)}"
    assert http.post("/generate", json={"prompt": f"a red car {marker}"}, headers=AUTH).status_code == 200
    deadline = time.monotonic() + 10
    while not _grep_logs(marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    hits = _grep_logs(marker)
    assert any("Ingress" in h for h in hits), hits
    assert _grep_logs(KEY) == []
