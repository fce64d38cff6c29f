"""Stage 4: run CasePlans against a backend and yield CheckResults. No printing, no I/O.

One case = one evaluation point: the contract checks are read off a forward, a second
forward (determinism) and a backward there; then each selected tensor's gradient check
perturbs that tensor element by element. Anything user code raises becomes an ERROR of
the checks it prevents, never an exception out of the runner.
"""

from __future__ import annotations

import math
import time
import traceback
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from specgrad.agreement import AgreementRun, Side
from specgrad.backends import Backend, backend, unavailable
from specgrad.bindings import (
    ContractError,
    Evaluator,
    forward_only,
    grads_by_name,
    make_evaluator,
    raw_outputs_of,
    round_trip,
)
from specgrad.budget import agreement_estimate, case_estimate, check_estimate, refusal, taylor_estimate
from specgrad.compile import CasePlan
from specgrad.contracts import PROBED, Probe, same
from specgrad.errors import SpecError, SpecIssue
from specgrad.forward_mode import check_jvp
from specgrad.forward_mode import describe as describe_jvp
from specgrad.frameworks import Unavailable
from specgrad.gradient_check import (
    NOTHING_TO_VERIFY,
    Verdict,
    bound,
    evidence,
    joint_kink_check,
    judge,
    kink_candidates,
    measured_rounding,
    numerical_gradient,
    plain,
    refine,
)
from specgrad.model import LayerBinding, Spec
from specgrad.numerics.colored import StructureViolation, footprints
from specgrad.numerics.finite_diff import InconsistentOutput, NumericalGradient, PerturbationError
from specgrad.numerics.inputs import make_inputs, make_upstream
from specgrad.numerics.sampling import stratified
from specgrad.numerics.taylor import TaylorResult
from specgrad.numerics.tolerance import FLOAT_DTYPES
from specgrad.projections import directional, taylor
from specgrad.results import CheckResult, Status
from specgrad.routes import Route, routes
from specgrad.structure import Coloring, StructureMismatch, coloring, detect, elementwise, worthwhile
from specgrad.structured import CONFIRMED, STRUCTURE_SAMPLE, confirm_alone, structured, verified

_PACKAGE_DIR = str(Path(__file__).resolve().parent)

#: a failing check keeps its per-element figures (for the HTML report's heatmaps) up to
#: this many compared elements: five float64 arrays, 40 MB at the limit
EVIDENCE_LIMIT = 1 << 20


def analytical_size(v: Verdict) -> int:
    return 0 if v.arrays is None else int(v.arrays[0].size)


def run_spec(
    spec: Spec, plans: Sequence[CasePlan], engines: Engines | None = None, observer: Observer | None = None
) -> Iterator[CheckResult]:
    """Run the spec's plans, binding each (derived) spec's callables on first use. Callables
    that cannot be imported are a SpecError: it ends a spec with one binding there; with
    several implementations, the others go on and the errors are raised at the end."""
    engines = engines or Engines()
    issues: list[SpecIssue] = []
    for plan in plans:
        try:
            yield from run_plan(plan, engines, observer)
        except SpecError as exc:
            if not spec.implementations:
                raise
            issues += [i for i in exc.issues if i not in issues]
    if issues:
        raise SpecError(issues)


class Bindings:
    """Evaluators by spec name for one backend, each bound once; what stopped a binding (a
    framework that cannot be loaded, callables that cannot be imported) is raised again on
    every use."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._made: dict[str, Evaluator | Unavailable | SpecError] = {}

    def __call__(self, spec: Spec) -> Evaluator:
        if spec.name not in self._made:
            try:
                self._made[spec.name] = make_evaluator(spec, self.backend.xp)
            except (Unavailable, SpecError) as exc:
                self._made[spec.name] = exc
        made = self._made[spec.name]
        if isinstance(made, (Unavailable, SpecError)):
            raise made
        return made


class Engines:
    """Each device's backend and bound evaluators, made on first use (a device that cannot
    be used raises DeviceUnavailable each time it is asked for)."""

    def __init__(self) -> None:
        self._sides: dict[str, Side] = {}

    def __call__(self, device: str) -> Side:
        if device not in self._sides:
            made = backend(device)
            self._sides[device] = Side(Bindings(made), made)
        return self._sides[device]


class Observer(Protocol):
    """Told what a plan is doing while it runs: a worker process passes it on, so the
    parent knows which checks a hang or a crash belongs to and keeps those already done."""

    def step(self, label: str, targets: tuple[str, ...], at_least: float = 0.0) -> None:
        """`targets` are being worked on now (`label` says how, for a person); a time limit
        gives this step `at_least` seconds (importing a framework takes its own time)."""

    def result(self, result: CheckResult) -> None:
        """One check finished (the contracts settled by the first calls come first)."""


#: seconds the step that imports a spec's callables gets whatever the timeout (import torch
#: takes seconds, and a worker stopped by a timeout imports again from scratch)
IMPORT_SECONDS = 120.0


class _Quiet:
    def step(self, label: str, targets: tuple[str, ...], at_least: float = 0.0) -> None:
        pass

    def result(self, result: CheckResult) -> None:
        pass


def run_plan(plan: CasePlan, engines: Engines, observer: Observer | None = None) -> list[CheckResult]:
    """One plan's results: its checks, or the agreement of implementations or devices. An
    implementation whose framework is unavailable, or a device the spec does not run on or
    that cannot be used here, has its checks skipped with the reason."""
    observer = observer or _Quiet()
    skipped = _not_run(plan)
    if skipped:
        return [plan.result(t, Status.SKIP, f"not run: {skipped}", note=skipped) for t in plan.targets]
    if plan.kind != "checks":
        refused = refusal(agreement_estimate(plan), plan, "the comparison")
        if refused:
            return [plan.result(t, Status.ERROR, refused) for t in plan.targets]
        observer.step("importing the spec's callables", plan.targets, IMPORT_SECONDS)
        _bind_all(plan, engines)
        observer.step(
            "the comparison of " + ("implementations" if plan.kind == "agreement" else "devices"),
            plan.targets,
        )
        return AgreementRun(plan, engines).run()
    side = engines(plan.device)
    observer.step("importing the spec's callables", plan.targets, IMPORT_SECONDS)
    try:
        evaluator = side.bind(plan.spec)
    except Unavailable as exc:
        note = f"implementation {plan.spec.implementation or plan.spec.name} not run: {exc}"
        return [plan.result(t, Status.SKIP, f"not run: {exc}", note=note) for t in plan.targets]
    return CaseRun(plan, evaluator, side.backend, observer).run()


def _bind_all(plan: CasePlan, engines: Engines) -> None:
    """Import every callable a comparison uses before it starts (its own step: imports take
    their own time); what cannot be bound is AgreementRun's to report, where it uses it."""
    if plan.kind == "agreement":
        pairs = [(plan.device, impl) for impl in plan.spec.implementations]
    else:
        pairs = [(d, plan.spec) for d in (plan.device, *(t.removeprefix("device.") for t in plan.targets))]
    for device, spec in pairs:
        if unavailable(device) or not spec.runs_on(device):
            continue
        try:
            engines(device).bind(spec)
        except Exception:  # noqa: BLE001 - reported by AgreementRun where the binding is used
            pass


def _not_run(plan: CasePlan) -> str:
    """Why the plan cannot run on its device ("" where it can)."""
    if plan.kind == "checks" and not plan.spec.runs_on(plan.device):
        where = ", ".join(plan.spec.devices or ())
        return f"device {plan.device} not used: {plan.spec.name} runs on {where} only (its spec's device:)"
    why = unavailable(plan.device)
    return f"device {plan.device} unavailable: {why}" if why else ""


def describe_exception(what: str, exc: BaseException, frames: int = 3) -> str:
    """'forward raised E: msg' plus the last frames outside specgrad (the user's code)."""
    tb = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if not f.filename.startswith(_PACKAGE_DIR) or "/zoo/" in f.filename
    ]
    lines = [f"{what} raised {type(exc).__name__}: {exc}"]
    for f in tb[-frames:]:
        lines.append(f'  File "{f.filename}", line {f.lineno}, in {f.name}')
        if f.line:
            lines.append(f"    {f.line}")
    return "\n".join(lines)


def _looks_like_array(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, (str, bytes))


def _is_float(array: Any) -> bool:
    return str(array.dtype) in FLOAT_DTYPES


def _largest(arrays: Iterable[Any | None], xp: ModuleType) -> float:
    """The largest finite magnitude over `arrays` (None and empty ones skipped)."""
    sizes = [
        float(xp.max(xp.abs(xp.where(xp.isfinite(a), a, 0)))) for a in arrays if a is not None and a.size
    ]
    return max(sizes, default=0.0)


class CaseRun:
    """The checks of one CasePlan; `run()` returns them in the plan's target order."""

    def __init__(
        self, plan: CasePlan, evaluator: Evaluator, backend: Backend, observer: Observer | None = None
    ) -> None:
        self.plan, self.evaluator, self.backend = plan, evaluator, backend
        self.observer = observer or _Quiet()
        self.xp = backend.xp
        self.spec = plan.spec
        self.verdicts: dict[str, tuple[Status, str]] = {}
        self.blocked: str | None = None  # why gradient checks cannot run
        self.routes: dict[str, Route] | None = None  # how each tensor's numerical gradient is taken
        self.measured: dict[str, Any] | None = None  # the analytical gradients' measured rounding
        self.kinked: dict[str, int] = {}  # tensors whose gradient check found kinks, and how many
        self.scales: tuple[float, float] | None = None  # see _scales
        self.methods: dict[str, str] = {}  # how each tensor's differences were taken, where not plain
        self.probed = plan.method.mode != "directional"  # routes' precision probes (fast mode: lazily)
        self.structured_off: set[str] = set()  # tensors whose detected structure failed its cross-check

    # -- orchestration --------------------------------------------------------------

    def run(self) -> list[CheckResult]:
        # overflow and NaN are findings here (the finite contract, a check's figures), not
        # noise for stderr: arithmetic on non-finite values stays quiet
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return self._run()

    def _run(self) -> list[CheckResult]:
        start = time.perf_counter()
        phase = tuple(
            t
            for t in self.plan.targets
            if t.startswith("contract.") and t not in ("contract.taylor", "contract.jvp")
        )
        self.observer.step("the case's forward and backward calls", phase)
        results = self._prepare()
        base = (time.perf_counter() - start) / max(len(self.plan.targets), 1)
        for target in phase:  # settled by the phase: told at once (a later hang keeps them)
            status, message = self.verdicts.get(target, (Status.ERROR, "not evaluated"))
            results[target] = self.plan.result(target, status, message, duration=base)
        for result in results.values():
            self.observer.result(result)
        for target in self.plan.targets:
            if target in results:
                continue
            if target == "contract.taylor" and target not in self.verdicts:
                self.observer.step("the Taylor test", (target,))
                results[target] = self._taylor()
            elif target == "contract.jvp" and target not in self.verdicts:
                self.observer.step("the forward-mode check", (target,))
                results[target] = self._jvp()
            elif target.startswith("contract."):
                status, message = self.verdicts.get(target, (Status.ERROR, "not evaluated"))
                results[target] = self.plan.result(target, status, message, duration=base)
            else:
                self.observer.step(f"the gradient check of {target}", (target,))
                results[target] = self._gradient(target)
            self.observer.result(results[target])
        return [results[t] for t in self.plan.targets]

    def _prepare(self) -> dict[str, CheckResult]:
        """Contract phase; returns gradient results already decided (errors) by target."""
        refused = refusal(case_estimate(self.plan), self.plan, "the case")
        if refused:
            return self._error_all(refused)
        try:
            host = make_inputs(self.spec, self.plan.case, self.plan.dtype, self.plan.seed)
        except Exception as exc:  # noqa: BLE001 - e.g. an .npy file changed since validation
            return self._error_all(f"cannot make inputs: {type(exc).__name__}: {exc}")
        self.host = host
        self.tensors = {n: self.backend.asarray(a) for n, a in host.items()}
        try:
            self._contract_phase()
        except _Abort as abort:
            return self._error_all(str(abort), abort.contract)
        return {}

    def _error_all(self, message: str, contract: str | None = None) -> dict[str, CheckResult]:
        for target in self.plan.targets:
            if target.startswith("contract."):
                status = Status.FAIL if target == contract else Status.ERROR
                self.verdicts.setdefault(target, (status, message))
        self.blocked = message
        return {t: self.plan.result(t, Status.ERROR, message) for t in self.plan.gradient_targets}

    def _fail(self, contract: str, message: str, status: Status = Status.FAIL) -> None:
        previous = self.verdicts.get(f"contract.{contract}")
        text = f"{previous[1]}; {message}" if previous else message
        self.verdicts[f"contract.{contract}"] = (status, text)

    # -- contract phase ---------------------------------------------------------------

    def _call_forward(self) -> tuple[tuple[Any, ...], bool, Any]:
        try:
            raw, state = self.evaluator.forward(self.tensors)
        except SpecError:
            raise  # the binding itself is wrong: a located spec error, not a check verdict
        except ContractError as exc:
            raise _Abort(f"forward: {exc}", "contract.forward_output") from None
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - user code
            raise _Abort(self._describe("forward", exc)) from None
        outputs, was_tuple = raw_outputs_of(raw)
        return outputs, was_tuple, state

    def _contract_phase(self) -> None:
        outputs, was_tuple, _ = self._call_forward()
        self.outputs = outputs
        forward_mutated = self._mutated()
        self._check_outputs(outputs)
        self._settled("forward_output")
        again, _, state = self._call_forward()
        self._check_deterministic(outputs, again)
        self._settled("deterministic")
        upstream = make_upstream(
            {i: tuple(o.shape) for i, o in enumerate(outputs) if _is_float(o)},
            self.plan.dtype,
            self.plan.seed,
        )
        g = [self.backend.asarray(upstream[i]) if i in upstream else None for i in range(len(outputs))]
        self.upstream64 = [None if x is None else x.astype(self.xp.float64) for x in g]
        grad_out = tuple(g) if was_tuple else g[0]
        self.was_tuple = was_tuple
        upstream_copies = [None if x is None else x.copy() for x in g]
        if forward_mutated:
            self.blocked = (
                f"not run: forward modifies its input(s) {', '.join(forward_mutated)}, "
                "so perturbed evaluations would not be reproducible"
            )
        try:
            raw_grads = self.evaluator.backward(state, grad_out)
        except ContractError as exc:
            raise _Abort(f"backward: {exc}", "contract.backward_grads") from None
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - user code
            raise _Abort(self._describe("backward", exc), "contract.backward_grads") from None
        self._check_mutation(forward_mutated, self._mutated())
        if any(x is not None and not same(x, y, self.xp) for x, y in zip(g, upstream_copies, strict=True)):
            self._fail("no_mutation", "backward modified its upstream gradient (grad_out) in place")
        self.grads = self._check_grads(raw_grads)
        self._check_finite(outputs)
        self._settled("no_mutation", "backward_grads", "finite")
        self._probe_contracts(was_tuple, upstream_copies)

    def _probe_contracts(self, was_tuple: bool, upstream: list[Any | None]) -> None:
        """The contracts that take calls of their own (specgrad.contracts)."""
        wanted = [k for k in PROBED if f"contract.{k}" in self.plan.targets]
        if not wanted:
            return
        if self.blocked or self.grad_problems:
            why = self.blocked or "not run: backward's gradients are unusable (see contract.backward_grads)"
            for k in wanted:
                self.verdicts.setdefault(f"contract.{k}", (Status.ERROR, why))
            return
        probe = Probe(
            self.spec,
            self.evaluator,
            self.xp,
            self.tensors,
            self.outputs,
            self.grads,
            upstream,
            was_tuple,
            self.plan.dtype,
        )
        checks = {
            "backward_deterministic": lambda: probe.backward_twice(self.spec.nondet_tol),
            "zero_upstream": probe.zero_upstream,
            "layout": probe.layout,
        }
        for k in wanted:
            message = checks[k]()
            if message:
                self._fail(k, message)
            self._settled(k)

    def _settled(self, *contracts: str) -> None:
        """These contracts ran: those that did not fail passed (an abort later keeps that)."""
        for contract in contracts:
            self.verdicts.setdefault(f"contract.{contract}", (Status.PASS, ""))

    def _mutated(self) -> list[str]:
        changed = [
            n for n, a in self.tensors.items() if not same(a, self.backend.asarray(self.host[n]), self.xp)
        ]
        for n in changed:  # restore, so later evaluations see the case's values
            self.tensors[n][...] = self.backend.asarray(self.host[n])
        return changed

    def _check_mutation(self, by_forward: list[str], by_backward: list[str]) -> None:
        if by_forward:
            self._fail("no_mutation", f"forward modified {', '.join(by_forward)}")
        if by_backward:
            self._fail("no_mutation", f"backward modified {', '.join(by_backward)}")

    def _check_outputs(self, outputs: tuple[Any, ...]) -> None:
        bad = [
            self._not_an_array(f"output {i}", o)
            for i, o in enumerate(outputs)
            if not self.backend.is_array(o)
        ]
        if bad:
            raise _Abort("forward: " + "; ".join(bad), "contract.forward_output")
        for i, o in enumerate(outputs):
            if _is_float(o) and str(o.dtype) != self.plan.dtype:
                self._fail(
                    "forward_output",
                    f"output {i} has dtype {o.dtype}, expected {self.plan.dtype} (the check's dtype)",
                )
            elif not _is_float(o) and o.dtype.kind in "fc":
                self._fail(
                    "forward_output",
                    f"output {i} has dtype {o.dtype}: specgrad checks real "
                    "float16/32/64 outputs (integer outputs are passed over)",
                )

    def _not_an_array(self, what: str, value: Any) -> str:
        kind = "None" if value is None else f"a {type(value).__name__}"
        text = f"{what} is {kind}, not a {self.backend.name} array"
        if value is None and what.startswith("output") and isinstance(self.spec.binding, LayerBinding):
            text += " (if forward stores its result instead of returning it, set layer.output)"
        elif _looks_like_array(value) and self.backend.xp is np:
            text += " (convert it in the layer or a small wrapper, e.g. with numpy.asarray)"
        elif _looks_like_array(value):
            text += (
                f" (on the {self.backend.device} device the layer must return the device's arrays: "
                "compute with the inputs' namespace, not numpy, or give the spec `device: cpu`)"
            )
        return text

    def _check_deterministic(self, first: tuple[Any, ...], second: tuple[Any, ...]) -> None:
        repeated = len(first) == len(second) and all(
            self.backend.is_array(b) and same(self.xp.asarray(a), self.xp.asarray(b), self.xp)
            for a, b in zip(first, second, strict=True)
        )
        if not repeated:
            hint = "unseeded randomness or hidden state?"
            if isinstance(self.spec.binding, LayerBinding):
                hint = (
                    "every evaluation builds a fresh layer: does its constructor draw random values "
                    "that forward uses instead of the parameters specgrad sets at layer.params?"
                )
            self._fail(
                "deterministic", f"two forward calls on identical inputs gave different outputs ({hint})"
            )
            self.blocked = "not run: forward is not deterministic, so finite differences are meaningless"

    def _check_grads(self, raw: Any) -> dict[str, Any]:
        try:
            named = grads_by_name(raw, self.spec)
        except ContractError as exc:
            self._fail("backward_grads", str(exc))
            self.grad_problems = {n: f"no usable gradient: {exc}" for n in self.plan.gradient_targets}
            return {}
        self.grad_problems = {}
        usable = {}
        for name, grad in named.items():
            tensor = self.tensors[name]
            if not self.backend.is_array(grad):
                problem = self._not_an_array(f"gradient of {name}", grad)
            elif tuple(grad.shape) != tuple(tensor.shape):
                problem = (
                    f"gradient of {name} has shape {tuple(grad.shape)}, "
                    f"{name} has shape {tuple(tensor.shape)}"
                )
            else:
                # a copy: a gradient that views a buffer forward reuses must not change under
                # the perturbed evaluations that follow
                usable[name] = self.xp.asarray(grad).copy()
                if str(grad.dtype) != str(tensor.dtype):
                    self._fail(
                        "backward_grads",
                        f"gradient of {name} has dtype {grad.dtype}, {name} has dtype {tensor.dtype}",
                    )
                continue
            self._fail("backward_grads", problem)
            self.grad_problems[name] = problem
        return usable

    def _check_finite(self, outputs: tuple[Any, ...]) -> None:
        named = [(f"output {i}", self.xp.asarray(o)) for i, o in enumerate(outputs) if _is_float(o)]
        named += [(f"gradient of {n}", g) for n, g in self.grads.items() if _is_float(g)]
        for what, array in named:
            bad = int(array.size - int(self.xp.count_nonzero(self.xp.isfinite(array))))
            if bad:
                self._fail("finite", f"{what} has {bad} non-finite value(s)")

    # -- gradient phase ---------------------------------------------------------------

    def _output_elements(self) -> int:
        return sum(int(o.size) for o in self.outputs if _looks_like_array(o))

    def _gradient(self, name: str) -> CheckResult:
        if self.blocked:
            return self.plan.result(name, Status.ERROR, self.blocked)
        if name in self.grad_problems:
            return self.plan.result(name, Status.FAIL, self.grad_problems[name])
        outputs = self._output_elements()
        refused = refusal(
            check_estimate(self.plan, name, outputs), self.plan, f"the gradient check of {name}"
        )
        if refused:
            return self.plan.result(name, Status.ERROR, refused)
        start = time.perf_counter()
        if self.routes is None:
            targets = self.plan.gradient_targets
            self.observer.step("the precision probes of the gradient checks", targets[targets.index(name) :])
            self.routes = routes(
                self.plan, self._evaluate, self.tensors, self.outputs, self.xp, probe=self.probed
            )
            self.observer.step(f"the gradient check of {name}", (name,))
        route = self.routes[name]
        try:
            v = self._verdict(name, route)
        except PerturbationError as exc:
            return self.plan.result(
                name, Status.ERROR, self._perturbation_text(name, exc), duration=time.perf_counter() - start
            )
        except MemoryError:
            estimate = check_estimate(self.plan, name, outputs).describe()
            why = (
                f"ran out of memory during the check (estimated {estimate} for the engine, besides "
                "what the layer allocates); --max-memory refuses such a check before it starts"
            )
            return self.plan.result(name, Status.ERROR, why, duration=time.perf_counter() - start)
        except StructureViolation as exc:
            return self.plan.result(
                name,
                Status.ERROR,
                f"structure error: the spec's structure for {name} is wrong: {exc}",
                method="colored",
                duration=time.perf_counter() - start,
            )
        route = self.routes[name]  # fast mode may have probed it since
        status = Status.FAIL if not v.passed else Status.PASS
        if v.passed and v.message.startswith("inconclusive"):
            status = Status.ERROR
        elif v.passed and v.message.startswith(NOTHING_TO_VERIFY):
            status = Status.SKIP
        message = v.message
        if v.kinks:
            self.kinked[name] = v.kinks
        if status is Status.FAIL:
            status, message = self._explained(name, route, v)
        kept = None
        if self.plan.evidence or (status is not Status.PASS and analytical_size(v) <= EVIDENCE_LIMIT):
            kept = evidence(name, v, route.tensors[name], tuple(self.grads[name].shape), self.backend.to_host)
        return self.plan.result(
            name,
            status,
            message,
            comparison=v.comparison,
            tolerance=v.tolerance,
            numerical_dtype=route.dtype,
            note=route.note,
            kinks=v.kinks,
            method=v.method,
            sample=v.sample,
            duration=time.perf_counter() - start,
            evidence=kept,
        )

    def _explained(self, name: str, route: Route, v: Verdict) -> tuple[Status, str]:
        """A failure, with the Taylor test's reading of it: first order confirms a wrong
        gradient; second order means the gradient is right along a random direction, so the
        error is confined to a few elements, or, where the differences ran in the check's
        own low precision, the step is what failed (then the verdict is inconclusive)."""
        result = self._taylor_of([name]) if not v.kinks else "kinks"
        if isinstance(result, str) or not result.smooth or not all(map(math.isfinite, result.residuals)):
            return Status.FAIL, v.message  # no reading to add (an infinite gradient has none)
        if not result.second_order:
            return Status.FAIL, f"{v.message}\nTaylor test agrees, the gradient is wrong: {result.describe()}"
        if route.dtype != "float64":
            return Status.ERROR, (
                f"inconclusive: {v.message}\nbut along a random direction the gradient is right to second "
                f"order ({result.describe()}): the {route.dtype} step is too small or too large for this "
                "layer (it has no float64 oracle); make the layer accept float64"
            )
        return Status.FAIL, (
            f"{v.message}\nalong a random direction the gradient is right to second order "
            f"({result.describe()}): the error is confined to a few elements"
        )

    def _verdict(self, name: str, route: Route) -> Verdict:
        """Differences, bound, verdict; out-of-bound elements are looked at again at a finer
        step (curvature or a kink?) before a FAIL, and kinks are held to the spec's rule."""
        plan, xp, analytical = self.plan, self.xp, self.grads[name]
        case_scale, upstream_scale = self._scales()
        if plan.method.mode == "directional":
            fast = directional(
                name, route, plan, self._evaluate, self.upstream64, analytical, case_scale, upstream_scale, xp
            )
            if (fast is None or not fast.passed) and not self.probed:
                # the routes took each tensor's own precision unprobed: a layer that computes in
                # less inside fails on rounding, or looks kinked; probe the precision, judge again
                self.routes = routes(self.plan, self._evaluate, self.tensors, self.outputs, xp)
                self.probed = True
                route = self.routes[name]
                fast = directional(
                    name,
                    route,
                    plan,
                    self._evaluate,
                    self.upstream64,
                    analytical,
                    case_scale,
                    upstream_scale,
                    xp,
                )
            if fast is not None:
                return fast
            # every direction crosses the tensor's kinks: only elements can be judged there
            v = self._elementwise(name, route, case_scale, upstream_scale)
            return replace(v, method="elementwise (the directions crossed kinks)")
        v = self._elementwise(name, route, case_scale, upstream_scale)
        return replace(v, method=self.methods.get(name, v.method))

    def _scales(self) -> tuple[float, float]:
        """(largest analytical gradient of the case, largest upstream value), once per case."""
        if self.scales is None:
            self.scales = (_largest(self.grads.values(), self.xp), _largest(self.upstream64, self.xp))
        return self.scales

    def _coloring(self, name: str, route: Route) -> Coloring | None:
        """The groups the tensor's elements are differenced in: from the spec's declared
        structure, else detected (None: element by element). A declared structure that does
        not fit the outputs is a StructureViolation."""
        plan, xp = self.plan, self.xp
        declared = self.spec.structure_of(name)
        if declared == "dense" or not plan.method.structured or name in self.structured_off:
            return None
        if route.dtype == "float16":
            # a float16 forward rounds at 5e-4: interference below that could not be told
            # from rounding, so a layer with no float64 oracle is differenced element by element
            return None
        x = route.tensors[name]
        shape = tuple(int(n) for n in x.shape)
        out_shapes = [tuple(int(n) for n in g.shape) for g in self.upstream64 if g is not None]
        if declared == "auto":
            epsilon = plan.spec.tolerances[route.dtype].epsilon
            probe = footprints(
                lambda: self._evaluate(route.tensors), x, self.upstream64, epsilon, xp, self.backend.to_host
            )
            links = detect(shape, out_shapes, probe, plan.seed)
            if not links:
                return None
            origin = "detected"
        else:
            links, origin = (elementwise(shape) if declared == "elementwise" else declared), "declared"
        try:
            colors = coloring(shape, links, out_shapes, origin)
        except StructureMismatch as exc:
            if origin == "declared":
                raise StructureViolation(str(exc)) from None
            return None
        return colors if worthwhile(colors, verified(colors.size) + 2 * STRUCTURE_SAMPLE) else None

    def _numerical(
        self, name: str, route: Route, model: bool
    ) -> tuple[NumericalGradient, tuple[int, ...] | None, Coloring | None]:
        """The tensor's differences: colored where a structure applies and costs less than
        the sample (if any), else element by element (a stratified sample with max_elements).
        A detected structure that fails its cross-check falls back to element by element; a
        declared one is the spec's error (StructureViolation)."""
        plan, xp = self.plan, self.xp
        colors = self._coloring(name, route)
        limit = plan.method.max_elements
        if colors is not None and (limit is None or 2 * colors.size <= 2 * limit):
            try:
                numerical, how = structured(
                    name, route, plan, self._evaluate, self.upstream64, xp, colors, model
                )
                self.methods[name] = f"colored: {colors.describe()}{how}"
                return numerical, None, colors
            except StructureViolation as exc:
                if colors.origin == "declared":
                    raise
                self._abandon(name, exc)
            except PerturbationError:
                # forward failed with a whole group moved: element by element names the element
                self.methods[name] = "elementwise (forward failed with a colored group moved)"
                self.structured_off.add(name)
        sample = (
            None if limit is None else stratified(tuple(route.tensors[name].shape), limit, plan.seed, name)
        )
        numerical = numerical_gradient(name, route, plan, self._evaluate, self.upstream64, xp, sample, model)
        return numerical, sample, None

    def _abandon(self, name: str, exc: StructureViolation) -> None:
        self.methods[name] = f"elementwise (the detected structure failed its cross-check: {exc})"
        self.structured_off.add(name)

    def _elementwise(self, name: str, route: Route, case_scale: float, upstream_scale: float) -> Verdict:
        plan, xp, analytical = self.plan, self.xp, self.grads[name]
        measured = self._measured(route).get(name)
        # the error model's term sizes are read only where the rounding is not measured
        model = measured is None and not plan.tolerance_for(name)[1].hand_set
        while True:
            numerical, sample, colors = self._numerical(name, route, model)
            picked = measured
            if measured is not None and sample is not None:
                picked = measured.reshape(-1)[xp.asarray(sample)]
            b = bound(name, plan, route, numerical, case_scale, upstream_scale, xp, picked)
            estimate = plain(numerical, sample)
            v = judge(name, plan, analytical, estimate, b, case_scale, xp)
            # out-of-bound elements first: the first chunk that refines none of them stops the search
            violating = list(v.comparison.violating)
            suspects = violating + sorted(set(kink_candidates(estimate, b, xp)) - set(violating))
            if colors is None or not suspects:
                break
            try:  # a colored value out of bound is first confirmed alone
                confirm_alone(
                    name,
                    route,
                    plan,
                    self._evaluate,
                    self.upstream64,
                    xp,
                    numerical,
                    suspects[:CONFIRMED],
                    colors,
                )
                break
            except StructureViolation as exc:
                if colors.origin == "declared":
                    raise
                self._abandon(name, exc)
        if not suspects:
            return v
        try:
            estimate = refine(name, route, plan, self._evaluate, self.upstream64, estimate, suspects, b, xp)
        except PerturbationError:
            return v  # the plain estimate's verdict stands
        v = judge(name, plan, analytical, estimate, b, case_scale, xp)
        if v.passed and estimate.kinks and plan.spec.kinks == "subgradient":
            try:
                joint = joint_kink_check(
                    name, route, plan, self._evaluate, self.upstream64, analytical, estimate, b, xp
                )
            except PerturbationError as exc:
                joint = self._perturbation_text(name, exc)
            if joint:
                v = replace(v, passed=False, message=f"{joint}; {v.message}")
        return v

    def _measured(self, route: Route) -> dict[str, Any]:
        """The analytical gradients' rounding, measured against the same backward in float64
        (gradient_check.measured_rounding), for float16/32 checks with a float64 oracle;
        computed once per case."""
        if self.measured is None:
            oracle = route.tensors
            low = self.plan.dtype != "float64"
            has_oracle = any(str(a.dtype) == "float64" for a in oracle.values())
            self.measured = (
                measured_rounding(oracle, self.upstream64, self._gradients, self.grads, self.xp)
                if low and has_oracle
                else {}
            )
        return self.measured

    def _gradients(self, tensors: Mapping[str, Any], upstream: Sequence[Any | None]) -> dict[str, Any]:
        g = list(upstream)
        return round_trip(self.evaluator, self.spec, tensors, tuple(g) if self.was_tuple else g[0])[1]

    def _taylor(self) -> CheckResult:
        """The Taylor test over every differentiable tensor of the case at once: an
        eps-free second opinion (specgrad.numerics.taylor)."""
        names = [t.name for t in self.spec.tensors if t.grad]
        if self.blocked or self.grad_problems or not names:
            why = self.blocked or "not run: backward's gradients are unusable (see contract.backward_grads)"
            if not names:
                return self.plan.result("contract.taylor", Status.SKIP, "no differentiable tensor")
            return self.plan.result("contract.taylor", Status.ERROR, why)
        refused = refusal(taylor_estimate(self.plan, self._output_elements()), self.plan, "the Taylor test")
        if refused:
            return self.plan.result("contract.taylor", Status.ERROR, refused)
        start = time.perf_counter()
        if self.kinked:
            where = ", ".join(f"{n} ({k})" for n, k in self.kinked.items())
            return self.plan.result(
                "contract.taylor",
                Status.SKIP,
                f"not applicable here: the gradient checks found kinks in {where}, where no gradient is "
                "second-order exact; they are held to the subgradient rule element by element",
            )
        result = self._taylor_of(names)
        if isinstance(result, str):
            return self.plan.result("contract.taylor", Status.ERROR, result)
        if not result.smooth:
            status, text = (
                Status.SKIP,
                (
                    "not applicable here: the loss has a kink along the test direction (its second "
                    "difference shrinks at first order), where no gradient is second-order exact; the "
                    f"element-wise checks hold kinks to the subgradient rule. {result.describe()}"
                ),
            )
        elif result.second_order:
            status, text = Status.PASS, ""
        else:
            status, text = (
                Status.FAIL,
                (
                    f"the gradient is wrong along a random direction of {', '.join(names)}: "
                    f"{result.describe()}; right gradients shrink at order 2"
                ),
            )
        return self.plan.result("contract.taylor", status, text, duration=time.perf_counter() - start)

    def _jvp(self) -> CheckResult:
        """contract.jvp: the framework's forward mode against differences (forward_mode)."""
        jvp = getattr(self.evaluator, "jvp", None)
        if self.blocked or self.grad_problems or jvp is None:
            why = self.blocked or "not run: backward's gradients are unusable (see contract.backward_grads)"
            return self.plan.result(
                "contract.jvp", Status.ERROR, why if jvp else "the binding has no forward mode"
            )
        start = time.perf_counter()
        if self.routes is None:
            self.routes = routes(
                self.plan, self._evaluate, self.tensors, self.outputs, self.xp, probe=self.probed
            )
        try:
            findings = check_jvp(self.plan, jvp, self._evaluate, self.tensors, self.routes, self.xp)
        except ContractError as exc:
            return self.plan.result("contract.jvp", Status.ERROR, f"forward mode (jvp): {exc}")
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - user code
            adapter = getattr(self.evaluator, "adapter", None)
            if adapter is not None and adapter.lacks_forward_mode(exc):
                why = f"not run: {adapter.name} has no forward mode for an operation this forward uses"
                return self.plan.result("contract.jvp", Status.SKIP, f"{why}: {type(exc).__name__}: {exc}")
            return self.plan.result("contract.jvp", Status.ERROR, self._describe("forward mode (jvp)", exc))
        passed, message, comparison, kinks = describe_jvp(
            findings, self.spec.implementation or self.spec.name
        )
        status = Status.PASS if passed else Status.FAIL
        return self.plan.result(
            "contract.jvp",
            status,
            message,
            comparison=comparison,
            kinks=kinks,
            method="forward mode vs differences",
            duration=time.perf_counter() - start,
        )

    def _taylor_of(self, names: list[str]) -> TaylorResult | str:
        if self.routes is None:
            self.routes = routes(
                self.plan, self._evaluate, self.tensors, self.outputs, self.xp, probe=self.probed
            )
        try:
            return taylor(
                names,
                self.routes,
                self.plan,
                self._evaluate,
                self.upstream64,
                self.grads,
                self._scales()[0],
                self.xp,
            )
        except PerturbationError as exc:
            if isinstance(exc.cause, InconsistentOutput):
                return f"forward (Taylor test): {exc.cause}"
            return self._describe("forward (Taylor test)", exc.cause)

    def _perturbation_text(self, name: str, exc: PerturbationError) -> str:
        if exc.index is None:
            where = "evaluating forward at the case's point: "
        else:
            index = np.unravel_index(exc.index, self.tensors[name].shape)
            where = f"perturbing {name}[{', '.join(map(str, index))}]: "
        cause = exc.cause
        if isinstance(cause, (ContractError, InconsistentOutput)):
            return f"{where}forward: {cause}"
        return where + self._describe("forward", cause)

    def _describe(self, what: str, exc: BaseException) -> str:
        """describe_exception, with what the device makes of the error (a layer that is not
        array-namespace generic) where it knows."""
        hint = self.backend.hint(exc)
        return describe_exception(what, exc) + (f"\n{hint}" if hint else "")

    def _evaluate(self, tensors: Mapping[str, Any]) -> tuple[Any, ...]:
        return raw_outputs_of(forward_only(self.evaluator, tensors))[0]


class _Abort(Exception):
    """Stops the contract phase; `contract` is the contract the abort is a failure of."""

    def __init__(self, message: str, contract: str | None = None) -> None:
        super().__init__(message)
        self.contract = contract
