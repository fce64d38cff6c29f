"""The zoo's layers in jax, for the shared specs under specs/frameworks (`framework: jax`).

Most use jax's own derivative rules (`backward: autograd`). Layer norm carries a
hand-written `jax.custom_vjp` rule, as a jax team would for a fused kernel: the gradient
checks test that rule. Imported only when a spec uses it.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp


def linear(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    return x @ w.T + b


def conv2d(x: jax.Array, w: jax.Array, b: jax.Array, stride: int = 1, padding: int = 0) -> jax.Array:
    out = jax.lax.conv_general_dilated(
        x,
        w,
        window_strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        dimension_numbers=("NCHW", "OIHW", "NCHW"),
        precision=jax.lax.Precision.HIGHEST,
    )
    return out + b[None, :, None, None]


def relu(x: jax.Array) -> jax.Array:
    return jax.nn.relu(x)


def softmax(x: jax.Array, axis: int = -1) -> jax.Array:
    return jax.nn.softmax(x, axis=axis)


def _normalise(x: jax.Array, eps: float) -> tuple[jax.Array, jax.Array]:
    mu = x.mean(-1, keepdims=True)
    inv = 1 / jnp.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)
    return (x - mu) * inv, inv


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _layernorm(x: jax.Array, gamma: jax.Array, beta: jax.Array, eps: float) -> jax.Array:
    return _normalise(x, eps)[0] * gamma + beta


def _layernorm_forward(x: jax.Array, gamma: jax.Array, beta: jax.Array, eps: float) -> tuple[jax.Array, Any]:
    xhat, inv = _normalise(x, eps)
    return xhat * gamma + beta, (xhat, inv, gamma)


def _layernorm_backward(eps: float, saved: Any, g: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    xhat, inv, gamma = saved
    dxhat = g * gamma
    m = xhat.shape[-1]
    dx = inv / m * (m * dxhat - dxhat.sum(-1, keepdims=True) - xhat * (dxhat * xhat).sum(-1, keepdims=True))
    lead = tuple(range(g.ndim - 1))
    return dx, (g * xhat).sum(lead), g.sum(lead)


_layernorm.defvjp(_layernorm_forward, _layernorm_backward)


def layernorm(x: jax.Array, gamma: jax.Array, beta: jax.Array, eps: float = 1e-5) -> jax.Array:
    return _layernorm(x, gamma, beta, eps)


def batchnorm(x: jax.Array, gamma: jax.Array, beta: jax.Array, eps: float = 1e-5) -> jax.Array:
    mu = x.mean((0, 2, 3), keepdims=True)
    var = ((x - mu) ** 2).mean((0, 2, 3), keepdims=True)
    return (x - mu) / jnp.sqrt(var + eps) * gamma[None, :, None, None] + beta[None, :, None, None]


def attention(q: jax.Array, k: jax.Array, v: jax.Array, causal: bool = False) -> jax.Array:
    scores = q @ jnp.swapaxes(k, -1, -2) * (1.0 / math.sqrt(q.shape[-1]))
    if causal:
        tq, tk = scores.shape[-2], scores.shape[-1]
        allowed = jnp.arange(tk)[None, :] <= jnp.arange(tq)[:, None] + (tk - tq)
        scores = jnp.where(allowed, scores, -jnp.inf)
    return jax.nn.softmax(scores, axis=-1) @ v


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(logp, labels[:, None], axis=-1).mean()
