"""The numpy team's swish dense layer: forward and a hand-written backward."""

import numpy as np


def forward(x, w, b):
    z = x @ w.T + b
    return z / (1 + np.exp(-z))


def backward(g, x, w, b):
    z = x @ w.T + b
    s = 1 / (1 + np.exp(-z))
    dz = g * (s + z * s * (1 - s))
    return dz @ w, dz.T @ x, dz.sum(axis=0)
