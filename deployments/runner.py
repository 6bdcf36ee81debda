"""Run one same-shape batch through Z-Image in three timed stages: text encode -> denoise -> VAE decode.

Prompts are encoded one at a time at their real length (the pipeline would pad every prompt to 512 tokens and then
drop the padding), every item has its own CPU generator (the same seed gives the same noise on any device and in any
batch), and the VAE decodes `decode_chunk` images at a time (batch-wide decode dominates peak memory growth).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers import ZImagePipeline


@dataclass(frozen=True)
class Shape:
    width: int
    height: int
    steps: int


@dataclass
class StageTimes:
    encode_s: float = 0.0
    denoise_s: float = 0.0
    decode_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.encode_s + self.denoise_s + self.decode_s


@dataclass
class BatchOutput:
    images: list[np.ndarray]  # HxWx3 uint8, one per item
    times: StageTimes = field(default_factory=StageTimes)
    stage_peak_bytes: dict[str, int] = field(default_factory=dict)  # torch peak allocated per stage (GPU only)


class ZImageRunner:
    def __init__(self, pipe: ZImagePipeline, decode_chunk: int = 1):
        self.pipe = pipe
        self.decode_chunk = decode_chunk
        pipe.set_progress_bar_config(disable=True)

    @property
    def device(self) -> torch.device:
        return self.pipe._execution_device

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def encode(self, prompts: list[str]) -> list[torch.Tensor]:
        """Per-prompt hidden_states[-2] at real length: batch-invariant, and no 512-token padding work."""
        out = []
        for prompt in prompts:
            (emb,), _ = self.pipe.encode_prompt(prompt, device=self.device, do_classifier_free_guidance=False)
            out.append(emb)
        return out

    @torch.inference_mode()
    def denoise(self, embeds: list[torch.Tensor], shape: Shape, seeds: list[int]) -> torch.Tensor:
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        return self.pipe(
            prompt_embeds=embeds,
            height=shape.height,
            width=shape.width,
            num_inference_steps=shape.steps,
            guidance_scale=0.0,
            generator=generators,
            output_type="latent",
        ).images

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> list[np.ndarray]:
        vae = self.pipe.vae
        images = []
        for chunk in latents.split(self.decode_chunk):
            z = chunk.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
            pixels = vae.decode(z, return_dict=False)[0]
            pixels = ((pixels.float() / 2 + 0.5).clamp(0, 1).nan_to_num(0.0) * 255).round().to(torch.uint8)
            images.extend(pixels.permute(0, 2, 3, 1).cpu().numpy())
        return images

    def _stage_peak(self, peaks: dict[str, int], stage: str) -> None:
        """Peak of the stage that just ended; stages peak at different batch slopes (DiT grows, sliced decode not)."""
        if self.device.type == "cuda":
            peaks[stage] = torch.cuda.max_memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def run(self, prompts: list[str], seeds: list[int], shape: Shape) -> BatchOutput:
        times, peaks = StageTimes(), {}
        self._stage_peak({}, "start")
        t0 = time.perf_counter()
        embeds = self.encode(prompts)
        self._sync()
        self._stage_peak(peaks, "encode")
        t1 = time.perf_counter()
        latents = self.denoise(embeds, shape, seeds)
        self._sync()
        self._stage_peak(peaks, "denoise")
        t2 = time.perf_counter()
        images = self.decode(latents)
        self._stage_peak(peaks, "decode")
        t3 = time.perf_counter()
        times.encode_s, times.denoise_s, times.decode_s = t1 - t0, t2 - t1, t3 - t2
        return BatchOutput(images=images, times=times, stage_peak_bytes=peaks)
