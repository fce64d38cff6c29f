"""The torch team's fused swish dense layer: a custom autograd.Function.

Planted bug: the fused kernel uses the "fast" swish, z * sigmoid(1.702 z) (GELU's sigmoid
approximation, mixed up with swish), and its backward is the exact derivative of that
wrong forward. Its own gradient check passes; only comparing with the numpy team's
implementation on the same inputs shows it. Set SWISH_BETA = 1.0 to fix it.
"""

import torch

SWISH_BETA = 1.702


class SwishDense(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b):
        z = x @ w.T + b
        s = torch.sigmoid(SWISH_BETA * z)
        ctx.save_for_backward(x, w, z, s)
        return z * s

    @staticmethod
    def backward(ctx, g):
        x, w, z, s = ctx.saved_tensors
        dz = g * (s + SWISH_BETA * z * s * (1 - s))
        return dz @ w, dz.T @ x, dz.sum(0)


def swish_dense(x, w, b):
    return SwishDense.apply(x, w, b)
