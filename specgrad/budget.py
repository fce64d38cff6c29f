"""What a check will hold in memory, estimated before it runs, and the limit it must fit.

A check that does not fit is refused (ERROR, with the estimate and the limit) instead of
being started and taking the machine down. The estimate counts what the engine itself
keeps, in bytes, from shapes and dtypes (all figures are float64, whatever the check's dtype):
- the case's tensors: each in its own dtype, plus float64 copies (the oracle's, and a copy
  per device);
- per element of the checked tensor: the arrays the differences and the comparison keep
  (derivative, one-sided slopes, noise, term sizes, fan-out, bounds, evidence...);
- per output element: forward's outputs at the case's point and at perturbed points, in
  float64, with the upstream gradient and its square;
- stacked evaluations (several perturbed copies per forward call): STACK_BYTES at most.
The per-element and per-output counts are measured (tracemalloc over element-wise,
structured, dense and directional checks, tests/unit/test_budget.py) and rounded up: the
test holds the estimate above the measured peak and within a small factor of it. What the
layer's own code allocates inside forward is not counted; a worker process (-j, --isolate)
contains a layer that allocates without bound.

Before a case's first forward call its outputs are unknown, so the case is refused on its
tensors alone; each gradient check is estimated again, with the outputs, before it starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from specgrad.compile import CasePlan

#: stacked evaluations (perturbed copies of a batch in one forward call) take at most this:
#: enough copies to make a call's fixed cost vanish, not so many that they stop fitting in cache
STACK_BYTES = 16 << 20
#: float64 arrays the engine keeps per element of the checked tensor, by method (measured
#: peaks were 16 and 13: tests/unit/test_budget.py)
PER_ELEMENT = {"elementwise": 24, "directional": 16}
#: float64 copies of each output element a gradient check holds (measured: 19)
PER_OUTPUT = 24
#: float64 copies of each of the case's tensors, besides the tensor itself
TENSOR_COPIES = 2
#: of the memory the machine has available when a check starts, the share one check may
#: take when --max-memory is not given (the rest: the layer's own allocations, other workers)
AVAILABLE_SHARE = 0.5


@dataclass(frozen=True, slots=True)
class Estimate:
    """Bytes, by what holds them."""

    tensors: int
    per_element: int = 0
    outputs: int = 0
    stacked: int = 0

    @property
    def total(self) -> int:
        return self.tensors + self.per_element + self.outputs + self.stacked

    def describe(self) -> str:
        parts = [("tensors", self.tensors), ("per-element figures", self.per_element)]
        parts += [("outputs", self.outputs), ("stacked evaluations", self.stacked)]
        shown = ", ".join(f"{what} {size_text(n)}" for what, n in parts if n)
        return f"{size_text(self.total)} ({shown})"


def case_estimate(plan: CasePlan) -> Estimate:
    """The case's tensors (before anything is called)."""
    total = 0
    for t in plan.spec.tensors:
        n = _elements(t.shape)
        total += n * (_itemsize(t.dtype_in(plan.dtype)) + 8 * TENSOR_COPIES)
    return Estimate(tensors=total)


def check_estimate(plan: CasePlan, tensor: str, output_elements: int) -> Estimate:
    """One gradient check of `tensor`, forward's outputs having `output_elements` in all."""
    n = _elements(plan.spec.tensor(tensor).shape)
    per = PER_ELEMENT.get(plan.method.mode, max(PER_ELEMENT.values()))
    rest = Estimate(
        tensors=case_estimate(plan).tensors,
        per_element=8 * per * n,
        outputs=8 * PER_OUTPUT * output_elements,
    )
    if plan.method.mode != "elementwise":
        return rest
    return Estimate(rest.tensors, rest.per_element, rest.outputs, stack_budget(plan, rest.total))


def taylor_estimate(plan: CasePlan, output_elements: int) -> Estimate:
    """The Taylor test: every differentiable tensor moves along a direction at once."""
    n = sum(_elements(t.shape) for t in plan.spec.tensors if t.grad)
    return Estimate(
        tensors=case_estimate(plan).tensors,
        per_element=8 * PER_ELEMENT["directional"] * n,
        outputs=8 * PER_OUTPUT * output_elements,
    )


def agreement_estimate(plan: CasePlan) -> Estimate:
    """Comparing implementations or devices: each side holds the case's tensors (outputs
    and gradients, about as large, are counted as a tensor-sized copy per side)."""
    sides = 1 + len(plan.targets)
    return Estimate(tensors=case_estimate(plan).tensors * 2 * sides)


def stack_budget(plan: CasePlan, rest: int) -> int:
    """Bytes stacked evaluations may take beside `rest` (the check's other memory):
    STACK_BYTES, or what --max-memory leaves, so stacking never pushes a check over it."""
    if plan.method.max_memory is None:
        return STACK_BYTES
    return max(0, min(STACK_BYTES, plan.method.max_memory - rest))


def stack_bytes(plan: CasePlan, tensor: str, output_elements: int) -> int:
    """What stacked evaluations of `tensor`'s gradient check may take."""
    return check_estimate(plan, tensor, output_elements).stacked


#: the environment variable a worker pool sets to its size: the default limit is shared
WORKERS_VARIABLE = "SPECGRAD_WORKERS"


def limit(plan: CasePlan) -> tuple[int, str] | None:
    """(bytes, where the limit comes from): --max-memory (or [tool.specgrad] max_memory),
    else a share of the memory available now, split between the workers; None where that
    cannot be read."""
    if plan.method.max_memory is not None:
        return plan.method.max_memory, "--max-memory or [tool.specgrad] max_memory"
    available = available_memory()
    if available is None:
        return None
    try:
        workers = max(1, int(os.environ.get(WORKERS_VARIABLE, "1")))
    except ValueError:
        workers = 1
    share = int(available * AVAILABLE_SHARE / workers)
    split = f" among {workers} workers" if workers > 1 else ""
    return share, (
        f"half the memory available when it started, {size_text(available)}{split}; --max-memory sets it"
    )


def refusal(estimate: Estimate, plan: CasePlan, what: str) -> str | None:
    """Why `what` is not run (None: it fits)."""
    bound = limit(plan)
    if bound is None or estimate.total <= bound[0]:
        return None
    return (
        f"refused before running: {what} needs an estimated {estimate.describe()}, over the memory "
        f"limit of {size_text(bound[0])} ({bound[1]}); raise --max-memory if the machine has it, "
        "or give the spec smaller shapes"
    )


def available_memory() -> int | None:
    """Bytes the machine can give without swapping (Linux: MemAvailable), else None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def size_text(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _elements(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _itemsize(dtype: str) -> int:
    return {"float16": 2, "float32": 4, "float64": 8, "int32": 4, "int64": 8, "bool": 1}.get(dtype, 8)
