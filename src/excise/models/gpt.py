"""A small GPT-style decoder for next-token prediction (the IMU paper's synthetic sequence model).

The official synthetic code (``Unlearn-Simple/synthetic_simnpo/model.py``, used by ``goodluckisallyouneed/IMU``)
uses token embedding + learned positions, ``n_layer = 4``, ``n_head = 4``, ``n_embd = 128``, a causal decoder
and a separate (untied) output projection ``output_layer`` — the layer IMU unlearns. excise builds the same
shape from plain ``torch.nn`` (pre-LayerNorm GPT-2 blocks: causal multi-head self-attention and a 4x GELU MLP,
a final LayerNorm, then the output projection).

Differences from the official backbone, chosen deliberately: the official blocks are post-LayerNorm, project
queries/keys/values at full width and scale scores by ``sqrt(n_embd)`` without splitting into heads (so
``n_head`` has no effect there) and use a ReLU MLP of width ``n_embd``; excise uses standard multi-head
attention and a GPT-2 MLP. Parameters keep PyTorch's default initialisation. Attention is written out
(``matmul`` + causal mask + ``softmax``) instead of ``scaled_dot_product_attention`` so the model runs under
``torch.func.vmap`` for per-sample gradients. The output projection is the last ``nn.Linear`` in module
order, so :func:`excise.models.final_linear` finds it as the head.

Input: ``N x T`` long token ids (``T <= context_length``); output: ``N x T x vocab_size`` logits, position ``t``
predicting token ``t + 1``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from excise.models.registry import register_model


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        heads = [z.reshape(n, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v)]
        q, k, v = heads
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.n_head)
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        attended = self.dropout(F.softmax(scores, dim=-1)) @ v
        return self.dropout(self.proj(attended.transpose(1, 2).reshape(n, t, d)))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.ln2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, vocab_size: int, context_length: int, n_layer: int = 4, n_head: int = 4,
                 n_embd: int = 128, dropout: float = 0.0) -> None:
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("context_length", context_length), ("n_layer", n_layer),
                            ("n_head", n_head), ("n_embd", n_embd)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if n_embd % n_head:
            raise ValueError(f"n_embd={n_embd} must be divisible by n_head={n_head}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout={dropout!r} must lie in [0, 1)")
        self.vocab_size, self.context_length = vocab_size, context_length
        self.token = nn.Embedding(vocab_size, n_embd)
        self.position = nn.Embedding(context_length, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.output_layer = nn.Linear(n_embd, vocab_size)  # the head; keep it the last nn.Linear

    def forward(self, tokens: Tensor) -> Tensor:
        if tokens.dim() != 2:
            raise ValueError(f"GPT expects N x T token ids, got shape {tuple(tokens.shape)}")
        t = tokens.shape[1]
        if t > self.context_length:
            raise ValueError(f"sequence length {t} exceeds context_length={self.context_length}")
        x = self.token(tokens) + self.position(torch.arange(t, device=tokens.device))
        x = self.drop(x)
        for block in self.blocks:
            x = block(x)
        return self.output_layer(self.ln_f(x))


@register_model("gpt")
def gpt(vocab_size: int, context_length: int, n_layer: int = 4, n_head: int = 4, n_embd: int = 128,
        dropout: float = 0.0, width: int | None = None) -> GPT:
    """The official defaults are 4 layers, 4 heads, width ``n_embd`` 128 (tests use 32). ``width`` is the same
    knob under the name every excise model (and ``excise train --width``) uses; give one or the other."""
    if width is not None:
        if n_embd != 128 and n_embd != width:
            raise ValueError(f"width={width!r} and n_embd={n_embd!r} disagree; give one of them")
        n_embd = width
    return GPT(vocab_size, context_length, n_layer, n_head, n_embd, dropout)
