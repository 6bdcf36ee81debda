"""The official resolution presets (deployments/presets.py) against the production limits: every preset accepted by
`size` (plain and as the demo's label) and by /generate; sizes off the 16-pixel grid or above the limits refused with
the field, the limit and the nearest valid size. No Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deployments.config import AppConfig, RequestLimits
from deployments.http.errors import InvalidRequest
from deployments.http.protocol import GenerateRequest, ImagesRequest
from deployments.http.validation import nearest_valid_size, specs_from_generate, specs_from_images
from deployments.presets import PRESETS, RES_CHOICES

REPO = Path(__file__).resolve().parents[2]
PROD = AppConfig.model_validate(yaml.safe_load((REPO / "serve_config.yaml").read_text())["applications"][0]["args"])


def test_three_classes_of_eleven_ratios_all_on_the_16_grid_up_to_2048():
    assert list(RES_CHOICES) == ["1024", "1280", "1536"]
    assert len(PRESETS) == 33 and len({p.size for p in PRESETS}) == 33
    for p in PRESETS:
        assert p.width % 16 == 0 and p.height % 16 == 0 and max(p.width, p.height) <= 2048
        base = int(p.size_class)
        assert 0.7 * base**2 <= p.area <= base**2, p  # each class is about base^2 pixels
    ratios = {"1:1", "9:7", "7:9", "4:3", "3:4", "3:2", "2:3", "16:9", "9:16", "21:9", "9:21"}
    assert {p.ratio for p in PRESETS} == ratios


def test_production_limits_cover_the_model():
    lim = PROD.limits
    assert (lim.side_multiple, lim.max_side) == (16, 2048) and lim.max_pixels >= 2048 * 2048


@pytest.mark.parametrize("preset", PRESETS, ids=[p.size for p in PRESETS])
def test_every_preset_is_accepted_in_production(preset):
    label = next(lbl for lbl in RES_CHOICES[preset.size_class] if lbl.startswith(preset.size + " "))
    for size in (preset.size, label):
        (spec,) = specs_from_images(ImagesRequest(prompt="a cat", size=size), PROD, "r")
        assert (spec.width, spec.height) == (preset.width, preset.height)
    (spec,) = specs_from_generate(GenerateRequest(prompt="a cat", width=preset.width, height=preset.height), PROD, "r")
    assert (spec.width, spec.height) == (preset.width, preset.height)


@pytest.mark.parametrize(
    ("size", "nearest"),
    [("1000x1000", "1008x1008"), ("1366x768", "1360x768"), ("4096x4096", "2048x2048"), ("2050x1024", "2048x1024")],
)
def test_production_refuses_off_grid_and_oversized_sizes_naming_the_nearest(size, nearest):
    with pytest.raises(InvalidRequest) as info:
        specs_from_images(ImagesRequest(prompt="a cat", size=size), PROD, "r")
    err = info.value
    assert err.status == 422 and err.param == "size" and err.limit["nearest"] == nearest and nearest in err.message
    assert err.limit["max_pixels"] == PROD.limits.max_pixels and err.limit["side_multiple"] == 16


def test_openai_sizes_on_the_grid_are_accepted():
    for size in ("1024x1024", "1792x1024", "1024x1792", "1536x1024", "1024x1536", "512x512", "256x256"):
        (spec,) = specs_from_images(ImagesRequest(prompt="a cat", size=size), PROD, "r")
        assert f"{spec.width}x{spec.height}" == size


def test_max_pixels_refuses_areas_above_it_on_both_routes():
    cfg = AppConfig(limits=RequestLimits(max_pixels=1536 * 1536), defaults={"width": 1024, "height": 1024})
    assert all(cfg.limits.allows(p.width, p.height) for p in PRESETS)  # 1536^2 (24 GB cards) still takes every preset
    smaller = RequestLimits(max_pixels=1280 * 1280)
    assert {p.size_class for p in PRESETS if not smaller.allows(p.width, p.height)} == {"1536"}
    with pytest.raises(InvalidRequest) as info:
        specs_from_images(ImagesRequest(prompt="a cat", size="2048x2048"), cfg, "r")
    assert info.value.param == "size" and info.value.limit["nearest"] == "1536x1536"
    with pytest.raises(InvalidRequest) as info:
        specs_from_generate(GenerateRequest(prompt="a cat", width=2048, height=2048), cfg, "r")
    assert info.value.param == "width" and info.value.limit == {"max_pixels": 1536 * 1536, "nearest": "1536x1536"}


@pytest.mark.parametrize("w,h", [(1000, 3000), (17, 5000), (2048, 2048), (5000, 300), (1234, 987)])
@pytest.mark.parametrize("max_pixels", [1536 * 1536, 2048 * 2048, 300_000])
def test_nearest_valid_size_is_always_allowed(w, h, max_pixels):
    lim = RequestLimits(max_pixels=max_pixels)
    assert lim.allows(*nearest_valid_size(w, h, lim))


def test_limits_refuse_inconsistent_values():
    with pytest.raises(ValueError):
        RequestLimits(min_side=512, max_side=256)
    with pytest.raises(ValueError):
        RequestLimits(max_pixels=1000)
    with pytest.raises(ValueError):
        AppConfig(limits=RequestLimits(max_pixels=512 * 512))  # the 1024x1024 default is above it
    with pytest.raises(ValueError):
        AppConfig(warm_up_sizes=["4096x4096"])
