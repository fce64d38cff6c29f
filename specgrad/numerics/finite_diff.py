"""Finite differences of L(x) = sum_k <f_k(x), g_k>, one element at a time, in place.

The perturbed tensor is the caller's own array: each element is moved to x_j + h, then
x_j - h, then restored, so no per-element copy of the tensor is made. Arithmetic, all in
the array namespace `xp` of the tensor (numpy or cupy), so nothing leaves the device:
- forward runs in the tensors' dtypes (the check's dtype);
- the perturbed values are rounded to the tensor's dtype, and the steps actually taken,
  a = (x_j + h) - x_j and b = x_j - (x_j - h), are recomputed in float64 from the stored
  values, so the representation error of h never enters the quotient;
- the derivative is the three-point formula for uneven steps,
      D = (b/a * <g, f(x+) - f(x)> + a/b * <g, f(x) - f(x-)>) / (a + b),
  which is the central difference when a = b and stays second-order accurate when
  rounding makes the steps uneven (a step of one ulp at a power of two, say);
- output differences are taken in float64 per output element, copied the moment forward
  returns (a forward that returns a view of its input cannot alias the differences), and
  only then contracted with g (float64): the large common part of L never cancels.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

Outputs = Sequence[Any]
Active = Sequence[tuple[int, Any, Any]]  # (output index, g, g^2) for the differentiated outputs

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


class InconsistentOutput(Exception):
    """forward's outputs at a perturbed point do not match those at the case's point."""


class PerturbationError(Exception):
    """forward failed at a perturbed point; `index` is the flat element (None: unperturbed)."""

    def __init__(self, index: int | None, cause: BaseException) -> None:
        self.index, self.cause = index, cause
        super().__init__(f"forward failed at element {index}: {cause!r}")


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
    with warnings.catch_warnings():
        # a non-finite output makes inf - inf = nan: that element's value is reported as nan
        warnings.simplefilter("ignore", RuntimeWarning)
        stencil = _Stencil(evaluate, x, upstream, unit_roundoff, xp)
        parts = [stencil.at(j, epsilon) for j in range(stencil.flat.size)]
        return stencil.gradient(parts)


def richardson(
    evaluate: Callable[[], Outputs],
    x: Any,
    indices: Sequence[int],
    upstream: Sequence[Any | None],
    epsilon: float,
    unit_roundoff: float,
    xp: ModuleType,
) -> tuple[list[float], list[float]]:
    """(values, noise) at the flat `indices`, Richardson-extrapolated from steps h and h/2:
    (4 D(h/2) - D(h)) / 3 cancels the h^2 truncation term. For elements whose curvature
    makes the plain difference too coarse (log or 1/x near 0, steep saturations); costs four
    more forward calls per element, so it is spent only where a check would fail."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        stencil = _Stencil(evaluate, x, upstream, unit_roundoff, xp)
        values, noise = [], []
        for j in indices:
            (d1, p1, s1), (d2, p2, s2) = stencil.at(j, epsilon), stencil.at(j, epsilon / 2)
            values.append(float((4 * d2 - d1) / 3))
            n1, n2 = stencil.noise(p1, s1), stencil.noise(p2, s2)
            noise.append(float((4 * n2 + n1) / 3))
        return values, noise


class _Stencil:
    """The fixed part of one tensor's differences: its flat view, the differentiated
    outputs' g, and the outputs at the case's point."""

    def __init__(
        self,
        evaluate: Callable[[], Outputs],
        x: Any,
        upstream: Sequence[Any | None],
        unit_roundoff: float,
        xp: ModuleType,
    ) -> None:
        self.evaluate, self.x, self.u, self.xp = evaluate, x, unit_roundoff, xp
        self.flat = x.reshape(-1)
        if self.flat.size and not xp.shares_memory(self.flat, x):
            raise ValueError("central_difference needs a contiguous tensor it can perturb in place")
        self.active = [(k, g, g * g) for k, g in enumerate(upstream) if g is not None]
        try:
            self.base = _outputs64(evaluate(), self.active, xp)
        except (Exception, SystemExit) as exc:  # user code
            raise PerturbationError(None, exc) from exc
        # an element that moved no output at all may still have moved them by less than
        # their resolution: its noise is that of every output
        self.resolution = sum(
            (xp.sum(g2 * 2 * f0 * f0) for (_, _, g2), f0 in zip(self.active, self.base, strict=True)), 0.0
        )

    def at(self, j: int, h: float) -> tuple[Any, Any, Any]:
        """(derivative, noise power, a + b) at flat element j with nominal step h."""
        orig = self.flat[j].copy()
        try:
            a, plus = _evaluate_at(self.evaluate, self.flat, j, orig, +h, self.active, self.base, self.xp)
            b, minus = _evaluate_at(self.evaluate, self.flat, j, orig, -h, self.active, self.base, self.xp)
        except (Exception, SystemExit) as exc:  # user code: attributed to the element
            raise PerturbationError(j, exc) from exc
        finally:
            self.flat[j] = orig
        value, power = _contract(self.active, self.base, plus, minus, a, b, self.xp)
        return value, power, a + b

    def noise(self, power: Any, steps: Any) -> Any:
        xp = self.xp
        return NOISE_SIGMAS * self.u * xp.sqrt(xp.where(power > 0, power, self.resolution)) / steps

    def gradient(self, parts: list[tuple[Any, Any, Any]]) -> NumericalGradient:
        xp = self.xp
        value, power, steps = (
            xp.stack([xp.asarray(p[i], dtype=xp.float64) for p in parts]).reshape(self.x.shape)
            for i in range(3)
        )
        return NumericalGradient(value, self.noise(power, steps))


def _evaluate_at(
    evaluate: Callable[[], Outputs],
    flat: Any,
    j: int,
    orig: Any,
    h: float,
    active: Active,
    base: list[Any] | None,
    xp: ModuleType,
) -> tuple[Any, list[Any]]:
    """Set flat[j] to orig + h rounded to the dtype (never equal to orig) and evaluate;
    returns |step taken| in float64 and the differentiated outputs as float64 copies."""
    flat[j] = orig.astype(xp.float64) + h
    if flat[j] == orig:  # h is below half an ulp of x_j in this dtype: take one ulp
        flat[j] = xp.nextafter(orig, xp.asarray(xp.inf if h > 0 else -xp.inf, dtype=orig.dtype))
    step = xp.abs(flat[j].astype(xp.float64) - orig.astype(xp.float64))
    return step, _outputs64(evaluate(), active, xp)


def _outputs64(outputs: Outputs, active: Active, xp: ModuleType) -> list[Any]:
    """float64 copies of the differentiated outputs, checked against the case's outputs."""
    out = []
    for k, g, _ in active:
        if k >= len(outputs) or not hasattr(outputs[k], "shape"):
            raise InconsistentOutput(
                f"forward returned {len(outputs)} output(s), output {k} "
                f"{'missing' if k >= len(outputs) else 'not an array'}"
            )
        o = xp.asarray(outputs[k]).astype(xp.float64)  # astype copies: no aliasing
        if tuple(o.shape) != tuple(g.shape):
            raise InconsistentOutput(
                f"output {k} has shape {tuple(o.shape)} here but {tuple(g.shape)} at the case's point"
            )
        out.append(o)
    return out


def _contract(
    active: Active, base: list[Any], plus: list[Any], minus: list[Any], a: Any, b: Any, xp: ModuleType
) -> tuple[Any, Any]:
    """The uneven-step derivative of L, and sum g^2 (f+^2 + f-^2) over the outputs that
    moved (an output that did not move differs by exactly 0 and adds no rounding noise)."""
    up, down, power = 0.0, 0.0, 0.0
    for (_, g, g2), f0, fp, fm in zip(active, base, plus, minus, strict=True):
        up = up + xp.sum(g * (fp - f0))
        down = down + xp.sum(g * (f0 - fm))
        power = power + xp.sum(g2 * (fp * fp + fm * fm) * (fp != fm))
    return (up * (b / a) + down * (a / b)) / (a + b), power
