"""Elementwise comparison of an analytical gradient with a numerical one, in float64.

Each element has its own bound (the error model of `tolerance`) and, at a kink, an
interval [lo, hi] between its one-sided derivatives instead of a single value: its error
is the distance of the analytical value from that interval. The figures report how much
of its bound the worst element used (the check's margin), so a pass at 90% of the bound
reads differently from one at 0.1%.

Runs in the arrays' namespace `xp`; only the figures (Python floats and ints) come back.
Non-finite elements are masked before any arithmetic and counted as violations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

#: how many out-of-bound elements a comparison names (the first ones, for refinement)
VIOLATING_KEPT = 4096


def times_over(ratio: float) -> str:
    """How far over its bound an error is, for a message ("12.3x over")."""
    return f"{ratio:.3g}x over" if math.isfinite(ratio) else "not finite"


@dataclass(frozen=True, slots=True)
class Comparison:
    """Figures of one gradient comparison under |a - n| <= bound."""

    passed: bool
    size: int
    violations: int
    max_abs_err: float
    max_rel_err: float  # max |a - n| / max(|a|, |n|), the CS231n metric
    worst_index: tuple[int, ...]  # the element that used the largest share of its bound
    analytical: float
    numerical: float
    bound: float  # the bound at the worst element
    noise_floor: float  # largest estimated rounding noise of the numerical gradient
    max_abs_numerical: float = 0.0  # the gradient's scale, to judge the noise against
    worst_ratio: float = 0.0  # error / bound at the worst element: < 1 inside, > 1 outside
    violating: tuple[int, ...] = ()  # flat indices of out-of-bound elements (the first VIOLATING_KEPT)

    @property
    def margin(self) -> float:
        """How many times its error the worst element's bound is (inf: no error at all)."""
        return float("inf") if self.worst_ratio == 0 else 1.0 / self.worst_ratio


def compare(
    analytical: Any,
    numerical: Any,
    noise: Any,
    bound: Any,
    xp: ModuleType,
    interval: tuple[Any, Any] | None = None,
) -> Comparison:
    """`bound` per element (broadcastable); `interval` (lo, hi) replaces `numerical` as the
    admissible set where given (lo == hi == numerical on smooth elements)."""
    a = xp.asarray(analytical).astype(xp.float64)
    n = xp.asarray(numerical).astype(xp.float64)
    if a.size == 0:
        return Comparison(True, 0, 0, 0.0, 0.0, (), 0.0, 0.0, 0.0, 0.0)
    lo, hi = (n, n) if interval is None else interval
    finite = xp.isfinite(a) & xp.isfinite(lo) & xp.isfinite(hi)
    a0, n0 = xp.where(finite, a, 0.0), xp.where(xp.isfinite(n), n, 0.0)
    lo0, hi0 = xp.where(finite, lo, 0.0), xp.where(finite, hi, 0.0)
    err = xp.maximum(xp.maximum(lo0 - a0, a0 - hi0), 0.0)
    bound = xp.broadcast_to(xp.asarray(bound, dtype=xp.float64), a.shape)
    plain = xp.abs(a0 - n0)
    denom = xp.maximum(xp.abs(a0), xp.abs(n0))
    rel = plain / xp.where(denom > 0, denom, 1.0)
    # how many times its bound each element's error is; non-finite elements rank first
    ratio = xp.where(finite, err / xp.maximum(bound, 1e-300), xp.inf)
    ok = finite & (err <= bound)
    worst = int(xp.argmax(ratio))
    all_finite = bool(finite.all())
    noise0 = xp.where(xp.isfinite(noise), noise, 0.0)
    return Comparison(
        passed=bool(ok.all()),
        size=int(a.size),
        violations=int(a.size - int(xp.count_nonzero(ok))),
        max_abs_err=float(xp.max(plain)) if all_finite else float("inf"),
        max_rel_err=float(xp.max(rel)) if all_finite else float("inf"),
        # on the host: cupy's unravel_index takes device arrays, not Python ints
        worst_index=tuple(int(i) for i in np.unravel_index(worst, a.shape)),
        analytical=float(a.reshape(-1)[worst]),
        numerical=float(n.reshape(-1)[worst]),
        bound=float(bound.reshape(-1)[worst]),
        noise_floor=float(xp.max(noise0)),
        max_abs_numerical=float(xp.max(xp.abs(n0))),
        worst_ratio=float(ratio.reshape(-1)[worst]),
        violating=tuple(int(i) for i in xp.nonzero(~ok.reshape(-1))[0][:VIOLATING_KEPT].tolist()),
    )
