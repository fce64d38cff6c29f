"""Seeded input generation on the host (numpy), so every backend sees bit-identical values.

Values are drawn in float64 and then rounded to the tensor's dtype: a float32 and a float64
check of the same case see the same numbers up to that rounding. Each tensor draws from its
own stream keyed by (seed, tensor name), so adding a tensor never changes the others.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import numpy as np

from specgrad.model import Case, Fill, Spec, TensorSpec


def _rng(seed: int, *keys: str | int) -> np.random.Generator:
    words = [seed] + [zlib.crc32(k.encode()) if isinstance(k, str) else k for k in keys]
    return np.random.default_rng(np.random.SeedSequence(words))


def fill_array(fill: Fill, shape: tuple[int, ...], dtype: str, rng: np.random.Generator) -> np.ndarray:
    """One tensor's host values; float64 draws are rounded once to `dtype`."""
    size = int(np.prod(shape, dtype=np.int64))
    values: np.ndarray
    if fill.kind == "normal":
        values = rng.normal(fill.mean, fill.std, size)
    elif fill.kind == "uniform":
        values = rng.uniform(fill.low, fill.high, size)
    elif fill.kind == "integers":
        values = rng.integers(int(fill.low), int(fill.high), size)
    elif fill.kind in ("special", "constant"):
        values = np.resize(np.asarray(fill.values, dtype=np.float64), size)
    elif fill.kind == "npy":
        assert fill.path is not None
        loaded = np.load(fill.path, allow_pickle=False)
        if loaded.shape != shape:
            raise ValueError(f"{fill.path} has shape {list(loaded.shape)}, expected {list(shape)}")
        values = loaded.reshape(-1)
    else:  # pragma: no cover - the schema admits no other kind
        raise ValueError(f"unknown fill kind {fill.kind!r}")
    return np.array(values.reshape(shape), dtype=dtype, order="C")


def tensor_fill(tensor: TensorSpec, case: Case) -> Fill:
    return case.fills.get(tensor.name, tensor.fill)


def make_inputs(spec: Spec, case: Case, dtype: str, seed: int) -> dict[str, np.ndarray]:
    """Host arrays for every tensor of `spec` in `case`, in spec order."""
    return {
        t.name: fill_array(tensor_fill(t, case), t.shape, t.dtype_in(dtype), _rng(seed, t.name))
        for t in spec.tensors
    }


def make_upstream(shapes: Mapping[int, tuple[int, ...]], dtype: str, seed: int) -> dict[int, np.ndarray]:
    """Seeded upstream gradients g for the differentiable outputs, by output index."""
    return {
        i: fill_array(Fill("normal"), shape, dtype, _rng(seed, "<grad_out>", i))
        for i, shape in shapes.items()
    }
