"""Fully connected layer  y = x w^T + b,  w of shape [out, in] (torch layout)."""

from __future__ import annotations

from typing import Any

from specgrad.zoo._xp import namespace


def forward(x: Any, w: Any, b: Any) -> Any:
    return x @ w.T + b


def backward(g: Any, x: Any, w: Any, b: Any) -> tuple[Any, Any, Any]:
    xp = namespace(x, w)
    x2 = x.reshape(-1, x.shape[-1])
    g2 = g.reshape(-1, g.shape[-1])
    return g @ w, g2.T @ x2, xp.sum(g2, axis=0)


def double_backward(v: Any, g: Any, x: Any, w: Any, b: Any) -> tuple[Any, Any, Any, Any]:
    """Gradients of <backward(g, x, w, b), (vx, vw, vb)> for x, w, b and g: the input and
    weight gradients are bilinear in g, so each is the other cotangent pushed through."""
    vx, vw, vb = v
    xp = namespace(x, w)
    return (
        g @ vw,
        g.reshape(-1, g.shape[-1]).T @ vx.reshape(-1, vx.shape[-1]),
        xp.zeros_like(b),
        (vx @ w.T + x @ vw.T + vb),
    )
