"""Request checks of deployments/http/validation.py, called directly (no Ray, no HTTP): every limit, the error's
`param` and `limit`, and the specs a valid request becomes. HTTP-level 4xx bodies: tests/service/test_validation.py.
"""

from __future__ import annotations

import pytest

from deployments.config import DEFAULT_HUB_ID
from deployments.http.errors import InvalidRequest
from deployments.http.protocol import MAX_SEED, GenerateRequest, ImagesRequest
from deployments.http.validation import output_encoding, served_model_names, specs_from_generate, specs_from_images
from tests.serve_harness import tiny_config

CFG = tiny_config()  # sides 256..512 in steps of 16, 1..16 steps, n 1..4, prompt <= 2000 chars
SIDES, STEPS, N = [256, 512], [1, 16], [1, 4]


def _gen(**kw):
    return specs_from_generate(GenerateRequest(**{"prompt": "a red car", **kw}), CFG, "req")


def _img(**kw):
    return specs_from_images(ImagesRequest(**{"prompt": "a red car", **kw}), CFG, "req")


def _refused(fn, **kw) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        fn(**kw)
    err = info.value
    assert err.status == 422 and err.type == "invalid_request_error"
    assert err.param and err.limit is not None, f"{kw}: every refusal names its field and limit ({err.message})"
    return err


BOTH = pytest.mark.parametrize("fn", [_gen, _img], ids=["generate", "images"])


@BOTH
@pytest.mark.parametrize(
    ("kw", "param", "limit", "text"),
    [
        ({"prompt": ""}, "prompt", [1, 2000], "empty"),
        ({"prompt": " \n\t"}, "prompt", [1, 2000], "empty"),
        ({"prompt": "x" * 2001}, "prompt", 2000, "2000"),
        ({"prompt": "a cat \ud800"}, "prompt", "valid Unicode text", "unicode"),
        ({"num_inference_steps": 0}, "num_inference_steps", STEPS, "16"),
        ({"num_inference_steps": 17}, "num_inference_steps", STEPS, "16"),
        ({"seed": -1}, "seed", [0, MAX_SEED], str(MAX_SEED)),
        ({"seed": MAX_SEED + 1}, "seed", [0, MAX_SEED], str(MAX_SEED)),
    ],
)
def test_prompt_steps_and_seed_limits(fn, kw, param, limit, text):
    err = _refused(fn, **kw)
    assert (err.param, err.limit) == (param, limit)
    assert text.lower() in err.message.lower()


@pytest.mark.parametrize(
    ("kw", "param", "limit"),
    [
        ({"width": 240}, "width", SIDES),
        ({"width": 528}, "width", SIDES),
        ({"width": 264}, "width", 16),
        ({"height": 250}, "height", SIDES),
        ({"height": 520}, "height", SIDES),
        ({"height": 504}, "height", 16),
    ],
)
def test_generate_sides(kw, param, limit):
    err = _refused(_gen, **kw)
    assert (err.param, err.limit) == (param, limit)


@pytest.mark.parametrize(
    ("size", "param", "limit"),
    [
        ("big", "size", "WIDTHxHEIGHT"),
        ("256x", "size", "WIDTHxHEIGHT"),
        ("256*256", "size", "WIDTHxHEIGHT"),
        ("-256x256", "size", "WIDTHxHEIGHT"),
        ("123456x256", "size", "WIDTHxHEIGHT"),
    ],
)
def test_images_size_parsing(size, param, limit):
    err = _refused(_img, size=size)
    assert (err.param, err.limit) == (param, limit)


@pytest.mark.parametrize(
    ("size", "nearest", "why"),
    [
        ("100x256", "256x256", "within [256, 512]"),
        ("256x1000", "256x512", "within [256, 512]"),
        ("260x256", "256x256", "multiples of 16"),
        ("256x500", "256x496", "multiples of 16"),
        ("1000x1000", "512x512", "multiples of 16"),
    ],
)
def test_a_refused_size_names_the_nearest_valid_one(size, nearest, why):
    err = _refused(_img, size=size)
    assert err.param == "size" and err.limit["nearest"] == nearest and why in err.message
    assert nearest in err.message
    assert {k: err.limit[k] for k in ("side_multiple", "min_side", "max_side")} == {
        "side_multiple": 16,
        "min_side": 256,
        "max_side": 512,
    }
    (spec,) = _img(size=nearest)  # and the nearest one is accepted
    assert f"{spec.width}x{spec.height}" == nearest


@pytest.mark.parametrize(("n", "ok"), [(0, False), (1, True), (4, True), (5, False), (-1, False)])
def test_images_n(n, ok):
    if ok:
        specs = _img(n=n, seed=10)
        assert [s.seed for s in specs] == list(range(10, 10 + n))
        assert [s.request_id for s in specs] == [f"req/{i}" for i in range(n)]
    else:
        err = _refused(_img, n=n)
        assert (err.param, err.limit) == ("n", N)


def test_images_seed_plus_n_stays_in_range():
    assert _img(seed=MAX_SEED - 1, n=2)[-1].seed == MAX_SEED
    err = _refused(_img, seed=MAX_SEED, n=2)
    assert (err.param, err.limit) == ("seed", [0, MAX_SEED])


def test_images_response_format_url_is_refused():
    err = _refused(_img, response_format="url")
    assert (err.param, err.limit) == ("response_format", "b64_json")
    assert _img(response_format="b64_json")


def test_model_name_and_hub_id_alias_accepted_and_unknown_refused():
    names = served_model_names(CFG)
    assert names == [CFG.model_name, DEFAULT_HUB_ID] == ["z-image-turbo", "Tongyi-MAI/Z-Image-Turbo"]
    for model in (None, "z-image-turbo", "Tongyi-MAI/Z-Image-Turbo"):
        assert len(_img(model=model)) == 1, model
    err = _refused(_img, model="dall-e-3")
    assert (err.param, err.limit) == ("model", names)
    assert "z-image-turbo" in err.message
    hub_cfg = tiny_config(model="some-org/some-fork", model_name="fork")
    assert served_model_names(hub_cfg) == ["fork", "some-org/some-fork"]  # the configured Hub id, not the default


def test_output_encoding():
    assert output_encoding(GenerateRequest(prompt="x")) == ("png", None)
    assert output_encoding(GenerateRequest(prompt="x", output_format="jpeg", output_compression=0)) == ("jpeg", 0)
    assert output_encoding(GenerateRequest(prompt="x", output_format="webp", output_compression=100)) == ("webp", 100)
    cases = [
        ({"output_compression": 50}, ["jpeg", "webp"]),
        ({"output_format": "png", "output_compression": 50}, ["jpeg", "webp"]),
        ({"output_format": "jpeg", "output_compression": 101}, [0, 100]),
        ({"output_format": "webp", "output_compression": -1}, [0, 100]),
    ]
    for kw, limit in cases:
        err = _refused(lambda kw=kw: output_encoding(GenerateRequest(prompt="x", **kw)))
        assert (err.param, err.limit) == ("output_compression", limit), kw


def test_valid_requests_become_specs_with_defaults_and_random_seeds():
    (spec,) = _gen()
    d = CFG.defaults
    assert (spec.width, spec.height, spec.steps, spec.request_id) == (d.width, d.height, d.num_inference_steps, "req")
    assert 0 <= spec.seed <= MAX_SEED
    (spec,) = _gen(width=512, height=256, num_inference_steps=1, seed=0)
    assert (spec.width, spec.height, spec.steps, spec.seed) == (512, 256, 1, 0)
    assert spec.prompt == "a red car"
    assert [(s.width, s.height) for s in _img(size="512x256")] == [(512, 256)]
    assert [(s.width, s.height) for s in _img(size="auto")] == [(d.width, d.height)]
    (spec,) = _gen(prompt="x" * 2000, seed=MAX_SEED)  # the limits themselves are allowed
    assert spec.seed == MAX_SEED
    seeds = {_gen()[0].seed for _ in range(8)}
    assert len(seeds) > 1  # omitted seeds are drawn at random
