"""Batch normalisation in the cached convention: forward returns (out, cache),
backward(grad_out, cache) reads everything it needs from the cache."""

from __future__ import annotations

from typing import Any

from specgrad.zoo._xp import namespace
from specgrad.zoo.norm import _channel, _normalise, _normalise_backward

_AXES = (0, 2, 3)


def batchnorm_forward(x: Any, gamma: Any, beta: Any, eps: float = 1e-5) -> tuple[Any, Any]:
    xhat, inv = _normalise(x, _AXES, eps)
    return xhat * _channel(gamma) + _channel(beta), (xhat, inv, gamma)


def batchnorm_backward(g: Any, cache: tuple[Any, Any, Any]) -> tuple[Any, Any, Any]:
    xhat, inv, gamma = cache
    xp = namespace(g)
    dx = _normalise_backward(g * _channel(gamma), xhat, inv, _AXES)
    return dx, xp.sum(g * xhat, axis=_AXES), xp.sum(g, axis=_AXES)
