"""The official Z-Image-Turbo resolution presets: three classes (1024, 1280, 1536) at 11 aspect ratios each.

Copied from `RES_CHOICES` in the official Turbo demo, the Hugging Face Space Tongyi-MAI/Z-Image-Turbo `app.py`
(https://huggingface.co/spaces/Tongyi-MAI/Z-Image-Turbo/blob/main/app.py; read through verbatim copies of that file,
e.g. the OpenVINO notebook's `gradio_helper.py`). Every side is a multiple of 16; the largest is 2048 (2048x1152).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deployments.config import AppConfig, RequestLimits

# class -> "WIDTHxHEIGHT ( RATIO )", in the demo's order
RES_CHOICES: dict[str, tuple[str, ...]] = {
    "1024": (
        "1024x1024 ( 1:1 )",
        "1152x896 ( 9:7 )",
        "896x1152 ( 7:9 )",
        "1152x864 ( 4:3 )",
        "864x1152 ( 3:4 )",
        "1248x832 ( 3:2 )",
        "832x1248 ( 2:3 )",
        "1280x720 ( 16:9 )",
        "720x1280 ( 9:16 )",
        "1344x576 ( 21:9 )",
        "576x1344 ( 9:21 )",
    ),
    "1280": (
        "1280x1280 ( 1:1 )",
        "1440x1120 ( 9:7 )",
        "1120x1440 ( 7:9 )",
        "1472x1104 ( 4:3 )",
        "1104x1472 ( 3:4 )",
        "1536x1024 ( 3:2 )",
        "1024x1536 ( 2:3 )",
        "1536x864 ( 16:9 )",
        "864x1536 ( 9:16 )",
        "1680x720 ( 21:9 )",
        "720x1680 ( 9:21 )",
    ),
    "1536": (
        "1536x1536 ( 1:1 )",
        "1728x1344 ( 9:7 )",
        "1344x1728 ( 7:9 )",
        "1728x1296 ( 4:3 )",
        "1296x1728 ( 3:4 )",
        "1872x1248 ( 3:2 )",
        "1248x1872 ( 2:3 )",
        "2048x1152 ( 16:9 )",
        "1152x2048 ( 9:16 )",
        "2016x864 ( 21:9 )",
        "864x2016 ( 9:21 )",
    ),
}

_LABEL = re.compile(r"^(\d+)x(\d+) \( (\d+:\d+) \)$")


@dataclass(frozen=True)
class Preset:
    size_class: str
    width: int
    height: int
    ratio: str

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def area(self) -> int:
        return self.width * self.height


def _parse(size_class: str, label: str) -> Preset:
    m = _LABEL.match(label)
    if not m:
        raise ValueError(f"bad preset label {label!r}")
    return Preset(size_class, int(m[1]), int(m[2]), m[3])


PRESETS: tuple[Preset, ...] = tuple(_parse(c, label) for c, labels in RES_CHOICES.items() for label in labels)


def presets_info(limits: RequestLimits) -> dict[str, list[dict]]:
    """The presets by class, each with whether these limits allow it (/info)."""
    out: dict[str, list[dict]] = {}
    for p in PRESETS:
        out.setdefault(p.size_class, []).append(
            {"size": p.size, "ratio": p.ratio, "allowed": limits.allows(p.width, p.height)}
        )
    return out


def shown_shapes(cfg: AppConfig) -> tuple[tuple[int, int], ...]:
    """Shapes whose max batch /info lists: the smallest square, 512x512, the default size, the square of each preset
    class, and the largest square, where the limits allow them."""
    lim, d = cfg.limits, cfg.defaults
    side = lim.largest_square()
    squares = [(lim.min_side, lim.min_side), (512, 512), (d.width, d.height)]
    squares += [(p.width, p.height) for p in PRESETS if p.width == p.height] + [(side, side)]
    allowed = [s for s in squares if lim.allows(*s)]
    return tuple(sorted(dict.fromkeys(allowed), key=lambda s: s[0] * s[1]))
