"""Z-Image's prompt embeddings (Qwen3 hidden_states[-2]) at the real prompt length, optionally replayed as CUDA graphs.

The pipeline pads every prompt to 512 tokens and runs the whole Qwen3 model with every hidden state collected. Here
the decoder layers run only up to the one whose output the pipeline keeps (the second-to-last hidden state: the last
layer and the final norm are skipped) on the real prompt length. Right padding + causal attention: a prompt's tokens
never attend to the padding after them, so padding a prompt (to the longest of a batch, or to a shape bucket) leaves
its embeddings unchanged up to kernel numerics.

`shortcut` needs the encoder resident: with the offload memory modes diffusers' hooks move its weights in around the
model's own forward, so there the full model runs (at the real length, all hidden states collected, as before).

At batch 1 the 4B text encoder is launch-bound on a GPU: 0.048 s of wall time for ~0.01 s of kernels on an H100
(measured with `python -m perf run te_graphs`). With `cuda_graphs`, each (batch, bucketed length) is captured once
and replayed, which removes the per-kernel Python and launch cost. Graphs need static shapes: batch and length round
up to powers of two (extra rows are pad tokens whose output is dropped), up to `max_graph_tokens` per pass, so a
replica holds ~20 graphs (`capture_all` makes them at start-up; their outputs share one memory pool, ~75 MB). Above
that the pass is GPU-bound and runs eagerly.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from diffusers import ZImagePipeline

logger = logging.getLogger(__name__)

MAX_TOKENS = 512  # the pipeline's max_sequence_length


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    input_ids: torch.Tensor  # static input buffer, (batch, length)
    hidden: torch.Tensor  # static output, (batch, length, hidden)


class PromptEncoder:
    def __init__(
        self,
        pipe: ZImagePipeline,
        device: torch.device,
        shortcut: bool = True,
        cuda_graphs: bool = False,
        min_length: int = 32,
        max_graph_tokens: int = 2048,
    ):
        self.tokenizer = pipe.tokenizer
        self.text_encoder = pipe.text_encoder
        self.model = getattr(pipe.text_encoder, "model", pipe.text_encoder)  # Qwen3Model (or a *ForCausalLM's)
        self.device = device
        self.shortcut = shortcut
        self.cuda_graphs = shortcut and cuda_graphs and device.type == "cuda"
        self.min_length = min_length
        self.max_graph_tokens = max_graph_tokens  # beyond this the pass is GPU-bound: graphs would only cost memory
        self.pad_id = self.tokenizer.pad_token_id or 0
        self._graphs: dict[tuple[int, int], _Graph] = {}
        self._pool = None

    # ---- tokens --------------------------------------------------------------------------------------------------
    def token_ids(self, prompt: str) -> list[int]:
        """The pipeline's chat template, tokenized without padding, truncated to its 512 tokens."""
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True, enable_thinking=True
        )
        return self.tokenizer(text).input_ids[:MAX_TOKENS]

    def padded_shape(self, batch: int, length: int) -> tuple[int, int]:
        """The pass's (batch, length): the graph shape that holds it, else as is (eager: the real length is
        cheapest)."""
        return self._graph_shape(batch, length) or (batch, length)

    def _graph_shape(self, batch: int, length: int) -> tuple[int, int] | None:
        """Powers of two (few distinct shapes to capture), None above `max_graph_tokens` or without graphs."""
        if not self.cuda_graphs:
            return None
        shape = (_pow2(batch), min(MAX_TOKENS, max(self.min_length, _pow2(length))))
        return shape if shape[0] * shape[1] <= self.max_graph_tokens else None

    def graph_shapes(self, max_batch: int) -> list[tuple[int, int]]:
        lengths = [n for n in (2**i for i in range(10)) if self.min_length <= n <= MAX_TOKENS]
        batches = [2**i for i in range(10) if 2**i <= _pow2(max_batch)]
        return [(b, n) for b in batches for n in lengths if b * n <= self.max_graph_tokens]

    @torch.inference_mode()
    def capture_all(self, max_batch: int) -> int:
        """Capture every graph shape up to `max_batch` prompts now (start-up), not on the first request of each shape
        (~0.1 s each); a larger batch set live later captures its shapes on first use."""
        if self.cuda_graphs:
            for batch, length in self.graph_shapes(max_batch):
                if (batch, length) not in self._graphs:
                    self._capture(batch, length)
        return len(self._graphs)

    def drop_graphs(self) -> None:
        """Graphs off; their memory pool goes with the last of them (a new capture must not reuse its handle)."""
        self.cuda_graphs = False
        self._graphs.clear()
        self._pool = None

    # ---- encoding ------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, prompts: list[str], together: bool) -> list[torch.Tensor]:
        """One (n_tokens, hidden) tensor per prompt. `together`: one pass for all prompts, padded to the longest
        (fewer launch-bound passes); otherwise one pass per prompt (an embedding never depends on its batch)."""
        ids = [self.token_ids(p) for p in prompts]
        groups = [ids] if together else [[i] for i in ids]
        out: list[torch.Tensor] = []
        for group in groups:
            rows, length = self.padded_shape(len(group), max(len(i) for i in group))
            batch = torch.full((rows, length), self.pad_id, dtype=torch.long)
            mask = torch.zeros((rows, length), dtype=torch.bool)
            for row, tokens in enumerate(group):
                batch[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
                mask[row, : len(tokens)] = True
            hidden = self._run(batch, mask)
            out.extend(hidden[row, : len(tokens)].clone() for row, tokens in enumerate(group))
        return out

    def _run(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        shape = tuple(input_ids.shape)
        if self._graph_shape(*shape) == shape:
            g = self._graphs.get(shape) or self._capture(*shape)
            g.input_ids.copy_(input_ids)
            g.graph.replay()
            return g.hidden  # overwritten by the next replay: the caller copies what it keeps
        if self.shortcut:
            return self.forward(input_ids.to(self.device))
        return self.text_encoder(  # the pipeline's own pass, at the real length
            input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device), output_hidden_states=True
        ).hidden_states[-2]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Qwen3Model.forward up to hidden_states[-2]: embeddings, rotary tables, all decoder layers but the last.
        No attention mask: causal attention alone (is_causal, the flash/cuDNN path) is right for right padding."""
        m = self.model
        hidden = m.embed_tokens(input_ids)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        rotary = m.rotary_emb(hidden, positions)
        for layer in m.layers[: m.config.num_hidden_layers - 1]:
            hidden = layer(hidden, attention_mask=None, position_embeddings=rotary, position_ids=positions)
            if isinstance(hidden, tuple):  # transformers 4.x decoder layers return (hidden, ...)
                hidden = hidden[0]
        return hidden

    def _capture(self, batch: int, length: int) -> _Graph:
        """Warm up on a side stream (as torch requires), then capture into a pool shared by all shapes: replays never
        overlap (one GPU thread) and each output is copied out before the next replay."""
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        input_ids = torch.full((batch, length), self.pad_id, dtype=torch.long, device=self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self.forward(input_ids)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            hidden = self.forward(input_ids)
        g = self._graphs[(batch, length)] = _Graph(graph, input_ids, hidden)
        logger.debug("text encoder CUDA graph captured: batch %d x %d tokens", batch, length)
        return g

    @property
    def graph_count(self) -> int:
        return len(self._graphs)

    def disable_shortcut(self) -> None:
        """Run the text encoder's own full forward from now on (graphs need the shortcut, so they go too)."""
        self.drop_graphs()
        self.shortcut = False

    def deviation_from_pipeline(self, pipe: ZImagePipeline, prompt: str) -> float:
        """Relative L2 difference from the pipeline's own encode_prompt for one prompt at its real length. bf16: 0.0
        for the article's prompt, 0.025 for the engine's probe prompt on an H200 (rounding, likely from the graph's
        padded shape)."""
        (ours,) = self.encode([prompt], together=False)
        length = len(self.token_ids(prompt))
        with torch.inference_mode():
            (theirs,), _ = pipe.encode_prompt(
                prompt, device=self.device, do_classifier_free_guidance=False, max_sequence_length=length
            )
        return relative_l2(ours, theirs)


def relative_l2(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """|ours - theirs| / |theirs| in fp32; inf when the shapes differ (a different token count is a different text)."""
    if ours.shape != theirs.shape:
        return math.inf
    return float((ours.float() - theirs.float()).norm() / theirs.float().norm().clamp_min(1e-12))


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()
