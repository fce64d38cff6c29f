"""2-D convolution (cross-correlation, NCHW), with stride and zero padding.

Forward is a sum over kernel offsets of one matmul each (the weights of that offset
times the strided window of the padded input: BLAS on numpy, cuBLAS on cupy), which copies
each window once and no more; backward is im2col (the windows stacked into columns, one
matmul for dw and one for the column gradients, scattered back with one strided add per
offset). Namespace generic.
"""

from __future__ import annotations

from typing import Any

from specgrad.zoo._xp import namespace


def _geometry(x: Any, w: Any, stride: int, padding: int) -> tuple[int, int]:
    oh = (x.shape[2] + 2 * padding - w.shape[2]) // stride + 1
    ow = (x.shape[3] + 2 * padding - w.shape[3]) // stride + 1
    return oh, ow


def _pad(x: Any, padding: int, xp: Any) -> Any:
    return xp.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))


def _windows(kh: int, kw: int, oh: int, ow: int, stride: int) -> list[tuple[slice, ...]]:
    return [
        (slice(None), slice(None), slice(i, i + stride * oh, stride), slice(j, j + stride * ow, stride))
        for i in range(kh)
        for j in range(kw)
    ]


def _columns(x: Any, w: Any, stride: int, padding: int, xp: Any) -> tuple[Any, int, int]:
    """[n, c * kh * kw, oh * ow] columns of the padded input, in w's (c, kh, kw) order."""
    oh, ow = _geometry(x, w, stride, padding)
    xpad = _pad(x, padding, xp)
    cols = xp.stack([xpad[win] for win in _windows(w.shape[2], w.shape[3], oh, ow, stride)], axis=2)
    return cols.reshape(x.shape[0], -1, oh * ow), oh, ow


def forward(x: Any, w: Any, b: Any, stride: int = 1, padding: int = 0) -> Any:
    xp = namespace(x, w, b)
    oh, ow = _geometry(x, w, stride, padding)
    xpad = _pad(x, padding, xp)
    n, c, k = x.shape[0], x.shape[1], w.shape[0]
    out = xp.zeros((n, k, oh * ow), dtype=x.dtype)
    for t, win in enumerate(_windows(w.shape[2], w.shape[3], oh, ow, stride)):
        i, j = divmod(t, w.shape[3])
        out += xp.matmul(w[:, :, i, j], xpad[win].reshape(n, c, oh * ow))
    return out.reshape(n, k, oh, ow) + b[None, :, None, None]


def backward(g: Any, x: Any, w: Any, b: Any, stride: int = 1, padding: int = 0) -> tuple[Any, Any, Any]:
    xp = namespace(x, w, b)
    cols, oh, ow = _columns(x, w, stride, padding, xp)
    n, k = x.shape[0], w.shape[0]
    g2 = g.reshape(n, k, oh * ow)
    dw = xp.matmul(g2, cols.transpose(0, 2, 1)).sum(axis=0).reshape(w.shape)
    dcols = xp.matmul(w.reshape(k, -1).T, g2).reshape(n, x.shape[1], -1, oh, ow)
    dxpad = xp.zeros_like(_pad(x, padding, xp))
    for t, win in enumerate(_windows(w.shape[2], w.shape[3], oh, ow, stride)):
        dxpad[win] += dcols[:, :, t]
    h, wd = x.shape[2], x.shape[3]
    dx = dxpad[:, :, padding : padding + h, padding : padding + wd]
    return dx, dw, xp.sum(g, axis=(0, 2, 3))
