"""Image students beyond the flat MLPs and the two-layer CNNs: a CIFAR-style ResNet and a tiny ViT.
Pure modules, no I/O.

Both hold parameters only (no buffers): the batched engine stacks parameters, so the ResNet
normalises with GroupNorm (one group: statistics per sample, as LayerNorm over C×H×W) instead
of BatchNorm's running statistics. Inputs are images ``(B, C, H, W)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peerkd.student.lm import Block


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with a residual connection (He et al. 2016); a 1×1 convolution on the
    shortcut when the stride or the channels change."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(1, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(1, c_out)
        self.shortcut = (
            nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False) if stride != 1 or c_in != c_out else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(h)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet-(6n+2): a 3×3 stem of ``width`` channels, three stages of ``blocks``
    basic blocks at width, 2·width, 4·width (strides 1, 2, 2 while the map is at least 2 wide),
    global average pooling and a linear head. ``blocks`` 1 is ResNet-8, 3 is ResNet-20."""

    def __init__(self, input_shape: tuple[int, ...], width: int, blocks: int, num_classes: int):
        super().__init__()
        c, h = input_shape[0], min(input_shape[1:])
        self.stem = nn.Conv2d(c, width, 3, padding=1, bias=False)
        self.norm = nn.GroupNorm(1, width)
        layers, c_in = [], width
        for stage in range(3):
            c_out, stride = width * 2**stage, 2 if stage and h >= 2 else 1
            h = (h + 1) // 2 if stride == 2 else h
            for b in range(blocks):
                layers.append(BasicBlock(c_in, c_out, stride if b == 0 else 1))
                c_in = c_out
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(F.relu(self.norm(self.stem(x))))
        return self.head(h.mean(dim=(-2, -1)))


def patch_size(side: int) -> int:
    """The largest divisor of ``side`` leaving at least 4 patches along it (28 -> 7, 8 -> 2)."""
    return max(p for p in range(1, side + 1) if side % p == 0 and side // p >= min(4, side))


class TinyViT(nn.Module):
    """Vision transformer (Dosovitskiy et al. 2021), small: non-overlapping patches embedded by a
    strided convolution, learned positions, ``layers`` pre-norm blocks (bidirectional attention),
    mean pooling over patches, a final norm and a linear head."""

    def __init__(self, input_shape: tuple[int, ...], width: int, layers: int, heads: int, num_classes: int):
        super().__init__()
        c, h, w = input_shape
        ph, pw = patch_size(h), patch_size(w)
        self.patch = nn.Conv2d(c, width, (ph, pw), stride=(ph, pw))
        self.pos = nn.Parameter(torch.randn((h // ph) * (w // pw), width) * 0.02)
        self.blocks = nn.ModuleList([Block(width, heads, causal=False) for _ in range(layers)])
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2) + self.pos  # (B, patches, width)
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(self.ln(tokens.mean(dim=1)))
