"""The Taylor test: a verdict on the gradient that needs no finite-difference step.

Along a seeded direction d, the residual

    r(h) = |L(x + h d) - L(x) - <grad, h d>|

shrinks like h^2 when grad is right and only like h when it is wrong (the first-order
term h <grad - true grad, d> survives). Over a ladder of steps h, 2^-1 h, ... the observed
order log2(r(h) / r(h/2)) is read off where the residuals stand above their rounding floor:
the evaluations' own rounding and the analytical gradient's (a float16 gradient is only
first-order right to its precision). No epsilon decides anything: a step that is too
small for the dtype just falls below the floor.

The steps actually taken (x + h d rounded to the tensor's dtype, minus x, in float64) are
what <grad, .> is taken with, so low-precision tensors need no special care. L is a sum of
<f_k, g_k> in float64; `xp` is the tensors' namespace.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

#: steps of the ladder: the first one (relative to max(|x|, 1)) per precision of the
#: evaluations, halved LADDER - 1 times
FIRST_STEP = {"float64": 2.0**-6, "float32": 2.0**-4, "float16": 2.0**-2}
LADDER = 6

#: an order at or above this is second order (the rest is first order or worse)
SECOND_ORDER = 1.5


@dataclass(frozen=True, slots=True)
class TaylorResult:
    steps: tuple[float, ...]
    residuals: tuple[float, ...]
    floors: tuple[float, ...]  # rounding floor of each residual
    order: float | None  # the order at the finest pair above the floor; None: all at the floor
    smooth: bool  # False: L itself has a kink along d (its second difference is first order)

    @property
    def second_order(self) -> bool:
        return self.order is None or self.order >= SECOND_ORDER

    def describe(self) -> str:
        pairs = ", ".join(f"{h:.2g}: {r:.2g}" for h, r in zip(self.steps, self.residuals, strict=True))
        if self.order is None:
            return f"Taylor residuals stay at their rounding floor (h: residual {pairs})"
        if not math.isfinite(self.order):
            return f"Taylor residuals are not finite numbers (h: residual {pairs})"
        return f"Taylor residuals shrink at order {self.order:.2f} (h: residual {pairs})"


def taylor_test(
    loss: Callable[[Mapping[str, Any]], tuple[float, float]],
    tensors: Mapping[str, Any],
    directions: Mapping[str, Any],
    analytical: Mapping[str, Any],
    precision: str,
    analytical_error: float,
    xp: ModuleType,
) -> TaylorResult:
    """`loss(tensors)` -> (L, its rounding noise) in float64; `directions[name]` (float64,
    shaped like the tensor) is d for each tensor moved, `analytical[name]` its gradient.
    `analytical_error` bounds |<grad - exact grad, d>| from the gradient's own precision."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        base, noise = loss(tensors)
        steps, residuals, floors, second_diffs = [], [], [], []
        h = FIRST_STEP[precision]
        for _ in range(LADDER):
            plus, taken = _moved(tensors, directions, h, xp)
            minus, _ = _moved(tensors, directions, -h, xp)
            l_plus, n_plus = loss(plus)
            l_minus, n_minus = loss(minus)
            slope = sum(
                float(xp.sum(xp.asarray(analytical[n]).astype(xp.float64) * taken[n])) for n in directions
            )
            residuals.append(abs(l_plus - base - slope))
            second_diffs.append(abs(l_plus + l_minus - 2 * base))
            floors.append(8 * (noise + n_plus + n_minus) + h * analytical_error)
            steps.append(h)
            h /= 2
    return TaylorResult(
        tuple(steps),
        tuple(residuals),
        tuple(floors),
        _order(residuals, floors),
        _smooth(second_diffs, residuals, floors),
    )


def _smooth(second: Sequence[float], residuals: Sequence[float], floors: Sequence[float]) -> bool:
    """False where L has a kink along d: its second difference L(x+hd) + L(x-hd) - 2 L(x)
    then shrinks at first order (smooth: second) and is as large as the residual itself
    (a wrong gradient on a smooth L leaves a second difference far below its residual)."""
    s1, s2, r2 = second[-2], second[-1], residuals[-1]
    if not (s2 > floors[-1] and s2 > 0.1 * r2 and s1 > 0):
        return True
    return math.log2(s1 / s2) >= SECOND_ORDER


def _order(values: Sequence[float], floors: Sequence[float]) -> float | None:
    """The order the values shrink at, read two ways over the steps where they stand above
    4x their floors: the least-squares slope of log2(value) against the step index, and the
    larger of the two finest pairs' own orders. The larger reading is returned, so first
    order needs both to agree: where the h^2 and h^3 terms of a right gradient's residual
    cancel near one step, single pairs read low but the fit does not, and a wrong gradient
    reads first order both ways. None when the finest value is at its floor (exact to
    rounding at the smallest step: what larger steps saw was curvature or a kink they
    crossed) or too few steps stand above it; NaN when a value is not finite (a backward
    returning NaN is no second-order anything)."""
    if not all(math.isfinite(v) for v in values):
        return math.nan
    above = [k for k in range(len(values)) if values[k] > 4 * floors[k]]
    if len(above) < 3 or above[-1] != len(values) - 1:
        return None
    logs = [math.log2(values[k]) for k in above]
    mean_k, mean_v = sum(above) / len(above), sum(logs) / len(logs)
    slope = -sum((k - mean_k) * (v - mean_v) for k, v in zip(above, logs, strict=True)) / sum(
        (k - mean_k) ** 2 for k in above
    )
    pairs = [logs[i] - logs[i + 1] for i in range(len(above) - 1) if above[i + 1] == above[i] + 1][-2:]
    return max([slope, *pairs])


def _moved(
    tensors: Mapping[str, Any], directions: Mapping[str, Any], h: float, xp: ModuleType
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Copies with x + h d (rounded to each tensor's dtype) and the steps taken, in float64."""
    moved, taken = dict(tensors), {}
    for name, d in directions.items():
        x = tensors[name]
        x64 = x.astype(xp.float64)
        moved[name] = (x64 + h * d).astype(x.dtype)
        taken[name] = moved[name].astype(xp.float64) - x64
    return moved, taken
