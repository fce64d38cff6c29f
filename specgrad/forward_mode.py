"""contract.jvp: the framework's forward mode (`jvp: autograd`) against differences.

For each differentiable tensor, along a seeded direction d (scaled like the steps, by
max(|x|, 1)), the forward-mode derivative J d of every output element is compared with
the central difference of forward along d, taken where the tensor's gradient check takes
its differences (its route: the float64 oracle for float16/32 checks).

Per output element k, all in float64:

    |t_k - D_k| <= rtol |D_k| + atol + noise_k + truncation_k + rounding_k

- D_k is the Richardson value (4 D(h/2) - D(h)) / 3 of the differences at the route's
  step h and h/2, truncation_k = |D(h) - D(h/2)| / 3 its error estimate, and noise_k =
  NOISE_SIGMAS u (|f(x+)| + |f(x-)|) / (2 h) at h/2 (outputs rounded at the route's u);
- rounding_k is t's own rounding in the check's dtype: measured against the same forward
  mode in float64 on the same values, 4 u (|t_k| + S) + min(2 r_k, sqrt(u) S), else
  modelled, ANALYTICAL_SIGMAS u (|t_k| + S), S the larger of the largest |t| and |d|
  (the tangents forward mode combines are as large as d);
- at a kink (the one-sided differences differ by a jump that does not shrink with the
  step) any value between them is admissible, as for the gradient checks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from specgrad.compile import CasePlan
from specgrad.numerics.compare import Comparison, compare, times_over
from specgrad.numerics.finite_diff import NOISE_SIGMAS
from specgrad.numerics.sampling import direction
from specgrad.numerics.tolerance import ANALYTICAL_SIGMAS, FLOAT_DTYPES, UNIT_ROUNDOFF
from specgrad.routes import Route

Forward = Callable[[Mapping[str, Any]], Sequence[Any]]
Jvp = Callable[[Mapping[str, Any], Mapping[str, Any]], tuple[Any, list[Any]]]


@dataclass(frozen=True)
class JvpFinding:
    tensor: str
    output: int
    comparison: Comparison
    kinks: int


def check_jvp(
    plan: CasePlan,
    jvp: Jvp,
    forward: Forward,
    tensors: Mapping[str, Any],
    route_map: Mapping[str, Route],
    xp: ModuleType,
) -> list[JvpFinding]:
    """The comparison of every (differentiable tensor, float output) pair."""
    out = []
    for name, route in route_map.items():
        out += _tensor(plan, name, route, jvp, forward, tensors, xp)
    return out


def _tensor(
    plan: CasePlan,
    name: str,
    route: Route,
    jvp: Jvp,
    forward: Forward,
    tensors: Mapping[str, Any],
    xp: ModuleType,
) -> list[JvpFinding]:
    x = route.tensors[name]
    x64 = x.astype(xp.float64)
    h = plan.spec.tolerances[route.dtype].epsilon
    u_route = UNIT_ROUNDOFF[route.dtype]
    d = xp.asarray(direction(plan.seed, f"<jvp>{name}", tuple(x.shape))) * xp.maximum(xp.abs(x64), 1.0)
    base = _floats(forward(route.tensors), xp)
    sides = []  # per step: (f(x+), f(x-), the step taken along d / h)
    for step in (h, h / 2):
        plus, s_plus = _moved(route.tensors, name, x64 + step * d)
        minus, s_minus = _moved(route.tensors, name, x64 - step * d)
        sides.append(
            (_floats(forward(plus), xp), _floats(forward(minus), xp), (s_plus - s_minus) / (2 * step))
        )
    # the direction actually moved (the rounded steps) at the finer step, for forward mode too
    taken = xp.asarray(sides[1][2])  # an array, also for a 0-d tensor
    x_own = tensors[name]
    _, t_own = jvp(tensors, {name: xp.asarray(taken.astype(x_own.dtype))})
    exact = None
    if route.dtype == "float64" and plan.dtype != "float64":
        try:
            _, exact = jvp(route.tensors, {name: taken})
        except (Exception, SystemExit):  # noqa: BLE001 - user code: the model goes without it
            exact = None
    findings = []
    u_a = UNIT_ROUNDOFF[plan.dtype]
    d_scale = float(xp.max(xp.abs(d))) if d.size else 0.0
    for k, f0 in enumerate(base):
        if f0 is None or k >= len(t_own) or t_own[k] is None:
            continue
        t = xp.asarray(t_own[k]).astype(xp.float64)
        coarse = (sides[0][0][k] - sides[0][1][k]) / (2 * h)
        fine = (sides[1][0][k] - sides[1][1][k]) / h
        value = (4 * fine - coarse) / 3
        truncation = xp.abs(fine - coarse) / 3
        noise = NOISE_SIGMAS * u_route * (xp.abs(sides[1][0][k]) + xp.abs(sides[1][1][k])) / h
        # the tangents forward mode works with are as large as d: a cancellation among them
        # (softmax's v - sum p v) leaves their rounding behind however small the result
        scale = max(float(xp.max(xp.abs(t))) if t.size else 0.0, d_scale)
        if exact is not None and exact[k] is not None:
            r = xp.abs(t - xp.asarray(exact[k]).astype(xp.float64))
            rounding = 4 * u_a * (xp.abs(t) + scale) + xp.minimum(2 * r, u_a**0.5 * scale)
        else:
            rounding = ANALYTICAL_SIGMAS * u_a * (xp.abs(t) + scale)
        tol = plan.spec.tolerances[route.dtype]
        atol = tol.effective_atol(max(scale, float(xp.max(xp.abs(value))) if value.size else 0.0))
        bound = atol + tol.rtol * xp.abs(value) + noise + truncation + rounding
        own = [(plus[k], minus[k], step) for plus, minus, step in sides]
        lo, hi, kinks = _kinks(f0, own, h, noise, value, xp)
        c = compare(t, value, noise, bound, xp, (lo, hi))
        findings.append(JvpFinding(name, k, c, kinks))
    return findings


def _kinks(
    f0: Any, sides: list[tuple[Any, Any, Any]], h: float, noise: Any, value: Any, xp: ModuleType
) -> tuple[Any, Any, int]:
    """[lo, hi] per output element: the value, or at a kink the one-sided derivatives
    (their jump at h/2 at least 3/4 of that at h: it does not shrink with the step)."""
    (p1, m1, _), (p2, m2, _) = sides
    plus2, minus2 = (p2 - f0) / (h / 2), (f0 - m2) / (h / 2)
    plus1, minus1 = (p1 - f0) / h, (f0 - m1) / h
    jump2, jump1 = xp.abs(plus2 - minus2), xp.abs(plus1 - minus1)
    kink = (jump2 > 8 * noise) & (jump2 >= 0.75 * jump1)
    slack = xp.abs(plus2 - plus1) + xp.abs(minus2 - minus1) + noise
    lo = xp.where(kink, xp.minimum(plus2, minus2) - slack, value)
    hi = xp.where(kink, xp.maximum(plus2, minus2) + slack, value)
    return lo, hi, int(xp.count_nonzero(kink))


def _moved(tensors: Mapping[str, Any], name: str, moved64: Any) -> tuple[dict[str, Any], Any]:
    """The tensors with `name` at `moved64` rounded to its dtype, and the step taken."""
    x = tensors[name]
    point = dict(tensors)
    point[name] = moved64.astype(x.dtype)
    return point, point[name].astype(moved64.dtype) - x.astype(moved64.dtype)


def _floats(outputs: Sequence[Any], xp: ModuleType) -> list[Any]:
    """The float outputs in float64 (None for the others)."""
    return [xp.asarray(o).astype(xp.float64) if str(o.dtype) in FLOAT_DTYPES else None for o in outputs]


def describe(findings: list[JvpFinding], implementation: str) -> tuple[bool, str, Comparison | None, int]:
    """(passed, message, the worst comparison, kinks) of the findings."""
    kinks = sum(f.kinks for f in findings)
    if not findings:
        return True, "nothing to compare: no float output moves", None, 0
    worst = max(findings, key=lambda f: f.comparison.worst_ratio)
    bad = [f for f in findings if not f.comparison.passed]
    if not bad:
        return True, "", worst.comparison, kinks
    lines = [f"forward mode (jvp) of {implementation} disagrees with differences along seeded directions:"]
    for f in bad:
        c = f.comparison
        idx = ", ".join(map(str, c.worst_index))
        lines.append(
            f"  along {f.tensor}: output {f.output} wrong at {c.violations} of {c.size} elements; worst "
            f"[{idx}]: jvp {c.analytical:.8g}, differences {c.numerical:.8g}, |diff| "
            f"{abs(c.analytical - c.numerical):.3g} > bound {c.bound:.3g}, {times_over(c.worst_ratio)}"
        )
    return False, "\n".join(lines), max(bad, key=lambda f: f.comparison.worst_ratio).comparison, kinks
