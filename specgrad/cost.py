"""What a case plan costs to run, estimated from its shapes and method before anything runs:
what -j N and --shard K/N balance (budget.py estimates memory the same way).

A check's time is its forward calls times what one call costs. A call costs a fixed
dispatch (by framework: an eager jax call is ~10x a numpy one) plus its arithmetic, taken
as proportional to the elements it touches (the case's tensors, in and out). The calls a
gradient check makes follow from its method: element-wise, two per element perturbed
(a stratified sample: two per sampled element), or two per colour group where the
Jacobian's structure lets elements share a call (declared `elementwise`: one group;
detected: about 2*sqrt(n) groups for the layers of the zoo, measured; dense: n groups);
directional, two per direction. The contracts take a few calls each, the Taylor test a
dozen. Apart from the calls, a process pays once for each framework it imports (torch,
jax: seconds) and each spec it binds (jax compiles its calls): `needs` names those, so a scheduler can keep a
spec's plans on a worker that has them loaded.

The figures are seconds on one core of the machine the constants were fitted on
(benchmarks/scale.py prints estimate against measured time): only their ratios matter,
and a misestimate costs balance, never a result. Everything here is a function of the
plan alone (never of this machine), so every shard of a CI matrix computes the same
partition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from specgrad.compile import CasePlan
from specgrad.model import Spec

#: seconds of fixed cost per forward or backward call, by framework: eager dispatch, and the
#: engine's own work per call (fitted on the zoo; benchmarks/scale.py sets the estimates
#: against measured times)
CALL_SECONDS = {"numpy": 1.5e-4, "cupy": 3e-4, "torch": 6e-4, "jax": 2.5e-3}
#: seconds per element a call reads or writes (float64 arithmetic, a few passes)
ELEMENT_SECONDS = 1e-8
#: seconds a process spends the first time it uses a framework (import, first calls)
WARMUP_SECONDS = {"numpy": 0.0, "cupy": 1.5, "torch": 1.5, "jax": 1.5}
#: seconds binding a spec's callables costs the first time in a process (importing its module;
#: jax: compiling its calls for the spec's shapes, about 2 s for the zoo's attention), by framework
BIND_SECONDS = {"numpy": 0.05, "cupy": 0.2, "torch": 0.2, "jax": 2.0}
#: calls a contract takes besides the case's first forward and backward calls
CONTRACT_CALLS = {"backward_deterministic": 2, "zero_upstream": 2, "layout": 4, "taylor": 12, "jvp": 20}
#: calls every case makes: forward twice, backward (counted as two), the precision probes
CASE_CALLS = 6


@dataclass(frozen=True, slots=True)
class Cost:
    """A plan's estimated seconds on one core, and what a process must have loaded first
    (framework:NAME, bind:FRAMEWORK:SPEC), each costing `warmup(name)` seconds once per process."""

    seconds: float
    needs: frozenset[str]


def estimate(plan: CasePlan) -> Cost:
    """The plan's seconds (its calls times a call's cost) and what it needs loaded."""
    frameworks = _frameworks(plan)
    per_call = max(CALL_SECONDS.get(f, CALL_SECONDS["numpy"]) for f in frameworks)
    per_call += ELEMENT_SECONDS * 2 * sum(_size(t.shape) for t in plan.spec.tensors)
    if plan.kind != "checks":  # a forward and a backward call per implementation or device
        calls: float = 2 * (1 + len(plan.targets))
    else:
        calls = CASE_CALLS + sum(
            _gradient_calls(plan, t) if not t.startswith("contract.") else _contract_calls(t)
            for t in plan.targets
        )
    seconds = calls * per_call
    bound = plan.spec.implementations if plan.kind == "agreement" else (plan.spec,)
    needs = {f"framework:{f}" for f in frameworks} | {f"bind:{s.framework}:{s.name}" for s in bound}
    return Cost(seconds, frozenset(needs))


def warmup(need: str) -> float:
    """Seconds a process spends on a need of `Cost.needs` the first time."""
    kind, _, rest = need.partition(":")
    framework = rest.partition(":")[0]
    table = WARMUP_SECONDS if kind == "framework" else BIND_SECONDS
    return table.get(framework, 1.0)


def _frameworks(plan: CasePlan) -> frozenset[str]:
    sides: tuple[Spec, ...] = plan.spec.implementations if plan.kind == "agreement" else (plan.spec,)
    used = {s.framework for s in sides}
    devices = (plan.device, *(t.removeprefix("device.") for t in plan.targets if t.startswith("device.")))
    if any(d == "gpu" for d in devices):
        used.add("cupy")  # the device's array library, whatever the binding's framework
    return frozenset(used)


def _gradient_calls(plan: CasePlan, name: str) -> float:
    n = _size(plan.spec.tensor(name).shape)
    method = plan.method
    if method.mode == "directional":
        return 2 * method.directions + 2
    if method.max_elements is not None:
        n = min(n, method.max_elements)
    declared = plan.spec.structure_of(name)
    if declared == "elementwise":
        groups = 1.0
    elif declared == "dense" or not method.structured or method.max_elements is not None:
        groups = float(n)
    else:  # detected (a few probe calls first), or declared links: a window of neighbours
        groups = min(float(n), 2 * math.sqrt(n)) + 4
    return 2 * groups


def _contract_calls(target: str) -> float:
    return CONTRACT_CALLS.get(target.removeprefix("contract."), 0)


def _size(shape: tuple[int, ...]) -> int:
    return math.prod(shape)
