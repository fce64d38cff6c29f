"""Elementwise comparison of an analytical gradient with a numerical one, in float64.

The bound per element is  atol + rtol * |n| + noise:  the spec's (or the dtype's default)
allclose tolerances plus the estimated rounding noise of that element's central difference
(see finite_diff), so a wide layer in float32 is not failed for the noise of its own
numerical gradient, and atol does not have to be inflated to cover it.

Runs in the arrays' namespace `xp`; only the figures (Python floats and ints) come back.
Non-finite elements are masked before any arithmetic and counted as violations.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

#: how many out-of-bound elements a comparison names (enough to refine a few stragglers)
VIOLATING_KEPT = 65


@dataclass(frozen=True, slots=True)
class Comparison:
    """Figures of one gradient comparison under |a - n| <= atol + rtol * |n| + noise."""

    passed: bool
    size: int
    violations: int
    max_abs_err: float
    max_rel_err: float  # max |a - n| / max(|a|, |n|), the CS231n metric
    worst_index: tuple[int, ...]  # the element that breaks its bound by the largest factor
    analytical: float
    numerical: float
    bound: float  # atol + rtol * |n| + noise at the worst element
    noise_floor: float  # largest estimated rounding noise of the numerical gradient
    max_abs_numerical: float = 0.0  # the gradient's scale, to judge the noise against
    violating: tuple[int, ...] = ()  # flat indices of out-of-bound elements (the first REFINE_MAX + 1)


def compare(
    analytical: Any, numerical: Any, noise: Any, rtol: float, atol: float, xp: ModuleType
) -> Comparison:
    a = xp.asarray(analytical).astype(xp.float64)
    n = xp.asarray(numerical).astype(xp.float64)
    finite = xp.isfinite(a) & xp.isfinite(n)
    a0, n0 = xp.where(finite, a, 0.0), xp.where(finite, n, 0.0)
    err = xp.abs(a0 - n0)
    noise0 = xp.where(xp.isfinite(noise), noise, 0.0)
    bound = atol + rtol * xp.abs(n0) + noise0
    denom = xp.maximum(xp.abs(a0), xp.abs(n0))
    rel = err / xp.where(denom > 0, denom, 1.0)
    # how many times its bound each element's error is; non-finite elements rank first
    ratio = xp.where(finite, err / xp.maximum(bound, 1e-300), xp.inf)
    ok = finite & (err <= bound)
    if a.size == 0:
        return Comparison(True, 0, 0, 0.0, 0.0, (), 0.0, 0.0, atol, 0.0)
    worst = int(xp.argmax(ratio))
    all_finite = bool(finite.all())
    return Comparison(
        passed=bool(ok.all()),
        size=int(a.size),
        violations=int(a.size - int(xp.count_nonzero(ok))),
        max_abs_err=float(xp.max(err)) if all_finite else float("inf"),
        max_rel_err=float(xp.max(rel)) if all_finite else float("inf"),
        worst_index=tuple(int(i) for i in xp.unravel_index(worst, a.shape)),
        analytical=float(a.reshape(-1)[worst]),
        numerical=float(n.reshape(-1)[worst]),
        bound=float(bound.reshape(-1)[worst]),
        noise_floor=float(xp.max(noise0)),
        max_abs_numerical=float(xp.max(xp.abs(n0))),
        violating=tuple(int(i) for i in xp.nonzero(~ok.reshape(-1))[0][:VIOLATING_KEPT].tolist()),
    )
