"""Losses returning a scalar: softmax cross-entropy with integer labels, mean squared error."""

from __future__ import annotations

from typing import Any

from specgrad.zoo._xp import namespace


def _one_hot(labels: Any, classes: int, dtype: Any) -> Any:
    xp = namespace(labels)
    return (labels[:, None] == xp.arange(classes)[None, :]).astype(dtype)


def cross_entropy_forward(logits: Any, labels: Any) -> Any:
    """mean_n( logsumexp(logits_n) - logits_n[label_n] )."""
    xp = namespace(logits)
    shifted = logits - xp.max(logits, axis=1, keepdims=True)
    log_z = xp.log(xp.sum(xp.exp(shifted), axis=1))
    picked = xp.sum(shifted * _one_hot(labels, logits.shape[1], logits.dtype), axis=1)
    return xp.mean(log_z - picked)


def cross_entropy_backward(g: Any, logits: Any, labels: Any) -> Any:
    xp = namespace(logits)
    e = xp.exp(logits - xp.max(logits, axis=1, keepdims=True))
    p = e / xp.sum(e, axis=1, keepdims=True)
    return (p - _one_hot(labels, logits.shape[1], logits.dtype)) * (g / logits.shape[0])


def mse_forward(pred: Any, target: Any) -> Any:
    d = pred - target
    return namespace(pred).mean(d * d)


def mse_backward(g: Any, pred: Any, target: Any) -> tuple[Any, Any]:
    dpred = (pred - target) * (2 * g / pred.size)
    return dpred, -dpred
