"""LoRA adapters on the DiT through fixed slots: any adapter set per batch, no recompile, no file read per batch.

torch.compile specializes on module structure and on Python floats, so loading peft adapters, deleting them or
changing their scale per batch would recompile the DiT (minutes for the full model) or fall back to eager. Instead
the DiT gets one peft LoRA layer (adapter name `slots`) of rank `max_rank x max_adapters_per_request` on
`target_modules` at start-up, before FP8 and compile, all zeros (an exact no-op). Slot i is the rank range
[i x max_rank, (i + 1) x max_rank): B A x = sum over slots of B_i A_i x, so several adapters cost one pair of GEMMs
per layer, not one pair each (each pair re-reads the activations; on an H200 at 1024^2, two separate rank-64 adapters
cost +15% GPU time per image). Adapters are read once, when user_config names them, into tensors on the DiT's
device. A batch applies its adapter set by copying each adapter's A and B (B times scale x alpha/r) into a slot in
place, zero-padding the rank: the parameters keep their storage and shapes, so compiled graphs and CUDA graphs see
new values and never recompile. It is what diffusers' LoRA hot-swap (`enable_lora_hotswap`) does for one adapter,
with several adapters per request and a scale per request.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from deployments.messages import LoraChoice
from deployments.options import LoraAdapter, LoraSettings

logger = logging.getLogger("ray.serve")

SLOTS = "slots"  # the peft adapter name holding every slot
PREFIX = "transformer."


class AdapterError(ValueError):
    """An adapter cannot be served: unknown name, failed to load, or does not fit the slots. `param`: the request
    field at fault when a request named it."""

    def __init__(self, message: str, param: str = "lora"):
        super().__init__(message)
        self.param = param


@dataclass
class LoadedAdapter:
    name: str
    spec: LoraAdapter
    rank: int
    weights: dict[str, tuple[torch.Tensor, torch.Tensor, float]]  # module path -> (A [r, in], B [out, r], alpha/r)
    load_s: float = 0.0

    def describe(self) -> dict:
        return {
            "name": self.name,
            "source": self.spec.source,
            "scale": self.spec.scale,
            "rank": self.rank,
            "modules": len(self.weights),
            "status": "loaded",
            "load_s": round(self.load_s, 3),
        }


def _alpha_factor(path: str, rank: int, meta: dict, state: dict) -> float:
    """peft's scaling for one module: alpha / r (alpha / sqrt(r) with rsLoRA); 1.0 when nothing says (diffusers)."""
    if f"{PREFIX}{path}.alpha" in state:
        alpha = float(state[f"{PREFIX}{path}.alpha"])
    else:
        pattern = meta.get("alpha_pattern") or {}
        matches = [v for k, v in pattern.items() if path == k or path.endswith("." + k)]
        alpha = matches[0] if matches else meta.get("lora_alpha")
    if alpha is None:
        return 1.0
    return float(alpha) / (math.sqrt(rank) if meta.get("use_rslora") else rank)


def read_adapter(pipeline_cls, name: str, spec: LoraAdapter, device, dtype, settings: LoraSettings) -> LoadedAdapter:
    """Read an adapter with diffusers' Z-Image LoRA loader (it converts community formats) into device tensors."""
    start = time.perf_counter()
    kwargs = {"weight_name": spec.weight_name} if spec.weight_name else {}
    if spec.revision:
        kwargs["revision"] = spec.revision
    try:
        state, meta = pipeline_cls.lora_state_dict(spec.source, return_lora_metadata=True, **kwargs)
    except Exception as exc:  # not found, not a LoRA, unreadable: the message says which
        raise AdapterError(f"adapter {name!r}: cannot read {spec.source!r}: {exc}") from exc
    meta = {k.removeprefix(PREFIX): v for k, v in (meta or {}).items()}
    if meta.get("use_dora"):
        raise AdapterError(f"adapter {name!r}: DoRA adapters are not supported")
    others = sorted({k.split(".", 1)[0] for k in state if not k.startswith(PREFIX)})
    if others:
        raise AdapterError(f"adapter {name!r} has weights for {others}; only DiT (transformer) adapters are served")
    weights = {}
    for key in state:
        if not key.endswith(".lora_A.weight"):
            continue
        path = key[len(PREFIX) : -len(".lora_A.weight")]
        a, b = state[key], state.get(f"{PREFIX}{path}.lora_B.weight")
        if b is None:
            raise AdapterError(f"adapter {name!r}: {path} has lora_A without lora_B")
        rank = a.shape[0]
        weights[path] = (
            a.to(device=device, dtype=dtype),
            b.to(device=device, dtype=dtype),
            _alpha_factor(path, rank, meta, state),
        )
    if not weights:
        raise AdapterError(f"adapter {name!r}: no LoRA weights found in {spec.source!r}")
    rank = max(a.shape[0] for a, _, _ in weights.values())
    if rank > settings.max_rank:
        raise AdapterError(f"adapter {name!r} has rank {rank}; the slots hold up to lora.max_rank={settings.max_rank}")
    return LoadedAdapter(name, spec, rank, weights, time.perf_counter() - start)


@dataclass
class LoraSlots:
    """The DiT's adapter slots and what each holds now (so an unchanged adapter set copies nothing)."""

    transformer: nn.Module
    settings: LoraSettings
    layers: dict[str, nn.Module] = field(default_factory=dict)  # module path -> peft LoraLayer
    held: list[tuple[str, float] | None] = field(default_factory=list)  # per slot: (adapter name + id, scale)
    switches: int = 0

    @classmethod
    def install(cls, transformer: nn.Module, settings: LoraSettings) -> LoraSlots:
        from peft import LoraConfig
        from peft.tuners.lora import LoraLayer

        n, rank = settings.max_adapters_per_request, settings.max_rank
        config = LoraConfig(r=n * rank, lora_alpha=n * rank, target_modules=list(settings.target_modules))
        transformer.add_adapter(config, adapter_name=SLOTS)  # scaling alpha / r = 1: scales are folded into B
        transformer.set_adapters([SLOTS], [1.0])
        slots = cls(transformer, settings)
        slots.layers = {p: m for p, m in transformer.named_modules() if isinstance(m, LoraLayer)}
        slots.held = [("", 0.0)] * n  # forces the zeroing below
        transformer.requires_grad_(False)
        slots.apply([])
        logger.info(
            "LoRA: %d slots of rank %d on %d DiT layers (%s)",
            n,
            settings.max_rank,
            len(slots.layers),
            ",".join(settings.target_modules),
        )
        return slots

    def check_fits(self, adapter: LoadedAdapter) -> None:
        """Every module the adapter touches is a slot layer of matching shape (else it could never be applied)."""
        missing = sorted(set(adapter.weights) - set(self.layers))
        if missing:
            raise AdapterError(
                f"adapter {adapter.name!r} touches {len(missing)} DiT layers outside the slots (e.g. {missing[:3]});"
                f" add them to lora.target_modules"
            )
        for path, (a, b, _) in adapter.weights.items():
            base = self.layers[path].get_base_layer()
            slot_a = self.layers[path].lora_A[SLOTS].weight
            slot_b = self.layers[path].lora_B[SLOTS].weight
            if a.shape[1] != slot_a.shape[1] or b.shape[0] != slot_b.shape[0]:
                raise AdapterError(
                    f"adapter {adapter.name!r}: {path} is {b.shape[0]}x{a.shape[1]}, the model's layer "
                    f"{type(base).__name__} is {slot_b.shape[0]}x{slot_a.shape[1]} (an adapter for another model?)"
                )

    @torch.no_grad()
    def apply(self, chosen: list[tuple[LoadedAdapter, float]]) -> bool:
        """Put `chosen` (adapter, scale) into the slots in order, zeros in the rest; True if anything was copied."""
        changed = False
        for i in range(len(self.held)):
            adapter, scale = chosen[i] if i < len(chosen) else (None, 0.0)
            want = (f"{adapter.name}#{id(adapter)}", float(scale)) if adapter else None
            if self.held[i] == want:
                continue
            self._fill(i, adapter, float(scale))
            self.held[i], changed = want, True
        if changed:
            self.switches += 1
        return changed

    def _fill(self, slot: int, adapter: LoadedAdapter | None, scale: float) -> None:
        lo, hi = slot * self.settings.max_rank, (slot + 1) * self.settings.max_rank
        for path, layer in self.layers.items():
            slot_a, slot_b = layer.lora_A[SLOTS].weight[lo:hi], layer.lora_B[SLOTS].weight[:, lo:hi]
            w = adapter.weights.get(path) if adapter is not None else None
            if w is None:
                slot_b.zero_()  # B = 0: the slot adds nothing to this layer
                continue
            a, b, factor = w
            r = a.shape[0]
            slot_a[:r].copy_(a)
            slot_a[r:].zero_()
            slot_b[:, :r].copy_(b * (scale * factor))
            slot_b[:, r:].zero_()


class AdapterLibrary:
    """The adapters a replica serves, by name, and the slots they go through. Changed live by `sync()` (user_config):
    new or changed adapters are read, removed ones dropped; one that fails to load is reported and refused, the others
    keep serving."""

    def __init__(self, slots: LoraSlots | None, pipeline_cls, device, dtype, settings: LoraSettings | None):
        self.slots, self.pipeline_cls, self.device, self.dtype, self.settings = (
            slots,
            pipeline_cls,
            device,
            dtype,
            settings,
        )
        self.loaded: dict[str, LoadedAdapter] = {}
        self.failed: dict[str, tuple[LoraAdapter, str]] = {}

    def sync(self, wanted: dict[str, LoraAdapter]) -> None:
        if wanted and self.slots is None:
            raise ValueError("user_config.loras names adapters, but the application has no `lora` settings (slots)")
        loaded = {n: a for n, a in self.loaded.items() if wanted.get(n) == a.spec}
        failed = {}
        for name, spec in wanted.items():
            if name in loaded:
                continue
            try:
                adapter = read_adapter(self.pipeline_cls, name, spec, self.device, self.dtype, self.settings)
                self.slots.check_fits(adapter)
            except AdapterError as exc:
                logger.error("LoRA %s not served: %s", name, exc)
                failed[name] = (spec, str(exc))
                continue
            loaded[name] = adapter
            logger.info("LoRA %s loaded from %s (rank %d) in %.2fs", name, spec.source, adapter.rank, adapter.load_s)
        self.loaded, self.failed = loaded, failed  # swapped whole: a running batch keeps what it resolved

    def names(self) -> list[str]:
        return sorted(self.loaded)

    def resolve(self, choices: tuple[LoraChoice, ...]) -> tuple[LoraChoice, ...]:
        """Each choice with its scale filled in (None -> the adapter's default); AdapterError names the bad entry."""
        out = []
        for i, choice in enumerate(choices):
            adapter = self.loaded.get(choice.name)
            if adapter is None:
                raise AdapterError(self._unknown(choice.name), f"lora[{i}].name")
            out.append(LoraChoice(choice.name, adapter.spec.scale if choice.scale is None else float(choice.scale)))
        return tuple(out)

    def _unknown(self, name: str) -> str:
        if name in self.failed:
            return f"LoRA adapter {name!r} failed to load: {self.failed[name][1]}"
        return f"unknown LoRA adapter {name!r}; this server serves {self.names()}"

    def apply(self, choices: tuple[LoraChoice, ...]) -> None:
        """In the GPU thread, before a batch: this batch's adapters into the slots (nothing to do if unchanged)."""
        if self.slots is None:
            if choices:
                raise AdapterError("this server serves no LoRA adapters", "lora")
            return
        chosen = []
        for i, c in enumerate(choices):
            adapter = self.loaded.get(c.name)
            if adapter is None:  # removed live after the request was accepted
                raise AdapterError(self._unknown(c.name), f"lora[{i}].name")
            chosen.append((adapter, c.scale))
        self.slots.apply(chosen)

    def describe(self) -> list[dict]:
        rows = [a.describe() for a in self.loaded.values()]
        rows += [
            {"name": n, "source": s.source, "scale": s.scale, "rank": None, "status": "failed", "error": err}
            for n, (s, err) in self.failed.items()
        ]
        return sorted(rows, key=lambda r: r["name"])
