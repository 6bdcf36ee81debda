"""Run one same-shape batch through Z-Image in three timed stages: text encode -> denoise -> VAE decode.

Prompts are encoded one at a time at their real length (the pipeline would pad every prompt to 512 tokens and then
drop the padding), every item has its own CPU generator (the same seed gives the same noise on any device and in any
batch), and the VAE decodes one image at a time (a batch-wide decode dominates peak memory growth).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers import ZImageImg2ImgPipeline, ZImageInpaintPipeline, ZImagePipeline
from PIL import Image

from deployments.messages import EditInput
from deployments.pipeline.text_encoder import PromptEncoder


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
    def __init__(
        self,
        pipe: ZImagePipeline,
        batch_encode: bool = False,
        encoder_shortcut: bool = True,
        encoder_cuda_graphs: bool = False,
    ):
        self.pipe = pipe
        self.batch_encode = batch_encode
        pipe.set_progress_bar_config(disable=True)
        # diffusers walks every module of every component for this (~1,500 in Z-Image: ms per call, several calls
        # per batch); placement is fixed for the runner's life (the Generator makes a new runner when it moves)
        self._device = pipe._execution_device
        self.prompt_encoder = PromptEncoder(
            pipe, self._device, shortcut=encoder_shortcut, cuda_graphs=encoder_cuda_graphs
        )

    @property
    def device(self) -> torch.device:
        return self._device

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def encode(self, prompts: list[str]) -> list[torch.Tensor]:
        """hidden_states[-2] per prompt at its real length (deployments/pipeline/text_encoder.py; the pipeline would
        pad to 512 tokens: for a 19-token prompt on an H100, 0.058 instead of 0.080 s at batch 1).

        `batch_encode`: one text-encoder pass padded to the longest prompt. On GPU this saves a launch-bound pass per
        prompt, and with the text encoder streamed from CPU one pass streams its 8 GB once per batch instead of once
        per prompt. Off, each prompt is encoded alone: bit-identical whatever the batch (the CPU equality tests rely
        on it).
        """
        return self.prompt_encoder.encode(prompts, together=self.batch_encode and len(prompts) > 1)

    def _edit_pipeline(self, inpaint: bool):
        """diffusers' image-to-image or inpainting pipeline over the same modules (no second copy of any weight)."""
        name = "_inpaint" if inpaint else "_img2img"
        if getattr(self, name, None) is None:
            cls = ZImageInpaintPipeline if inpaint else ZImageImg2ImgPipeline
            edit_pipe = cls(**self.pipe.components)
            edit_pipe.set_progress_bar_config(disable=True)
            setattr(self, name, edit_pipe)
        return getattr(self, name)

    @torch.inference_mode()
    def denoise(
        self, embeds: list[torch.Tensor], shape: Shape, seeds: list[int], edits: list[EditInput] | None = None
    ) -> torch.Tensor:
        """Latents for one batch; `edits` (one per item, same task and strength): start from those images."""
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        common = dict(
            prompt_embeds=embeds,
            height=shape.height,
            width=shape.width,
            num_inference_steps=shape.steps,
            guidance_scale=0.0,
            generator=generators,
            output_type="latent",
        )
        if not edits:
            return self.pipe(**common).images
        images = [Image.fromarray(e.image) for e in edits]
        if edits[0].mask is None:
            return self._edit_pipeline(False)(image=images, strength=edits[0].strength, **common).images
        masks = [Image.fromarray(e.mask.astype(np.uint8) * 255) for e in edits]  # diffusers: white = repaint
        return self._edit_pipeline(True)(image=images, mask_image=masks, strength=edits[0].strength, **common).images

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> list[np.ndarray]:
        vae = self.pipe.vae
        images = []
        for chunk in latents.split(1):
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

    def run(
        self, prompts: list[str], seeds: list[int], shape: Shape, edits: list[EditInput] | None = None
    ) -> BatchOutput:
        times, peaks = StageTimes(), {}
        self._stage_peak({}, "start")
        t0 = time.perf_counter()
        embeds = self.encode(prompts)
        self._sync()
        self._stage_peak(peaks, "encode")
        t1 = time.perf_counter()
        latents = self.denoise(embeds, shape, seeds, edits)
        self._sync()
        self._stage_peak(peaks, "denoise")
        t2 = time.perf_counter()
        images = self.decode(latents)
        if edits and edits[0].mask is not None:
            images = [keep_unmasked(img, e) for img, e in zip(images, edits, strict=True)]
        self._stage_peak(peaks, "decode")
        t3 = time.perf_counter()
        times.encode_s, times.denoise_s, times.decode_s = t1 - t0, t2 - t1, t3 - t2
        return BatchOutput(images=images, times=times, stage_peak_bytes=peaks)


def keep_unmasked(generated: np.ndarray, edit: EditInput) -> np.ndarray:
    """Inpainting: the input's own pixels outside the mask. The latent blend keeps that area only as well as the VAE
    round-trips it (diffusers' `apply_overlay` does the same in pixel space)."""
    return np.where(edit.mask[..., None], generated, edit.image)
