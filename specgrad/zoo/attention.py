"""Scaled dot-product attention  softmax(q k^T / sqrt(d)) v,  optionally causal."""

from __future__ import annotations

import math
from typing import Any

from specgrad.zoo._xp import namespace


def _probabilities(q: Any, k: Any, causal: bool) -> Any:
    xp = namespace(q, k)
    scores = (q @ xp.swapaxes(k, -1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    if causal:
        tq, tk = scores.shape[-2], scores.shape[-1]
        allowed = xp.arange(tk)[None, :] <= xp.arange(tq)[:, None] + (tk - tq)
        scores = xp.where(allowed, scores, -xp.inf)
    e = xp.exp(scores - xp.max(scores, axis=-1, keepdims=True))
    return e / xp.sum(e, axis=-1, keepdims=True)


def forward(q: Any, k: Any, v: Any, causal: bool = False) -> Any:
    return _probabilities(q, k, causal) @ v


def backward(g: Any, q: Any, k: Any, v: Any, causal: bool = False) -> tuple[Any, Any, Any]:
    xp = namespace(q, k, v)
    p = _probabilities(q, k, causal)
    dv = xp.swapaxes(p, -1, -2) @ g
    dp = g @ xp.swapaxes(v, -1, -2)
    ds = p * (dp - xp.sum(dp * p, axis=-1, keepdims=True)) * (1.0 / math.sqrt(q.shape[-1]))
    return ds @ k, xp.swapaxes(ds, -1, -2) @ q, dv
