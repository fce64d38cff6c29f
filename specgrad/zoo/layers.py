"""A layer object in the style of from-scratch libraries: parameters created lazily on the
first forward and kept in dicts, caches pushed per forward, gradients accumulated (+=)
across backward calls. The spec dense_layer.yaml tells specgrad where everything lives."""

from __future__ import annotations

from typing import Any

import numpy

from specgrad.zoo._xp import namespace


class Dense:
    def __init__(self, in_features: int, out_features: int, seed: int = 0) -> None:
        self.in_features, self.out_features, self.seed = in_features, out_features, seed
        self.parameters: dict[str, Any] = {}
        self.gradients: dict[str, Any] = {}
        self._inputs: list[Any] = []

    def forward(self, x: Any) -> Any:
        xp = namespace(x)
        if "W" not in self.parameters:
            rng = numpy.random.default_rng(self.seed)
            scale = 1.0 / numpy.sqrt(self.in_features)
            w = rng.normal(0.0, scale, (self.in_features, self.out_features))
            self.parameters["W"] = xp.asarray(w, dtype=x.dtype)
            self.parameters["b"] = xp.zeros(self.out_features, dtype=x.dtype)
        self._inputs.append(x)
        return x @ self.parameters["W"] + self.parameters["b"]

    def backward(self, grad_out: Any) -> Any:
        xp = namespace(grad_out)
        x = self._inputs.pop()
        for name, grad in (("W", x.T @ grad_out), ("b", xp.sum(grad_out, axis=0))):
            self.gradients[name] = self.gradients[name] + grad if name in self.gradients else grad
        return grad_out @ self.parameters["W"].T
