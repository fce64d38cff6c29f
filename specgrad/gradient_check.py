"""The gradient check of one tensor: which numerical gradient, which bound, which verdict.

For float16 and float32 checks the numerical gradient comes from a float64 **oracle**: the
same implementation run on float64 copies of the same (exactly representable) input
values. Its differences are then far below the analytical gradient's own rounding, so the
verdict measures the backward, not the finite-difference noise of the low precision. The
oracle is refused (and the check's own dtype used, with a note) when forward rejects
float64, returns another dtype, or computes a visibly different function in float64 (a
layer that branches on the dtype).

Whatever the dtype, a layer may compute in less precision than its arrays carry: it may
cast a tensor down to float32 inside and the result back up. A finite difference whose
step is below that precision measures rounding, not slope. So each tensor is probed: moved
by one part in 1e10, 1e5 and 3e2 (what float64, float32 and float16 resolve), the finest
change that moves the outputs is the precision forward resolves that tensor at, and its
step, noise and bounds are those of that precision (see `_resolved`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any

import numpy as np

from specgrad.compile import CasePlan
from specgrad.numerics.compare import Comparison, compare
from specgrad.numerics.finite_diff import NOISE_SIGMAS, NumericalGradient, central_difference, joint_sides
from specgrad.numerics.inputs import direction
from specgrad.numerics.sampling import directions
from specgrad.numerics.taylor import TaylorResult, taylor_test
from specgrad.numerics.tolerance import ANALYTICAL_SIGMAS, FLOAT_DTYPES, UNIT_ROUNDOFF, Tolerance

#: relative probe each precision resolves and the next coarser one rounds away
_PROBES = (("float64", 1e-10), ("float32", 1e-5), ("float16", 3e-3))

Forward = Callable[[Mapping[str, Any]], Sequence[Any]]


@dataclass(frozen=True, slots=True)
class Route:
    """How one tensor's numerical gradient is taken."""

    dtype: str  # the precision forward resolves the tensor at: step, noise and bounds
    tensors: dict[str, Any]  # the tensors to perturb (float64 oracle copies or the check's own)
    note: str = ""  # what the verdict depends on, when it is not the plain float64 oracle


def routes(
    plan: CasePlan, forward: Forward, tensors: dict[str, Any], reference: Sequence[Any], xp: ModuleType
) -> dict[str, Route]:
    """A route for every differentiable tensor of the case (`reference`: forward's outputs at
    the case's point in the check's dtype)."""
    run, note = tensors, ""
    if plan.dtype != "float64":
        run, note = _oracle(plan, forward, tensors, reference, xp)
    try:
        base = _float_outputs(forward(run), reference, xp)
    except (Exception, SystemExit):  # noqa: BLE001 - user code: the gradient check reports it
        base = None
    out = {}
    for t in plan.spec.tensors:
        if not t.grad:
            continue
        own = str(run[t.name].dtype)
        level = _resolved(t.name, own, run, base, forward, reference, xp) if base is not None else own
        why = [note] if note else []
        if UNIT_ROUNDOFF[level] > UNIT_ROUNDOFF[own]:
            why.append(
                f"forward resolves changes of {t.name} only to {level} precision (it computes in lower "
                f"precision inside, or its outputs are too large for a smaller change to show), so its "
                f"numerical gradient takes the {level} step and bounds"
            )
        out[t.name] = Route(level, run, "; ".join(why))
    return out


def _oracle(
    plan: CasePlan, forward: Forward, tensors: dict[str, Any], reference: Sequence[Any], xp: ModuleType
) -> tuple[dict[str, Any], str]:
    """(float64 copies, "") if the implementation runs in float64 as itself, else the check's
    own tensors and why not."""
    upcast = {t.name for t in plan.spec.tensors if t.dtype is None and t.name in tensors}
    copies = {n: a.astype(xp.float64) if n in upcast else a for n, a in tensors.items()}
    try:
        base = _float_outputs(forward(copies), reference, xp)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - user code refusing float64
        why = (
            str(exc)
            if isinstance(exc, _Refused)
            else (f"forward on float64 inputs raised {type(exc).__name__}: {exc}")
        )
        return tensors, _fallback(plan.dtype, why)
    differ = _disagreement(base, reference, plan, xp)
    if differ:
        return tensors, _fallback(plan.dtype, differ)
    return copies, ""


class _Refused(Exception):
    """forward on float64 copies returned something unusable."""


def _float_outputs(outputs: Sequence[Any], reference: Sequence[Any], xp: ModuleType) -> list[Any]:
    """float64 copies of the floating outputs of one forward, checked against the case's."""
    if len(outputs) != len(reference):
        raise _Refused(f"forward on float64 inputs returned {len(outputs)} outputs, not {len(reference)}")
    out = []
    for i, (o, ref) in enumerate(zip(outputs, reference, strict=True)):
        if str(getattr(ref, "dtype", "")) not in FLOAT_DTYPES:
            continue
        if str(getattr(o, "dtype", "")) not in FLOAT_DTYPES:
            raise _Refused(f"forward returned output {i} as {getattr(o, 'dtype', type(o).__name__)}")
        if tuple(o.shape) != tuple(ref.shape):
            raise _Refused(f"forward returned output {i} with shape {tuple(o.shape)}")
        out.append(xp.asarray(o).astype(xp.float64))
    return out


def _disagreement(base: list[Any], reference: Sequence[Any], plan: CasePlan, xp: ModuleType) -> str:
    """Why the float64 forward is not the same function as the check's, if it is not: a
    layer that branches on dtype would otherwise be checked against code it never runs.
    Outputs may differ by the low precision's rounding, so only differences ten times the
    check's comparison bound count; non-finite low-precision outputs are left to the
    finite contract."""
    tol = plan.tolerance
    floats = [r for r in reference if str(getattr(r, "dtype", "")) in FLOAT_DTYPES]
    for k, (hi, lo) in enumerate(zip(base, floats, strict=True)):
        if str(hi.dtype) != "float64":
            continue
        lo64 = xp.asarray(lo).astype(xp.float64)
        both = xp.isfinite(hi) & xp.isfinite(lo64)
        gap = xp.where(both, xp.abs(hi - lo64) - 10 * (tol.atol + tol.rtol * xp.abs(hi)), 0.0)
        if bool(xp.any(gap > 0)):
            worst = float(xp.max(xp.where(both, xp.abs(hi - lo64), 0.0)))
            return (
                f"forward in float64 and in {plan.dtype} give different results (output {k} "
                f"differs by up to {worst:.3g}): does the layer branch on the dtype?"
            )
    return ""


def _resolved(
    name: str,
    own: str,
    run: dict[str, Any],
    base: list[Any],
    forward: Forward,
    reference: Sequence[Any],
    xp: ModuleType,
) -> str:
    """The finest precision whose changes of tensor `name` the outputs show, judged on (up
    to) 8 single elements that the coarsest probe moves; `own` when it moves none (a tensor
    that moves nothing says nothing about precision).

    One element at a time: moving many at once, some would sit on a rounding boundary of a
    lower precision and move the outputs by chance. And an element only counts against a
    precision when the outputs should have shown its change: the coarse probe's change,
    scaled down to the finer probe, is well above the outputs' rounding. A saturated tanh
    is insensitive, not imprecise."""
    flat = run[name].reshape(-1)
    picks = sorted({int(i) for i in xp.linspace(0, flat.size - 1, min(8, flat.size)).tolist()})
    levels = [(lv, size) for lv, size in _PROBES if UNIT_ROUNDOFF[lv] >= UNIT_ROUNDOFF[own]]
    coarse_level, coarse_size = levels[-1]
    changes = {e: _change(flat, e, coarse_size, base, forward, run, reference, xp) for e in picks}
    moving = {e: d for e, d in changes.items() if d is None or any(bool(xp.any(c != 0)) for c in d)}
    if not moving:
        return own
    resolution = [8 * UNIT_ROUNDOFF[own] * xp.abs(b) for b in base]
    for level, size in levels[:-1]:
        shown = 0
        for e, coarse in moving.items():
            scaled = size / coarse_size
            visible = coarse is not None and any(
                bool(xp.any(xp.abs(c) * scaled > r)) for c, r in zip(coarse, resolution, strict=True)
            )
            fine = _change(flat, e, size, base, forward, run, reference, xp) if visible else None
            shown += not visible or fine is None or any(bool(xp.any(c != 0)) for c in fine)
        if 2 * shown > len(moving):
            return level
    return coarse_level


def _change(
    flat: Any,
    e: int,
    size: float,
    base: list[Any],
    forward: Forward,
    run: dict[str, Any],
    reference: Sequence[Any],
    xp: ModuleType,
) -> list[Any] | None:
    """How the outputs change when element `e` moves by `size` relative (in place, then
    restored); None when forward raises there (the real run reports it)."""
    orig = flat[e].copy()
    flat[e] = orig + size * (abs(float(orig)) + 1.0)
    try:
        moved = _float_outputs(forward(run), reference, xp)
    except (Exception, SystemExit):  # noqa: BLE001 - user code
        return None
    finally:
        flat[e] = orig
    return [m - b for m, b in zip(moved, base, strict=True)]


def _fallback(dtype: str, why: str) -> str:
    return f"numerical gradient computed in {dtype}, not from the float64 oracle: {why}"


def numerical_gradient(
    name: str,
    route: Route,
    plan: CasePlan,
    forward: Forward,
    upstream64: Sequence[Any | None],
    xp: ModuleType,
    indices: Sequence[int] | None = None,
) -> NumericalGradient:
    """Perturb `name` along its route: the step and the noise are those of the precision
    forward resolves it at. With `indices` (a sample), only those flat elements, as flat
    arrays in that order."""
    tensors = route.tensors
    return central_difference(
        lambda: forward(tensors),
        tensors[name],
        upstream64,
        plan.spec.tolerances[route.dtype].epsilon,
        UNIT_ROUNDOFF[route.dtype],
        xp,
        indices,
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
    refined: int = 0  # how many elements were re-estimated at a finer step
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
    kinks, done = list(estimate.kinks), 0
    for start in range(0, len(violating), REFINE_CHUNK):
        chunk = list(violating[start : start + REFINE_CHUNK])
        u = UNIT_ROUNDOFF[route.dtype]
        fine = central_difference(lambda: forward(tensors), tensors[name], upstream64, epsilon, u, xp, chunk)
        idx = xp.asarray(estimate.positions(chunk))
        d1, n1 = num.value.reshape(-1)[idx], num.noise.reshape(-1)[idx]
        gap1 = xp.abs(num.plus.reshape(-1)[idx] - num.minus.reshape(-1)[idx])
        gap2 = xp.abs(fine.plus - fine.minus)
        sides_lo, sides_hi = xp.minimum(fine.plus, fine.minus), xp.maximum(fine.plus, fine.minus)
        significant = gap2 > 8 * fine.noise + xp.broadcast_to(b.slack, num.value.shape).reshape(-1)[idx]
        kink = significant & (gap2 > KINK_RATIO * gap1)
        converging = (gap1 > 2 * gap2) & (gap1 < 8 * gap2 + 8 * n1)  # truncation shrinks 16x: h^2
        better = xp.where(converging, (16 * fine.value - d1) / 15, fine.value)
        better_noise = xp.where(converging, (16 * fine.noise + n1) / 15, fine.noise)
        flat["value"][idx] = better
        flat["noise"][idx] = better_noise
        flat["lo"][idx] = xp.where(kink, sides_lo, better)
        flat["hi"][idx] = xp.where(kink, sides_hi, better)
        kinks += [j for j, k in zip(chunk, kink.tolist(), strict=True) if k]
        done += len(chunk)
        if not bool(xp.any(kink)) and not bool(xp.any(xp.abs(better - d1) > 4 * better_noise)):
            break  # nothing here was curvature or a kink: the differences stand
    refined = NumericalGradient(value, noise, num.plus, num.minus, num.terms, num.fanout)
    return Estimate(refined, lo, hi, tuple(sorted(set(kinks))), estimate.refined + done, estimate.indices)


#: multiple of the measured sensitivity (see `sensitivity`) in the analytical rounding term
SENSITIVITY_SIGMAS = 4.0


def sensitivity(
    plan: CasePlan,
    oracle: Mapping[str, Any],
    gradients64: Callable[[Mapping[str, Any]], Mapping[str, Any]],
    xp: ModuleType,
) -> dict[str, Any]:
    """How much the exact (float64) gradients move when every input moves by one rounding
    of the check's dtype: |grad64(x (1 + u r)) - grad64(x)| per element, r = +-1.

    A backward computed in precision u is, to first order, the exact backward at inputs
    (and intermediates) perturbed by about u relative: where the layer amplifies that
    (softmax of large scores, 1 - tanh^2 near saturation) the error model must too, and
    this measures it without knowing the computation. r is a function of each value's bits,
    so equal values move equally: ties and zeros (kinks) stay where they are, and the
    measure never spans a kink. {} when the case has no float64 oracle or backward fails
    there."""
    u = UNIT_ROUNDOFF[plan.dtype]
    moved = {}
    for t in plan.spec.tensors:
        a = oracle[t.name]
        if str(a.dtype) != "float64" or t.dtype is not None:
            moved[t.name] = a
            continue
        bits = a.view(xp.uint64)
        sign = xp.where(((bits * xp.uint64(0x9E3779B97F4A7C15)) >> xp.uint64(63)) == 1, 1.0, -1.0)
        moved[t.name] = a * (1 + u * sign)
    try:
        base, shifted = gradients64({n: a.copy() for n, a in oracle.items()}), gradients64(moved)
        return {
            n: xp.abs(xp.asarray(shifted[n]).astype(xp.float64) - xp.asarray(base[n]).astype(xp.float64))
            for n in base
            if n in shifted and tuple(base[n].shape) == tuple(shifted[n].shape)
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
    `measured` is the tensor's `sensitivity` (as compared: sampled elements only), if any.

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
        return Bound(slack, slack, given, given.atol, False, analytical_dtype)
    tol = plan.spec.tolerances[route.dtype]
    atol = tol.effective_atol(scale) if route.dtype == "float64" else tol.atol
    slack = atol + tol.rtol * xp.abs(finite) + noise
    u = UNIT_ROUNDOFF[analytical_dtype]
    terms = xp.where(xp.isfinite(numerical.terms), numerical.terms, 0.0)
    rounding = ANALYTICAL_SIGMAS * u * (xp.sqrt(numerical.fanout) * terms + max(case_scale, upstream_scale))
    if measured is not None:
        rounding = rounding + SENSITIVITY_SIGMAS * xp.where(xp.isfinite(measured), measured, 0.0)
    return Bound(slack + rounding, slack, tol, atol, True, analytical_dtype)


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
        return Verdict(False, c, b.tolerance, b.atol, kink_text, len(kinks), sample=sample)
    if not c.passed:
        text = "; ".join(filter(None, (_failure_text(name, c, b), kink_text)))
        return Verdict(False, c, b.tolerance, b.atol, text, len(kinks), sample=sample)
    message = "; ".join(filter(None, (_inconclusive(name, c, estimate, limit, case_scale, xp), kink_text)))
    return Verdict(True, c, b.tolerance, b.atol, message, len(kinks), sample=sample)


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
    """Why the kink elements together break the subgradient rule, or "": moved together,
    ties of a max become smooth, and the sum of their gradients must lie between the joint
    one-sided derivatives (a tie counted twice passes element by element, not here)."""
    tensors = route.tensors
    kinks = estimate.kinks
    epsilon = plan.spec.tolerances[route.dtype].epsilon / 4
    plus, minus, noise = joint_sides(
        lambda: forward(tensors), tensors[name], kinks, upstream64, epsilon, UNIT_ROUNDOFF[route.dtype], xp
    )
    idx = xp.asarray(list(kinks))
    total = float(xp.sum(xp.asarray(analytical).astype(xp.float64).reshape(-1)[idx]))
    at = xp.asarray(estimate.positions(kinks))
    allowance = float(xp.sum(xp.broadcast_to(b.value, estimate.lo.shape).reshape(-1)[at])) + 8 * noise
    low, high = min(plus, minus), max(plus, minus)
    if low - allowance <= total <= high + allowance:
        return ""
    return (
        f"the gradient of {name} at its {len(kinks)} kink element(s) is not a subgradient: moved "
        f"together, they change the loss at rate {minus:.6g} (left) and {plus:.6g} (right), but "
        f"their analytical gradients sum to {total:.6g} (allowance {allowance:.3g}); "
        "a tie counted twice (max pooling) looks like this"
    )


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


def _inconclusive(
    name: str,
    c: Comparison,
    estimate: Estimate,
    limit: Any,
    case_scale: float,
    xp: ModuleType,
) -> str:
    """A pass that says nothing: a backward returning zeros would have passed too, and so
    would every gradient of the case (a tensor whose true gradient is zero, beside larger
    ones, is fine)."""
    n = xp.where(xp.isfinite(estimate.numerical.value), estimate.numerical.value, 0.0)
    if c.max_abs_numerical == 0 or not bool(xp.all(xp.abs(n) <= limit)):
        return ""
    widest = float(xp.max(xp.broadcast_to(limit, n.shape)))
    if case_scale > widest:
        return ""
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
        f"{c.worst_ratio:.3g}x over (noise floor {c.noise_floor:.2g})"
    )
    if c.max_abs_numerical == 0:
        text += (
            f"; the numerical gradient is zero everywhere: forward does not depend on {name} "
            "as bound (for a layer object: is its parameter path the one forward reads?)"
        )
    return text


def taylor(
    names: Sequence[str],
    route_map: Mapping[str, Route],
    plan: CasePlan,
    forward: Forward,
    upstream64: Sequence[Any | None],
    grads: Mapping[str, Any],
    case_scale: float,
    xp: ModuleType,
) -> TaylorResult:
    """The Taylor test of the tensors `names` together, along seeded directions scaled like
    the steps (max(|x|, 1) per element), on the tensors the numerical gradients use (the
    float64 oracle where there is one)."""
    tensors = route_map[names[0]].tensors
    precision = max((route_map[n].dtype for n in names), key=lambda d: UNIT_ROUNDOFF[d])
    u = UNIT_ROUNDOFF[precision]
    moves = {}
    for n in names:
        x = tensors[n].astype(xp.float64)
        z = xp.asarray(direction(plan.seed, n, tuple(x.shape)))
        moves[n] = z * xp.maximum(xp.abs(x), 1.0)
    error = 0.0
    for n in names:
        dtype, _ = plan.tolerance_for(n)
        a = xp.abs(xp.asarray(grads[n]).astype(xp.float64))
        d = xp.abs(moves[n])
        error += ANALYTICAL_SIGMAS * UNIT_ROUNDOFF[dtype] * float(xp.sum(d * (a + case_scale)))

    def loss(point: Mapping[str, Any]) -> tuple[float, float]:
        return _loss(forward, point, upstream64, u, xp)

    return taylor_test(loss, tensors, moves, grads, precision, error, xp)


def directional(
    name: str,
    route: Route,
    plan: CasePlan,
    forward: Forward,
    upstream64: Sequence[Any | None],
    analytical: Any,
    case_scale: float,
    upstream_scale: float,
    xp: ModuleType,
) -> Verdict | None:
    """The fast check: for k seeded directions d (components bounded away from zero,
    scaled like the steps by max(|x|, 1)), the central difference of L along d against
    <grad, d>, two forward calls per direction whatever the tensor's size. The bound is
    the element-wise one summed along d: numerical noise of the two evaluations, rtol, and
    the analytical gradient's rounding, u_a sum_j |d_j| (|grad_j| + S) (no per-element
    fan-out is known here, so the rounding is taken as adding up, not cancelling).

    None when a failing direction crosses a kink (its second difference shrinks at first
    order): a direction that moves every element crosses every kink of the tensor, and
    there no single slope exists, so the caller checks element by element instead."""
    tensors = route.tensors
    x = tensors[name]
    tol = plan.spec.tolerances[route.dtype]
    analytical_dtype, given = plan.tolerance_for(name)
    u_route, u_a = UNIT_ROUNDOFF[route.dtype], UNIT_ROUNDOFF[analytical_dtype]
    h = tol.epsilon
    a = xp.asarray(analytical).astype(xp.float64)
    x64 = x.astype(xp.float64)
    units = xp.asarray(directions(tuple(x.shape), plan.method.directions, plan.seed, name))
    num, ana, noise, rounding = [], [], [], []
    for u in units:
        d = u * xp.maximum(xp.abs(x64), 1.0)
        (l_plus, n_plus), s_plus = _loss_at(forward, tensors, name, x64 + h * d, upstream64, u_route, xp)
        (l_minus, n_minus), s_minus = _loss_at(forward, tensors, name, x64 - h * d, upstream64, u_route, xp)
        taken = s_plus - s_minus  # the steps actually taken, in float64
        width = float(xp.sum(xp.abs(taken)) / xp.sum(xp.abs(d))) if d.size else 1.0
        num.append((l_plus - l_minus) / width)
        ana.append(float(xp.sum(a * taken)) / width)
        noise.append((n_plus + n_minus) / width)
        rounding.append(ANALYTICAL_SIGMAS * u_a * float(xp.sum(xp.abs(d) * (xp.abs(a) + case_scale))))
    n_vec, a_vec, noise_vec = (xp.asarray(v, dtype=xp.float64) for v in (num, ana, noise))
    scale = max(float(xp.max(xp.abs(a))) if a.size else 0.0, case_scale, upstream_scale)
    if given.hand_set:
        limit = given.atol + given.rtol * xp.abs(n_vec) + noise_vec
        used, atol = given, given.atol
    else:
        atol = tol.effective_atol(scale) if route.dtype == "float64" else tol.atol
        limit = atol + tol.rtol * xp.abs(n_vec) + noise_vec + xp.asarray(rounding)
        used = tol
    c = compare(a_vec, n_vec, noise_vec, limit, xp)
    if c.passed:
        return Verdict(True, c, used, atol, "", method="directional")
    base, base_noise = _loss(forward, tensors, upstream64, u_route, xp)
    for i in c.violating:
        d = units[i] * xp.maximum(xp.abs(x64), 1.0)
        second = []
        for step in (h, h / 4):
            (lp, n_p), _ = _loss_at(forward, tensors, name, x64 + step * d, upstream64, u_route, xp)
            (lm, n_m), _ = _loss_at(forward, tensors, name, x64 - step * d, upstream64, u_route, xp)
            second.append((abs(lp + lm - 2 * base), 8 * (n_p + n_m + 2 * base_noise)))
        (coarse, _), (fine, fine_noise) = second
        if fine > fine_noise and coarse < 8 * fine:  # first order: 4x per step / 4 (smooth: 16x)
            return None
    i = c.worst_index[0]
    text = (
        f"gradient of {name} is wrong along {c.violations} of {c.size} seeded directions (each moves every "
        f"element); worst, direction {i}: <analytical, d> {c.analytical:.6g}, numerical {c.numerical:.6g}, "
        f"|diff| {abs(c.analytical - c.numerical):.3g} > bound {c.bound:.3g}, {c.worst_ratio:.3g}x over; "
        "run without --fast to see which elements"
    )
    return Verdict(False, c, used, atol, text, method="directional")


def _loss_at(
    forward: Forward,
    tensors: Mapping[str, Any],
    name: str,
    moved64: Any,
    upstream64: Sequence[Any | None],
    u: float,
    xp: ModuleType,
) -> tuple[tuple[float, float], Any]:
    """((L, its rounding noise), the step taken in float64) with tensor `name` set to
    `moved64` rounded to its dtype."""
    x = tensors[name]
    point = dict(tensors)
    point[name] = moved64.astype(x.dtype)
    step = point[name].astype(xp.float64) - x.astype(xp.float64)
    return _loss(forward, point, upstream64, u, xp), step


def _loss(
    forward: Forward, point: Mapping[str, Any], upstream64: Sequence[Any | None], u: float, xp: ModuleType
) -> tuple[float, float]:
    """L = sum_k <f_k, g_k> at `point` in float64, and its rounding noise (outputs rounded
    at unit roundoff u, see finite_diff.NOISE_SIGMAS)."""
    total, power = 0.0, 0.0
    for g, f in zip(upstream64, forward(point), strict=False):
        if g is None:
            continue
        f64 = xp.asarray(f).astype(xp.float64)
        total += float(xp.sum(g * f64))
        power += float(xp.sum(g * g * f64 * f64))
    return total, NOISE_SIGMAS * u * power**0.5
