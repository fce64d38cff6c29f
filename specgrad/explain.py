"""`specgrad explain CHECK_ID`: find the one check, run it again keeping its per-element
figures, and say everything its verdict rests on: how each input was filled, the step,
the tolerance and its origin, the figures, and the elements that came closest to (or went
furthest past) their bounds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from specgrad.backends import DEVICES
from specgrad.compile import CHECK_ID, CasePlan, compile_spec
from specgrad.errors import UsageError, did_you_mean
from specgrad.model import Fill, Spec
from specgrad.numerics.inputs import tensor_fill
from specgrad.numerics.tolerance import STEP_CONSTANT, UNIT_ROUNDOFF
from specgrad.results import CheckResult, Evidence


def find_plan(check_id: str, specs: Sequence[Spec], **options: object) -> CasePlan:
    """The plan of `check_id`, narrowed to that one check and keeping its evidence.
    `options` are compile_spec's (mode, seed, max_elements, max_memory)."""
    match = CHECK_ID.match(check_id)
    if match is None:
        raise UsageError(
            f"{check_id!r} is not a check id: expected NAME[DTYPE,CASE]::TARGET "
            "(as `specgrad list` prints them; quote it in the shell)"
        )
    device, target = match["device"], match["target"]
    for named in (device, target.removeprefix("device.") if target.startswith("device.") else None):
        if named and named not in DEVICES:
            raise UsageError(f"{check_id!r}: no device {named!r} (devices: {', '.join(DEVICES)})")
    devices: tuple[str, ...] | None = None
    if device:
        devices = ("cpu", device)
    elif target.startswith("device."):
        devices = ("cpu", target.removeprefix("device."))
    known: list[str] = []
    for spec in specs:
        if not _may_hold(spec, match["name"]):
            continue
        plans = compile_spec(spec, devices=devices, **options)  # type: ignore[arg-type]
        for plan in plans:
            for t in plan.targets:
                if plan.check_id(t) == check_id:
                    return replace(plan, targets=(t,), evidence=True)
                known.append(plan.check_id(t))
    if not known:
        for spec in specs:
            known += [p.check_id(t) for p in compile_spec(spec) for t in p.targets]
    raise UsageError(f"no check {check_id} in the specs given{did_you_mean(check_id, known)}")


def _may_hold(spec: Spec, name: str) -> bool:
    return name == spec.name or name.startswith((spec.name + ".", spec.name + "@"))


def describe_fill(fill: Fill) -> str:
    if fill.kind == "normal":
        return f"normal(mean {fill.mean:g}, std {fill.std:g})"
    if fill.kind == "uniform":
        tails = ", the outer tails only" if fill.tails else ""
        return f"uniform[{fill.low:g}, {fill.high:g}){tails}"
    if fill.kind == "integers":
        return f"integers in [{fill.low:g}, {fill.high:g})"
    if fill.kind == "constant":
        return f"constant {fill.values[0]:g}" if fill.values else "constant"
    if fill.kind == "special":
        values = ", ".join(f"{v:g}" for v in fill.values)
        return f"special values [{values}] {'shuffled' if fill.shuffle else 'cycled in C order'}"
    if fill.kind == "npy":
        return f"from {fill.path}"
    return fill.kind


def report(plan: CasePlan, result: CheckResult, top: int = 10) -> str:
    """Everything about one check, as plain text."""
    spec = plan.spec
    lines = [
        f"{result.check_id}  {result.status}",
        f"  spec       {result.where} ({spec.name}), case {plan.case.name}, dtype {plan.dtype}, "
        f"device {plan.device}, seed {plan.seed}",
        "  inputs     made on the host from the seed, identical on every device; in this case:",
    ]
    for t in spec.tensors:
        dtype = t.dtype_in(plan.dtype)
        grad = "" if t.grad else ", no gradient checked"
        shape = "[" + ", ".join(map(str, t.shape)) + "]"
        fill = describe_fill(tensor_fill(t, plan.case))
        lines.append(f"    {t.name:<10} {t.role:<9} {shape:<16} {dtype:<8} {fill}{grad}")
    if result.kind == "gradient" and result.numerical_dtype:
        lines += _numerics(plan, result)
    c = result.comparison
    if c is not None:
        margin = f"{c.worst_ratio:.3g}" if c.worst_ratio else "0"
        lines += [
            f"  figures    max abs err {c.max_abs_err:.3g}, max rel err {c.max_rel_err:.3g}, noise floor "
            f"{c.noise_floor:.3g}, err/bound {margin} (< 1 passes), out of bound {c.violations} of {c.size}"
            + (f", {result.kinks} on kinks" if result.kinks else ""),
        ]
    if result.note:
        lines.append(f"  note       {result.note}")
    if result.message:
        lines.append("  verdict    " + result.message.replace("\n", "\n             "))
    if result.evidence is not None:
        lines += offenders(result.evidence, top)
    return "\n".join(lines)


def _numerics(plan: CasePlan, result: CheckResult) -> list[str]:
    dtype = result.numerical_dtype
    eps = plan.spec.tolerances[dtype].epsilon
    oracle = "the float64 oracle" if dtype == "float64" and plan.dtype != "float64" else f"{dtype}"
    lines = [
        f"  numerical  central differences in {oracle} (unit roundoff {UNIT_ROUNDOFF[dtype]:.2g}); "
        f"method {result.method or 'elementwise'}",
        f"  step       h = eps max(|x|, 1) per element, eps = {eps:.3g} "
        f"(default {STEP_CONSTANT} (2u)^(1/3) of {dtype}; the spec's tolerances.{dtype}.epsilon sets it)",
    ]
    t = result.tolerance
    if t is not None:
        origin = (
            f"hand-set by the spec: {t.reason}"
            if t.hand_set
            else "the error model: atol + rtol |numerical| + noise + the analytical gradient's rounding"
        )
        lines.append(f"  tolerance  rtol {t.rtol:.3g}, atol {t.atol:.3g}; bound per element = {origin}")
    return lines


def offenders(ev: Evidence, top: int) -> list[str]:
    """The `top` elements that used the largest share of their bound."""
    worst = ev.worst(top)
    checked = int(np.count_nonzero(~np.isnan(ev.error)))
    lines = [f"  worst elements of {ev.tensor} (of {checked} compared; by err/bound, > 1 is out of bound):"]
    header = ("element", "x", "analytical", "numerical", "|diff|", "bound", "err/bound")
    rows = []
    ratio = ev.ratio.reshape(-1)
    kinks = set(ev.kinks)
    for k in worst:
        index = ", ".join(str(int(i)) for i in np.unravel_index(k, ev.shape))
        rows.append(
            (
                f"{ev.tensor}[{index}]" + (" kink" if k in kinks else ""),
                f"{ev.value.reshape(-1)[k]:.6g}",
                f"{ev.analytical.reshape(-1)[k]:.6g}",
                f"{ev.numerical.reshape(-1)[k]:.6g}",
                f"{ev.error.reshape(-1)[k]:.3g}",
                f"{ev.bound.reshape(-1)[k]:.3g}",
                f"{ratio[k]:.3g}",
            )
        )
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        cells = [
            row[0].ljust(widths[0]),
            *(cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)),
        ]
        lines.append("    " + "  ".join(cells))
    return lines
