"""Softmax and log-softmax along one axis, max-shifted for stability."""

from __future__ import annotations

from typing import Any

from specgrad.zoo._xp import namespace


def softmax_forward(x: Any, axis: int = -1) -> Any:
    xp = namespace(x)
    e = xp.exp(x - xp.max(x, axis=axis, keepdims=True))
    return e / xp.sum(e, axis=axis, keepdims=True)


def softmax_backward(g: Any, x: Any, axis: int = -1) -> Any:
    s = softmax_forward(x, axis)
    return s * (g - namespace(x).sum(g * s, axis=axis, keepdims=True))


def log_softmax_forward(x: Any, axis: int = -1) -> Any:
    xp = namespace(x)
    shifted = x - xp.max(x, axis=axis, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True))


def log_softmax_backward(g: Any, x: Any, axis: int = -1) -> Any:
    xp = namespace(x)
    return g - xp.exp(log_softmax_forward(x, axis)) * xp.sum(g, axis=axis, keepdims=True)
