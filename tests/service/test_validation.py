"""Every invalid request gets a 4xx JSON error naming the field (`error.param`) and its limit (`error.limit`), over real
HTTP against real Serve, and none of them reaches the pipeline. The checks themselves are unit-tested without Ray in
tests/unit/test_validation.py; this is the HTTP shape (pydantic's own errors, the 413 guard, OpenAPI) end to end.

The pipeline is the real tiny one, wrapped by `tests.fakes.WrappingFactory` only to count denoise calls inside the
replica: the count must not move while bad requests arrive, and must move for a good one (so the count is live).
"""

from __future__ import annotations

import httpx
import pytest

from deployments.http.protocol import MAX_SEED, GenerateRequest, ImagesRequest
from tests.fakes import WrappingFactory
from tests.http_client import post
from tests.serve_harness import BASE_URL

# tests.serve_harness.tiny_config limits: sides 256..512 in steps of 16, 1..16 steps, n 1..4, prompt <= 2000 chars.
SIDES, STEPS, N = [256, 512], [1, 16], [1, 4]
SIZE = {"side_multiple": 16, "min_side": 256, "max_side": 512, "max_pixels": 2048 * 2048}  # + the nearest valid size
OK = {"prompt": "a red car"}
PROMPT = [1, 2000]
GENERATE_FIELDS, IMAGES_FIELDS = sorted(GenerateRequest.model_fields), sorted(ImagesRequest.model_fields)
MODELS = ["z-image-turbo", "Tongyi-MAI/Z-Image-Turbo"]

# (route, body, status, param, limit or None, text that the message must contain)
GENERATE = [
    ({**OK, "width": 128}, 422, "width", SIDES, "256"),
    ({**OK, "width": 1024}, 422, "width", SIDES, "512"),
    ({**OK, "width": 264}, 422, "width", 16, "multiple of 16"),
    ({**OK, "height": 250}, 422, "height", SIDES, "256"),
    ({**OK, "height": 520}, 422, "height", SIDES, "512"),
    ({**OK, "num_inference_steps": 0}, 422, "num_inference_steps", STEPS, "16"),
    ({**OK, "num_inference_steps": 17}, 422, "num_inference_steps", STEPS, "16"),
    ({"prompt": ""}, 422, "prompt", PROMPT, "empty"),
    ({"prompt": "   \n"}, 422, "prompt", PROMPT, "empty"),
    ({"prompt": "x" * 2001}, 422, "prompt", 2000, "2000"),
    ({**OK, "seed": -1}, 422, "seed", [0, MAX_SEED], str(MAX_SEED)),
    ({**OK, "seed": MAX_SEED + 1}, 422, "seed", [0, MAX_SEED], str(MAX_SEED)),
    ({**OK, "guidance_scale": 5.0}, 422, "guidance_scale", GENERATE_FIELDS, "guidance_scale"),
    ({**OK, "width": "wide"}, 422, "width", None, "integer"),
    ({**OK, "seed": 1.5}, 422, "seed", None, "integer"),
    ({"prompt": 123}, 422, "prompt", None, "string"),
    ({"width": 256}, 422, "prompt", "required", "required"),
    ({**OK, "output_format": "gif"}, 422, "output_format", None, "webp"),
    ({**OK, "output_compression": 50}, 422, "output_compression", ["jpeg", "webp"], "jpeg"),
    ({**OK, "output_format": "jpeg", "output_compression": 101}, 422, "output_compression", [0, 100], "100"),
    ({**OK, "output_format": "webp", "output_compression": -1}, 422, "output_compression", [0, 100], "100"),
]
IMAGES = [
    ({**OK, "n": 0}, 422, "n", N, "4"),
    ({**OK, "n": 5}, 422, "n", N, "4"),
    ({**OK, "size": "big"}, 422, "size", "WIDTHxHEIGHT", "1024x1024"),
    ({**OK, "size": "256x1000"}, 422, "size", {**SIZE, "nearest": "256x512"}, "nearest valid size is 256x512"),
    ({**OK, "size": "100x256"}, 422, "size", {**SIZE, "nearest": "256x256"}, "nearest valid size is 256x256"),
    ({**OK, "size": "260x256"}, 422, "size", {**SIZE, "nearest": "256x256"}, "multiples of 16"),
    ({**OK, "response_format": "url"}, 422, "response_format", "b64_json", "b64_json"),
    ({**OK, "model": "dall-e-3"}, 422, "model", MODELS, "z-image-turbo"),
    ({**OK, "num_inference_steps": 40}, 422, "num_inference_steps", STEPS, "16"),
    ({**OK, "seed": MAX_SEED, "n": 2}, 422, "seed", [0, MAX_SEED], str(MAX_SEED)),
    ({**OK, "negative_prompt": "blurry"}, 422, "negative_prompt", IMAGES_FIELDS, "negative_prompt"),
    ({**OK, "n": "two"}, 422, "n", None, "integer"),
    ({"n": 1}, 422, "prompt", "required", "required"),
    ({"prompt": "  "}, 422, "prompt", PROMPT, "empty"),
    ({**OK, "output_format": "gif"}, 422, "output_format", None, "webp"),
    ({**OK, "output_compression": 50}, 422, "output_compression", ["jpeg", "webp"], "jpeg"),
    ({**OK, "output_format": "jpeg", "output_compression": 101}, 422, "output_compression", [0, 100], "100"),
    ({**OK, "output_format": "webp", "output_compression": -1}, 422, "output_compression", [0, 100], "100"),
]
CASES = [("/generate", *c) for c in GENERATE] + [("/v1/images/generations", *c) for c in IMAGES]


@pytest.fixture(scope="module")
def counted(serve_cluster, tmp_path_factory):
    factory = WrappingFactory(log_path=str(tmp_path_factory.mktemp("validation") / "calls.jsonl"))
    serve_cluster.deploy(pipeline_factory=factory)
    return factory


def _error(response: httpx.Response) -> dict:
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


def test_invalid_requests_get_4xx_naming_field_and_limit(counted):
    calls_before = len(counted.calls())
    problems = []
    for route, body, status, param, limit, text in CASES:
        response = post(route, body)
        if response.status_code != status:
            problems.append(f"{route} {str(body)[:60]}: status {response.status_code}: {response.text[:200]}")
            continue
        error = _error(response)
        if error.get("param") != param:
            problems.append(f"{route} {str(body)[:60]}: param {error.get('param')!r} != {param!r}")
        if limit is not None and error.get("limit") != limit:
            problems.append(f"{route} {str(body)[:60]}: limit {error.get('limit')!r} != {limit!r}")
        if text.lower() not in error["message"].lower():
            problems.append(f"{route} {str(body)[:60]}: message {error['message']!r} lacks {text!r}")
        if error.get("type") != "invalid_request_error":
            problems.append(f"{route} {str(body)[:60]}: type {error.get('type')!r}")
    assert not problems, "\n".join(problems)
    assert len(counted.calls()) == calls_before  # nothing invalid reached the pipeline


MALFORMED = [b"{not json", b'{"prompt": "a red car",}', b'["a red car"]', b"null", b""]
LONE_SURROGATE = b'{"prompt": "a red car \\ud800"}'  # valid JSON, not valid text


@pytest.mark.parametrize("route", ["/generate", "/v1/images/generations"])
def test_malformed_bodies_are_rejected_before_the_pipeline(counted, route):
    calls_before = len(counted.calls())
    for raw in MALFORMED:
        response = httpx.post(f"{BASE_URL}{route}", content=raw, headers={"content-type": "application/json"})
        assert response.status_code == 422, (raw, response.text)
        error = _error(response)
        assert error["message"] and error["param"] == "body" and error.get("limit") is not None, (raw, error)
    response = httpx.post(f"{BASE_URL}{route}", content=LONE_SURROGATE, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert _error(response)["param"] == "prompt" and _error(response)["limit"] == "valid Unicode text"
    big = httpx.post(f"{BASE_URL}{route}", json={"prompt": "x" * 70_000})
    assert big.status_code == 413
    assert _error(big)["param"] == "body" and _error(big)["limit"] == 64 * 1024
    assert len(counted.calls()) == calls_before


def test_malformed_json_says_a_json_object_is_expected(counted):
    for raw in (b"{not json", b'{"prompt": "a red car",}'):
        error = _error(httpx.post(f"{BASE_URL}/generate", content=raw, headers={"content-type": "application/json"}))
        assert (error["param"], error["code"], error["limit"]) == ("body", "json_invalid", "a JSON object"), raw


def test_every_4xx_names_param_and_limit(counted):
    """The contract the README promises: a client can always tell which field broke which bound."""
    for route, body, *_ in CASES:
        error = _error(post(route, body))
        assert error["param"] and error.get("limit") is not None, (route, body, error)


def test_the_hub_id_is_accepted_as_the_model_name(counted):
    for model in MODELS:
        response = post(
            "/v1/images/generations", {"prompt": "a red car", "model": model, "seed": 1, "num_inference_steps": 1}
        )
        assert response.status_code == 200, (model, response.text[:300])
        assert len(response.json()["data"]) == 1


def test_openapi_documents_the_error_shape_and_interactive_docs_are_off(counted):
    schema = httpx.get(f"{BASE_URL}/openapi.json").json()
    components = schema["components"]["schemas"]
    assert "HTTPValidationError" not in components  # FastAPI's {"detail": ...} is never sent, so never documented
    assert set(components["ErrorResponse"]["properties"]) == {"error"}
    assert {"message", "type", "param", "code", "limit"} <= set(components["ErrorDetail"]["properties"])
    for path in ("/generate", "/v1/images/generations"):
        responses = schema["paths"][path]["post"]["responses"]
        for status in ("401", "413", "422", "500", "503"):
            ref = responses[status]["content"]["application/json"]["schema"]["$ref"]
            assert ref == "#/components/schemas/ErrorResponse", (path, status, ref)
        assert "Retry-After" in responses["503"]["headers"]
    width = components["GenerateRequest"]["properties"]["width"]
    assert width["x-limits"] == {"minimum": 256, "maximum": 512, "multipleOf": 16}  # this deployment's limits
    assert schema["info"]["x-limits"]["max_pixels"] == 2048 * 2048 and schema["info"]["x-limits"]["presets"] == []
    assert "nearest valid size" in components["ImagesRequest"]["properties"]["size"]["description"]
    for path in ("/docs", "/redoc"):
        response = httpx.get(f"{BASE_URL}{path}")
        assert response.status_code == 404, (path, response.status_code)


def test_cpu_info_reports_no_memory_mode(counted):
    info = httpx.get(f"{BASE_URL}/info").json()["generator"]
    assert info["device"] == "cpu" and info["gpu"] is None
    assert info["batching"]["memory_mode"] is None and info["batching"]["tier"] is None
    assert info["compile"] is False


def test_valid_request_does_reach_the_pipeline(counted):
    """The call counter is live: without this, 'zero calls' above could not fail."""
    calls_before = len(counted.calls())
    response = post("/generate", {"prompt": "a red car", "seed": 1, "num_inference_steps": 2})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert len(counted.calls()) == calls_before + 1
