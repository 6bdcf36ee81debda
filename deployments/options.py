"""Option groups that the application config composes (deployments/config.py): memory modes and the VRAM tier table,
LoRA adapters and their slots, and the testing knobs."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MemoryMode(str, Enum):
    """Where the weights live during generation; `auto` picks from the VRAM tier."""

    AUTO = "auto"
    GPU = "gpu"  # everything resident: fastest, needs >= ~24 GB
    TEXT_ENCODER_OFFLOAD = "text_encoder_offload"  # text encoder streamed from CPU; DiT + VAE resident (16 GB)
    GROUP_OFFLOAD = "group_offload"  # text encoder and DiT streamed block by block from CPU (12 GB)


class BatchPolicy(str, Enum):
    """How many waiting requests of a shape the next batch takes (deployments/batching/efficiency.py)."""

    LATENCY = "latency"  # the smallest batch within a tolerance of the best measured seconds per image
    THROUGHPUT = "throughput"  # every waiting request of the shape, up to its cap


class Tier(_Strict):
    """One row of the VRAM tier table: cards with at most `max_vram_gb` get this batch size and memory mode."""

    max_vram_gb: float = Field(
        gt=0,
        description="Upper bound (inclusive) of total GPU memory for this tier, in GB (1e9 bytes) as NVML reports it: "
        "cards are sold in GiB, so a '12 GB' card reads 12.9 and a '24 GB' L4 reads 24.2.",
    )
    max_batch_size: int = Field(ge=1, le=64)
    memory_mode: MemoryMode = MemoryMode.GPU


# The article's tiers (<=12 GB -> 4, 16 GB -> 8, >=24 GB -> 12). Bounds sit between card sizes as NVML reports them
# (GB): 12 GB cards 12.9; 16 GB 16.1-17.2; 20 GB 21.5; 24 GB 24.2 (L4, A10G) to 25.8 (RTX 4090). 24 GB cards keep the
# text encoder off the GPU too: on an H100 capped to 24.15 GB, weights (20.3 GB) + the 1024x1024 VAE decode peak were
# 23.3 GB at batch 1, leaving no room to batch.
DEFAULT_TIERS: tuple[Tier, ...] = (
    Tier(max_vram_gb=14.0, max_batch_size=4, memory_mode=MemoryMode.GROUP_OFFLOAD),
    Tier(max_vram_gb=18.0, max_batch_size=8, memory_mode=MemoryMode.TEXT_ENCODER_OFFLOAD),
    Tier(max_vram_gb=26.0, max_batch_size=12, memory_mode=MemoryMode.TEXT_ENCODER_OFFLOAD),
    Tier(max_vram_gb=1e9, max_batch_size=12, memory_mode=MemoryMode.GPU),
)


ADAPTER_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class LoraAdapter(_Strict):
    """One LoRA adapter a request may name: where its weights are (never a request's choice) and its default scale."""

    source: str = Field(description="A Hugging Face Hub id or a local directory holding the adapter's weights.")
    weight_name: str | None = Field(None, description="File in `source` (default: pytorch_lora_weights.safetensors).")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) for a Hub id.")
    scale: float = Field(1.0, description="Scale when a request names the adapter without one.")


class LoraSettings(_Strict):
    """The DiT's LoRA adapter slots, fixed at start-up (they are part of the compiled graph). A batch's adapters are
    copied into the slots in place (scale folded in): switching adapters never recompiles and never reads a file."""

    max_adapters_per_request: int = Field(2, ge=1, le=8, description="Slots: adapters one request may combine.")
    max_rank: int = Field(64, ge=1, le=512, description="Slot rank: adapters of a higher rank are refused at load.")
    target_modules: tuple[str, ...] = Field(
        ("to_q", "to_k", "to_v", "to_out.0", "w1", "w2", "w3"),
        description="DiT linear layers the slots cover (attention and feed-forward of every block); an adapter that "
        "touches others is refused at load.",
    )
    min_scale: float = Field(-2.0, description="Smallest scale a request may give.")
    max_scale: float = Field(2.0, description="Largest scale a request may give.")


class EmulatedMemory(_Strict):
    """Peak bytes of a batch = fixed_bytes + batch x width x height x bytes_per_pixel, against budget_bytes."""

    fixed_bytes: int = Field(0, ge=0)
    bytes_per_pixel: float = Field(gt=0)
    budget_bytes: int = Field(gt=0)


class TestingOptions(_Strict):
    """Not for production: knobs that tests and perf experiments use to stand in for hardware this host lacks."""

    emulate_vram_gb: float | None = Field(
        None, gt=0, description="Pretend the GPU has this much memory (caps torch's allocator to match)."
    )
    measure_memory: bool = Field(
        True,
        description="Run batch 1 and 2 at the largest and a small area at start-up to cap the batch size of each "
        "image area (off: no cap).",
    )
    emulate_memory: EmulatedMemory | None = Field(
        None,
        description="Instead of measuring torch's peak memory (GPU), use this linear model of it: lets a CPU replica "
        "run the per-area memory cap with the tiny model.",
    )
