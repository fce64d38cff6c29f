"""Deliberately wrong backward passes, one classic mistake each. Every one must be caught,
and the failing check must name the tensor whose gradient is wrong (tests/e2e/test_buggy.py).
Each reuses the zoo's forward, so only the backward is under test."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from specgrad.zoo import activations, attention, norm, pool, softmax
from specgrad.zoo._xp import namespace


def linear_dw_missing_transpose(g: Any, x: Any, w: Any, b: Any) -> tuple[Any, Any, Any]:
    """dW = x^T g instead of g^T x: the right shape only because W is square."""
    return g @ w, x.T @ g, g.sum(axis=0)


def linear_bias_wrong_axis(g: Any, x: Any, w: Any, b: Any) -> tuple[Any, Any, Any]:
    """Bias gradient summed over the feature axis instead of the batch axis (N == out)."""
    return g @ w, g.T @ x, g.sum(axis=1)


def sigmoid_sign_error(g: Any, x: Any) -> Any:
    s = activations.sigmoid_forward(x)
    return -g * s * (1 - s)


def attention_missing_scale(g: Any, q: Any, k: Any, v: Any, causal: bool = False) -> tuple[Any, Any, Any]:
    """Forgets the 1/sqrt(d) of the scores in backward: dq and dk off by sqrt(d), dv right."""
    xp = namespace(q)
    p = attention._probabilities(q, k, causal)
    dv = xp.swapaxes(p, -1, -2) @ g
    dp = g @ xp.swapaxes(v, -1, -2)
    ds = p * (dp - xp.sum(dp * p, axis=-1, keepdims=True))
    return ds @ k, xp.swapaxes(ds, -1, -2) @ q, dv


def conv_wrong_at_borders(g: Any, x: Any, w: Any, b: Any, stride: int = 1, padding: int = 0) -> Any:
    """Drops the input gradient in the one-pixel border (as if padding were cropped twice)."""
    from specgrad.zoo import conv

    dx, dw, db = conv.backward(g, x, w, b, stride=stride, padding=padding)
    dx = dx.copy()
    dx[:, :, 0, :] = 0
    dx[:, :, -1, :] = 0
    dx[:, :, :, 0] = 0
    dx[:, :, :, -1] = 0
    return dx, dw, db


def layernorm_dgamma_uses_x(g: Any, x: Any, gamma: Any, beta: Any, eps: float = 1e-5) -> tuple[Any, Any, Any]:
    """dgamma from the raw input instead of the normalised one: only gamma is wrong."""
    dx, _, dbeta = norm.layernorm_backward(g, x, gamma, beta, eps)
    return dx, (g * x).sum(axis=0), dbeta


def batchnorm_stats_as_constants(
    g: Any, x: Any, gamma: Any, beta: Any, eps: float = 1e-5
) -> tuple[Any, Any, Any]:
    """Treats the batch mean and variance as constants: dx = g * gamma / sigma."""
    _, dgamma, dbeta = norm.batchnorm_backward(g, x, gamma, beta, eps)
    var = x.var(axis=(0, 2, 3), keepdims=True)
    return g * gamma[None, :, None, None] / np.sqrt(var + eps), dgamma, dbeta


def softmax_missing_sum_term(g: Any, x: Any, axis: int = -1) -> Any:
    return softmax.softmax_forward(x, axis) * g


def cross_entropy_missing_batch_mean(g: Any, logits: Any, labels: Any) -> Any:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    one_hot = (labels[:, None] == np.arange(logits.shape[1])[None, :]).astype(logits.dtype)
    return (p - one_hot) * g


def maxpool_routes_to_window_corner(g: Any, x: Any, kernel: int = 2, stride: int | None = None) -> Any:
    """Sends each window's gradient to its top-left element instead of its maximum."""
    s = stride or kernel
    dx = np.zeros_like(x)
    dx[:, :, ::s, ::s][:, :, : g.shape[2], : g.shape[3]] = g
    return dx


def embedding_last_write_wins(g: Any, indices: Any, weight: Any) -> Any:
    """Assigns instead of accumulating: a row looked up twice keeps one gradient."""
    dw = np.zeros_like(weight)
    dw[indices.reshape(-1)] = g.reshape(-1, weight.shape[1])
    return dw


def tanh_derivative_not_squared(g: Any, x: Any) -> Any:
    return g * (1 - np.tanh(x))


def gelu_missing_cubic_factor(g: Any, x: Any) -> Any:
    c, k = math.sqrt(2 / math.pi), 0.044715
    t = np.tanh(c * (x + k * x**3))
    return g * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + k * x * x))


def avgpool_divides_by_kernel_not_area(g: Any, x: Any, kernel: int = 2, stride: int | None = None) -> Any:
    return pool.avgpool2d_backward(g, x, kernel, stride) * kernel


def dropout_forgets_scale(g: Any, x: Any, mask: Any, p: float = 0.5) -> Any:
    return g * mask


def log_softmax_elementwise_sum(g: Any, x: Any, axis: int = -1) -> Any:
    return g - np.exp(softmax.log_softmax_forward(x, axis)) * g


def batchnorm_cached_swapped_affine(g: Any, cache: Any) -> tuple[Any, Any, Any]:
    """dgamma and dbeta returned in each other's place."""
    from specgrad.zoo import cached

    dx, dgamma, dbeta = cached.batchnorm_backward(g, cache)
    return dx, dbeta, dgamma


class DenseBiasMean:
    """Layer object whose bias gradient averages over the batch instead of summing."""

    def __init__(self, in_features: int, out_features: int) -> None:
        from specgrad.zoo.layers import Dense

        self.inner = Dense(in_features, out_features)

    @property
    def parameters(self) -> dict[str, Any]:
        return self.inner.parameters

    @property
    def gradients(self) -> dict[str, Any]:
        return self.inner.gradients

    def forward(self, x: Any) -> Any:
        return self.inner.forward(x)

    def backward(self, g: Any) -> Any:
        dx = self.inner.backward(g)
        self.inner.gradients["b"] = g.mean(axis=0)
        return dx


def mse_missing_factor_two(g: Any, pred: Any, target: Any) -> tuple[Any, Any]:
    """Forgets the 2 of d(x^2)/dx, in both gradients."""
    d = (pred - target) * (g / pred.size)
    return d, -d


def relu_gradient_at_negatives(g: Any, x: Any) -> Any:
    """Passes the gradient where x < 0 too (mask from the wrong side)."""
    return np.where(x < 0, g, 0 * g)
