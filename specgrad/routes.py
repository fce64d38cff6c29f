"""How each tensor's numerical gradient is taken: in which precision, on which arrays.

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
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from specgrad.compile import CasePlan
from specgrad.numerics.tolerance import FLOAT_DTYPES, UNIT_ROUNDOFF

Forward = Callable[[Mapping[str, Any]], Sequence[Any]]

#: relative probe each precision resolves and the next coarser one rounds away
_PROBES = (("float64", 1e-10), ("float32", 1e-5), ("float16", 3e-3))


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
