"""The element-wise gradient check of one tensor: differences, bound, verdict.

The differences are taken along the tensor's route (`routes`: the float64 oracle or the
precision forward resolves it at). The bound is the error model of `numerics.tolerance`,
with the analytical gradient's rounding also measured against float64 (`measured_rounding`).
Elements out of bound, and elements whose one-sided derivatives disagree, are looked at
again at a finer step: curvature gets a Richardson estimate, kinks get the interval
between their one-sided derivatives and the spec's kink rule (`kinks:`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any

import numpy as np

from specgrad.compile import CasePlan
from specgrad.numerics.compare import Comparison, compare, times_over
from specgrad.numerics.finite_diff import NumericalGradient, central_difference, joint_sides
from specgrad.numerics.tolerance import ANALYTICAL_SIGMAS, UNIT_ROUNDOFF, Tolerance
from specgrad.results import Evidence
from specgrad.routes import Forward, Route


def numerical_gradient(
    name: str,
    route: Route,
    plan: CasePlan,
    forward: Forward,
    upstream64: Sequence[Any | None],
    xp: ModuleType,
    indices: Sequence[int] | None = None,
    model_terms: bool = True,
) -> NumericalGradient:
    """Perturb `name` along its route: the step and the noise are those of the precision
    forward resolves it at. With `indices` (a sample), only those flat elements, as flat
    arrays in that order; `model_terms` as in `central_difference`. (`structured` takes
    them group by group.)"""
    tensors = route.tensors
    return central_difference(
        lambda: forward(tensors),
        tensors[name],
        upstream64,
        plan.spec.tolerances[route.dtype].epsilon,
        UNIT_ROUNDOFF[route.dtype],
        xp,
        indices,
        model_terms=model_terms,
    )


@dataclass(frozen=True, slots=True)
class Estimate:
    """The numerical side of a verdict: the differences, and where elements were looked at
    again, their refined values and the kinks found among them.

    Lists of elements (kinks, and what callers pass in) are flat indices of the tensor;
    the arrays hold either every element or, with `indices`, the sampled ones in order."""

    numerical: NumericalGradient
    lo: Any  # admissible interval per element: lo == hi == value except at kinks
    hi: Any
    kinks: tuple[int, ...] = ()
    indices: tuple[int, ...] | None = None  # the sampled flat indices (None: every element)

    def positions(self, elements: Sequence[int]) -> list[int]:
        """Where the tensor's flat `elements` sit in the arrays."""
        if self.indices is None:
            return list(elements)
        at = {j: p for p, j in enumerate(self.indices)}
        return [at[j] for j in elements]

    def elements(self, positions: Sequence[int]) -> list[int]:
        return list(positions) if self.indices is None else [self.indices[p] for p in positions]

    def subset(self, array: Any, xp: ModuleType) -> Any:
        """The compared part of a tensor-shaped array."""
        return array if self.indices is None else array.reshape(-1)[xp.asarray(self.indices)]


def plain(numerical: NumericalGradient, indices: tuple[int, ...] | None = None) -> Estimate:
    return Estimate(numerical, numerical.value, numerical.value, indices=indices)


#: an element whose one-sided derivatives differ by more than this share of their mean
#: size is examined as a possible kink even where it passes (|x| at 0 passes with a
#: central difference of 0): a smooth element would need a curvature length under 10 h
KINK_SUSPECT = 0.1


def kink_candidates(estimate: Estimate, b: Bound, xp: ModuleType) -> list[int]:
    """Flat indices whose one-sided derivatives disagree well beyond their noise and slack."""
    numerical = estimate.numerical
    plus, minus = numerical.plus.reshape(-1), numerical.minus.reshape(-1)
    gap = xp.abs(plus - minus)
    size = (xp.abs(plus) + xp.abs(minus)) / 2
    slack = xp.broadcast_to(b.slack, numerical.value.shape).reshape(-1)
    suspect = (gap > KINK_SUSPECT * size + 16 * numerical.noise.reshape(-1) + slack) & xp.isfinite(gap)
    return estimate.elements([int(i) for i in xp.nonzero(suspect)[0].tolist()])


#: elements are re-examined in chunks of this size; a chunk in which not one element turns
#: out to be curvature or a kink stops the search (a wrong backward is wrong everywhere)
REFINE_CHUNK = 256

#: one-sided derivatives at h/4 that still differ by more than this share of their
#: difference at h do not converge: the element sits on a kink (smooth: 1/4)
KINK_RATIO = 0.5


def refine(
    name: str,
    route: Route,
    plan: CasePlan,
    forward: Forward,
    upstream64: Sequence[Any | None],
    estimate: Estimate,
    violating: Sequence[int],
    b: Bound,
    xp: ModuleType,
) -> Estimate:
    """Re-examine out-of-bound elements at the step h/4.

    Smooth elements get a better value: Richardson's (16 D(h/4) - D(h)) / 15, which cancels
    the h^2 truncation term (log or 1/x near 0, steep saturations), or D(h/4) alone where
    the step h straddled a kink nearby (its one-sided differences did not shrink fourfold).
    Elements whose one-sided derivatives still differ at h/4, by as much as at h and by more
    than their noise and the numerical part of the bound `b`, are kinks:
    their admissible values become the interval between the one-sided derivatives."""
    tensors = route.tensors
    epsilon = plan.spec.tolerances[route.dtype].epsilon / 4
    num = estimate.numerical
    value, noise = num.value.copy(), num.noise.copy()
    lo, hi = estimate.lo.copy(), estimate.hi.copy()
    flat = {k: a.reshape(-1) for k, a in (("value", value), ("noise", noise), ("lo", lo), ("hi", hi))}
    kinks = list(estimate.kinks)
    for start in range(0, len(violating), REFINE_CHUNK):
        chunk = list(violating[start : start + REFINE_CHUNK])
        u = UNIT_ROUNDOFF[route.dtype]
        fine = central_difference(
            lambda: forward(tensors),
            tensors[name],
            upstream64,
            epsilon,
            u,
            xp,
            chunk,
            per_output=True,
            model_terms=False,
        )
        idx = xp.asarray(estimate.positions(chunk))
        d1, n1 = num.value.reshape(-1)[idx], num.noise.reshape(-1)[idx]
        gap1 = xp.abs(num.plus.reshape(-1)[idx] - num.minus.reshape(-1)[idx])
        gap2 = xp.abs(fine.plus - fine.minus)
        # each output may take either one-sided slope at its own kink (CReLU's two relus of
        # one input): the admissible values are the sums of per-output choices
        sides_lo = xp.minimum(xp.minimum(fine.plus, fine.minus), fine.low)
        sides_hi = xp.maximum(xp.maximum(fine.plus, fine.minus), fine.high)
        slack = xp.broadcast_to(b.slack, num.value.shape).reshape(-1)[idx]
        significant = gap2 > 8 * fine.noise + slack
        kink = significant & (gap2 > KINK_RATIO * gap1)
        converging = (gap1 > 2 * gap2) & (gap1 < 8 * gap2 + 8 * n1)  # truncation shrinks 16x: h^2
        better = xp.where(converging, (16 * fine.value - d1) / 15, fine.value)
        better_noise = xp.where(converging, (16 * fine.noise + n1) / 15, fine.noise)
        flat["value"][idx] = better
        flat["noise"][idx] = better_noise
        flat["lo"][idx] = xp.where(kink, sides_lo, better)
        flat["hi"][idx] = xp.where(kink, sides_hi, better)
        kinks += [j for j, k in zip(chunk, kink.tolist(), strict=True) if k]
        if not bool(xp.any(kink)) and not bool(xp.any(xp.abs(better - d1) > slack)):
            break  # nothing here was curvature or a kink: the differences stand (a wrong
            # backward is wrong everywhere; its check need not pay for every element twice)
    refined = NumericalGradient(value, noise, num.plus, num.minus, num.terms, num.fanout, num.low, num.high)
    return Estimate(refined, lo, hi, tuple(sorted(set(kinks))), estimate.indices)


#: the measured rounding (see `measured_rounding`) enters the bound with this factor, on a
#: floor of MEASURED_FLOOR u_a (|n| + S) for what a single measurement cannot promise
MEASURED_SIGMAS = 2.0
MEASURED_FLOOR = 4.0


def measured_rounding(
    oracle: Mapping[str, Any],
    upstream64: Sequence[Any | None],
    gradients: Callable[[Mapping[str, Any], Sequence[Any | None]], Mapping[str, Any]],
    analytical: Mapping[str, Any],
    xp: ModuleType,
) -> dict[str, Any]:
    """|analytical - the same backward run in float64 on the same values|, per element:
    the low-precision gradient's own rounding, measured rather than modelled.

    Intermediates that backward cancels or absorbs (an attention row's dp - sum dp p with
    scores of 40, gelu's two tail terms) can be a hundred times the largest gradient, and
    nothing measured at the inputs shows them; running the very same code in float64 does.
    A wrong formula is wrong the same way in both precisions and adds nothing here; only a
    backward that branches on the dtype could hide behind it, which is why `bound` caps
    this term (at sqrt(u) times the case's scale). {} when backward fails in float64."""
    try:
        exact = gradients({n: a.copy() for n, a in oracle.items()}, list(upstream64))
        return {
            n: xp.abs(xp.asarray(analytical[n]).astype(xp.float64) - xp.asarray(exact[n]).astype(xp.float64))
            for n in analytical
            if n in exact and tuple(exact[n].shape) == tuple(analytical[n].shape)
        }
    except (Exception, SystemExit):  # noqa: BLE001 - user code: the model goes without it
        return {}


@dataclass(frozen=True, slots=True)
class Bound:
    """The per-element bound of one tensor's comparison and what it was made of."""

    value: Any  # float64 array shaped like the tensor
    slack: Any  # the numerical part: atol + rtol |n| + noise
    tolerance: Tolerance
    atol: float
    model: bool  # the error model (False: the spec's hand-set rtol/atol)
    analytical_dtype: str
    numerical_dtype: str = "float64"  # the precision the differences were taken in


def bound(
    name: str,
    plan: CasePlan,
    route: Route,
    numerical: NumericalGradient,
    case_scale: float,
    upstream_scale: float,
    xp: ModuleType,
    measured: Any | None = None,
) -> Bound:
    """The error model of `numerics.tolerance`, or the spec's rtol/atol where it sets them;
    `measured` is the tensor's `measured_rounding` (as compared: sampled elements only), if
    any: it then stands for the model's rounding term, MEASURED_SIGMAS times itself up to
    sqrt(u_a) S (so a backward wrong only in low precision is still caught past that cap),
    on a floor of MEASURED_FLOOR u_a (|n| + S).

    `case_scale` is the largest analytical gradient over every tensor of the case and
    `upstream_scale` the largest upstream value |g|: the sizes of the terms backward works
    with, so the rounding allowance never drops below what a cancellation leaves behind
    (a bias before a batch norm, whose true gradient is zero)."""
    analytical_dtype, given = plan.tolerance_for(name)
    n = numerical.value
    finite = xp.where(xp.isfinite(n), n, 0.0)
    scale = max(float(xp.max(xp.abs(finite))) if finite.size else 0.0, case_scale)
    noise = xp.where(xp.isfinite(numerical.noise), numerical.noise, 0.0)
    if given.hand_set:
        slack = given.atol + given.rtol * xp.abs(finite) + noise
        return Bound(slack, slack, given, given.atol, False, analytical_dtype, route.dtype)
    tol = plan.spec.tolerances[route.dtype]
    atol = tol.effective_atol(scale) if route.dtype == "float64" else tol.atol
    slack = atol + tol.rtol * xp.abs(finite) + noise
    u = UNIT_ROUNDOFF[analytical_dtype]
    terms = xp.where(xp.isfinite(numerical.terms), numerical.terms, 0.0)
    reach = max(case_scale, upstream_scale)
    if measured is None:
        rounding = ANALYTICAL_SIGMAS * u * (xp.sqrt(numerical.fanout) * terms + reach)
    else:
        # the rounding itself, measured; the model's accumulation term, an upper estimate of
        # it, is not needed (and would blind long float16 reductions that numpy sums in float32)
        measured = xp.where(xp.isfinite(measured), measured, 0.0)
        rounding = MEASURED_FLOOR * u * (xp.abs(finite) + reach) + xp.minimum(
            MEASURED_SIGMAS * measured, u**0.5 * reach
        )
    return Bound(slack + rounding, slack, tol, atol, True, analytical_dtype, route.dtype)


@dataclass(frozen=True, slots=True)
class Verdict:
    passed: bool
    comparison: Comparison
    tolerance: Tolerance
    atol: float  # the atol the bound used
    message: str  # why it failed, or why a pass says nothing (inconclusive)
    kinks: int = 0
    method: str = "elementwise"
    sample: tuple[int, ...] | None = None  # the flat indices compared, where a sample was
    #: what the figures were read off, in the engine's namespace: (analytical, numerical, lo,
    #: hi, bound) over the compared elements, and the kinks; see `evidence`
    arrays: tuple[Any, ...] | None = None


def evidence(
    name: str, v: Verdict, value: Any, shape: tuple[int, ...], to_host: Callable[[Any], Any]
) -> Evidence | None:
    """The verdict's per-element figures on the host, shaped like the tensor (NaN where the
    sample left elements out); None for a verdict not read element by element."""
    if v.arrays is None:
        return None
    a, n, lo, hi, limit, kinks = v.arrays
    size = int(np.prod(shape, dtype=np.int64))

    def full(array: Any) -> np.ndarray:
        host = np.asarray(to_host(array), dtype=np.float64).reshape(-1)
        if v.sample is None:
            return host.reshape(shape)
        out = np.full(size, np.nan)
        out[np.asarray(v.sample, dtype=np.int64)] = np.broadcast_to(host, (len(v.sample),))
        return out.reshape(shape)

    analytical, low, high = full(a), full(lo), full(hi)
    checked = np.zeros(size, dtype=bool)
    checked[slice(None) if v.sample is None else np.asarray(v.sample, dtype=np.int64)] = True
    with np.errstate(invalid="ignore"):
        error = np.maximum(np.maximum(low - analytical, analytical - high), 0.0)
    # a non-finite value where an element was checked is a violation (as in `compare`)
    error = np.where(checked.reshape(shape), np.where(np.isnan(error), np.inf, error), np.nan)
    return Evidence(
        name,
        np.asarray(to_host(value), dtype=np.float64).reshape(shape),
        analytical,
        full(n),
        full(limit),
        error,
        tuple(kinks),
    )


def judge(
    name: str,
    plan: CasePlan,
    analytical: Any,
    estimate: Estimate,
    b: Bound,
    case_scale: float,
    xp: ModuleType,
) -> Verdict:
    """Compare under the bound, with the spec's kink semantics for the elements found to
    sit on kinks."""
    lo, hi, limit = estimate.lo, estimate.hi, b.value
    kinks = estimate.kinks
    mode = plan.spec.kinks
    shape = tuple(analytical.shape)
    if kinks and mode == "skip":
        limit = xp.broadcast_to(limit, lo.shape).copy()
        limit.reshape(-1)[xp.asarray(estimate.positions(kinks))] = xp.inf
    a = estimate.subset(analytical, xp)
    c = compare(a, estimate.numerical.value, estimate.numerical.noise, limit, xp, (lo, hi))
    full_limit = xp.broadcast_to(xp.asarray(limit, dtype=xp.float64), lo.shape)
    arrays = (a, estimate.numerical.value, lo, hi, full_limit, kinks)
    if estimate.indices is not None and c.size:
        worst = estimate.elements([c.worst_index[0]])[0]
        c = replace(
            c,
            worst_index=tuple(int(i) for i in np.unravel_index(worst, shape)),
            violating=tuple(estimate.elements(c.violating)),
        )
    kink_text = _kink_text(name, kinks, mode, shape)
    sample = estimate.indices
    if kinks and mode == "fail":
        return Verdict(False, c, b.tolerance, b.atol, kink_text, len(kinks), sample=sample, arrays=arrays)
    if not c.passed:
        text = "; ".join(filter(None, (_failure_text(name, c, b), kink_text)))
        return Verdict(False, c, b.tolerance, b.atol, text, len(kinks), sample=sample, arrays=arrays)
    message = "; ".join(filter(None, (_inconclusive(name, c, estimate, b, limit, case_scale, xp), kink_text)))
    return Verdict(True, c, b.tolerance, b.atol, message, len(kinks), sample=sample, arrays=arrays)


def joint_kink_check(
    name: str,
    route: Route,
    plan: CasePlan,
    forward: Forward,
    upstream64: Sequence[Any | None],
    analytical: Any,
    estimate: Estimate,
    b: Bound,
    xp: ModuleType,
) -> str:
    """Why kink elements of equal value, moved together, break the subgradient rule, or "".

    Tied elements of a max are kinks one by one (each alone may take the window's gradient
    or none), but moved together they are smooth: the window's output moves with them, so
    the sum of their gradients must equal its gradient, and lie between the joint one-sided
    derivatives. A tie counted twice passes element by element and fails here. Only equal
    values are grouped (a tie is equality): kinks of different kinds (hardtanh at -1 and
    at +1) have no joint rule. Sampled estimates are not judged jointly (a tie's partner
    may be outside the sample)."""
    if estimate.indices is not None:
        return ""
    tensors = route.tensors
    flat = tensors[name].reshape(-1)
    groups: dict[float, list[int]] = {}
    for k in estimate.kinks:
        groups.setdefault(float(flat[k]), []).append(k)
    epsilon = plan.spec.tolerances[route.dtype].epsilon / 4
    a = xp.asarray(analytical).astype(xp.float64).reshape(-1)
    limit = xp.broadcast_to(b.value, estimate.lo.shape).reshape(-1)
    for value, kinks in groups.items():
        if len(kinks) < 2:
            continue
        plus, minus, noise = joint_sides(
            lambda: forward(tensors),
            tensors[name],
            kinks,
            upstream64,
            epsilon,
            UNIT_ROUNDOFF[route.dtype],
            xp,
        )
        total = float(xp.sum(a[xp.asarray(kinks)]))
        allowance = float(xp.sum(limit[xp.asarray(estimate.positions(kinks))])) + 8 * noise
        if abs(plus - minus) > allowance:
            continue  # not jointly smooth: separate kinks that share a value, not a tie
        if min(plus, minus) - allowance <= total <= max(plus, minus) + allowance:
            continue
        return (
            f"the gradient of {name} at its {len(kinks)} kink element(s) of value {value:g} is not a "
            f"subgradient: moved together, they change the loss at rate {minus:.6g} (left) and "
            f"{plus:.6g} (right), but their analytical gradients sum to {total:.6g} (allowance "
            f"{allowance:.3g}); a tie counted twice (max pooling) looks like this"
        )
    return ""


def _kink_text(name: str, kinks: Sequence[int], mode: str, shape: tuple[int, ...]) -> str:
    if not kinks:
        return ""
    first = ", ".join(str(tuple(int(i) for i in np.unravel_index(k, shape))) for k in kinks[:3])
    more = "" if len(kinks) <= 3 else f" and {len(kinks) - 3} more"
    if mode == "fail":
        return (
            f"{name} has {len(kinks)} element(s) on a kink (the one-sided derivatives differ) "
            f"at {first}{more}, and the spec says kinks: fail"
        )
    verb = "judged by the subgradient rule" if mode == "subgradient" else "left out (kinks: skip)"
    return f"{len(kinks)} kink element(s) of {name} {verb}: {first}{more}"


#: how the runner reads a pass's message: "inconclusive..." is an ERROR (the precision
#: cannot tell), NOTHING_TO_VERIFY a SKIP (the case's gradients are all zero)
NOTHING_TO_VERIFY = "nothing to verify"


def _inconclusive(
    name: str,
    c: Comparison,
    estimate: Estimate,
    b: Bound,
    limit: Any,
    case_scale: float,
    xp: ModuleType,
) -> str:
    """A pass that says nothing: a backward returning zeros would have passed too, and so
    would every gradient of the case (a tensor whose true gradient is zero, beside larger
    ones, is fine). Where the case's gradients are zero to the precision of the differences
    themselves (x^3 at 0), the input is degenerate rather than the precision too low."""
    n = xp.where(xp.isfinite(estimate.numerical.value), estimate.numerical.value, 0.0)
    if c.max_abs_numerical == 0 or not bool(xp.all(xp.abs(n) <= limit)):
        return ""
    widest = float(xp.max(xp.broadcast_to(limit, n.shape)))
    if case_scale > widest:
        return ""
    slack = float(xp.max(xp.broadcast_to(b.slack, n.shape)))
    if b.numerical_dtype == "float64" and max(case_scale, c.max_abs_numerical) <= slack:
        return (
            f"{NOTHING_TO_VERIFY}: every gradient of this case is zero to the precision of the "
            f"differences (the largest is {max(case_scale, c.max_abs_numerical):.3g}), so this input "
            f"cannot tell a right gradient of {name} from a wrong one; the other cases do"
        )
    return (
        f"inconclusive: every gradient of this case is within the bound (the largest is "
        f"{max(case_scale, c.max_abs_numerical):.3g}, the bound up to {widest:.3g}; estimated noise "
        f"{c.noise_floor:.3g}), so a backward returning zeros for {name} would pass as well; make the "
        "layer run in float64, or its outputs smaller"
    )


def _failure_text(name: str, c: Comparison, b: Bound) -> str:
    index = ", ".join(map(str, c.worst_index))
    parts = "atol + rtol |numerical| + noise"
    if b.model:
        parts += f" + {b.analytical_dtype} rounding of the analytical gradient (error model)"
    else:
        parts += f" (the spec's rtol {b.tolerance.rtol:g}, atol {b.tolerance.atol:g})"
    text = (
        f"gradient of {name} is wrong at {c.violations} of {c.size} elements; worst "
        f"{name}[{index}]: analytical {c.analytical:.6g}, numerical {c.numerical:.6g}, "
        f"|diff| {abs(c.analytical - c.numerical):.3g} > bound {c.bound:.3g} = {parts}, "
        f"{times_over(c.worst_ratio)} (noise floor {c.noise_floor:.2g})"
    )
    if c.max_abs_numerical == 0:
        text += (
            f"; the numerical gradient is zero everywhere: forward does not depend on {name} "
            "as bound (for a layer object: is its parameter path the one forward reads?)"
        )
    return text
