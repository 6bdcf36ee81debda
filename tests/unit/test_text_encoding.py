"""Prompts are encoded at their real length, by the decoder layers up to the hidden state the pipeline keeps: the text
encoder never runs over the pipeline's 512-token padding or its last layer, and the embeddings are the ones the
pipeline's own padded pass produces (right padding + causal attention).

The CUDA-graph replay of the same forward (deployments/pipeline/text_encoder.py) needs a GPU: CI has none, so it is
measured and checked against the pipeline's pass on the H100 (`python -m perf.levers --levers runner te_graphs`) and by
the Generator's start-up check on every GPU replica (deployments/pipeline/text_encoder_check.py)."""

from __future__ import annotations

import pytest
import torch

from deployments.config import RandomArch
from deployments.generator import ZImageGenerator
from deployments.pipeline.random_model import build_random_pipeline
from deployments.pipeline.runner import ZImageRunner
from deployments.pipeline.text_encoder import PromptEncoder
from deployments.pipeline.text_encoder_check import TOLERANCE
from tests.serve_harness import tiny_config

PROMPTS = ["a red sports car on a mountain road at sunset", "a cat", "oil painting of an old house by the sea"]


@pytest.fixture(scope="module")
def pipe():
    return build_random_pipeline(RandomArch.TINY, "cpu", torch.float32)


def _layers_run(pipe, fn) -> list[tuple[int, int]]:
    """(layer index, sequence length) of every decoder layer call."""
    calls: list[tuple[int, int]] = []
    handles = [
        layer.register_forward_pre_hook(lambda _m, args, i=i: calls.append((i, args[0].shape[1])))
        for i, layer in enumerate(pipe.text_encoder.layers)
    ]
    try:
        fn()
    finally:
        for h in handles:
            h.remove()
    return calls


@pytest.mark.parametrize("shortcut", [True, False])
@pytest.mark.parametrize("batch_encode", [False, True])
def test_text_encoder_sees_real_lengths_and_matches_the_pipelines_padded_pass(pipe, batch_encode, shortcut):
    runner = ZImageRunner(pipe, batch_encode=batch_encode, encoder_shortcut=shortcut)
    real = [len(runner.prompt_encoder.token_ids(p)) for p in PROMPTS]
    embeds: list[torch.Tensor] = []
    calls = _layers_run(pipe, lambda: embeds.extend(runner.encode(PROMPTS)))
    n_layers = pipe.text_encoder.config.num_hidden_layers
    ran = n_layers - 1 if shortcut else n_layers  # hidden_states[-2] is the second-to-last layer's output
    lengths = [length for i, length in calls if i == 0]
    assert lengths == ([max(real)] if batch_encode else real)
    assert len(calls) == ran * len(lengths)
    assert max(lengths) < 512

    padded, _ = pipe.encode_prompt(list(PROMPTS), device="cpu", do_classifier_free_guidance=False)  # 512 tokens
    for ours, theirs, n in zip(embeds, padded, real, strict=True):
        assert ours.shape == theirs.shape == (n, pipe.text_encoder.config.hidden_size)
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_an_embedding_does_not_depend_on_its_batch_when_encoded_alone(pipe):
    runner = ZImageRunner(pipe, batch_encode=False)
    alone = runner.encode([PROMPTS[1]])[0]
    in_batch = runner.encode(PROMPTS)[1]
    assert torch.equal(alone, in_batch)


def test_deviation_from_the_pipeline_is_small_and_detects_a_wrong_layer(pipe):
    """The start-up check must be able to fail: running one layer too many changes the embeddings."""
    encoder = PromptEncoder(pipe, torch.device("cpu"))
    assert encoder.deviation_from_pipeline(pipe, "a lighthouse in a storm") < 1e-5
    all_layers = pipe.text_encoder.config.num_hidden_layers
    pipe.text_encoder.config.num_hidden_layers = all_layers + 1  # the shortcut now runs every layer
    try:
        assert encoder.deviation_from_pipeline(pipe, "a lighthouse in a storm") > 1e-2
    finally:
        pipe.text_encoder.config.num_hidden_layers = all_layers


def test_graph_shapes_are_few_powers_of_two_and_large_passes_stay_eager(pipe):
    encoder = PromptEncoder(pipe, torch.device("cpu"), cuda_graphs=True)  # no CUDA here: graphs stay off
    assert not encoder.cuda_graphs and encoder.padded_shape(3, 19) == (3, 19)
    encoder.cuda_graphs = True  # what a GPU replica gets
    assert encoder.padded_shape(1, 19) == (1, 32)
    assert encoder.padded_shape(3, 100) == (4, 128)
    assert encoder.padded_shape(12, 150) == (12, 150)  # 16 x 256 > 2048 tokens: GPU-bound, eager at its own shape
    shapes = encoder.graph_shapes(max_batch=12)
    assert len(shapes) == 22 and max(b for b, _ in shapes) == 16 and all(b * n <= 2048 for b, n in shapes)
    assert all(encoder.padded_shape(b, n) == (b, n) for b, n in shapes)  # every captured shape is used as is


def test_a_generator_whose_shortcut_deviates_falls_back_to_the_pipelines_pass(monkeypatch):
    """A real ZImageGenerator outside Serve (CPU, tiny model). If a transformers upgrade changed what the layer
    shortcut computes (simulated: it runs one layer too many), the start-up check turns it off and the replica
    serves the pipeline's own embeddings instead of refusing to start or changing images."""
    run_shortcut = PromptEncoder.forward

    def one_layer_too_many(self, input_ids):
        cfg = self.model.config
        cfg.num_hidden_layers += 1
        try:
            return run_shortcut(self, input_ids)
        finally:
            cfg.num_hidden_layers -= 1

    monkeypatch.setattr(PromptEncoder, "forward", one_layer_too_many)
    gen = ZImageGenerator(tiny_config().model_dump(mode="json"))
    gen.reconfigure({})
    info = gen.info()["text_encoder"]
    assert info["shortcut"] is False and info["cuda_graphs"] is False
    assert info["deviation_from_pipeline"] > 0.3 > TOLERANCE  # the README's figure for a wrong layer
    pipe = gen.engine.runner.pipe
    (ours,) = gen.engine.runner.encode([PROMPTS[0]])
    real = len(gen.engine.runner.prompt_encoder.token_ids(PROMPTS[0]))
    (theirs,), _ = pipe.encode_prompt(
        PROMPTS[0], device="cpu", do_classifier_free_guidance=False, max_sequence_length=real
    )
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
