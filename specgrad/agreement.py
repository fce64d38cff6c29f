"""The differential checks: implementations of one contract agree on identical inputs,
and so does one implementation on two devices.

Each implementation's own gradient check compares its backward with differences of its
own forward, so a wrong forward whose backward is consistent with it passes there. Run on
the identical inputs and upstream gradient, the implementations of one contract must
agree on their outputs and gradients: one team's bug shows up as a disagreement with the
reference implementation (`reference:`, default the first), check `NAME[..]::agree.IMPL`.
Likewise a GPU kernel that is self-consistent but wrong passes its own checks on the GPU
and disagrees with the same implementation on the CPU, check `NAME[..]::device.gpu`: the
same comparison with the CPU run as the reference (the GPU's results are brought to the
host for it).

Error budget, per element, in float64 arithmetic. Two correct implementations computing
in dtype d differ by their rounding (another order of operations, another algorithm).
Both are also run in float64 on the same (exactly representable) values: their float64
results must agree (B_64 below), and each one's deviation r = |y_d - y_64| is measured: its
rounding, plus whatever its low-precision path gets wrong, so r cannot be trusted as an
allowance by itself (a bug in the float16 path would excuse itself). What any stable
algorithm must be allowed is what rounding the data costs: the reference is run in float64
at the inputs and upstream gradient moved by one unit roundoff of d, relatively, with
seeded random signs (two draws) and all one way (a third: rounding errors that add up, as
in a computed sum or shift), and s = |y_moved - y_64| is the function's sensitivity to its
data's rounding (softmax at logits of 90 moves by ~90 u, a tanh by ~u). The
smaller of the two measured deviations, m = min(r_a, r_b), adds rounding that the data's
does not show. One more term covers what no data perturbation shows: an intermediate as
large as the inputs, rounded once and passed through an exponential (logsumexp's
`exp(x - lse)` with lse ~ 100 in float32 is off by ~100 u relative even where the exact
result barely depends on x; a flash-attention backward's ds at a saturated softmax is off
by u |dp| |k|): C = 2 u_d X (|y| + S_grad), X the largest input magnitude (at least 1),
S_grad the gradient scale for gradients and 0 for outputs. The bound is

    4 u_d (|y| + S)  +  min(SPREAD (max(s, m) + median max(s, m)) + C,  sqrt(u_d) S)  +  D_64

with |y| the larger magnitude of the two, S the case's scale for the quantity (outputs:
the largest output or input magnitude; gradients: the largest gradient or upstream value,
as in the gradient check's error model: cancellations leave rounding of the intermediates
behind however small the result), and D_64 their float64 difference. The float64 check
holds the float64 results to B_64 = 4 u_64 (|y| + S) + sqrt(u_64) S (~1.5e-8 S: far above
float64 rounding of any sane computation, far below a bug); a float16/32 check holds them
only to its own allowance (an implementation that computes part of its float64 path in
float32 fails the float64 check alone). SPREAD allows another algorithm to round several times
worse than the data's rounding moves the result; the median keeps an element that moved
exactly nothing by luck from tightening the bound to nothing; the cap sqrt(u_d) S keeps a
gross deviation from ever passing as rounding. An implementation that refuses float64 has
its rounding modelled instead: ANALYTICAL_SIGMAS u_d (|y| + S). A spec's `agreement:
{DTYPE: {rtol, atol}}` replaces all of it by atol + rtol |reference|.

At a kink (relu at 0, a max-pool tie) any value between the one-sided derivatives is a
valid gradient and implementations legitimately differ (jnp.maximum(x, 0) gives 1/2 at 0,
torch.relu 0). A gradient element out of bound is therefore probed on the reference in
float64: where its one-sided derivatives differ (a jump that does not shrink with the
step), both values inside them agree.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from specgrad.backends import Backend
from specgrad.bindings import ContractError, Evaluator, forward_only, grads_by_name, raw_outputs_of
from specgrad.compile import CasePlan
from specgrad.frameworks import Unavailable
from specgrad.model import Spec
from specgrad.numerics.compare import Comparison, compare, times_over
from specgrad.numerics.finite_diff import PerturbationError
from specgrad.numerics.inputs import make_inputs, make_upstream, stream
from specgrad.numerics.tolerance import ANALYTICAL_SIGMAS, FLOAT_DTYPES, UNIT_ROUNDOFF, default_step
from specgrad.projections import loss
from specgrad.results import CheckResult, Status

#: how much worse than the other an implementation may round (another algorithm)
SPREAD = 16.0

#: out-of-bound gradient elements probed for a kink: a first sample; all of them (up to
#: KINK_PROBES) only where the sample found valid subgradients
KINK_SAMPLE = 64
KINK_PROBES = 4096

#: seeded draws of the data's rounding the reference is run at (sensitivity)
SENSITIVITY_DRAWS = 2

Bind = Callable[[Spec], Evaluator]


@dataclass(frozen=True)
class Side:
    """Where one side of a comparison runs: the device's backend and its bound evaluators."""

    bind: Bind
    backend: Backend


#: the side of a device, by device name (it may raise DeviceUnavailable)
Sides = Callable[[str], Side]


@dataclass
class Evaluation:
    """One implementation's outputs and gradients at the case's point (or why not)."""

    outputs: tuple[Any, ...] = ()
    grads: dict[str, Any] = field(default_factory=dict)
    problem: str = ""
    status: Status = Status.ERROR  # of the checks the problem prevents


@dataclass(frozen=True)
class Finding:
    """One compared quantity (an output or a gradient) of an implementation."""

    what: str
    comparison: Comparison | None
    text: str = ""  # why it disagrees ("" when it agrees)
    kinks: int = 0  # elements accepted as different subgradients at a kink


class AgreementRun:
    """The agreement checks of one case: each non-reference implementation against the
    reference (plan kind "agreement"), or the plan's spec on other devices against its
    device (kind "devices"), on identical inputs and upstream gradients."""

    def __init__(self, plan: CasePlan, sides: Sides) -> None:
        self.plan, self.sides = plan, sides
        self.home = sides(plan.device)  # the reference's side, where the comparison runs
        self.backend, self.xp = self.home.backend, self.home.backend.xp
        self.spec = plan.spec
        self.impls = {s.implementation: s for s in self.spec.implementations}
        if plan.kind == "devices":
            self.ref_spec, self.ref_name = plan.spec, plan.device
        else:
            self.ref_spec, self.ref_name = self.impls[self.spec.reference], self.spec.reference
        #: per tensor: flat index -> the reference's one-sided derivatives there (None: smooth)
        self._intervals: dict[str, dict[int, tuple[float, float] | None]] = {}

    def _other(self, target: str) -> tuple[Spec, Side | str, str]:
        """(spec, its side or why that device cannot be used, its name in messages)."""
        kind, _, name = target.partition(".")
        if kind == "device":
            from specgrad.backends import unavailable

            why = unavailable(name)
            return self.spec, f"device {name} unavailable: {why}" if why else self.sides(name), name
        return self.impls[name], self.home, name

    def run(self) -> list[CheckResult]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return self._run()

    def _run(self) -> list[CheckResult]:
        start = time.perf_counter()
        plan, ref_name = self.plan, self.ref_name
        try:
            self.host = make_inputs(self.spec, plan.case, plan.dtype, plan.seed)
        except Exception as exc:  # noqa: BLE001 - e.g. an .npy file changed since validation
            return [self._result(t, Status.ERROR, f"cannot make inputs: {exc}") for t in plan.targets]
        self.upstream: list[np.ndarray | None] = []
        ref = self._evaluate(self.ref_spec, self._upstream, side=self.home)
        if ref.problem:
            if plan.kind == "agreement":
                why = f"cannot compare: the reference implementation {ref_name} {ref.problem}"
                note = f"implementation {ref_name} not run: {ref.problem}"
            else:
                why = f"cannot compare: {self.spec.name} on the reference device {ref_name} {ref.problem}"
                note = f"device {ref_name} not used: {self.spec.name} {ref.problem}"
            return [
                self._result(t, ref.status, why, note=note if ref.status is Status.SKIP else "")
                for t in plan.targets
            ]
        self.ref64 = self._evaluate64(self.ref_spec, self.home)
        floats = [float(np.max(np.abs(a))) for a in self.host.values() if a.dtype.kind == "f" and a.size]
        self.input_scale = max([1.0, *(f for f in floats if math.isfinite(f))])
        self.moved = self._sensitivity(self.ref_spec) if self.ref64 is not None else []
        out = []
        for target in plan.targets:
            out.append(self._agree(target, ref, self.ref64, start))
            start = time.perf_counter()
        return out

    def _upstream(self, outputs: Sequence[Any]) -> list[np.ndarray | None]:
        """The case's upstream gradient, from the reference's outputs: the one its own
        gradient check uses (runner), given to every implementation."""
        shapes = {i: tuple(o.shape) for i, o in enumerate(outputs) if _is_float(o)}
        upstream = make_upstream(shapes, self.plan.dtype, self.plan.seed)
        self.upstream = [upstream.get(i) for i in range(len(outputs))]
        return self.upstream

    # -- evaluation ---------------------------------------------------------------------

    def _evaluate(
        self,
        impl: Spec,
        upstream: Sequence[np.ndarray | None] | Callable[[Sequence[Any]], Sequence[np.ndarray | None]],
        host: Mapping[str, Any] | None = None,
        *,
        side: Side,
    ) -> Evaluation:
        """Forward and backward of `impl` on `side`, on fresh copies of the case's inputs
        (or `host`); `upstream` is the upstream gradient on the host, or makes it from the
        outputs. Results come back in the home side's namespace."""
        from specgrad.runner import describe_exception

        backend = side.backend
        if not impl.runs_on(backend.device):
            where = ", ".join(impl.devices or ())
            return Evaluation(
                problem=f"does not run on {backend.device} (device: {where})", status=Status.SKIP
            )
        try:
            evaluator = side.bind(impl)
        except Unavailable as exc:
            return Evaluation(problem=str(exc), status=Status.SKIP)
        except Exception as exc:  # noqa: BLE001 - SpecError (reported by its own checks) or user code
            return Evaluation(problem=f"could not be bound: {exc}")
        values = self.host if host is None else host
        tensors = {n: backend.asarray(a) for n, a in values.items()}
        try:
            raw, state = evaluator.forward(tensors)
            outputs = raw_outputs_of(raw)[0]
        except ContractError as exc:
            return Evaluation(problem=f"broke its forward contract: {exc}")
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - user code
            return Evaluation(
                problem=describe_exception("forward", exc).replace("forward raised", "raised in forward", 1)
            )
        if not all(backend.is_array(o) for o in outputs):
            return Evaluation(
                problem="returned an output that is not an array (see its forward_output check)"
            )
        if callable(upstream):
            upstream = upstream(outputs)
        if len(upstream) != len(outputs):
            return Evaluation(outputs=tuple(outputs), problem="returned another number of outputs")
        g = [None if u is None else backend.asarray(u) for u in upstream]
        was_tuple = isinstance(raw, (tuple, list))
        try:
            grads = grads_by_name(evaluator.backward(state, tuple(g) if was_tuple else g[0]), impl)
        except ContractError as exc:
            return Evaluation(outputs=tuple(outputs), problem=f"broke its backward contract: {exc}")
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - user code
            text = describe_exception("backward", exc).replace("backward raised", "raised in backward", 1)
            return Evaluation(outputs=tuple(outputs), problem=text)
        bad = [n for n, v in grads.items() if not backend.is_array(v)]
        if bad:
            return Evaluation(
                outputs=tuple(outputs), problem=f"returned no usable gradient of {', '.join(bad)}"
            )

        def home(a: Any) -> Any:
            a = backend.xp.asarray(a)
            return a.copy() if backend is self.backend else self.backend.asarray(backend.to_host(a))

        return Evaluation(
            outputs=tuple(home(o) for o in outputs), grads={n: home(v) for n, v in grads.items()}
        )

    def _sensitivity(self, impl: Spec) -> list[Evaluation]:
        """`impl` in float64 at the case's values and upstream gradient moved by one unit
        roundoff of the check's dtype, relatively: with seeded random signs (SENSITIVITY_DRAWS
        draws) and all one way: how much rounding the data alone moves each result."""
        u = UNIT_ROUNDOFF[self.plan.dtype]
        runs = []
        for draw in range(SENSITIVITY_DRAWS + 1):
            rng = stream(self.plan.seed, "<agreement>", draw)

            def moved(a: np.ndarray) -> np.ndarray:
                signs = rng.choice((-1.0, 1.0), a.shape) if draw < SENSITIVITY_DRAWS else 1.0
                return a.astype(np.float64) * (1 + u * signs)

            host = {
                n: moved(a) if self.spec.tensor(n).dtype is None and a.dtype.kind == "f" else a
                for n, a in self.host.items()
            }
            up = [None if g is None else moved(g) for g in self.upstream]
            run = self._evaluate(impl, up, host, side=self.home)
            if run.problem:
                return []
            runs.append(run)
        return runs

    def _evaluate64(self, impl: Spec, side: Side) -> Evaluation | None:
        """`impl` on float64 copies of the case's values (the tensors in the check's dtype),
        with the upstream gradient in float64; None where it does not compute in float64."""
        if self.plan.dtype == "float64":
            return None
        host64 = {
            n: a.astype(np.float64) if self.spec.tensor(n).dtype is None and a.dtype.kind == "f" else a
            for n, a in self.host.items()
        }
        up64 = [None if u is None else u.astype(np.float64) for u in self.upstream]
        run = self._evaluate(impl, up64, host64, side=side)
        floats = list(run.outputs) + list(run.grads.values())
        if run.problem or any(_is_float(a) and str(a.dtype) != "float64" for a in floats):
            return None
        return run

    # -- comparison ---------------------------------------------------------------------

    def _agree(self, target: str, ref: Evaluation, ref64: Evaluation | None, start: float) -> CheckResult:
        impl, side, name = self._other(target)
        ref_name = self.ref_name
        if isinstance(side, str):
            return self._result(target, Status.SKIP, f"cannot compare: {side}", start=start, note=side)
        run = self._evaluate(impl, self.upstream, side=side)
        if run.problem:
            if run.status is Status.SKIP:
                if self.plan.kind == "agreement":
                    note = f"implementation {name} not run: {run.problem}"
                else:
                    note = f"device {name} not used: {self.spec.name} {run.problem}"
                return self._result(target, Status.SKIP, f"cannot compare: {note}", start=start, note=note)
            return self._result(target, Status.ERROR, f"cannot compare: {name} {run.problem}", start=start)
        if len(run.outputs) != len(ref.outputs):
            text = (
                f"{name} returned {len(run.outputs)} output(s), {ref_name} (the reference) {len(ref.outputs)}"
            )
            return self._result(target, Status.FAIL, text, start=start)
        run64 = self._evaluate64(impl, side) if ref64 is not None else None
        xp = self.xp
        floats = [o for o in (*run.outputs, *ref.outputs) if _is_float(o)]
        inputs = [a for n, a in self.host.items() if a.dtype.kind == "f"]
        out_scale = max((_largest(xp.asarray(v), xp) for v in (*floats, *inputs)), default=0.0)
        grads = [*run.grads.values(), *ref.grads.values(), *(u for u in self.upstream if u is not None)]
        grad_scale = max((_largest(xp.asarray(v), xp) for v in grads), default=0.0)
        findings = []
        pairs: list[tuple[str, Any, Any, str | None]] = [
            (f"output {i}", a, b, None) for i, (a, b) in enumerate(zip(run.outputs, ref.outputs, strict=True))
        ]
        pairs += [(f"gradient of {n}", run.grads[n], ref.grads[n], n) for n in ref.grads if n in run.grads]
        for what, a, b, tensor in pairs:
            a64 = b64 = None
            if run64 is not None and ref64 is not None:
                a64, b64 = _counterpart(what, run64), _counterpart(what, ref64)
            scale = out_scale if tensor is None else grad_scale
            findings.append(self._compare(what, a, b, a64, b64, tensor, name, scale))
        return self._verdict(target, name, findings, start)

    def _compare(
        self, what: str, a: Any, b: Any, a64: Any, b64: Any, tensor: str | None, name: str, scale: float
    ) -> Finding:
        xp, dtype = self.xp, self.plan.dtype
        if tuple(a.shape) != tuple(b.shape):
            return Finding(what, None, f"{what}: shape {tuple(a.shape)}, the reference's {tuple(b.shape)}")
        if not (_is_float(a) and _is_float(b)):
            differ = xp.nonzero(xp.asarray(a != b).reshape(-1))[0]
            if not differ.size:
                return Finding(what, None)
            j = int(differ[0])
            idx = ", ".join(map(str, np.unravel_index(j, a.shape)))
            return Finding(
                what,
                None,
                f"{what}: {differ.size} of {a.size} element(s) differ; first [{idx}]: "
                f"{name} {a.reshape(-1)[j].item()}, {self.ref_name} {b.reshape(-1)[j].item()}",
            )
        a, b = a.astype(xp.float64), b.astype(xp.float64)
        # the same infinity, or NaN in both, is agreement (the finite contract judges them)
        same = (xp.isnan(a) & xp.isnan(b)) | (~xp.isfinite(a) & (a == b))
        if bool(same.any()):
            a, b = xp.where(same, 0.0, a), xp.where(same, 0.0, b)
            if a64 is not None and b64 is not None and tuple(a64.shape) == tuple(a.shape) == tuple(b64.shape):
                a64, b64 = xp.where(same, 0.0, a64), xp.where(same, 0.0, b64)
        given = self.spec.agreement.get(dtype)
        if given is not None and given.hand_set:
            bound = (given.atol or 0.0) + (given.rtol or 0.0) * xp.abs(b)
            how = f"the spec's agreement tolerance ({given.reason})"
        else:
            bound, how, c64 = self._budget(what, a, b, a64, b64, scale, name, tensor)
            if c64 is not None:  # the float64 results disagree already
                return Finding(what, c64, how)
        c = compare(a, b, xp.zeros_like(a), bound, xp)
        kinks = 0
        if not c.passed and tensor is not None:
            c, kinks = self._kinks(tensor, a, b, bound, c)
        if c.passed:
            return Finding(what, c, kinks=kinks)
        idx = ", ".join(map(str, c.worst_index))
        text = (
            f"{what}: differs at {c.violations} of {c.size} elements; worst [{idx}]: "
            f"{name} {c.analytical:.8g}, "
            f"{self.ref_name} {c.numerical:.8g}, |diff| {abs(c.analytical - c.numerical):.3g} > bound "
            f"{c.bound:.3g} ({how}), {times_over(c.worst_ratio)}"
        )
        return Finding(what, c, text, kinks)

    def _budget(
        self, what: str, a: Any, b: Any, a64: Any, b64: Any, scale: float, name: str, tensor: str | None
    ) -> tuple[Any, str, Comparison | None]:
        """(the measured bound (module docstring), how it was made, None); where the
        float64 results it rests on disagree themselves, (None, why, their comparison)."""
        xp, dtype = self.xp, self.plan.dtype
        u64 = UNIT_ROUNDOFF["float64"]
        magnitude = xp.maximum(xp.abs(a), xp.abs(b))
        floor64 = 4 * u64 * (magnitude + scale) + math.sqrt(u64) * scale
        if dtype == "float64":
            return floor64, "float64 rounding", None
        u = UNIT_ROUNDOFF[dtype]
        # intermediates as large as the inputs (times the upstream, for gradients): rounded
        # once and passed through an exponential, they move the result by u X relative
        carried = 2 * u * self.input_scale * (magnitude + (scale if tensor is not None else 0.0))
        if a64 is not None and b64 is not None and tuple(a64.shape) == tuple(b64.shape) == tuple(a.shape):
            a64, b64 = a64.astype(xp.float64), b64.astype(xp.float64)
            level = xp.minimum(xp.abs(a - a64), xp.abs(b - b64))
            for moved in self.moved:
                m = _counterpart(what, moved)
                if m is not None and tuple(m.shape) == tuple(b64.shape):
                    level = xp.maximum(level, xp.abs(xp.asarray(m).astype(xp.float64) - b64))
            level = xp.where(xp.isfinite(level), level, 0.0)  # overflow is the finite contract's
            typical = float(xp.median(level)) if level.size else 0.0
            rounding = SPREAD * (level + typical) + carried
            allowance = 4 * u * (magnitude + scale) + xp.minimum(rounding, math.sqrt(u) * scale)
            # float64 results that differ by less than this dtype's allowance (an
            # implementation that computes some of its float64 path in float32) do not
            # matter to this dtype's verdict; the float64 check holds them to float64
            floor = 4 * u64 * (xp.maximum(xp.abs(a64), xp.abs(b64)) + scale) + math.sqrt(u64) * scale
            bound64 = xp.maximum(floor, allowance)
            c64 = compare(a64, b64, xp.zeros_like(a64), bound64, xp)
            if not c64.passed and tensor is not None:
                c64, _ = self._kinks(tensor, a64, b64, bound64, c64)
            if not c64.passed:
                idx = ", ".join(map(str, c64.worst_index))
                text = (
                    f"{what}: differs (run in float64 on the same values) at {c64.violations} of {c64.size} "
                    f"elements; worst [{idx}]: {name} {c64.analytical:.10g}, {self.ref_name} "
                    f"{c64.numerical:.10g}, "
                    f"|diff| {abs(c64.analytical - c64.numerical):.3g} > bound {c64.bound:.3g} (float64 "
                    f"rounding), {times_over(c64.worst_ratio)}"
                )
                return None, text, c64
            how = f"{dtype} rounding, measured against float64 (the scale: {scale:.3g})"
            # their float64 difference, as far as it is allowed there (not where it is a kink's)
            return allowance + xp.maximum(floor64, xp.minimum(xp.abs(a64 - b64), bound64)), how, None
        rounding = ANALYTICAL_SIGMAS * u * (magnitude + scale) + carried
        how = f"{dtype} rounding modelled (an implementation does not compute in float64)"
        capped = xp.minimum(rounding, math.sqrt(u) * scale)
        return 4 * u * (magnitude + scale) + capped + floor64, how, None

    def _kinks(self, tensor: str, a: Any, b: Any, bound: Any, c: Comparison) -> tuple[Comparison, int]:
        """Out-of-bound gradient elements on a kink of the reference's loss, with both
        values between its one-sided derivatives, agree; (the comparison without them,
        how many)."""
        if c.violations > KINK_PROBES:
            return c, 0
        if c.violations > KINK_SAMPLE:  # a sample first: a plain bug is not probed in full
            _, accepted = self._probe(tensor, a, b, bound, c, c.violating[:KINK_SAMPLE])
            if not accepted:
                return c, 0
        return self._probe(tensor, a, b, bound, c, c.violating)

    def _probe(
        self, tensor: str, a: Any, b: Any, bound: Any, c: Comparison, elements: Sequence[int]
    ) -> tuple[Comparison, int]:
        try:
            evaluator = self.home.bind(self.ref_spec)
        except Exception:  # noqa: BLE001 - it was bound before: cannot happen, but never raise here
            return c, 0
        xp = self.xp
        point, upstream, dtype = self._probe_point()

        def forward(values: Mapping[str, Any]) -> tuple[Any, ...]:
            return raw_outputs_of(forward_only(evaluator, values))[0]

        lo, hi = xp.array(b.reshape(-1)), xp.array(b.reshape(-1))
        accepted = 0
        probed = self._intervals.setdefault(tensor, {})
        base: tuple[float, float] | None = None
        for j in elements:
            if j not in probed:
                try:
                    base = base or loss(forward, point, upstream, UNIT_ROUNDOFF[dtype], xp)
                    probed[j] = _one_sided(forward, point, base, tensor, j, upstream, dtype, xp)
                except PerturbationError:
                    return c, 0
            interval = probed[j]
            if interval is None:
                continue
            low, high = interval
            if all(low <= float(v.reshape(-1)[j]) <= high for v in (a, b)):
                lo[j], hi[j] = min(low, float(a.reshape(-1)[j])), max(high, float(a.reshape(-1)[j]))
                accepted += 1
        if not accepted:
            return c, 0
        shape = a.shape
        return compare(a, b, xp.zeros_like(a), bound, xp, (lo.reshape(shape), hi.reshape(shape))), accepted

    def _probe_point(self) -> tuple[dict[str, Any], list[Any | None], str]:
        """The reference's tensors for kink probes: float64 copies where it computes in
        float64, else the check's own."""
        xp, dtype = self.xp, self.plan.dtype
        point = {n: self.backend.asarray(a) for n, a in self.host.items()}
        up = [None if u is None else xp.asarray(u).astype(xp.float64) for u in self.upstream]
        if dtype != "float64" and self.ref64 is not None:
            point = {
                n: a.astype(xp.float64) if self.spec.tensor(n).dtype is None and _is_float(a) else a
                for n, a in point.items()
            }
            dtype = "float64"
        return point, up, dtype

    def _verdict(self, target: str, name: str, findings: list[Finding], start: float) -> CheckResult:
        bad = [f for f in findings if f.text]
        compared = [f for f in findings if f.comparison is not None]
        worst = max(compared, key=lambda f: f.comparison.worst_ratio if f.comparison else 0.0, default=None)
        kinks = sum(f.kinks for f in findings)
        if bad:
            if self.plan.kind == "devices":
                head = (
                    f"on {name}, {self.spec.name} disagrees with itself on {self.ref_name} (the reference) "
                    "on identical inputs:"
                )
            else:
                head = f"{name} disagrees with {self.ref_name} (the reference) on identical inputs:"
            text = "\n".join([head, *(f"  {f.text}" for f in bad)])
            shown = next((f.comparison for f in bad if f.comparison is not None), None)
            return self._result(target, Status.FAIL, text, shown, kinks, start)
        return self._result(target, Status.PASS, "", worst.comparison if worst else None, kinks, start)

    def _result(
        self,
        target: str,
        status: Status,
        message: str,
        comparison: Comparison | None = None,
        kinks: int = 0,
        start: float | None = None,
        note: str = "",
    ) -> CheckResult:
        if kinks:
            note = (
                f"{kinks} gradient element(s) sit on kinks where the "
                f"{'implementations' if self.plan.kind == 'agreement' else 'devices'} pick different "
                "subgradients, both between the one-sided derivatives"
            )
        return self.plan.result(
            target,
            status,
            message,
            comparison=comparison,
            note=note,
            kinks=kinks,
            method="agreement",
            duration=0.0 if start is None else time.perf_counter() - start,
        )


def _one_sided(
    forward: Callable[[Mapping[str, Any]], Sequence[Any]],
    point: Mapping[str, Any],
    at_point: tuple[float, float],
    tensor: str,
    j: int,
    upstream: Sequence[Any | None],
    dtype: str,
    xp: ModuleType,
) -> tuple[float, float] | None:
    """[lo, hi] between the one-sided derivatives of L = sum <g, f> along element j, where
    they differ by a jump that does not shrink with the step (a kink); else None.
    `at_point`: (L, its noise) at `point`."""
    u = UNIT_ROUNDOFF[dtype]
    x = point[tensor]
    x0 = float(x.reshape(-1)[j])
    base, base_noise = at_point
    sides = []
    for h in (default_step(dtype) * max(abs(x0), 1.0), default_step(dtype) * max(abs(x0), 1.0) / 4):
        values = []
        for sign in (1, -1):
            moved = dict(point)
            y = x.copy()
            y.reshape(-1)[j] = x0 + sign * h
            taken = float(y.reshape(-1)[j]) - x0
            moved[tensor] = y
            value, noise = loss(forward, moved, upstream, u, xp)
            values.append(((value - base) / taken, (noise + base_noise) / abs(taken)))
        sides.append(values)
    (plus, n_plus), (minus, n_minus) = sides[1]
    (coarse_plus, _), (coarse_minus, _) = sides[0]
    jump, coarse_jump = abs(plus - minus), abs(coarse_plus - coarse_minus)
    noise = n_plus + n_minus
    if jump <= 8 * noise or jump < 0.75 * coarse_jump:  # smooth: the jump shrinks 4x with the step
        return None
    slack = abs(plus - coarse_plus) + abs(minus - coarse_minus) + noise
    return min(plus, minus) - slack, max(plus, minus) + slack


def _counterpart(what: str, run: Evaluation) -> Any:
    if what.startswith("output "):
        i = int(what.split()[1])
        return run.outputs[i] if i < len(run.outputs) else None
    return run.grads.get(what.removeprefix("gradient of "))


def _is_float(array: Any) -> bool:
    return str(array.dtype) in FLOAT_DTYPES


def _largest(array: Any, xp: ModuleType) -> float:
    if array.size == 0:
        return 0.0
    return float(xp.max(xp.abs(xp.where(xp.isfinite(array), array, 0.0))))
