"""Finite differences of L(x) = sum_k <f_k(x), g_k>, one element at a time, in place.

The perturbed tensor is the caller's own array: each element is moved to x_j + h_j, then
x_j - h_j, then restored, so no per-element copy of the tensor is made. The step scales
with the element: h_j = epsilon * max(|x_j|, 1), so a large input is not differentiated
with a step below its own resolution. Arithmetic, all in the array namespace `xp` of the
tensor (numpy or cupy), so nothing leaves the device:
- forward runs in the tensors' dtypes;
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

Besides the derivative, every element keeps its two one-sided derivatives (they disagree
at a kink), the size of the terms its VJP sums (sum_i |g_i df_i/dx_j|, what cancellation
in the analytical gradient scales with) and how many outputs it moved (the accumulation
length of that sum): the figures the error model of the comparison is made of.
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

    value: Any  # the (uneven-step) central difference
    noise: Any  # estimated rounding noise of each element (see NOISE_SIGMAS)
    plus: Any  # one-sided derivative from x_j + h
    minus: Any  # one-sided derivative from x_j - h
    terms: Any  # sum_i |g_i (f_i(x+) - f_i(x-))| / (a + b): the size of the VJP's terms
    fanout: Any  # how many outputs the element moved: the length of its VJP's sum
    low: Any = None  # sum_i min(g_i f_i'(x+), g_i f_i'(x-)) over one-sided slopes per output
    high: Any = None  # the same with max: each output may take either side at its own kink


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
    indices: Sequence[int] | None = None,
    per_output: bool = False,
    model_terms: bool = True,
) -> NumericalGradient:
    """Numerical VJP dL/dx; `upstream[k]` is g_k as a float64 `xp` array, or None to skip f_k.

    `evaluate()` runs forward on the current contents of `x` (and the other, fixed tensors).
    With `indices`, only those flat elements are differenced and the arrays are flat, in
    that order (a refinement at another step, or a sample of a large tensor). `per_output`
    also sums each output's smaller and larger one-sided slope (`low`, `high`: what a kink's
    admissible interval is made of), two more reductions per output and element;
    `model_terms=False` leaves `terms` and `fanout` at zero where no error model reads them
    (the analytical rounding is measured instead), two fewer.
    """
    with warnings.catch_warnings():
        # a non-finite output makes inf - inf = nan: that element's value is reported as nan
        warnings.simplefilter("ignore", RuntimeWarning)
        stencil = _Stencil(evaluate, x, upstream, unit_roundoff, xp, per_output, model_terms)
        picks = range(stencil.flat.size) if indices is None else indices
        parts = [stencil.at(j, epsilon) for j in picks]
        shape = x.shape if indices is None else (len(parts),)
        return stencil.gradient(parts, shape)


def joint_sides(
    evaluate: Callable[[], Outputs],
    x: Any,
    indices: Sequence[int],
    upstream: Sequence[Any | None],
    epsilon: float,
    unit_roundoff: float,
    xp: ModuleType,
) -> tuple[float, float, float]:
    """(D+, D-, noise): the one-sided derivatives of L along the direction that moves every
    flat element in `indices` together by the same step. Where single elements have kinks
    (max-pool ties), moving them together can be smooth: that is how a tie whose gradient
    is counted twice shows, although each element alone lies between its one-sided limits."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        stencil = _Stencil(evaluate, x, upstream, unit_roundoff, xp)
        return stencil.joint(list(indices), epsilon)


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
        per_output: bool = False,
        model_terms: bool = True,
    ) -> None:
        self.evaluate, self.x, self.u, self.xp = evaluate, x, unit_roundoff, xp
        self.per_output, self.model_terms = per_output, model_terms
        self.flat = x.reshape(-1)
        # a bounds check: cupy's exact shares_memory lists every element's address
        if self.flat.size and not xp.may_share_memory(self.flat, x):
            raise ValueError("central_difference needs a contiguous tensor it can perturb in place")
        self.active = [(k, g, g * g) for k, g in enumerate(upstream) if g is not None]
        try:
            self.base = _outputs64(evaluate(), self.active, xp)
        except (Exception, SystemExit) as exc:  # user code
            raise PerturbationError(None, exc) from exc
        # each output's rounding power, g^2 (f+^2 + f-^2) taken at the case's point: 2 g^2 f0^2
        # (they differ at O(h)), flat
        self.weights = [
            (2 * g2 * f0 * f0).reshape(-1) for (_, _, g2), f0 in zip(self.active, self.base, strict=True)
        ]
        # an element that moved no output at all may still have moved them by less than
        # their resolution: its noise is that of every output
        self.resolution = sum((xp.sum(w) for w in self.weights), 0.0)
        self.buffers = [xp.empty(int(w.size), dtype=xp.float64) for w in self.weights]

    def at(self, j: int, epsilon: float) -> tuple[Any, ...]:
        """(up, down, a, b, power, terms, fanout) at flat element j with the step epsilon
        scaled to the element's magnitude."""
        orig = self.flat[j].copy()
        h = epsilon * max(abs(float(orig)), 1.0)
        try:
            a, plus = _evaluate_at(self.evaluate, self.flat, j, orig, +h, self.active, self.xp)
            b, minus = _evaluate_at(self.evaluate, self.flat, j, orig, -h, self.active, self.xp)
        except (Exception, SystemExit) as exc:  # user code: attributed to the element
            raise PerturbationError(j, exc) from exc
        finally:
            self.flat[j] = orig
        parts = _contract(
            self.active,
            self.base,
            self.weights,
            plus,
            minus,
            a,
            b,
            self.xp,
            self.per_output,
            self.model_terms,
            self.buffers,
        )
        return (*parts, a, b)

    def joint(self, indices: list[int], epsilon: float) -> tuple[float, float, float]:
        xp = self.xp
        orig = self.flat[indices].copy()
        h = epsilon * max(float(xp.max(xp.abs(orig.astype(xp.float64)))), 1.0)
        try:
            a, plus = _evaluate_at(self.evaluate, self.flat, indices, orig, +h, self.active, xp)
            b, minus = _evaluate_at(self.evaluate, self.flat, indices, orig, -h, self.active, xp)
        except (Exception, SystemExit) as exc:
            raise PerturbationError(indices[0], exc) from exc
        finally:
            self.flat[indices] = orig
        a, b = float(xp.mean(a)), float(xp.mean(b))
        up, down, power, *_ = _contract(self.active, self.base, self.weights, plus, minus, a, b, xp)
        noise = float(self.noise(power, (a + b) / 2))
        return float(up) / a, float(down) / b, noise

    def noise(self, power: Any, steps: Any) -> Any:
        xp = self.xp
        power = xp.asarray(power)  # a Python 0.0 where no output moved: cupy.where needs an array
        return NOISE_SIGMAS * self.u * xp.sqrt(xp.where(power > 0, power, self.resolution)) / steps

    def gradient(self, parts: list[tuple[Any, ...]], shape: tuple[int, ...]) -> NumericalGradient:
        xp = self.xp
        sums = (
            xp.stack([xp.asarray(p[i], dtype=xp.float64) for p in parts]).reshape(shape)
            if parts
            else xp.zeros(shape, dtype=xp.float64)
            for i in range(9)
        )
        return self.from_sums(*sums)

    def from_sums(
        self, up: Any, down: Any, power: Any, terms: Any, fanout: Any, low: Any, high: Any, a: Any, b: Any
    ) -> NumericalGradient:
        """The gradient from per-element sums over outputs (`_contract`) and steps taken."""
        xp = self.xp
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            plus, minus = up / xp.where(a > 0, a, 1.0), down / xp.where(b > 0, b, 1.0)
            value = (up * (b / a) + down * (a / b)) / (a + b) if up.size else up
            steps = xp.where(a + b > 0, a + b, 1.0)
            noise = self.noise(power, steps)
            return NumericalGradient(value, noise, plus, minus, terms / steps, fanout, low, high)


def _evaluate_at(
    evaluate: Callable[[], Outputs],
    flat: Any,
    j: int | list[int],
    orig: Any,
    h: float,
    active: Active,
    xp: ModuleType,
) -> tuple[Any, list[Any]]:
    """Set flat[j] to orig + h rounded to the dtype (never equal to orig) and evaluate;
    returns |step taken| in float64 and the differentiated outputs as float64 copies.
    `h` is a float or, for several elements, an array of steps of one sign."""
    if isinstance(j, int):  # one element: host floats, none of the array machinery
        start = float(orig)
        flat[j] = start + h
        if flat[j] == orig:  # h is below half an ulp of x_j in this dtype: take one ulp
            flat[j] = xp.nextafter(orig, xp.asarray(xp.inf if h > 0 else -xp.inf, dtype=orig.dtype))
        return abs(float(flat[j]) - start), _outputs64(evaluate(), active, xp)
    flat[j], step = stepped(orig, h, xp)
    return step, _outputs64(evaluate(), active, xp)


def stepped(orig: Any, h: Any, xp: ModuleType) -> tuple[Any, Any]:
    """(orig + h rounded to orig's dtype, never equal to orig; |step taken| in float64).
    Elementwise throughout, with no read-back: on a GPU a test of `stuck` would wait for
    the device once per group."""
    values = (orig.astype(xp.float64) + h).astype(orig.dtype)
    stuck = values == orig  # h is below half an ulp of x_j in this dtype: take one ulp
    toward = xp.where(xp.asarray(h) > 0, xp.inf, -xp.inf).astype(orig.dtype)
    values = xp.where(stuck, xp.nextafter(orig, toward), values)
    return values, xp.abs(values.astype(xp.float64) - orig.astype(xp.float64))


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
    active: Active,
    base: list[Any],
    weights: list[Any],
    plus: list[Any],
    minus: list[Any],
    a: Any,
    b: Any,
    xp: ModuleType,
    per_output: bool = False,
    model_terms: bool = True,
    buffers: list[Any] | None = None,
) -> tuple[Any, ...]:
    """<g, f+ - f0>, <g, f0 - f->, the rounding power of the outputs that moved (`weights`:
    2 g^2 f0^2 per output; an output that did not move differs by exactly 0 and adds no
    rounding noise), sum |g (f+ - f-)|, how many outputs moved, and the sums over outputs
    of the smaller and the larger of each output's two one-sided slopes (times g).
    Contractions are dot products over a reused buffer (`buffers`, one per output): a pass
    over the outputs each, no temporaries."""
    up, down, power, terms, fanout, low, high = 0.0, 0.0, 0.0, 0.0, 0, 0.0, 0.0
    for k, ((_, g, _), f0, w, fp, fm) in enumerate(zip(active, base, weights, plus, minus, strict=True)):
        gf, f0f, fpf, fmf = g.reshape(-1), f0.reshape(-1), fp.reshape(-1), fm.reshape(-1)
        buf = buffers[k] if buffers is not None else xp.empty(gf.size, dtype=xp.float64)
        up = up + xp.dot(gf, xp.subtract(fpf, f0f, out=buf))
        down = down + xp.dot(gf, xp.subtract(f0f, fmf, out=buf))
        power = power + xp.dot(w, xp.not_equal(fpf, fmf, out=buf))
        if model_terms:
            fanout = fanout + xp.sum(buf)
            terms = terms + xp.sum(xp.abs(gf * (fpf - fmf)))
        if per_output:
            right, left = gf * (fpf - f0f), gf * (f0f - fmf)
            low = low + xp.sum(xp.minimum(right / a, left / b))
            high = high + xp.sum(xp.maximum(right / a, left / b))
    return up, down, power, terms, fanout, low, high
