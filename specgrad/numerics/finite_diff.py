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
    value = xp.empty(flat.size, dtype=xp.float64)
    noise = xp.empty(flat.size, dtype=xp.float64)
    for j in range(flat.size):
        orig = flat[j].copy()
        try:
            plus_x, plus = _evaluate_at(evaluate, flat, j, orig, +epsilon, xp)
            minus_x, minus = _evaluate_at(evaluate, flat, j, orig, -epsilon, xp)
        except Exception as exc:
            raise PerturbationError(j, exc) from exc
        finally:
            flat[j] = orig
        total, power = _contract(upstream, plus, minus, xp)
        step = plus_x - minus_x
        value[j] = total / step
        noise[j] = NOISE_SIGMAS * unit_roundoff * xp.sqrt(power) / step
    return NumericalGradient(value.reshape(x.shape), noise.reshape(x.shape))


def _evaluate_at(
    evaluate: Callable[[], Outputs], flat: Any, j: int, orig: Any, h: float, xp: ModuleType
) -> tuple[Any, list[Any]]:
    """Set flat[j] to orig + h rounded to the dtype (never equal to orig), then evaluate."""
    flat[j] = orig.astype(xp.float64) + h
    if flat[j] == orig:  # h is below half an ulp of x_j in this dtype: take one ulp
        flat[j] = xp.nextafter(orig, xp.asarray(xp.inf if h > 0 else -xp.inf, dtype=orig.dtype))
    moved = flat[j].astype(xp.float64)
    outputs = evaluate()
    return moved, [xp.asarray(o).astype(xp.float64) for o in outputs]


def _contract(
    upstream: Sequence[Any | None], plus: list[Any], minus: list[Any], xp: ModuleType
) -> tuple[Any, Any]:
    """sum_k <g_k, f_k(x+) - f_k(x-)>, and sum g^2 (f+^2 + f-^2) over the outputs that moved
    (an output that did not move differs by exactly 0 and adds no rounding noise)."""
    total = xp.zeros((), dtype=xp.float64)
    power = xp.zeros((), dtype=xp.float64)
    for g, fp, fm in zip(upstream, plus, minus, strict=True):
        if g is None:
            continue
        finite = xp.isfinite(fp) & xp.isfinite(fm)
        diff = xp.where(finite, fp, 0.0) - xp.where(finite, fm, 0.0)
        total = total + xp.sum(g * diff) + xp.where(finite.all(), 0.0, xp.nan)
        moved = diff != 0
        power = power + xp.sum(xp.where(moved, g * g * (fp * fp + fm * fm), 0.0))
    return total, power
