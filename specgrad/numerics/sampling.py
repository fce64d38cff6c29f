"""Which elements of a large tensor an element-wise check looks at, and the seeded
directions of a directional one. Host-side (numpy) so every backend sees the same."""

from __future__ import annotations

import itertools

import numpy as np

from specgrad.numerics.inputs import stream

#: directions get components of at least this size (before normalising): a Gaussian
#: direction can all but miss the few elements a mostly-zero Jacobian depends on
COMPONENT_FLOOR = 0.5


def stratified(shape: tuple[int, ...], n: int, seed: int, name: str) -> tuple[int, ...] | None:
    """At most `n` flat indices of a tensor of `shape`, or None when it has no more than n
    elements (all are checked: a bias is never skipped). The tensor's corners (every index
    at 0 or its last value: where border and padding bugs show) come first, then one
    seeded index from each of the equal strata the rest of the flat range is cut into, so
    every region of the tensor is looked at."""
    size = int(np.prod(shape, dtype=np.int64))
    if size <= n:
        return None
    corners = sorted(
        {int(np.ravel_multi_index(c, shape)) for c in itertools.product(*[(0, s - 1) for s in shape])}
    )[: max(n // 4, 1)]
    rng = stream(seed, "<sample>", name)
    strata = n - len(corners)
    edges = np.linspace(0, size, strata + 1).astype(np.int64) if strata else np.zeros(1, np.int64)
    picks = [int(rng.integers(lo, hi)) for lo, hi in itertools.pairwise(edges) if hi > lo]
    chosen = set(corners) | set(picks)
    return tuple(sorted(chosen))


def directions(shape: tuple[int, ...], k: int, seed: int, name: str) -> np.ndarray:
    """k seeded directions (float64, [k, *shape]) with random signs and components of size
    COMPONENT_FLOOR to COMPONENT_FLOOR + 1 (one uniform draw each: the directions of a
    large tensor cost less than its forward), scaled to a root-mean-square of one."""
    rng = stream(seed, "<directional>", name)
    s = 2.0 * rng.random((k, *shape)) - 1.0
    u = np.copysign(COMPONENT_FLOOR + np.abs(s), s)
    rms = np.sqrt(np.mean(u.reshape(k, -1) ** 2, axis=1)).reshape((k,) + (1,) * len(shape))
    return u / np.where(rms > 0, rms, 1.0)


def direction(seed: int, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A seeded standard-normal direction for tensor `name` (float64): the Taylor test's."""
    return stream(seed, "<direction>", name).normal(0.0, 1.0, shape)
