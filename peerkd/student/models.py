"""The model zoo: small students and a larger teacher. Pure modules, no I/O.

Inputs are ``(B, *input_shape)``: MLPs flatten them; CNNs need ``(C, H, W)`` images
(Conv2d) or ``(C, L)`` sequences (Conv1d).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from peerkd.errors import ConfigError
from peerkd.student import families
from peerkd.student.lm import LM_MODELS, build_lm

# name -> hidden widths (MLP) or conv channels + hidden width (CNN)
MLP_WIDTHS = {"mlp32": (32,), "mlp64": (64,), "mlp128": (128,), "mlp256x2": (256, 256)}
CNN_SIZES = {"cnn": ((8, 16), 32), "cnn_large": ((32, 64), 128)}
# name -> (family kind, width, depth): ResNet-8/20 (base width 16, 1 or 3 blocks a stage), a 4-layer ViT
VISION_SIZES = {"resnet8": ("resnet", 16, 1), "resnet20": ("resnet", 16, 3), "vit": ("vit", 64, 4)}
IMAGE_ONLY = (*VISION_SIZES, "resnet", "vit")  # models (and family kinds) that need (C, H, W) images
MODELS = (*MLP_WIDTHS, *CNN_SIZES, *VISION_SIZES, *LM_MODELS)
AUTO = "auto"  # ``students=[auto]``: the default student of the world's kind (``default_student``)


def build_model(
    name: str, input_shape: tuple[int, ...], num_classes: int, seed: int, field: str = "students"
) -> nn.Module:
    """Build zoo model ``name`` with weights drawn from ``seed``.

    Parameters
    ----------
    name : str
        A key of the zoo (``mlp32``, ``mlp64``, ``mlp128``, ``mlp256x2``, ``cnn``, ``cnn_large``, ``resnet8``,
        ``resnet20``, ``vit``; for text, the causal LMs ``gru``, ``gru2``, ``tlm``, ``tlm_large`` of
        ``peerkd.student.lm``), or a size-family member ``<kind>@<ref>:<d>`` (``peerkd.student.families``).
    input_shape : tuple[int, ...]
        Shape of one input, without the batch axis.
    num_classes : int
        Number of output logits.
    seed : int
        Seed of the weight initialisation.
    field : str
        Config field named in errors.
    """
    # Seed only the CPU generator that nn's initialisers draw from: torch.manual_seed also
    # queues CUDA/XPU/MTIA seeding with a stack trace each time (10,000 students: seconds).
    gen_state = torch.default_generator.get_state()
    torch.default_generator.manual_seed(seed)
    try:
        if (member := families.parse_member(name)) or name in VISION_SIZES:
            return _sized(name, member, input_shape, num_classes, field)
        if name in MLP_WIDTHS:
            return _mlp(math.prod(input_shape), MLP_WIDTHS[name], num_classes)
        if name in CNN_SIZES:
            if len(input_shape) not in (2, 3):
                raise ConfigError(
                    field,
                    f"{name} needs image (C,H,W) or sequence (C,L) inputs, data has shape {input_shape}",
                    MLP_WIDTHS,
                )
            return _cnn(input_shape, *CNN_SIZES[name], num_classes)
        if name in LM_MODELS:
            if len(input_shape) != 1:
                raise ConfigError(field, f"{name} needs token windows (L,), data has shape {input_shape}")
            return build_lm(name, input_shape[0], num_classes)
        raise ConfigError(field, f"unknown model {name!r}", MODELS)
    finally:
        torch.default_generator.set_state(gen_state)


def stacked_mlp(name: str, input_shape: tuple[int, ...], num_classes: int, seeds: list[int]) -> dict[str, torch.Tensor]:
    """The weights of ``build_model(name, input_shape, num_classes, seed=s)`` for each of ``seeds``,
    stacked ``(len(seeds), *shape)`` by ``state_dict`` name, for an MLP of the zoo (``MLP_WIDTHS``).

    Each student's layers are drawn straight into its rows in the order its constructor draws them
    (``nn.Linear.reset_parameters``: the weight by ``kaiming_uniform_(a=√5)``, then the bias from
    ``U(±1/√fan_in)``), from the same seed: the same numbers without building 10,000 modules (a
    GPU run's fleet of 10,000 took seconds to build). A test compares it with ``build_model``.
    """
    template = build_model(name, input_shape, num_classes, seed=0)
    out = {k: torch.empty((len(seeds), *v.shape), dtype=v.dtype) for k, v in template.state_dict().items()}
    layers = [  # (weights, biases, the bias bound 1/√fan_in) of each linear layer, in construction order
        (out[f"{n}.weight"], out[f"{n}.bias"], 1 / math.sqrt(m.in_features))
        for n, m in template.named_modules()
        if isinstance(m, nn.Linear)
    ]
    gen_state = torch.default_generator.get_state()
    try:
        for i, seed in enumerate(seeds):
            torch.default_generator.manual_seed(seed)
            for weight, bias, bound in layers:
                nn.init.kaiming_uniform_(weight[i], a=math.sqrt(5))
                nn.init.uniform_(bias[i], -bound, bound)
    finally:
        torch.default_generator.set_state(gen_state)
    return out


def _sized(
    name: str, member: tuple[str, str, int] | None, input_shape: tuple[int, ...], num_classes: int, field: str
) -> nn.Module:
    """A zoo vision model, or a family member: the shape whose count is nearest N(reference)/d here."""
    if member:
        kind, ref, d = member
        if ref not in MODELS:
            raise ConfigError(field, f"{name!r}: unknown reference model {ref!r}", MODELS)
        check_modality(ref, kind == "tlm", field)
        target = families.divisor_target(model_size(ref, input_shape, num_classes, field), d)
        width, depth = families.member_shape(kind, target, input_shape, num_classes, field)
    else:
        kind, width, depth = VISION_SIZES[name]
    if kind != "tlm" and len(input_shape) != 3:
        raise ConfigError(field, f"{name} needs image (C,H,W) inputs, data has shape {input_shape}", MLP_WIDTHS)
    if kind == "tlm" and len(input_shape) != 1:
        raise ConfigError(field, f"{name} needs token windows (L,), data has shape {input_shape}")
    return families.build_kind(kind, width, depth, input_shape, num_classes)


def model_size(name: str, input_shape: tuple[int, ...], num_classes: int, field: str = "students") -> int:
    """Parameter count of zoo model ``name`` on this data (built on the meta device: no memory)."""
    with torch.device("meta"):
        return num_parameters(build_model(name, input_shape, num_classes, 0, field))


def expand_students(names: list[str] | tuple[str, ...], clients: int = 0, field: str = "students") -> tuple[str, ...]:
    """``students`` with every ``family:<kind>:<k>[:<ref>]`` replaced by its k members (k ``n``:
    ``clients``); other names are checked against the zoo (``auto`` is left for the caller)."""
    out: list[str] = []
    for name in names:
        if families.is_family(name):
            out += families.expand(name, MODELS, field, clients)
        elif families.parse_member(name):
            families.check_member(name, MODELS, field)
            out.append(name)
        elif name != AUTO and name not in MODELS:
            raise ConfigError(field, f"unknown value {name!r}", (AUTO, *MODELS, "family:<kind>:<k>[:<ref>]"))
        else:
            out.append(name)
    return tuple(out)


def is_language_model(name: str) -> bool:
    member = families.parse_member(name)
    return name in LM_MODELS or (member is not None and member[0] == "tlm")


def default_student(text: bool) -> str:
    """The student a world gets unless one is named: ``tlm`` for text, else ``mlp64`` (the model
    every image and tabular table in the docs was measured with)."""
    return "tlm" if text else "mlp64"


def check_modality(name: str, text: bool, field: str = "students") -> None:
    """ConfigError unless ``name`` fits the data: a causal LM for text, any other model otherwise."""
    if text and not is_language_model(name):
        raise ConfigError(
            field, f"{name} is not a language model; text worlds need one", [*LM_MODELS, "family:tlm:<k>"]
        )
    if not text and is_language_model(name):
        raise ConfigError(
            field, f"{name} is a language model; this world is not text", [*MLP_WIDTHS, *CNN_SIZES, *VISION_SIZES]
        )


def _mlp(d_in: int, widths: tuple[int, ...], num_classes: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    for w in widths:
        layers += [nn.Linear(d_in, w), nn.ReLU()]
        d_in = w
    layers.append(nn.Linear(d_in, num_classes))
    return nn.Sequential(*layers)


def _cnn(input_shape: tuple[int, ...], channels: tuple[int, int], hidden: int, num_classes: int) -> nn.Module:
    conv, pool = (nn.Conv2d, nn.MaxPool2d) if len(input_shape) == 3 else (nn.Conv1d, nn.MaxPool1d)
    c_in, spatial = input_shape[0], input_shape[1:]
    layers: list[nn.Module] = []
    for c in channels:
        layers += [conv(c_in, c, kernel_size=3, padding=1), nn.ReLU()]
        if min(spatial) >= 2:  # pool while the map is still at least 2 wide
            layers.append(pool(2))
            spatial = tuple(s // 2 for s in spatial)
        c_in = c
    layers += [nn.Flatten(), nn.Linear(c_in * math.prod(spatial), hidden), nn.ReLU(), nn.Linear(hidden, num_classes)]
    return nn.Sequential(*layers)


def num_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
