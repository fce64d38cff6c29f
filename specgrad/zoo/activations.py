"""Elementwise activations: relu, leaky_relu, sigmoid, tanh, gelu (tanh approximation)."""

from __future__ import annotations

import math
from typing import Any

from specgrad.zoo._xp import namespace


def relu_forward(x: Any) -> Any:
    xp = namespace(x)
    return xp.where(x > 0, x, xp.zeros_like(x))


def relu_backward(g: Any, x: Any) -> Any:
    xp = namespace(x)
    return xp.where(x > 0, g, xp.zeros_like(g))


def leaky_relu_forward(x: Any, negative_slope: float = 0.01) -> Any:
    xp = namespace(x)
    return xp.where(x > 0, x, x * negative_slope)


def leaky_relu_backward(g: Any, x: Any, negative_slope: float = 0.01) -> Any:
    xp = namespace(x)
    return xp.where(x > 0, g, g * negative_slope)


def sigmoid_forward(x: Any) -> Any:
    xp = namespace(x)
    e = xp.exp(-xp.abs(x))  # never overflows, for either sign of x
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


def sigmoid_backward(g: Any, x: Any) -> Any:
    s = sigmoid_forward(x)
    return g * s * (1 - s)


def tanh_forward(x: Any) -> Any:
    return namespace(x).tanh(x)


def tanh_backward(g: Any, x: Any) -> Any:
    y = namespace(x).tanh(x)
    return g * (1 - y * y)


_C = math.sqrt(2.0 / math.pi)
_K = 0.044715


def gelu_forward(x: Any) -> Any:
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    t = namespace(x).tanh(_C * (x + _K * x * x * x))
    return 0.5 * x * (1 + t)


def gelu_backward(g: Any, x: Any) -> Any:
    t = namespace(x).tanh(_C * (x + _K * x * x * x))
    return g * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _C * (1 + 3 * _K * x * x))


def tanh_double_backward(v: Any, g: Any, x: Any) -> tuple[Any, Any]:
    """Gradients of <tanh_backward(g, x), v> = sum v g (1 - y^2) for x and g."""
    y = namespace(x).tanh(x)
    d = 1 - y * y
    return -2 * v * g * y * d, v * d
