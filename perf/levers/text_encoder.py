"""The text-encode stage: padding, CUDA graphs (what the service does, deployments/pipeline/text_encoder.py) and a
compiled encoder (tried, not shipped)."""

from __future__ import annotations

import logging
import time

import torch

from deployments.pipeline.text_encoder import MAX_TOKENS, relative_l2
from perf.levers import lever
from perf.levers.session import PROMPT, timed

logger = logging.getLogger("perf.levers")


def deviation_from_padded_pipeline(encoder, pipe, prompt: str) -> float:
    """Relative L2 difference of the encoder's embedding from the pipeline's default pass (padded to 512 tokens,
    masked attention); `PromptEncoder.deviation_from_pipeline` compares at the prompt's real length."""
    (ours,) = encoder.encode([prompt], together=False)
    with torch.inference_mode():
        (theirs,), _ = pipe.encode_prompt(
            prompt, device=encoder.device, do_classifier_free_guidance=False, max_sequence_length=MAX_TOKENS
        )
    return relative_l2(ours, theirs)


def _max_diff(xs, ys) -> float:
    return max((a.float() - b.float()).abs().max().item() for a, b in zip(xs, ys, strict=True))


@lever("encode_padding", rows=False)
def encode_padding(session) -> None:
    """Text encoding as the pipeline does it (every prompt padded to 512 tokens) vs the runner (real length)."""
    pipe, runner, rows = session.pipe, session.runner, []
    for bs in session.batches:
        prompts = [PROMPT] * bs
        calls = {
            "padded_512_s": lambda p=prompts: pipe.encode_prompt(
                list(p), device=runner.device, do_classifier_free_guidance=False
            ),
            "real_length_s": lambda p=prompts: runner.encode(list(p)),
        }
        row = {"batch": bs, "prompt_tokens": len(runner.prompt_encoder.token_ids(PROMPT))}
        for name, fn in calls.items():
            fn()
            row[name] = timed(fn, session.reps)[0]
        rows.append(row)
        logger.info("encode bs=%d: %s", bs, row)
    session.add("encode_padding", rows)


@lever("te_graphs")
def te_graphs(session) -> None:
    """The encode stage three ways (pipeline pass at real length, eager shortcut, CUDA graphs, left on for the rows),
    capture cost, and each one's deviation from the pipeline at 512 tokens and at the real length."""
    pipe, runner = session.pipe, session.runner
    enc = runner.prompt_encoder
    n, reps = len(enc.token_ids(PROMPT)), max(session.reps, 5)
    on_gpu = runner.device.type == "cuda"  # --smoke on CPU: the graph rows repeat the eager pass
    rows = []
    for bs in session.batches:
        prompts = [PROMPT] * bs

        def pipeline_pass(p=prompts):
            return pipe.encode_prompt(
                list(p), device=runner.device, do_classifier_free_guidance=False, max_sequence_length=n
            )

        def encode(p=prompts):
            return runner.encode(list(p))

        enc.drop_graphs()
        pipeline_pass()
        row: dict = {"batch": bs, "pipeline_real_length_s": timed(pipeline_pass, reps)[0]}
        encode()
        row["shortcut_eager_s"], _, eager = timed(encode, reps)
        enc.cuda_graphs = on_gpu
        row["graph_shape"] = enc.padded_shape(bs, n)
        row["first_call_with_capture_s"] = timed(encode, 1)[0]
        row["graph_s"], _, graphed = timed(encode, reps)
        row["max_abs_diff_graph_vs_eager"] = _max_diff(graphed, eager)
        rows.append(row)
        logger.info("text encoder bs=%d: %s", bs, row)
    padded = {"graphs": deviation_from_padded_pipeline(enc, pipe, PROMPT)}
    real_length = {"graphs": enc.deviation_from_pipeline(pipe, PROMPT)}
    t0 = time.perf_counter()
    graphs = enc.capture_all(max(session.batches))
    capture_all_s = time.perf_counter() - t0
    enc.cuda_graphs = False
    padded["shortcut_eager"] = deviation_from_padded_pipeline(enc, pipe, PROMPT)
    real_length["shortcut_eager"] = enc.deviation_from_pipeline(pipe, PROMPT)
    enc.cuda_graphs = on_gpu
    result = {"prompt_tokens": n, "graphs_after_capture_all": graphs, "capture_all_s": capture_all_s}
    session.add("te_graphs", result | {"deviation_from_pipeline_512": padded})
    session.out["te_graphs"].update(deviation_from_pipeline_real_length=real_length, rows=rows)
    session.save()


def compile_text_encoder(pipe) -> int:
    """Compile the Qwen3 text encoder's decoder layers (one graph for all 36: same code, dynamic sequence length).

    A prompt is tens of tokens, so the eager pass is bound by kernel launches. `forward`, not the module call:
    transformers collects hidden states with hooks that read a ContextVar (a graph break inside each layer).
    Not shipped: encode 87 -> 63 ms at batch 1 on an H100, no gain per image end to end, slower at batch 12."""
    encoder = pipe.text_encoder
    layers = getattr(encoder, "model", encoder).layers  # Qwen3Model (diffusers) or a ForCausalLM wrapper
    for layer in layers:
        layer.forward = torch.compile(layer.forward, dynamic=True)
    logger.info("text encoder: %d decoder layers compiled (dynamic sequence length)", len(layers))
    return len(layers)


@lever("te_compile", gpu_only=True)
def te_compile(session) -> None:
    """The encode stage eager, then with the text encoder's layers compiled: time, first call, largest difference."""
    runner, prompts = session.runner, {bs: [PROMPT] * bs for bs in session.batches}
    eager = {}
    for bs in session.batches:
        runner.encode(prompts[bs])
        eager[bs] = timed(lambda bs=bs: runner.encode(prompts[bs]), session.reps)
    layers = compile_text_encoder(session.pipe)
    rows = []
    for bs in session.batches:
        first = timed(lambda bs=bs: runner.encode(prompts[bs]), 1)[0]
        best, _, embeds = timed(lambda bs=bs: runner.encode(prompts[bs]), session.reps)
        diff = _max_diff(embeds, eager[bs][2])
        row = {"batch": bs, "eager_s": eager[bs][0], "compiled_s": best, "first_call_s": first}
        rows.append({**row, "max_abs_diff": diff})
        logger.info("text encoder bs=%d: %s", bs, rows[-1])
    tokens = len(runner.prompt_encoder.token_ids(PROMPT))
    session.add("te_compile", {"layers": layers, "prompt_tokens": tokens, "rows": rows})
