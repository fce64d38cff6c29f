"""The gradient check of one tensor: which numerical gradient, which bound, which verdict.

For float16 and float32 checks the numerical gradient comes from a float64 **oracle**: the
same implementation run on float64 copies of the same (exactly representable) input
values. Its differences are then far below the analytical gradient's own rounding, so the
verdict measures the backward, not the finite-difference noise of the low precision. Where
the implementation does not run in float64 (it raises, or returns another dtype), the
numerical gradient is taken in the check's own dtype and the result says so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from specgrad.bindings import Evaluator, raw_outputs_of
from specgrad.compile import CasePlan
from specgrad.numerics.compare import Comparison, compare
from specgrad.numerics.finite_diff import NumericalGradient, central_difference
from specgrad.numerics.tolerance import FLOAT_DTYPES, UNIT_ROUNDOFF, Tolerance


@dataclass(frozen=True, slots=True)
class NumericalSource:
    """Where numerical gradients of one case come from: `tensors` are perturbed in place."""

    dtype: str  # the dtype the forward runs in for the numerical gradient
    tensors: dict[str, Any]
    note: str = ""  # why the oracle is not used, when it is not


@dataclass(frozen=True, slots=True)
class Verdict:
    passed: bool
    comparison: Comparison
    tolerance: Tolerance
    atol: float  # the atol the bound used
    message: str  # why it failed, or why a pass says nothing (inconclusive)


def numerical_source(
    plan: CasePlan, evaluator: Evaluator, tensors: dict[str, Any], reference: Sequence[Any], xp: ModuleType
) -> NumericalSource:
    """The float64 oracle for a low-precision check if the implementation runs in float64,
    else the check's own tensors (`reference`: the outputs of forward at the case's point)."""
    if plan.dtype == "float64":
        return NumericalSource("float64", tensors)
    upcast = {t.name for t in plan.spec.tensors if t.dtype is None}
    copies = {n: a.astype(xp.float64) if n in upcast else a for n, a in tensors.items()}
    try:
        outputs = raw_outputs_of(evaluator.forward(copies)[0])[0]
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - user code refusing float64
        why = f"forward on float64 inputs raised {type(exc).__name__}: {exc}"
        return NumericalSource(plan.dtype, tensors, _fallback(plan.dtype, why))
    for i, (out, ref) in enumerate(zip(outputs, reference, strict=False)):
        if str(getattr(ref, "dtype", "")) in FLOAT_DTYPES and str(getattr(out, "dtype", "")) != "float64":
            return NumericalSource(
                plan.dtype,
                tensors,
                _fallback(
                    plan.dtype,
                    f"forward on float64 inputs returned output {i} as "
                    f"{getattr(out, 'dtype', type(out).__name__)}",
                ),
            )
    shapes = [tuple(getattr(o, "shape", ())) for o in outputs]
    if shapes != [tuple(r.shape) for r in reference]:
        return NumericalSource(
            plan.dtype,
            tensors,
            _fallback(plan.dtype, "forward on float64 inputs returned differently shaped outputs"),
        )
    return NumericalSource("float64", copies)


def _fallback(dtype: str, why: str) -> str:
    return f"numerical gradient computed in {dtype}, not from the float64 oracle: {why}"


def numerical_gradient(
    name: str,
    plan: CasePlan,
    source: NumericalSource,
    evaluate: Callable[[Mapping[str, Any]], Sequence[Any]],
    upstream64: Sequence[Any | None],
    xp: ModuleType,
) -> NumericalGradient:
    """Perturb `name` in the source's tensors; the step is that of the perturbed tensor's
    dtype in this run, the noise that of the dtype the outputs are computed in."""
    tensor = source.tensors[name]
    step_dtype = str(tensor.dtype)
    epsilon = plan.spec.tolerances[step_dtype].epsilon
    return central_difference(
        lambda: evaluate(source.tensors), tensor, upstream64, epsilon, UNIT_ROUNDOFF[source.dtype], xp
    )


def judge(
    name: str,
    plan: CasePlan,
    source: NumericalSource,
    analytical: Any,
    numerical: NumericalGradient,
    xp: ModuleType,
) -> Verdict:
    """Compare under the coarser of the tensor's and the check's dtype tolerances."""
    _, tol = plan.tolerance_for(name)
    finite = xp.where(xp.isfinite(numerical.value), numerical.value, 0.0)
    scale = float(xp.max(xp.abs(finite))) if finite.size else 0.0
    atol = tol.effective_atol(scale) if source.dtype == "float64" else tol.atol
    c = compare(analytical, numerical.value, numerical.noise, tol.rtol, atol, xp)
    if not c.passed:
        return Verdict(False, c, tol, atol, _failure_text(name, c, tol.rtol, atol))
    return Verdict(True, c, tol, atol, _inconclusive(name, c, source.dtype, atol))


def _inconclusive(name: str, c: Comparison, dtype: str, atol: float) -> str:
    """A pass that says nothing: the numerical gradient's own rounding noise is as large as
    the gradient, so a wrong gradient of the same size would pass too."""
    if c.noise_floor <= atol or c.noise_floor < 0.5 * c.max_abs_numerical:
        return ""
    return (
        f"inconclusive: the rounding noise of the numerical gradient of {name} in {dtype} "
        f"({c.noise_floor:.3g}) is as large as the gradient itself (max |numerical| "
        f"{c.max_abs_numerical:.3g}), so a wrong gradient could pass; check in float64, "
        "raise epsilon, or make the layer's outputs smaller"
    )


def _failure_text(name: str, c: Comparison, rtol: float, atol: float) -> str:
    index = ", ".join(map(str, c.worst_index))
    noise = c.bound - atol - rtol * abs(c.numerical)
    return (
        f"gradient of {name} is wrong at {c.violations} of {c.size} elements; worst "
        f"{name}[{index}]: analytical {c.analytical:.6g}, numerical {c.numerical:.6g}, "
        f"|diff| {abs(c.analytical - c.numerical):.3g} > bound {c.bound:.3g} "
        f"(atol {atol:.3g} + rtol {rtol:g} * |numerical| + estimated noise {max(noise, 0.0):.2g})"
    )
