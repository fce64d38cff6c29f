"""The zoo's layers in torch, for the shared specs under specs/frameworks (`framework: torch`).

Most are torch's own operators with `backward: autograd`: what gets checked is torch's
derivative rules, and their agreement with the numpy references. Layer norm is a custom
`torch.autograd.Function` with a hand-written backward, as a torch team would write a
fused kernel's: the gradient checks test that backward. Imported only when a spec uses it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.linear(x, w, b)


def conv2d(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, stride: int = 1, padding: int = 0
) -> torch.Tensor:
    return F.conv2d(x, w, b, stride=stride, padding=padding)


def relu(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x)


def softmax(x: torch.Tensor, axis: int = -1) -> torch.Tensor:
    return torch.softmax(x, dim=axis)


class LayerNorm(torch.autograd.Function):
    """Layer norm over the last axis with a hand-written backward (and forward-mode rule)."""

    @staticmethod
    def forward(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float) -> torch.Tensor:
        mu = x.mean(-1, keepdim=True)
        inv = torch.rsqrt(((x - mu) ** 2).mean(-1, keepdim=True) + eps)
        return (x - mu) * inv * gamma + beta

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        x, gamma, _, eps = inputs
        mu = x.mean(-1, keepdim=True)
        inv = torch.rsqrt(((x - mu) ** 2).mean(-1, keepdim=True) + eps)
        saved = ((x - mu) * inv, inv, gamma)
        ctx.save_for_backward(*saved)
        ctx.save_for_forward(*saved)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        xhat, inv, gamma = ctx.saved_tensors
        dxhat = g * gamma
        m = xhat.shape[-1]
        dx = inv / m * (m * dxhat - dxhat.sum(-1, keepdim=True) - xhat * (dxhat * xhat).sum(-1, keepdim=True))
        lead = tuple(range(g.dim() - 1))
        return dx, (g * xhat).sum(lead), g.sum(lead), None

    @staticmethod
    def jvp(ctx: Any, dx: Any, dgamma: Any, dbeta: Any, _: Any) -> torch.Tensor:
        xhat, inv, gamma = ctx.saved_tensors
        out = torch.zeros_like(xhat)
        if dx is not None:
            centred = dx - dx.mean(-1, keepdim=True)
            dxhat = inv * (centred - xhat * (xhat * centred).mean(-1, keepdim=True))
            out = out + dxhat * gamma
        if dgamma is not None:
            out = out + xhat * dgamma
        if dbeta is not None:
            out = out + dbeta
        return out


def layernorm(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return LayerNorm.apply(x, gamma, beta, eps)


def batchnorm(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return F.batch_norm(x, None, None, gamma, beta, training=True, eps=eps)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
    scores = q @ k.transpose(-1, -2) * (1.0 / math.sqrt(q.shape[-1]))
    if causal:
        tq, tk = scores.shape[-2], scores.shape[-1]
        at = scores.device
        allowed = torch.arange(tk, device=at)[None, :] <= torch.arange(tq, device=at)[:, None] + (tk - tq)
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels)
