"""Embedding lookup  out = weight[indices];  repeated indices accumulate their gradients."""

from __future__ import annotations

from typing import Any

from specgrad.zoo._xp import namespace


def forward(indices: Any, weight: Any) -> Any:
    return weight[indices]


def backward(g: Any, indices: Any, weight: Any) -> Any:
    """weight gradient = one_hot(indices)^T g: a matmul, so no scatter-add is needed."""
    xp = namespace(weight)
    flat = indices.reshape(-1)
    one_hot = (flat[:, None] == xp.arange(weight.shape[0])[None, :]).astype(weight.dtype)
    return one_hot.T @ g.reshape(-1, weight.shape[1])
