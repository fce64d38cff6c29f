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

#: single elements each tensor's precision is judged on (a majority of those that move)
PRECISION_PICKS = 4

#: relative probe each precision resolves and the next coarser one rounds away
_PROBES = (("float64", 1e-10), ("float32", 1e-5), ("float16", 3e-3))


@dataclass(frozen=True, slots=True)
class Route:
    """How one tensor's numerical gradient is taken."""

    dtype: str  # the precision forward resolves the tensor at: step, noise and bounds
    tensors: dict[str, Any]  # the tensors to perturb (float64 oracle copies or the check's own)
    note: str = ""  # what the verdict depends on, when it is not the plain float64 oracle


def routes(
    plan: CasePlan,
    forward: Forward,
    tensors: dict[str, Any],
    reference: Sequence[Any],
    xp: ModuleType,
    probe: bool = True,
) -> dict[str, Route]:
    """A route for every differentiable tensor of the case (`reference`: forward's outputs at
    the case's point in the check's dtype). `probe=False` takes each tensor's own precision
    without the probes (fast mode; the runner probes where a directional check fails)."""
    run, note = tensors, ""
    if plan.dtype != "float64":
        run, note = _oracle(plan, forward, tensors, reference, xp)
    base: list[Any] | None = None
    units: list[float] = []
    try:
        if probe:
            outputs = forward(run)
            base = _float_outputs(outputs, reference, xp)
            # the rounding of each output in the dtype forward returned it in (a layer may
            # compute in float32 whatever it is given)
            units = [
                UNIT_ROUNDOFF.get(str(getattr(o, "dtype", "")), UNIT_ROUNDOFF["float64"])
                for o, ref in zip(outputs, reference, strict=True)
                if str(getattr(ref, "dtype", "")) in FLOAT_DTYPES
            ]
    except (Exception, SystemExit):  # noqa: BLE001 - user code: the gradient check reports it
        base, units = None, []
    out = {}
    for t in plan.spec.tensors:
        if not t.grad:
            continue
        own = str(run[t.name].dtype)
        level = _resolved(t.name, own, run, base, units, forward, reference, xp) if base is not None else own
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
    Outputs may differ by the low precision's rounding, amplified by the layer's
    conditioning, so only differences over 256 u (|y| + max |y|) count (1.5e-5 relative in
    float32: a layer 0.5% different in float64 is caught; 12% in float16); non-finite
    low-precision outputs are left to the finite contract."""
    u = UNIT_ROUNDOFF[plan.dtype]
    floats = [r for r in reference if str(getattr(r, "dtype", "")) in FLOAT_DTYPES]
    for k, (hi, lo) in enumerate(zip(base, floats, strict=True)):
        if str(hi.dtype) != "float64":
            continue
        lo64 = xp.asarray(lo).astype(xp.float64)
        both = xp.isfinite(hi) & xp.isfinite(lo64)
        scale = float(xp.max(xp.where(both, xp.abs(hi), 0.0))) if hi.size else 0.0
        gap = xp.where(both, xp.abs(hi - lo64) - 256 * u * (xp.abs(hi) + scale), 0.0)
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
    units: Sequence[float],
    forward: Forward,
    reference: Sequence[Any],
    xp: ModuleType,
) -> str:
    """The finest precision whose changes of tensor `name` the outputs follow, judged on (up
    to) PRECISION_PICKS single elements that the coarsest probe moves; `own` when it moves none (a tensor
    that moves nothing says nothing about precision).

    One element at a time: moving many at once, some would sit on a rounding boundary of a
    lower precision and move the outputs by chance. A precision is resolved when the outputs'
    change at its probe is the next coarser probe's change scaled down (within a quarter),
    wherever that change stands well above the outputs' rounding: a layer that computes part
    of its output in float32 (x + tanh(float32(x))) still moves at a float64 probe, but by
    the wrong amount. An element only counts against a precision when the outputs should
    have shown its change: a saturated tanh is insensitive, not imprecise."""
    flat = run[name].reshape(-1)
    # probes relative to |x_e| + the tensor's own size where that is under one: a tensor of
    # values near 1e-3 (a layer norm's input, say) moved by 3e-3 leaves the linear regime,
    # and the coarsest probe must stay in it for the finer ones to be judged against it
    finite = xp.abs(flat[xp.isfinite(flat)].astype(xp.float64))
    scale = min(1.0, float(xp.sqrt(xp.mean(finite * finite)))) if finite.size else 1.0
    scale = scale if scale > 0 else 1.0
    picks = sorted({int(i) for i in xp.linspace(0, flat.size - 1, min(PRECISION_PICKS, flat.size)).tolist()})
    # outputs returned in float32 cannot show a float64 change, whatever the inputs' dtype
    finest = max([UNIT_ROUNDOFF[own], *units])
    levels = [(lv, size) for lv, size in _PROBES if UNIT_ROUNDOFF[lv] >= finest]
    if len(levels) == 1:
        return levels[0][0]
    coarse_level, coarse_size = levels[-1]
    changes: dict[tuple[int, float], list[Any] | None] = {}

    def change(e: int, size: float) -> list[Any] | None:
        if (e, size) not in changes:
            changes[e, size] = _change(flat, e, size, base, forward, run, reference, xp, scale)
        return changes[e, size]

    moving = [
        e for e in picks if (d := change(e, coarse_size)) is None or any(bool(xp.any(c != 0)) for c in d)
    ]
    if not moving:
        return own
    for k, (level, size) in enumerate(levels[:-1]):
        ref_size = levels[k + 1][1]
        # the rounding a layer computing at this level leaves in each output
        rounding = [max(UNIT_ROUNDOFF[level], u) * xp.abs(b) for b, u in zip(base, units, strict=True)]
        shown = 0
        for e in moving:
            ref = change(e, ref_size)
            if ref is None:
                shown += 1
                continue
            predicted = [c * (size / ref_size) for c in ref]
            # the linear prediction's own error: curvature over the reference probe's step
            slack = min(0.25, 1000 * ref_size)
            visible = [xp.abs(p) > 32 * r for p, r in zip(predicted, rounding, strict=True)]
            if not any(bool(xp.any(v)) for v in visible):
                shown += 1
                continue
            fine = change(e, size)
            shown += fine is None or all(
                bool(xp.all(~v | (xp.abs(f - p) <= slack * xp.abs(p) + 8 * r)))
                for f, p, v, r in zip(fine, predicted, visible, rounding, strict=True)
            )
        # most elements must follow (one near a kink may lag alone)
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
    scale: float = 1.0,
) -> list[Any] | None:
    """How the outputs change when element `e` moves by `size` relative to |x_e| + `scale`
    (in place, then restored); None when forward raises there (the real run reports it)."""
    orig = flat[e].copy()
    flat[e] = orig + size * (abs(float(orig)) + scale)
    try:
        moved = _float_outputs(forward(run), reference, xp)
    except (Exception, SystemExit):  # noqa: BLE001 - user code
        return None
    finally:
        flat[e] = orig
    return [m - b for m, b in zip(moved, base, strict=True)]


def _fallback(dtype: str, why: str) -> str:
    return f"numerical gradient computed in {dtype}, not from the float64 oracle: {why}"
