"""Prompts are encoded at their real length: the text encoder never runs over the pipeline's 512-token padding, and
the embeddings are the ones the padded pass would have produced (right padding + causal attention)."""

from __future__ import annotations

import pytest
import torch

from deployments.config import RandomArch
from deployments.random_model import build_random_pipeline
from deployments.runner import ZImageRunner

PROMPTS = ["a red sports car on a mountain road at sunset", "a cat", "oil painting of an old house by the sea"]


@pytest.fixture(scope="module")
def pipe():
    return build_random_pipeline(RandomArch.TINY, "cpu", torch.float32)


def _encoder_input_lengths(pipe, fn) -> list[int]:
    lengths: list[int] = []
    handle = pipe.text_encoder.register_forward_pre_hook(
        lambda _m, _a, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        fn()
    finally:
        handle.remove()
    return lengths


@pytest.mark.parametrize("batch_encode", [False, True])
def test_text_encoder_sees_real_lengths_and_matches_the_padded_pass(pipe, batch_encode):
    runner = ZImageRunner(pipe, batch_encode=batch_encode)
    real = [runner._token_count(p) for p in PROMPTS]
    embeds: list[torch.Tensor] = []
    lengths = _encoder_input_lengths(pipe, lambda: embeds.extend(runner.encode(PROMPTS)))
    assert lengths == ([max(real)] if batch_encode else real)
    assert max(lengths) < 512

    padded, _ = pipe.encode_prompt(list(PROMPTS), device="cpu", do_classifier_free_guidance=False)  # 512 tokens
    for ours, theirs, n in zip(embeds, padded, real, strict=True):
        assert ours.shape == theirs.shape == (n, pipe.text_encoder.config.hidden_size)
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
