"""Tiny causal language models for text worlds: a GRU and a small transformer. Pure modules, no I/O.

Inputs are token ids ``(B, L)``; outputs are next-token logits ``(B, L, V)``. The recurrence
and the attention are written with plain tensor ops (no ``nn.GRU``, no fused attention) so that
``torch.func.vmap`` over stacked students has a batching rule for every op, and the models
hold no buffers (the batched engine stacks parameters only).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# name -> (embedding width, hidden width, layers) for GRUs; (width, layers, heads) for transformers
GRU_SIZES = {"gru": (32, 128, 1), "gru2": (32, 96, 2)}
TRANSFORMER_SIZES = {"tlm": (64, 2, 4), "tlm_large": (128, 4, 4)}
LM_MODELS = (*GRU_SIZES, *TRANSFORMER_SIZES)


def build_lm(name: str, seq_len: int, vocab: int) -> nn.Module:
    """Zoo LM ``name`` for windows of ``seq_len`` tokens over ``vocab`` tokens (caller seeds)."""
    if name in GRU_SIZES:
        return CharGRU(vocab, *GRU_SIZES[name])
    width, layers, heads = TRANSFORMER_SIZES[name]
    return TinyTransformer(vocab, seq_len, width, layers, heads)


class GRULayer(nn.Module):
    """One GRU layer (Cho et al. 2014, torch's gate equations), unrolled over time."""

    def __init__(self, d_in: int, hidden: int):
        super().__init__()
        self.inp = nn.Linear(d_in, 3 * hidden)
        self.rec = nn.Linear(hidden, 3 * hidden)
        self.hidden = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = self.inp(x)  # (B, L, 3H): every step's input projection at once
        h = x.new_zeros((x.shape[0], self.hidden))
        out = []
        for t in range(x.shape[1]):
            xr, xz, xn = gx[:, t].chunk(3, dim=-1)
            hr, hz, hn = self.rec(h).chunk(3, dim=-1)
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            h = (1 - z) * torch.tanh(xn + r * hn) + z * h
            out.append(h)
        return torch.stack(out, dim=1)


class CharGRU(nn.Module):
    """Embedding, ``layers`` GRU layers, a linear head: next-token logits at every position."""

    def __init__(self, vocab: int, embed: int, hidden: int, layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.layers = nn.ModuleList([GRULayer(embed if i == 0 else hidden, hidden) for i in range(layers)])
        self.head = nn.Linear(hidden, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids.long())
        for layer in self.layers:
            h = layer(h)
        return self.head(h)


class Block(nn.Module):
    """Pre-norm transformer block: self-attention (causal unless told), then a 4× GELU MLP (as nanoGPT)."""

    def __init__(self, width: int, heads: int, causal: bool = True):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.fc, self.out = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
        self.heads, self.causal = heads, causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.proj(attention(self.qkv(self.ln1(x)), self.heads, self.causal))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


def attention(qkv: torch.Tensor, heads: int, causal: bool = True) -> torch.Tensor:
    """Multi-head self-attention of packed ``(B, L, 3D)`` queries/keys/values -> ``(B, L, D)``;
    ``causal``: a position attends to itself and earlier ones only."""
    b, n, d3 = qkv.shape
    d = d3 // 3
    q, k, v = (t.reshape(b, n, heads, d // heads).transpose(1, 2) for t in qkv.split(d, dim=-1))
    scores = q @ k.transpose(-2, -1) / math.sqrt(d // heads)  # (B, heads, L, L)
    if causal:
        future = torch.ones(n, n, dtype=torch.bool, device=qkv.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return (weights @ v).transpose(1, 2).reshape(b, n, d)


class TinyTransformer(nn.Module):
    """Token and learned position embeddings, ``layers`` blocks, a final norm and a linear head."""

    def __init__(self, vocab: int, seq_len: int, width: int, layers: int, heads: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.randn(seq_len, width) * 0.02)
        self.blocks = nn.ModuleList([Block(width, heads) for _ in range(layers)])
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids.long()) + self.pos[: ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))
