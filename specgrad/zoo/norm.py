"""Layer normalisation (over the last axis) and batch normalisation (training mode, NCHW)."""

from __future__ import annotations

from typing import Any

from specgrad.zoo._xp import namespace


def _normalise(x: Any, axes: tuple[int, ...], eps: float) -> tuple[Any, Any]:
    xp = namespace(x)
    mu = xp.mean(x, axis=axes, keepdims=True)
    var = xp.mean((x - mu) ** 2, axis=axes, keepdims=True)
    inv = 1 / xp.sqrt(var + eps)
    return (x - mu) * inv, inv


def _normalise_backward(dxhat: Any, xhat: Any, inv: Any, axes: tuple[int, ...]) -> Any:
    """dx of xhat = (x - mean) / sqrt(var + eps) over `axes`, given dL/dxhat."""
    xp = namespace(dxhat)
    m = 1
    for a in axes:
        m *= xhat.shape[a]
    s1 = xp.sum(dxhat, axis=axes, keepdims=True)
    s2 = xp.sum(dxhat * xhat, axis=axes, keepdims=True)
    return inv / m * (m * dxhat - s1 - xhat * s2)


def layernorm_forward(x: Any, gamma: Any, beta: Any, eps: float = 1e-5) -> Any:
    xhat, _ = _normalise(x, (-1,), eps)
    return xhat * gamma + beta


def layernorm_backward(g: Any, x: Any, gamma: Any, beta: Any, eps: float = 1e-5) -> tuple[Any, Any, Any]:
    xp = namespace(x)
    xhat, inv = _normalise(x, (-1,), eps)
    lead = tuple(range(x.ndim - 1))
    dx = _normalise_backward(g * gamma, xhat, inv, (-1,))
    return dx, xp.sum(g * xhat, axis=lead), xp.sum(g, axis=lead)


_BN_AXES = (0, 2, 3)


def _channel(v: Any) -> Any:
    return v[None, :, None, None]


def batchnorm_forward(x: Any, gamma: Any, beta: Any, eps: float = 1e-5) -> Any:
    xhat, _ = _normalise(x, _BN_AXES, eps)
    return xhat * _channel(gamma) + _channel(beta)


def batchnorm_backward(g: Any, x: Any, gamma: Any, beta: Any, eps: float = 1e-5) -> tuple[Any, Any, Any]:
    xp = namespace(x)
    xhat, inv = _normalise(x, _BN_AXES, eps)
    dx = _normalise_backward(g * _channel(gamma), xhat, inv, _BN_AXES)
    return dx, xp.sum(g * xhat, axis=_BN_AXES), xp.sum(g, axis=_BN_AXES)
