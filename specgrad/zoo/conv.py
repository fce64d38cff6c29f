"""2-D convolution (cross-correlation, NCHW), with stride and zero padding.

Written as a sum over kernel offsets of strided slices, which needs neither im2col nor a
scatter-add, so it stays namespace generic (numpy and cupy alike).
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


def forward(x: Any, w: Any, b: Any, stride: int = 1, padding: int = 0) -> Any:
    xp = namespace(x, w, b)
    oh, ow = _geometry(x, w, stride, padding)
    xpad = _pad(x, padding, xp)
    out = xp.zeros((x.shape[0], w.shape[0], oh, ow), dtype=x.dtype)
    for i in range(w.shape[2]):
        for j in range(w.shape[3]):
            patch = xpad[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride]
            out += xp.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return out + b[None, :, None, None]


def backward(g: Any, x: Any, w: Any, b: Any, stride: int = 1, padding: int = 0) -> tuple[Any, Any, Any]:
    xp = namespace(x, w, b)
    oh, ow = _geometry(x, w, stride, padding)
    xpad = _pad(x, padding, xp)
    dxpad = xp.zeros_like(xpad)
    dw = xp.zeros_like(w)
    for i in range(w.shape[2]):
        for j in range(w.shape[3]):
            window = (
                slice(None),
                slice(None),
                slice(i, i + stride * oh, stride),
                slice(j, j + stride * ow, stride),
            )
            dw[:, :, i, j] = xp.einsum("nohw,nchw->oc", g, xpad[window])
            dxpad[window] += xp.einsum("nohw,oc->nchw", g, w[:, :, i, j])
    h, wd = x.shape[2], x.shape[3]
    dx = dxpad[:, :, padding : padding + h, padding : padding + wd]
    return dx, dw, xp.sum(g, axis=(0, 2, 3))
