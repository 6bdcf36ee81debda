"""What each benchmark request asks for: the article's fixed prompt and seed, or varied prompts and seeds."""

from __future__ import annotations

from dataclasses import dataclass

ARTICLE_PROMPT = "A realistic photo of a red sports car on a mountain road at sunset"
ARTICLE_SEED = 42
# Short prompts (< 32 tokens, like the article's) so the DiT sequence length - and the FLOP count - stays the same.
VARIED_PROMPTS = (
    ARTICLE_PROMPT,
    "A cinematic photo of a cat on a city street at night",
    "An oil painting of a forest river in the snow",
    "A watercolor sketch of an old house by the sea",
    "A detailed photograph of a woman on the beach at sunrise",
    "A wide shot landscape of a mountain road in the rain",
    "A close-up portrait of a dog in a green forest",
    "A bright photo of a small blue building in the city",
)


@dataclass(frozen=True)
class Workload:
    width: int = 1024
    height: int = 1024
    steps: int = 8
    mode: str = "article"  # "article": same prompt + seed 42 every time; "varied": cycle prompts, seed + i
    prompt: str = ARTICLE_PROMPT
    seed: int = ARTICLE_SEED
    endpoint: str = "generate"  # "generate" (image bytes) or "openai" (/v1/images/generations, b64 JSON)
    output_format: str | None = None  # png | jpeg | webp; None: the service's default (png), field not sent

    def __post_init__(self):
        if self.mode not in ("article", "varied"):
            raise ValueError(f"unknown prompt mode {self.mode!r} (article | varied)")
        if self.endpoint not in ("generate", "openai"):
            raise ValueError(f"unknown endpoint {self.endpoint!r} (generate | openai)")
        if self.output_format not in (None, "png", "jpeg", "webp"):
            raise ValueError(f"unknown output format {self.output_format!r} (png | jpeg | webp)")

    def prompt_seed(self, i: int) -> tuple[str, int]:
        if self.mode == "article":
            return self.prompt, self.seed
        return VARIED_PROMPTS[i % len(VARIED_PROMPTS)], self.seed + i

    def request(self, i: int, steps: int | None = None) -> tuple[str, dict]:
        """(path, JSON body) of request number i."""
        prompt, seed = self.prompt_seed(i)
        steps = self.steps if steps is None else steps
        fmt = {"output_format": self.output_format} if self.output_format else {}
        if self.endpoint == "openai":
            body = {
                "prompt": prompt,
                "n": 1,
                "size": f"{self.width}x{self.height}",
                "response_format": "b64_json",
                "seed": seed,
                "num_inference_steps": steps,
                **fmt,
            }
            return "/v1/images/generations", body
        return "/generate", {
            "prompt": prompt,
            "width": self.width,
            "height": self.height,
            "num_inference_steps": steps,
            "seed": seed,
            **fmt,
        }

    def describe(self) -> dict:
        return {
            "width": self.width,
            "height": self.height,
            "steps": self.steps,
            "prompt_mode": self.mode,
            "prompt": self.prompt if self.mode == "article" else list(VARIED_PROMPTS),
            "seed": self.seed,
            "endpoint": self.endpoint,
            "output_format": self.output_format or "png",
            "guidance_scale": 0.0,
        }
