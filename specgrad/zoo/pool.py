"""Max and average pooling over 2-D windows (NCHW), any kernel and stride."""

from __future__ import annotations

from typing import Any

from specgrad.zoo._xp import namespace


def _offsets(kernel: int, stride: int, x: Any) -> tuple[int, int, list[tuple[slice, ...]]]:
    oh = (x.shape[2] - kernel) // stride + 1
    ow = (x.shape[3] - kernel) // stride + 1
    windows: list[tuple[slice, ...]] = [
        (slice(None), slice(None), slice(i, i + stride * oh, stride), slice(j, j + stride * ow, stride))
        for i in range(kernel)
        for j in range(kernel)
    ]
    return oh, ow, windows


def _stack(x: Any, kernel: int, stride: int) -> tuple[Any, list[tuple[slice, ...]]]:
    xp = namespace(x)
    _, _, windows = _offsets(kernel, stride, x)
    return xp.stack([x[w] for w in windows], axis=-1), windows


def maxpool2d_forward(x: Any, kernel: int = 2, stride: int | None = None) -> Any:
    xp = namespace(x)
    stacked, _ = _stack(x, kernel, stride or kernel)
    return xp.max(stacked, axis=-1)


def maxpool2d_backward(g: Any, x: Any, kernel: int = 2, stride: int | None = None) -> Any:
    """The gradient goes to the first maximum of each window (a valid subgradient at ties)."""
    xp = namespace(x)
    stacked, windows = _stack(x, kernel, stride or kernel)
    winner = xp.argmax(stacked, axis=-1)
    dx = xp.zeros_like(x)
    for k, w in enumerate(windows):
        dx[w] += xp.where(winner == k, g, 0).astype(x.dtype)
    return dx


def avgpool2d_forward(x: Any, kernel: int = 2, stride: int | None = None) -> Any:
    xp = namespace(x)
    stacked, _ = _stack(x, kernel, stride or kernel)
    return xp.mean(stacked, axis=-1)


def avgpool2d_backward(g: Any, x: Any, kernel: int = 2, stride: int | None = None) -> Any:
    xp = namespace(x)
    _, _, windows = _offsets(kernel, stride or kernel, x)
    dx = xp.zeros_like(x)
    share = g / (kernel * kernel)
    for w in windows:
        dx[w] += share
    return dx
