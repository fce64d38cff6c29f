"""The gradient check of one tensor: which numerical gradient, which bound, which verdict.

For float16 and float32 checks the numerical gradient comes from a float64 **oracle**: the
same implementation run on float64 copies of the same (exactly representable) input
values. Its differences are then far below the analytical gradient's own rounding, so the
verdict measures the backward, not the finite-difference noise of the low precision.

The oracle is only as good as the arithmetic it actually runs: a layer may reject float64,
return another dtype, or cast a tensor down to float32 inside and cast the result back.
Each tensor is therefore probed: moved by one part in 10^10 (far below a float32 ulp), its
outputs must move too. Where they do not, that tensor's numerical gradient is taken in the
check's own dtype, and the result says why.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from specgrad.compile import CasePlan
from specgrad.numerics.compare import Comparison, compare
from specgrad.numerics.finite_diff import NumericalGradient, central_difference
from specgrad.numerics.tolerance import FLOAT_DTYPES, UNIT_ROUNDOFF, Tolerance

#: relative size of the probe that tells a float64 computation from a low-precision one
_PROBE = 1e-10


@dataclass(frozen=True, slots=True)
class NumericalSource:
    """Where the numerical gradients of one case come from; tensors are perturbed in place."""

    native: dict[str, Any]  # the check's own tensors
    oracle: dict[str, Any] | None  # float64 copies, or None where the oracle is unusable
    dtype: str  # the check's dtype
    notes: Mapping[str, str] = field(default_factory=dict)  # tensor -> why not the oracle

    def for_tensor(self, name: str) -> tuple[str, dict[str, Any], str]:
        """(dtype forward runs in, tensors to perturb, note) for `name`'s numerical gradient."""
        if self.oracle is None or name in self.notes:
            return self.dtype, self.native, self.notes.get(name, "")
        return "float64", self.oracle, ""


@dataclass(frozen=True, slots=True)
class Verdict:
    passed: bool
    comparison: Comparison
    tolerance: Tolerance
    atol: float  # the atol the bound used
    message: str  # why it failed, or why a pass says nothing (inconclusive)


Forward = Callable[[Mapping[str, Any]], Sequence[Any]]


def numerical_source(
    plan: CasePlan, forward: Forward, tensors: dict[str, Any], reference: Sequence[Any], xp: ModuleType
) -> NumericalSource:
    """Probe the float64 oracle for a low-precision check (`reference`: the outputs of
    forward at the case's point in the check's dtype)."""
    if plan.dtype == "float64":
        return NumericalSource(tensors, None, "float64")
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
        note = _fallback(plan.dtype, why)
        return NumericalSource(tensors, None, plan.dtype, {n: note for n in tensors})
    notes = {}
    for t in plan.spec.tensors:
        if (
            t.grad
            and t.name in upcast
            and not _moves_in_float64(t.name, copies, base, forward, reference, xp)
        ):
            notes[t.name] = _fallback(
                plan.dtype,
                f"forward on float64 inputs does not resolve a change "
                f"of {t.name} by one part in 1e10 (it computes in lower precision inside)",
            )
    return NumericalSource(tensors, copies, plan.dtype, notes)


class _Refused(Exception):
    """forward on float64 copies raised or returned something unusable."""


def _float_outputs(outputs: Sequence[Any], reference: Sequence[Any], xp: ModuleType) -> list[Any]:
    """float64 copies of the floating outputs of one oracle forward, checked against the
    case's outputs."""
    if len(outputs) != len(reference):
        raise _Refused(f"forward on float64 inputs returned {len(outputs)} outputs, not {len(reference)}")
    out = []
    for i, (o, ref) in enumerate(zip(outputs, reference, strict=True)):
        if str(getattr(ref, "dtype", "")) not in FLOAT_DTYPES:
            continue
        if str(getattr(o, "dtype", "")) != "float64":
            raise _Refused(
                f"forward on float64 inputs returned output {i} as {getattr(o, 'dtype', type(o).__name__)}"
            )
        if tuple(o.shape) != tuple(ref.shape):
            raise _Refused(f"forward on float64 inputs returned output {i} with shape {tuple(o.shape)}")
        out.append(o.astype(xp.float64))
    return out


def _moves_in_float64(
    name: str,
    copies: dict[str, Any],
    base: list[Any],
    forward: Forward,
    reference: Sequence[Any],
    xp: ModuleType,
) -> bool:
    """Whether moving tensor `name` by one part in 1e10 moves any output: a float32 cast
    inside the layer rounds such a change away."""
    original = copies[name]
    copies[name] = original + _PROBE * (xp.abs(original) + 1.0)
    try:
        moved = _float_outputs(forward(copies), reference, xp)
    except (Exception, SystemExit):  # noqa: BLE001 - user code; the real run will report it
        return True
    finally:
        copies[name] = original
    return any(bool(xp.any(a != b)) for a, b in zip(base, moved, strict=True))


def _fallback(dtype: str, why: str) -> str:
    return f"numerical gradient computed in {dtype}, not from the float64 oracle: {why}"


def numerical_gradient(
    name: str,
    source: NumericalSource,
    plan: CasePlan,
    forward: Forward,
    upstream64: Sequence[Any | None],
    xp: ModuleType,
) -> tuple[NumericalGradient, str, str]:
    """(gradient, dtype forward ran in, note). The step is that of the perturbed tensor's dtype
    in this run, the noise that of the dtype the outputs are computed in."""
    dtype, tensors, note = source.for_tensor(name)
    tensor = tensors[name]
    epsilon = plan.spec.tolerances[str(tensor.dtype)].epsilon
    gradient = central_difference(
        lambda: forward(tensors), tensor, upstream64, epsilon, UNIT_ROUNDOFF[dtype], xp
    )
    return gradient, dtype, note


def judge(
    name: str,
    plan: CasePlan,
    numerical_dtype: str,
    analytical: Any,
    numerical: NumericalGradient,
    case_scale: float,
    xp: ModuleType,
) -> Verdict:
    """Compare under the coarser of the tensor's and the check's dtype tolerances.

    `case_scale` is the largest analytical gradient over every tensor of the case: the size
    of the terms any one gradient is summed from, so the scale-relative atol never drops
    below the rounding of a gradient that is truly zero (a bias before a batch norm)."""
    _, tol = plan.tolerance_for(name)
    finite = xp.where(xp.isfinite(numerical.value), numerical.value, 0.0)
    scale = max(float(xp.max(xp.abs(finite))) if finite.size else 0.0, case_scale)
    atol = tol.effective_atol(scale) if numerical_dtype == "float64" else tol.atol
    c = compare(analytical, numerical.value, numerical.noise, tol.rtol, atol, xp)
    if not c.passed:
        return Verdict(False, c, tol, atol, _failure_text(name, c, tol.rtol, atol))
    return Verdict(True, c, tol, atol, _inconclusive(name, c, numerical_dtype, tol.atol))


def _inconclusive(name: str, c: Comparison, dtype: str, atol: float) -> str:
    """A pass that says nothing: the numerical gradient's own rounding noise is above the
    dtype's atol and as large as the gradient, so a wrong gradient of that size would pass."""
    if c.noise_floor <= atol or c.noise_floor < 0.5 * c.max_abs_numerical:
        return ""
    advice = "raise epsilon" if dtype == "float64" else "make the layer run in float64, raise epsilon"
    return (
        f"inconclusive: the rounding noise of the numerical gradient of {name} in {dtype} "
        f"({c.noise_floor:.3g}) is as large as the gradient itself (max |numerical| "
        f"{c.max_abs_numerical:.3g}), so a wrong gradient could pass; {advice}, or make the "
        "layer's outputs smaller"
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
