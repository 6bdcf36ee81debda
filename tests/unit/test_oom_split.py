"""CUDA OOM handling: a batch that does not fit is split and retried, the batch size drops for good, and a request
that fails even alone fails by itself.

Fake: a CPU cannot run out of CUDA memory, so `tests.fakes.WrappingFactory` raises `torch.OutOfMemoryError` from the
real tiny pipeline's denoise call when the call holds more than 2 images, or holds a poisoned seed. In process, no Ray;
the same behaviour through Serve and HTTP is tests/service/test_oom_serving.py.
"""

from __future__ import annotations

from deployments.generator import ZImageGenerator
from deployments.messages import GenerationSpec
from tests.fakes import WrappingFactory
from tests.serve_harness import tiny_config

POISON = 666_666  # this seed OOMs in any batch, alone too


def _spec(seed: int) -> GenerationSpec:
    return GenerationSpec(prompt=f"a red car {seed}", width=256, height=256, steps=2, seed=seed)


def test_generator_splits_and_isolates_a_request_that_fails_alone():
    """In-process (no Serve): the split/retry and cap logic of the generator's `GroupExecutor.run_group` on a real
    tiny pipeline."""
    gen = ZImageGenerator(tiny_config().model_dump(mode="json"), WrappingFactory(oom_above=2, oom_seeds=(POISON,)))
    gen.reconfigure({"cpu_max_batch_size": 8})
    results = gen.executor.run_group([_spec(s) for s in (1, 2, 3, 4, 5, 6)])
    assert all(r.error is None and r.image.shape == (256, 256, 3) for r in results)
    assert max(r.batch_size for r in results) == 2
    assert (gen.state.oom_cap, gen.state.effective_max_batch) == (2, 2)

    results = gen.executor.run_group([_spec(7), _spec(POISON)])
    assert results[0].error is None and results[0].image is not None  # its neighbour is not dragged down
    assert results[1].error_kind == "oom" and "out of memory" in results[1].error
    assert gen.state.effective_max_batch == 2  # a request that fails alone says nothing about the batch size
