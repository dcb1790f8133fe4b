"""A small GPT in nanoGPT's shape, on minimp's own tensors and ops.

Token and position embeddings, ``n_layer`` pre-LayerNorm blocks (causal
self-attention, then a GELU MLP four times as wide, each added back to the
residual stream), a final LayerNorm and a linear head; the loss is cross-entropy
over every position. Where precision bites in such a model: the attention scores
q @ k^T (a float16 matmul whose output can pass 65504), the softmax and LayerNorm
statistics (float32 under autocast, as PyTorch's CUDA lists say), the LayerNorm
gains (initialised at 1.0, where pure float16 rounds away updates below 2^-11)
and the residual sum.

Initialised as nanoGPT does (Radford et al. 2019, sec. 2.3): every Linear and
Embedding weight N(0, 0.02), biases zero, and the projections that write into the
residual stream N(0, 0.02 / sqrt(2 * n_layer)). Unlike nanoGPT the head is *not*
tied to the token embedding: one tensor with two roles would mix two kinds of
gradient in every per-parameter statistic the lessons print.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from minimp import backend, functional, nn
from minimp.tensor import Tensor, as_dtype, float32, ieee, round_to_dtype

__all__ = ["GPT", "GPTConfig"]


@dataclass(frozen=True)
class GPTConfig:
    """The model's shape. The default trains on a laptop's CPU: 2 layers, 4 heads of
    16, a 64-character context and tiny Shakespeare's 65-character vocabulary."""

    vocab_size: int = 65
    block_size: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    dropout: float = 0.0
    bias: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig: {name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"GPTConfig: n_embd={self.n_embd} must be a multiple of n_head={self.n_head} "
                "(each head gets n_embd // n_head channels)"
            )
        if not 0 <= self.dropout < 1:
            raise ValueError(f"GPTConfig: dropout must be in [0, 1), got {self.dropout!r}")


class CausalSelfAttention(nn.Module):
    """Multi-head attention in which position t sees positions <= t only."""

    def __init__(self, config: GPTConfig, rng: np.random.Generator, **kw: Any) -> None:
        c = config.n_embd
        self.n_head = config.n_head
        self.qkv = nn.Linear(c, 3 * c, bias=config.bias, generator=rng, **kw)  # q, k, v at once
        self.proj = nn.Linear(c, c, bias=config.bias, generator=rng, **kw)
        self.attn_dropout = nn.Dropout(config.dropout, generator=rng)
        self.resid_dropout = nn.Dropout(config.dropout, generator=rng)
        # True above the diagonal: the future, which a position must not attend to
        self.future = np.triu(np.ones((config.block_size, config.block_size), dtype=bool), k=1)

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        hs = c // self.n_head
        q, k, v = self.qkv(x).split(c, dim=2)
        # (B, T, C) -> (B, heads, T, head size): each head attends on its own
        q, k, v = (z.view(b, t, self.n_head, hs).transpose(1, 2) for z in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
        # the mask moves to the device the first time it is used there, not at every call
        self.future = backend.to_device(self.future, x.device)
        scores = scores.masked_fill(self.future[:t, :t], -math.inf)
        att = self.attn_dropout(functional.softmax(scores, dim=-1))
        y = (att @ v).transpose(1, 2).reshape(b, t, c)  # heads side by side again
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig, rng: np.random.Generator, **kw: Any) -> None:
        c = config.n_embd
        self.fc = nn.Linear(c, 4 * c, bias=config.bias, generator=rng, **kw)
        self.gelu = nn.GELU()
        self.proj = nn.Linear(4 * c, c, bias=config.bias, generator=rng, **kw)
        self.dropout = nn.Dropout(config.dropout, generator=rng)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.proj(self.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm: x + attn(ln_1(x)), then x + mlp(ln_2(x)) (GPT-2's order)."""

    def __init__(self, config: GPTConfig, rng: np.random.Generator, **kw: Any) -> None:
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias, **kw)
        self.attn = CausalSelfAttention(config, rng, **kw)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias, **kw)
        self.mlp = MLP(config, rng, **kw)

    def forward(self, x: Tensor, keep: list | None = None, name: str = "") -> Tensor:
        a = self.attn(self.ln_1(x))
        if keep is not None:  # the attention's output, its gradient retained for a statistic
            keep.append((f"{name}attn", a.retain_grad()))
        x = x + a
        m = self.mlp(self.ln_2(x))
        if keep is not None:
            keep.append((f"{name}mlp", m.retain_grad()))
        return x + m


class GPT(nn.Module):
    """``GPT(config)(idx, targets)`` -> (logits (B, T, vocab), loss or None).

    ``idx`` and ``targets`` are (B, T) integer arrays with T <= block_size; the loss
    is the mean cross-entropy over all B * T positions. A list passed as ``keep``
    receives (name, output) for each block's attention and MLP, their gradients
    retained (what a gradient statistic looks at). Parameters are drawn in
    float32 from ``generator`` and rounded once to ``dtype``, so a float16 model and
    a float32 one from the same seed start from the same weights up to that rounding.
    """

    def __init__(
        self,
        config: GPTConfig = GPTConfig(),  # frozen, so one shared default is safe
        *,
        dtype: Any = float32,
        device: str = "cpu",
        generator: np.random.Generator | None = None,
    ) -> None:
        rng = generator if generator is not None else np.random.default_rng()
        kw = {"dtype": dtype, "device": device}
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd, generator=rng, **kw)
        self.wpe = nn.Embedding(config.block_size, config.n_embd, generator=rng, **kw)
        self.drop = nn.Dropout(config.dropout, generator=rng)
        self.blocks = [Block(config, rng, **kw) for _ in range(config.n_layer)]
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias, **kw)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False, generator=rng, **kw)
        self._init_weights(rng, as_dtype(dtype))

    def _init_weights(self, rng: np.random.Generator, dtype: np.dtype) -> None:
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():
            if "ln_" in name:
                continue  # LayerNorm: weight ones, bias zeros, as built
            if name.endswith("proj.weight"):  # writes into the residual stream
                values = rng.normal(0.0, residual_std, p.shape).astype(np.float32)
            elif name.endswith("bias"):
                values = np.zeros(p.shape, np.float32)
            else:  # the embeddings, qkv, fc and the head
                values = rng.normal(0.0, 0.02, p.shape).astype(np.float32)
            with ieee():
                p.data = backend.to_device(round_to_dtype(values, dtype), p.device)

    def forward(
        self, idx: Any, targets: Any = None, keep: list | None = None
    ) -> tuple[Tensor, Tensor | None]:
        idx = np.asarray(idx) if not hasattr(idx, "shape") else idx
        if idx.ndim != 2:
            raise ValueError(f"GPT: idx must be (batch, time) token indices, got shape {idx.shape}")
        b, t = idx.shape
        if t > self.config.block_size:
            raise ValueError(
                f"GPT: a sequence of length {t} is longer than block_size="
                f"{self.config.block_size}; crop it to the last {self.config.block_size} tokens"
            )
        xp = backend.array_module(self.wte.weight.data)
        x = self.drop(self.wte(idx) + self.wpe(xp.arange(t)))  # (B, T, C) + (T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, keep, f"blocks.{i}.")
        logits = self.lm_head(self.ln_f(x))
        if targets is None:
            return logits, None
        targets = xp.asarray(targets)
        if tuple(targets.shape) != (b, t):
            raise ValueError(f"GPT: targets must have idx's shape {(b, t)}, got {targets.shape}")
        loss = functional.cross_entropy(logits.view(b * t, -1), targets.reshape(-1))
        return logits, loss
