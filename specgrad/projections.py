"""Checks along directions instead of elements: the directional (fast) check and the
Taylor test, both on the tensors' routes, both with L = sum_k <f_k, g_k> in float64."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

from specgrad.compile import CasePlan
from specgrad.gradient_check import Verdict
from specgrad.numerics.compare import compare, times_over
from specgrad.numerics.finite_diff import NOISE_SIGMAS, InconsistentOutput, PerturbationError
from specgrad.numerics.sampling import direction, directions
from specgrad.numerics.taylor import TaylorResult, taylor_test
from specgrad.numerics.tolerance import ANALYTICAL_SIGMAS, UNIT_ROUNDOFF
from specgrad.routes import Forward, Route


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

    def at(point: Mapping[str, Any]) -> tuple[float, float]:
        return loss(forward, point, upstream64, u, xp)

    return taylor_test(at, tensors, moves, grads, precision, error, xp)


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
    base, base_noise = loss(forward, tensors, upstream64, u_route, xp)
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
        f"|diff| {abs(c.analytical - c.numerical):.3g} > bound {c.bound:.3g}, {times_over(c.worst_ratio)}; "
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
    return loss(forward, point, upstream64, u, xp), step


def loss(
    forward: Forward, point: Mapping[str, Any], upstream64: Sequence[Any | None], u: float, xp: ModuleType
) -> tuple[float, float]:
    """L = sum_k <f_k, g_k> at `point` in float64, and its rounding noise (outputs rounded
    at unit roundoff u, see finite_diff.NOISE_SIGMAS). What forward raises or returns out
    of shape at a moved point is a PerturbationError, reported as the check's ERROR."""
    try:
        outputs = forward(point)
    except (Exception, SystemExit) as exc:  # user code
        raise PerturbationError(None, exc) from exc
    shapes = [tuple(getattr(f, "shape", ())) for f in outputs]
    expected = [None if g is None else tuple(g.shape) for g in upstream64]
    if len(shapes) != len(expected) or any(
        e is not None and e != s for e, s in zip(expected, shapes, strict=False)
    ):
        why = f"forward returned outputs of shapes {shapes} here but {expected} at the case's point"
        raise PerturbationError(None, InconsistentOutput(why))
    total, power = 0.0, 0.0
    for g, f in zip(upstream64, outputs, strict=True):
        if g is None:
            continue
        f64 = xp.asarray(f).astype(xp.float64)
        total += float(xp.sum(g * f64))
        power += float(xp.sum(g * g * f64 * f64))
    return total, NOISE_SIGMAS * u * power**0.5
