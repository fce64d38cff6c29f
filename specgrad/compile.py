"""Stage 3: a Spec becomes CasePlans, one per dtype x input case, each naming its checks.

Check id grammar:  NAME[DTYPE,CASE]::TARGET  where TARGET is a tensor name (its gradient
check) or `contract.KIND` (a contract check). With several implementations, each one's
checks are NAME@IMPL[DTYPE,CASE]::TARGET and their agreement with the reference is
NAME[DTYPE,CASE]::agree.IMPL. On another device than the CPU the bracket names it,
NAME[DTYPE,CASE,gpu]::TARGET, and NAME[DTYPE,CASE]::device.gpu compares the GPU's
outputs and gradients with the CPU's. Ids are stable: they depend only on the spec and
the devices asked for.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

from specgrad.backends import DEFAULT_DEVICE
from specgrad.errors import Location
from specgrad.model import Case, Method, Spec
from specgrad.numerics.tolerance import UNIT_ROUNDOFF, Tolerance
from specgrad.results import CheckResult, Status
from specgrad.select import Matcher

#: contract checks, in the order they run for every case
CONTRACTS = (
    "forward_output",
    "deterministic",
    "backward_grads",
    "backward_deterministic",
    "zero_upstream",
    "layout",
    "finite",
    "no_mutation",
    "taylor",
    "jvp",  # only where the binding asks for it (jvp: autograd)
)


@dataclass(frozen=True, slots=True)
class CasePlan:
    """One forward/backward evaluation point and the checks read off it."""

    spec: Spec
    dtype: str
    case: Case
    seed: int
    tolerance: Tolerance
    targets: tuple[str, ...]  # selected: differentiable tensor names and contract.KIND
    method: Method = field(default_factory=Method)
    #: checks: the spec's own checks; agreement: the implementations of `spec` compared
    #: with its reference (targets agree.IMPL); devices: `spec` on other devices compared
    #: with it on this one (targets device.DEVICE)
    kind: Literal["checks", "agreement", "devices"] = "checks"
    device: str = DEFAULT_DEVICE  # where the checks run (devices: the reference device)
    #: keep every gradient check's per-element figures (`explain`), not only a failure's
    evidence: bool = False
    #: seconds each check may take (the spec's timeout:, else --timeout; None: no limit)
    timeout: float | None = None

    def check_id(self, target: str) -> str:
        return check_id(self.spec.name, self.dtype, self.case.name, target, self.device)

    def result(self, target: str, status: Status, message: str = "", **figures: Any) -> CheckResult:
        """The result of one of this plan's checks (`figures`: CheckResult's other fields)."""
        origin = self.origin(target)
        return CheckResult(
            check_id=self.check_id(target),
            spec=self.spec.name,
            file=str(self.spec.path),
            dtype=self.dtype,
            case=self.case.name,
            target=target,
            status=status,
            message=message,
            seed=self.seed,
            device=self.device,
            line=origin.line,
            line_file="" if origin.file == self.spec.path else _shown(origin.file),
            **figures,
        )

    def origin(self, target: str) -> Location:
        """Where the check comes from: its tensor's declaration (gradient checks), its case
        (contracts), the spec's name (agreement checks); in a base spec where `extends:`
        brought it in."""
        if target.startswith(("agree.", "device.")):
            return self.spec.name_location
        if target.startswith("contract."):
            return self.case.location if self.case.location.line else self.spec.name_location
        tensor = next((t for t in self.spec.tensors if t.name == target), None)
        return tensor.location if tensor is not None else self.spec.name_location

    def tolerance_for(self, tensor: str, *also: str) -> tuple[str, Tolerance]:
        """(dtype, tolerance) for a tensor's check: of the coarsest of its dtype, the check's
        and `also` (e.g. the precision forward resolves the tensor at), so a float16
        parameter in a float64 check gets a float16 bound."""
        dtypes = (self.spec.tensor(tensor).dtype_in(self.dtype), self.dtype, *also)
        coarse = max(dtypes, key=lambda d: UNIT_ROUNDOFF.get(d, 0.0))
        return coarse, self.spec.tolerances.get(coarse, self.tolerance)

    @property
    def gradient_targets(self) -> tuple[str, ...]:
        if self.kind != "checks":
            return ()
        return tuple(t for t in self.targets if not t.startswith("contract."))


def _shown(path: Path) -> str:
    """A base spec's path as a person reads it: relative to the current folder if inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


#: check_id's grammar read back (explain finds a check by it, reports are read by it)
CHECK_ID = re.compile(
    r"^(?P<name>[^\[\]]+)\[(?P<dtype>[^,\]]+),(?P<case>[^,\]]+)(?:,(?P<device>[^\]]+))?\]::(?P<target>.+)$"
)


def check_id(spec: str, dtype: str, case: str, target: str, device: str = DEFAULT_DEVICE) -> str:
    where = "" if device == DEFAULT_DEVICE else f",{device}"
    return f"{spec}[{dtype},{case}{where}]::{target}"


#: --mode fast: directions per tensor (unless the spec chose the directional method itself),
#: and the contracts it leaves out because each takes calls of its own
FAST_DIRECTIONS = 1
FAST_OMITTED = ("backward_deterministic", "zero_upstream", "layout", "taylor")


def all_targets(spec: Spec) -> tuple[str, ...]:
    contracts = (c for c in CONTRACTS if c not in spec.contracts_off and (c != "jvp" or spec.jvp))
    return (*(t.name for t in spec.tensors if t.grad), *(f"contract.{c}" for c in contracts))


def compile_spec(
    spec: Spec,
    *,
    dtypes: Sequence[str] | None = None,
    seed: int | None = None,
    select: Matcher | None = None,
    mode: str | None = None,
    max_elements: int | None = None,
    max_memory: int | None = None,
    devices: Sequence[str] | None = None,
    timeout: float | None = None,
) -> tuple[CasePlan, ...]:
    """Plans for the spec's dtypes (filtered by `dtypes`) and cases, checks filtered by
    `select`; `mode` "fast" makes every gradient check directional, "per-element" perturbs
    one element at a time (no structure), "default" keeps the spec's method; `max_elements`
    caps the elements checked per tensor, `max_memory` the bytes a check's batched
    evaluations may hold (all override the spec's method). `devices` (the command line's)
    replaces the spec's own `device:` (default: the CPU); with several, each device after
    the first is compared with the first. `timeout` (seconds per check) applies where the
    spec sets none of its own."""
    if spec.abstract:
        return ()
    where = tuple(devices) if devices else spec.devices or (DEFAULT_DEVICE,)
    derived = partial(  # the specs derived from this one compile with the same options
        compile_spec,
        dtypes=dtypes,
        seed=seed,
        select=select,
        mode=mode,
        max_elements=max_elements,
        max_memory=max_memory,
        devices=devices,
        timeout=timeout,
    )
    limit = spec.timeout if spec.timeout is not None else timeout
    if spec.implementations:
        own = [plan for impl in spec.implementations for plan in derived(impl)]
        compared = spec.method if max_memory is None else replace(spec.method, max_memory=max_memory)
        agree = _agreement_plans(spec, compared, dtypes, seed, select, where)
        return (*own, *(replace(p, timeout=limit) for p in agree))
    method = spec.method
    omitted: tuple[str, ...] = ()
    if mode == "fast":
        directions = method.directions if method.mode == "directional" else FAST_DIRECTIONS
        method = replace(method, mode="directional", directions=directions)
        omitted = tuple(f"contract.{c}" for c in FAST_OMITTED)
    elif mode == "per-element":
        method = replace(method, mode="elementwise", structured=False)
    if max_elements is not None:
        method = replace(method, max_elements=max_elements)
    if max_memory is not None:
        method = replace(method, max_memory=max_memory)
    candidates = tuple(t for t in all_targets(spec) if t not in omitted)
    plans = []
    for device in where:
        plans += _case_plans(spec, candidates, method, "checks", dtypes, seed, select, device)
    if len(where) > 1:
        others = tuple(f"device.{d}" for d in where[1:])
        plans += _case_plans(spec, others, method, "devices", dtypes, seed, select, where[0])
    plans = [replace(p, timeout=limit) for p in plans]
    if spec.second_order is not None:
        plans += derived(spec.second_order)
    return tuple(plans)


def _agreement_plans(
    spec: Spec,
    method: Method,
    dtypes: Sequence[str] | None,
    seed: int | None,
    select: Matcher | None,
    devices: Sequence[str],
) -> list[CasePlan]:
    """Per device, dtype and case, each non-reference implementation against the reference."""
    others = tuple(
        f"agree.{s.implementation}" for s in spec.implementations if s.implementation != spec.reference
    )
    plans = []
    for device in devices:
        plans += _case_plans(spec, others, method, "agreement", dtypes, seed, select, device)
    return plans


def _case_plans(
    spec: Spec,
    candidates: tuple[str, ...],
    method: Method,
    kind: Literal["checks", "agreement", "devices"],
    dtypes: Sequence[str] | None,
    seed: int | None,
    select: Matcher | None,
    device: str = DEFAULT_DEVICE,
) -> list[CasePlan]:
    """A plan per dtype (of those asked for) and case, with the candidates `select` keeps."""
    plans = []
    for dtype in spec.dtypes:
        if dtypes is not None and dtype not in dtypes:
            continue
        for case in spec.cases:
            targets = tuple(
                t
                for t in candidates
                if select is None or select(check_id(spec.name, dtype, case.name, t, device))
            )
            if targets:
                seed_ = spec.seed if seed is None else seed
                plans.append(
                    CasePlan(spec, dtype, case, seed_, spec.tolerances[dtype], targets, method, kind, device)
                )
    return plans
