"""Unit tests (no Ray) for the batch-size decisions: VRAM tier, memory clamp, grouping by shape, OOM split-retry.

There is no GPU here, so the NVML reading is simulated: `GpuInfo` built from the totals real cards report (in MiB, as
`nvidia-smi` prints them), fed through the same `total_gb` -> `select_tier` path the Generator uses.
"""

from __future__ import annotations

import pytest
import torch
import yaml
from hypothesis import given
from hypothesis import strategies as st

from deployments.batching.oom_split import is_oom, run_with_oom_split
from deployments.batching.policy import MemoryClamp, group_by_shape, select_tier
from deployments.config import DEFAULT_TIERS, GeneratorUserConfig, MemoryMode, Tier
from deployments.generator import ZImageGenerator
from deployments.observability.gpu_info import GpuInfo, probe_gpu
from tests.serve_harness import REPO, tiny_config

MiB = 2**20
GB = 1e9
GROUP, TE, GPU = MemoryMode.GROUP_OFFLOAD, MemoryMode.TEXT_ENCODER_OFFLOAD, MemoryMode.GPU

# (card, NVML total in MiB, expected batch size, expected memory mode) under DEFAULT_TIERS: <=12 GB -> 4 (DiT and
# text encoder streamed), 16 GB -> 8 and 20-24 GB -> 12 (text encoder streamed), >=32 GB -> 12 (all resident).
CARDS = [
    ("RTX 3070 8GB", 8192, 4, GROUP),
    ("RTX 3060 12GB", 12288, 4, GROUP),
    ("Tesla T4 16GB", 15360, 8, TE),
    ("RTX 4080 16GB", 16376, 8, TE),
    ("RTX 4000 Ada 20GB", 20475, 12, TE),
    ("L4 24GB", 23034, 12, TE),
    ("RTX 4090 24GB", 24564, 12, TE),
    ("RTX 5090 32GB", 32607, 12, GPU),
    ("A100 40GB", 40960, 12, GPU),
    ("H100 80GB", 81559, 12, GPU),
]


@pytest.mark.parametrize("card,total_mib,batch,mode", CARDS, ids=[c[0] for c in CARDS])
def test_default_tier_for_real_nvml_totals(card, total_mib, batch, mode):
    """NVML reports binary sizes: a '12 GB' card has 12.9e9 bytes and must still land in the <=12 GB tier."""
    gpu = GpuInfo(name=card, total_bytes=total_mib * MiB, uuid="GPU-sim")
    tier = select_tier(gpu.total_gb, DEFAULT_TIERS)
    assert (tier.max_batch_size, tier.memory_mode) == (batch, mode), f"{card}: {gpu.total_gb:.2f} GB -> {tier}"


def _shipped_user_config(name: str) -> GeneratorUserConfig:
    config = yaml.safe_load((REPO / name).read_text())
    (deployment,) = [d for d in config["applications"][0]["deployments"] if d["name"] == "Generator"]
    return GeneratorUserConfig.model_validate(deployment.get("user_config") or {})


@pytest.mark.parametrize("card,total_mib,batch,mode", CARDS, ids=[c[0] for c in CARDS])
def test_shipped_serve_config_tiers_agree(card, total_mib, batch, mode):
    """serve_config.yaml repeats the tier table (so operators see it); it must place every card like the default."""
    tier = select_tier(total_mib * MiB / 1e9, _shipped_user_config("serve_config.yaml").tiers)
    assert (tier.max_batch_size, tier.memory_mode) == (batch, mode), f"{card}: {tier}"


def test_cpu_serve_config_user_config_is_valid():
    assert _shipped_user_config("serve_config.cpu.yaml").cpu_max_batch_size >= 1


@pytest.mark.parametrize("gb,batch", [(8, 4), (12, 4), (16, 8), (24, 12), (40, 12), (80, 12)])
def test_default_tier_for_emulated_sizes(gb, batch):
    """`emulate_vram_gb: N` (decimal GB) selects the same tier as a real N GB card."""
    assert select_tier(gb, DEFAULT_TIERS).max_batch_size == batch


def test_select_tier_sorts_and_falls_back_to_largest():
    tiers = (Tier(max_vram_gb=40, max_batch_size=6), Tier(max_vram_gb=10, max_batch_size=2))
    assert select_tier(10, tiers).max_batch_size == 2  # inclusive upper bound
    assert select_tier(10.01, tiers).max_batch_size == 6
    assert select_tier(200, tiers).max_batch_size == 6  # bigger than every row: the largest tier


def test_user_config_sorts_tiers_and_rejects_empty_table():
    uc = GeneratorUserConfig(tiers=[{"max_vram_gb": 40, "max_batch_size": 6}, {"max_vram_gb": 10, "max_batch_size": 2}])
    assert [t.max_vram_gb for t in uc.tiers] == [10, 40]
    with pytest.raises(ValueError):
        GeneratorUserConfig(tiers=[])


def test_probe_gpu_is_none_without_nvml():
    assert probe_gpu() is None


# ---- memory clamp -------------------------------------------------------------------------------------------------
def test_memory_clamp_h100_numbers():
    """DESIGN.md's H100 peaks (22.1 GB at 1, 24.5 GB at 2) under a 78 GB budget: 1 + 55.9 // 2.4 = 24 images."""
    clamp = MemoryClamp(peak_batch1_bytes=int(22.1 * GB), peak_batch2_bytes=int(24.5 * GB), budget_bytes=int(78 * GB))
    assert clamp.per_image_bytes == int(24.5 * GB) - int(22.1 * GB)
    assert clamp.max_batch == 24
    assert clamp.predicted_peak(24) <= clamp.budget_bytes < clamp.predicted_peak(25)


def test_memory_clamp_floor_is_one():
    assert MemoryClamp(int(30 * GB), int(32 * GB), int(22 * GB)).max_batch == 1  # batch 1 over budget: still 1
    assert MemoryClamp(int(20 * GB), int(23 * GB), int(22 * GB)).max_batch == 1  # batch 2 would not fit


def test_memory_clamp_flat_peaks_do_not_divide_by_zero():
    clamp = MemoryClamp(int(10 * GB), int(10 * GB), int(20 * GB))
    assert clamp.per_image_bytes == 1 and clamp.max_batch > 64  # no growth measured: memory does not cap the batch


@given(
    p1=st.integers(1, 100 * 2**30),
    per=st.integers(1, 20 * 2**30),
    budget=st.integers(1, 200 * 2**30),
)
def test_memory_clamp_is_the_largest_batch_under_budget(p1, per, budget):
    clamp = MemoryClamp(p1, p1 + per, budget)
    b = clamp.max_batch
    assert b >= 1
    if p1 <= budget:
        assert clamp.predicted_peak(b) <= budget < clamp.predicted_peak(b + 1)


# ---- grouping -----------------------------------------------------------------------------------------------------
def test_group_by_shape_keeps_arrival_order_and_never_mixes():
    shapes = [(256, 256, 8), (256, 320, 8), (256, 256, 8), (256, 256, 4), (256, 320, 8)]
    groups = group_by_shape(shapes, lambda s: s)
    assert groups == {(256, 256, 8): [0, 2], (256, 320, 8): [1, 4], (256, 256, 4): [3]}
    assert list(groups) == [(256, 256, 8), (256, 320, 8), (256, 256, 4)]  # first arrival first


# ---- OOM split-retry ----------------------------------------------------------------------------------------------
def _oom_above(limit: int, calls: list[int]):
    def run(chunk):
        calls.append(len(chunk))
        if len(chunk) > limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return [x * 10 for x in chunk]

    return run


def test_oom_split_halves_until_it_fits_and_keeps_order():
    calls, ooms = [], []
    outcome = run_with_oom_split(list(range(8)), _oom_above(2, calls), on_oom=lambda: ooms.append(1))
    assert outcome.results == [x * 10 for x in range(8)]
    assert calls == [8, 4, 2, 2, 4, 2, 2]
    assert outcome.oom_splits == 3 == len(ooms)
    assert outcome.largest_failed == 4 and max(outcome.sizes_run) == 2


def test_oom_split_odd_sizes():
    calls = []
    outcome = run_with_oom_split(list(range(5)), _oom_above(2, calls))
    assert outcome.results == [x * 10 for x in range(5)]
    assert calls == [5, 3, 2, 1, 2]
    assert outcome.largest_failed == 3


def test_no_oom_is_one_call():
    calls = []
    outcome = run_with_oom_split([1, 2, 3], _oom_above(8, calls))
    assert calls == [3] and outcome.oom_splits == 0 and outcome.largest_failed is None


def test_oom_at_batch_one_reraises():
    with pytest.raises(torch.OutOfMemoryError):
        run_with_oom_split([1, 2, 3, 4], _oom_above(0, []))


def test_non_oom_errors_propagate_without_retry():
    calls = []

    def run(chunk):
        calls.append(len(chunk))
        raise ValueError("bad prompt embedding")

    with pytest.raises(ValueError):
        run_with_oom_split([1, 2, 3, 4], run)
    assert calls == [4]


def test_oom_that_fails_alone_spares_the_rest_of_the_batch():
    """With `on_fail_alone`, an item that OOMs alone gets its own error result; its neighbours still succeed, and
    the batches it poisoned do not count as 'batch too large' (no cap from them)."""

    def run(chunk):
        if 3 in chunk:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return [x * 10 for x in chunk]

    outcome = run_with_oom_split(list(range(6)), run, on_fail_alone=lambda item, exc: f"failed:{item}")
    assert outcome.results == [0, 10, 20, "failed:3", 40, 50]
    assert outcome.largest_failed is None


def test_is_oom_recognises_torch_and_runtime_messages():
    assert is_oom(torch.OutOfMemoryError("x"))
    assert is_oom(RuntimeError("CUDA error: out of memory"))
    assert not is_oom(RuntimeError("CUDA error: illegal memory access"))
    assert not is_oom(ValueError("out of memory"))


# ---- the Generator's decision, with simulated NVML and a stubbed model load ----------------------------------------
@pytest.fixture
def generator(monkeypatch):
    """A real ZImageGenerator outside Serve; `engine.load` (model build + measurement) is stubbed, the decision is
    real."""
    gen = ZImageGenerator(tiny_config().model_dump(mode="json"))
    gen.loads = []
    engine = gen.engine

    def fake_load(mode, max_batch):
        gen.loads.append(mode)
        engine.runner, engine.mode = object(), mode
        engine.memory_clamp, engine.memory_cap = {}, gen.simulated_memory_cap

    gen.simulated_memory_cap = None
    monkeypatch.setattr(engine, "load", fake_load)
    return gen


def _attach_gpu(gen, total_mib: int) -> None:
    gen.engine.gpu = GpuInfo(name="sim", total_bytes=total_mib * MiB, uuid="GPU-sim")
    gen.engine.device = "cuda"  # what a GPU replica resolves
    gen.state.vram_gb = gen.engine.gpu.total_gb


@pytest.mark.parametrize("card,total_mib,batch,mode", CARDS, ids=[c[0] for c in CARDS])
def test_generator_follows_the_tier(generator, card, total_mib, batch, mode):
    _attach_gpu(generator, total_mib)
    generator.reconfigure({})
    st_ = generator.state
    assert (st_.effective_max_batch, st_.memory_mode) == (batch, mode)
    assert generator.generate_batch._get_max_batch_size() == batch  # what @serve.batch will use
    assert generator.info()["batching"]["tier"]["max_batch_size"] == batch


def test_generator_caps_overrides_and_keeps_the_model(generator):
    _attach_gpu(generator, 81559)
    generator.simulated_memory_cap = 5
    generator.reconfigure({})
    assert generator.state.effective_max_batch == 5  # measured memory beats the tier's 12
    generator.reconfigure({"max_batch_size": 2})
    assert generator.state.effective_max_batch == 2 and generator.loads == [GPU]  # live: no reload
    generator.reconfigure({"max_batch_size": 20})
    assert generator.state.effective_max_batch == 5  # an override is still capped by memory
    generator.reconfigure({"memory_mode": "group_offload"})
    assert generator.loads == [GPU, GROUP]  # a memory mode change reloads
    generator._lower_after_oom(smallest_failed=4, largest_ok=3)
    assert generator.state.effective_max_batch == 3
    generator.reconfigure({"max_batch_size": 10})
    assert generator.state.effective_max_batch == 3  # the OOM cap outlives reconfigure


def test_generator_on_cpu_uses_cpu_max_batch_size(generator):
    generator.reconfigure({"cpu_max_batch_size": 6})
    assert generator.state.tier is None and generator.state.effective_max_batch == 6
    assert generator.state.memory_mode is None  # memory modes place weights on a GPU: none to report on a CPU
    assert generator.info()["batching"]["memory_mode"] is None and generator.info()["compile"] is False
