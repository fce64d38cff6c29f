"""Central differences of L(x) = sum_k <f_k(x), g_k>, one element at a time, in place.

The perturbed tensor is the caller's own array: each element is moved to x_j + h, then
x_j - h, then restored, so no per-element copy of the tensor is made. Arithmetic, all in
the array namespace `xp` of the tensor (numpy or cupy), so nothing leaves the device:
- forward runs in the tensor's dtype (the check's dtype);
- the perturbed values x_j +/- h are rounded to that dtype, and the step actually taken,
  (x_j + h) - (x_j - h), is recomputed in float64 from the stored values, so the
  representation error of h never enters the quotient;
- output differences f(x+) - f(x-) are taken in float64 per output element and only then
  contracted with g (float64), so the large common part of L never cancels in low precision.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

Outputs = Sequence[Any]

#: Each output f_i carries a rounding error of up to u |f_i|; independent errors make the
#: error of sum_i g_i (f_i(x+) - f_i(x-)) about u sqrt(sum g^2 (f+^2 + f-^2)) / sqrt(3)
#: (one standard deviation for single roundings). The estimate is 4 of those
#: sqrt(3)-scaled units (~7 sigma), which leaves room for outputs a few ulps off.
NOISE_SIGMAS = 4.0


@dataclass(frozen=True, slots=True)
class NumericalGradient:
    """float64 arrays (in `xp`) shaped like the tensor."""

    value: Any
    noise: Any  # estimated rounding noise of each element (see NOISE_SIGMAS)


class PerturbationError(Exception):
    """forward raised at a perturbed point; carries the flat element index."""

    def __init__(self, index: int, cause: BaseException) -> None:
        self.index, self.cause = index, cause
        super().__init__(f"forward raised at element {index}: {cause!r}")


def central_difference(
    evaluate: Callable[[], Outputs],
    x: Any,
    upstream: Sequence[Any | None],
    epsilon: float,
    unit_roundoff: float,
    xp: ModuleType,
) -> NumericalGradient:
    """Numerical VJP dL/dx; `upstream[k]` is g_k as a float64 `xp` array, or None to skip f_k.

    `evaluate()` runs forward on the current contents of `x` (and the other, fixed tensors).
    """
    flat = x.reshape(-1)
    if flat.size and not xp.shares_memory(flat, x):
        raise ValueError("central_difference needs a contiguous tensor it can perturb in place")
    active = [(k, g, g * g) for k, g in enumerate(upstream) if g is not None]
    value = xp.empty(flat.size, dtype=xp.float64)
    noise = xp.empty(flat.size, dtype=xp.float64)
    with warnings.catch_warnings():
        # a non-finite output makes inf - inf = nan: that element's value is reported as nan
        warnings.simplefilter("ignore", RuntimeWarning)
        for j in range(flat.size):
            orig = flat[j].copy()
            try:
                plus_x, plus = _evaluate_at(evaluate, flat, j, orig, +epsilon, xp)
                minus_x, minus = _evaluate_at(evaluate, flat, j, orig, -epsilon, xp)
            except (Exception, SystemExit) as exc:  # user code: attributed to the element
                raise PerturbationError(j, exc) from exc
            finally:
                flat[j] = orig
            total, power = _contract(active, plus, minus, xp)
            step = plus_x - minus_x
            value[j] = total / step
            noise[j] = NOISE_SIGMAS * unit_roundoff * xp.sqrt(power) / step
    return NumericalGradient(value.reshape(x.shape), noise.reshape(x.shape))


def _evaluate_at(
    evaluate: Callable[[], Outputs], flat: Any, j: int, orig: Any, h: float, xp: ModuleType
) -> tuple[Any, Outputs]:
    """Set flat[j] to orig + h rounded to the dtype (never equal to orig), then evaluate."""
    flat[j] = orig.astype(xp.float64) + h
    if flat[j] == orig:  # h is below half an ulp of x_j in this dtype: take one ulp
        flat[j] = xp.nextafter(orig, xp.asarray(xp.inf if h > 0 else -xp.inf, dtype=orig.dtype))
    moved = flat[j].astype(xp.float64)
    return moved, evaluate()


def _contract(
    active: Sequence[tuple[int, Any, Any]], plus: Outputs, minus: Outputs, xp: ModuleType
) -> tuple[Any, Any]:
    """sum_k <g_k, f_k(x+) - f_k(x-)> and sum g^2 (f+^2 + f-^2) over the outputs that moved
    (an output that did not move differs by exactly 0 and adds no rounding noise), in float64."""
    total, power = 0.0, 0.0
    for k, g, g2 in active:
        fp = xp.asarray(plus[k]).astype(xp.float64)
        fm = xp.asarray(minus[k]).astype(xp.float64)
        diff = fp - fm
        total = total + xp.sum(g * diff)
        power = power + xp.sum(g2 * (fp * fp + fm * fm) * (diff != 0))
    return total, power
