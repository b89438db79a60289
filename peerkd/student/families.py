"""Size families: students whose parameter counts step down N/2, N/3, …, N/(k+1) of a reference.

The setting of Iyer 2024 ("When Babies Teach Babies", arXiv 2411.16487): k peers of decreasing
size, each a fraction of the teacher's N parameters, their shapes found by search over depth and
width. ``students=[family:tlm:4]`` expands (``expand``) to four *members* ``tlm@tlm_large:2`` …
``tlm@tlm_large:5`` (``family:tlm:n``: one member per client): a ``tlm``-kind model sized
N(``tlm_large``)/2 … /5 on this world (the count depends on the vocabulary and input shape, so a member's shape is found
when the model is built, by ``member_shape``). ``family:<kind>:<k>:<ref>`` sizes against another
zoo model; a member name can also be given by hand. Pure functions, no I/O.

Kinds: ``tlm`` (causal transformer LM: width and layers; 4 heads), ``resnet`` (CIFAR-style
ResNet: base width and blocks per stage, e.g. ResNet-8/14/20), ``vit`` (tiny vision
transformer: width and layers). Search: every depth in the kind's range, the width that
brings the count nearest the target; the nearest overall wins (ties: the deeper).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable

import torch
from torch import nn

from peerkd.errors import ConfigError

FAMILY_PREFIX = "family:"
KINDS = ("tlm", "resnet", "vit")
REFERENCE = {"tlm": "tlm_large", "resnet": "resnet20", "vit": "vit"}  # family:<kind>:<k> sizes against these
MAX_K = 16
TOLERANCE = 0.10  # a member's count must be within 10 % of its target
DEPTHS = {"tlm": range(1, 7), "resnet": range(1, 4), "vit": range(1, 7)}
WIDTH_STEP = {"tlm": 4, "resnet": 1, "vit": 4}
MAX_WIDTH = 512
_MEMBER = re.compile(r"^(tlm|resnet|vit)@([a-z0-9_]+):(\d+)$")


def is_family(name: str) -> bool:
    return name.startswith(FAMILY_PREFIX)


def parse_member(name: str) -> tuple[str, str, int] | None:
    """``(kind, reference, divisor)`` of a member name ``<kind>@<ref>:<d>``; None for any other name."""
    m = _MEMBER.match(name)
    return (m[1], m[2], int(m[3])) if m else None


def expand(spec: str, zoo: tuple[str, ...], field: str = "students", clients: int = 0) -> list[str]:
    """The k member names of ``family:<kind>:<k>[:<ref>]`` (divisors 2 … k+1; k ``n``: ``clients``,
    one member per client); ConfigError naming ``field`` for a malformed one."""
    parts = spec[len(FAMILY_PREFIX) :].split(":")
    allowed = f"family:<kind>:<k or n>[:<reference model>], kind one of {', '.join(KINDS)}, 1 <= k <= {MAX_K}"
    if len(parts) >= 2 and parts[1] == "n" and clients:
        parts[1] = str(clients)
    if len(parts) not in (2, 3) or parts[0] not in KINDS or not parts[1].isdigit():
        raise ConfigError(field, f"{spec!r} is not a size family", allowed)
    kind, k = parts[0], int(parts[1])
    ref = parts[2] if len(parts) == 3 else REFERENCE[kind]
    if not 1 <= k <= MAX_K:
        raise ConfigError(field, f"{spec!r}: k = {k} peers", allowed)
    if ref not in zoo or parse_member(ref):
        raise ConfigError(field, f"{spec!r}: unknown reference model {ref!r}", zoo)
    return [f"{kind}@{ref}:{d}" for d in range(2, k + 2)]


def check_member(name: str, zoo: tuple[str, ...], field: str = "students") -> None:
    """ConfigError unless member ``name``'s reference is a zoo model and its divisor is >= 1."""
    kind, ref, d = parse_member(name)  # type: ignore[misc]
    if ref not in zoo or d < 1:
        raise ConfigError(field, f"{name!r}: a member is <kind>@<zoo model>:<divisor >= 1>", zoo)


@functools.lru_cache(maxsize=256)
def member_shape(
    kind: str, target: int, input_shape: tuple[int, ...], num_classes: int, field: str = "students"
) -> tuple[int, int]:
    """``(width, depth)`` of a ``kind`` model whose parameter count is nearest ``target`` on this
    data; ConfigError naming ``field`` when none comes within ``TOLERANCE``."""
    best: tuple[float, int, int] | None = None
    for depth in DEPTHS[kind]:
        width = _nearest_width(lambda w, d=depth: count(kind, w, d, input_shape, num_classes), target, kind)
        err = abs(count(kind, width, depth, input_shape, num_classes) - target) / target
        if best is None or err <= best[0] + 1e-9:
            best = (err, width, depth)
    err, width, depth = best  # type: ignore[misc]
    if err > TOLERANCE:
        raise ConfigError(
            field,
            f"no {kind} of about {target:,} parameters on this data (nearest {err:.0%} off)",
            "a larger reference",
        )
    return width, depth


def _nearest_width(n_of: Callable[[int], int], target: int, kind: str) -> int:
    """The width (a multiple of the kind's step) whose count is nearest ``target``: counts grow with width."""
    step = WIDTH_STEP[kind]
    lo, hi = 1, MAX_WIDTH // step
    while lo < hi:  # smallest multiple whose count reaches the target
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if n_of(mid * step) < target else (lo, mid)
    return min((max(lo - 1, 1) * step, lo * step), key=lambda w: abs(n_of(w) - target))


@functools.lru_cache(maxsize=4096)
def count(kind: str, width: int, depth: int, input_shape: tuple[int, ...], num_classes: int) -> int:
    """Parameter count of a ``kind`` model of this width and depth (built on the meta device: no memory)."""
    with torch.device("meta"):
        return sum(p.numel() for p in build_kind(kind, width, depth, input_shape, num_classes).parameters())


def build_kind(kind: str, width: int, depth: int, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A ``kind`` model of this width and depth (caller seeds)."""
    from peerkd.student.lm import TinyTransformer
    from peerkd.student.vision import ResNet, TinyViT

    if kind == "tlm":
        return TinyTransformer(num_classes, input_shape[0], width, depth, heads_for(width))
    if kind == "resnet":
        return ResNet(input_shape, width, depth, num_classes)
    return TinyViT(input_shape, width, depth, heads_for(width), num_classes)


def heads_for(width: int) -> int:
    """Attention heads for a width: 4 when they divide it, else the most of 2 and 1 that do."""
    return next(h for h in (4, 2, 1) if width % h == 0)


def divisor_target(reference_params: int, divisor: int) -> int:
    return max(1, math.floor(reference_params / divisor))
