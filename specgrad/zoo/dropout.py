"""Inverted dropout with a fixed mask (an input), so the layer is deterministic to check."""

from __future__ import annotations

from typing import Any


def forward(x: Any, mask: Any, p: float = 0.5) -> Any:
    return x * mask * (1.0 / (1.0 - p))


def backward(g: Any, x: Any, mask: Any, p: float = 0.5) -> Any:
    return g * mask * (1.0 / (1.0 - p))
