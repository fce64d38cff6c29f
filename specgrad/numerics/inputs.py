"""Seeded input generation on the host (numpy), so every backend sees bit-identical values.

Values are drawn in float64 and then rounded to the tensor's dtype: a float32 and a float64
check of the same case see the same numbers up to that rounding. Each tensor draws from its
own stream keyed by (seed, tensor name), so adding a tensor never changes the others.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import numpy as np

from specgrad.model import TAIL_SHARE, Case, Fill, Spec, TensorSpec


def stream(seed: int, *keys: str | int) -> np.random.Generator:
    """The random stream keyed by (seed, keys): every consumer (a tensor's fill, the upstream
    gradient, a sample, a direction) has its own, so adding one never shifts the others."""
    words = [seed] + [zlib.crc32(k.encode()) if isinstance(k, str) else k for k in keys]
    return np.random.default_rng(np.random.SeedSequence(words))


def fill_array(fill: Fill, shape: tuple[int, ...], dtype: str, rng: np.random.Generator) -> np.ndarray:
    """One tensor's host values; float64 draws are rounded once to `dtype`."""
    size = int(np.prod(shape, dtype=np.int64))
    values: np.ndarray
    if fill.kind == "normal":
        values = rng.normal(fill.mean, fill.std, size)
    elif fill.kind == "uniform":
        values = _uniform(fill, size, rng)
    elif fill.kind == "integers":
        values = _integers(int(fill.low), int(fill.high), size, rng)
    elif fill.kind in ("special", "constant"):
        values = np.resize(np.asarray(fill.values, dtype=np.float64), size)
        if fill.shuffle:  # fewer elements than values: a seeded choice of them, not the first
            pool = np.resize(np.asarray(fill.values, dtype=np.float64), max(size, len(fill.values)))
            values = rng.permutation(pool)[:size]
    elif fill.kind == "npy":
        assert fill.path is not None
        loaded = np.load(fill.path, allow_pickle=False)
        if loaded.shape != shape:
            raise ValueError(f"{fill.path} has shape {list(loaded.shape)}, expected {list(shape)}")
        values = loaded.reshape(-1)
    else:  # pragma: no cover - the schema admits no other kind
        raise ValueError(f"unknown fill kind {fill.kind!r}")
    return np.array(values.reshape(shape), dtype=dtype, order="C")


def _uniform(fill: Fill, size: int, rng: np.random.Generator) -> np.ndarray:
    if not fill.tails:
        return rng.uniform(fill.low, fill.high, size)
    width = (fill.high - fill.low) * TAIL_SHARE
    offset = rng.uniform(0.0, width, size)
    return np.where(rng.random(size) < 0.5, fill.low + offset, fill.high - offset)


def _integers(low: int, high: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Seeded draws from [low, high) that include both ends and a repeated value wherever
    the size allows: an index bug at the last row or in accumulating repeated rows (an
    embedding's scatter) is missed by inputs that never reach it."""
    values = rng.integers(low, high, size)
    if size < 2 or high - low < 2:
        return values
    at = rng.permutation(size)
    values[at[:2]] = (low, high - 1)
    if size >= 3 and len(np.unique(values)) == size:
        values[at[2]] = low
    return values


def tensor_fill(tensor: TensorSpec, case: Case) -> Fill:
    return case.fills.get(tensor.name, tensor.fill)


def make_inputs(spec: Spec, case: Case, dtype: str, seed: int) -> dict[str, np.ndarray]:
    """Host arrays for every tensor of `spec` in `case`, in spec order."""
    return {
        t.name: fill_array(tensor_fill(t, case), t.shape, t.dtype_in(dtype), stream(seed, t.name))
        for t in spec.tensors
    }


def make_upstream(shapes: Mapping[int, tuple[int, ...]], dtype: str, seed: int) -> dict[int, np.ndarray]:
    """Seeded upstream gradients g for the differentiable outputs, by output index."""
    return {
        i: fill_array(Fill("normal"), shape, dtype, stream(seed, "<grad_out>", i))
        for i, shape in shapes.items()
    }
