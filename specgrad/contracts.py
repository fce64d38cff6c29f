"""Contract checks that take calls of their own: backward twice, a zero upstream gradient,
non-contiguous inputs. Each returns "" when the contract holds, or what broke it.

They are run by the runner after the first forward/backward, on copies of the case's
tensors (a contract call never changes what the gradient checks see), and each starts
from a fresh forward: backward may consume its state (a layer that pops its cache).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from specgrad.bindings import ContractError, Evaluator, round_trip
from specgrad.model import Spec
from specgrad.numerics.tolerance import FLOAT_DTYPES, UNIT_ROUNDOFF

#: the contract kinds a Probe checks
PROBED = ("backward_deterministic", "zero_upstream", "layout")

#: layout: a different memory order may change the order of floating-point sums (BLAS
#: blocks by stride), so results may differ by rounding, not by more than this many units
#: of the dtype's roundoff relative to the largest value of the array
LAYOUT_ULPS = 64


@dataclass(frozen=True)
class Probe:
    """What the contract calls need from the case: its tensors, the first forward's outputs
    and gradients, the upstream gradient and how forward returned its outputs."""

    spec: Spec
    evaluator: Evaluator
    xp: ModuleType
    tensors: Mapping[str, Any]
    outputs: tuple[Any, ...]
    grads: Mapping[str, Any]  # the usable gradients of the first backward, by name
    upstream: list[Any | None]  # g per output (None for non-float outputs)
    was_tuple: bool
    dtype: str

    def _copies(self) -> dict[str, Any]:
        return {n: a.copy() for n, a in self.tensors.items()}

    def _grad_out(self, values: list[Any | None]) -> Any:
        return tuple(values) if self.was_tuple else values[0]

    def _round_trip(
        self, tensors: Mapping[str, Any], grad_out: Any
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return round_trip(self.evaluator, self.spec, tensors, grad_out)

    def backward_twice(self, nondet_tol: float) -> str:
        """Two forward/backward round trips on identical inputs give the same gradients
        (bitwise, or within `nondet_tol` relative to each gradient's largest value)."""
        try:
            _, grads = self._round_trip(self._copies(), self._grad_out([_copy(g) for g in self.upstream]))
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - user code
            return f"the second backward raised {type(exc).__name__}: {exc}"
        bad = [
            f"{n} (differs by up to {_gap(self.grads[n], grads[n], self.xp):.3g})"
            for n in self.grads
            if n in grads and not _within(self.grads[n], grads[n], nondet_tol, self.xp)
        ]
        if not bad:
            return ""
        allowed = "bitwise" if nondet_tol == 0 else f"within nondet_tol {nondet_tol:g}"
        return (
            f"backward on identical inputs and upstream gradient gave different gradients for "
            f"{', '.join(bad)}; expected {allowed} (atomics or unseeded randomness? set nondet_tol "
            "in the spec if the layer is nondeterministic by design)"
        )

    def zero_upstream(self) -> str:
        """A zero upstream gradient gives exactly zero gradients: backward is linear in g
        (a weight decay or a constant added inside backward is not)."""
        zeros = [None if g is None else self.xp.zeros_like(g) for g in self.upstream]
        try:
            _, grads = self._round_trip(self._copies(), self._grad_out(zeros))
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - user code
            return f"backward with a zero upstream gradient raised {type(exc).__name__}: {exc}"
        bad = [
            f"{n} (largest |value| {_gap(grads[n], self.xp.zeros_like(grads[n]), self.xp):.3g})"
            for n in self.grads
            if n in grads and _is_array(grads[n]) and bool(self.xp.any(grads[n] != 0))
        ]
        if not bad:
            return ""
        if any(not bool(self.xp.all(self.xp.isfinite(grads[n]))) for n in self.grads if n in grads):
            return (
                f"with a zero upstream gradient, backward returned non-finite gradients for "
                f"{', '.join(bad)}: 0 * inf inside backward (an overflow that a zero g does not cancel)"
            )
        return (
            f"with a zero upstream gradient, backward returned nonzero gradients for {', '.join(bad)}: "
            "a gradient must be linear in grad_out (is a regulariser or constant added in backward?)"
        )

    def layout(self) -> str:
        """Inputs with the same values in other memory layouts (every other element of a
        larger buffer; Fortran order) give the same outputs and gradients, up to rounding
        (see LAYOUT_ULPS)."""
        layouts = (
            ("non-contiguous (strided)", _strided),
            (
                "Fortran-ordered (transposed memory)",
                lambda a, xp: xp.asfortranarray(a.copy()).reshape(a.shape),
            ),
        )
        for what, make in layouts:
            problem = self._same_in_layout(what, {n: make(a, self.xp) for n, a in self.tensors.items()})
            if problem:
                return problem
        return ""

    def _same_in_layout(self, what: str, tensors: dict[str, Any]) -> str:
        try:
            outputs, grads = self._round_trip(tensors, self._grad_out([_copy(g) for g in self.upstream]))
        except ContractError as exc:
            return f"with {what} inputs: {exc}"
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - user code
            return (
                f"with {what} inputs (same values, other memory layout) forward or backward raised "
                f"{type(exc).__name__}: {exc}"
            )
        u = UNIT_ROUNDOFF[self.dtype]
        bad = [
            f"output {i}"
            for i, (a, b) in enumerate(zip(self.outputs, outputs, strict=False))
            if _is_float(a) and not _within(a, b, LAYOUT_ULPS * u, self.xp)
        ]
        bad += [
            f"gradient of {n}"
            for n in self.grads
            if n in grads and not _within(self.grads[n], grads[n], LAYOUT_ULPS * u, self.xp)
        ]
        if not bad:
            return ""
        return (
            f"{what} inputs with the same values change {', '.join(bad)} beyond rounding: "
            "does the code assume C-contiguous memory (raw pointers, .data, reshape of a view)?"
        )


def _copy(a: Any | None) -> Any | None:
    return None if a is None else a.copy()


def _is_array(a: Any) -> bool:
    return hasattr(a, "shape") and hasattr(a, "dtype")


def _is_float(a: Any) -> bool:
    return _is_array(a) and str(a.dtype) in FLOAT_DTYPES


def _strided(a: Any, xp: ModuleType) -> Any:
    """The same values as `a`, viewed with a stride of two along the last axis."""
    if a.ndim == 0 or a.size < 2:
        return a.copy()
    big = xp.zeros((*a.shape[:-1], 2 * a.shape[-1]), dtype=a.dtype)
    view = big[..., ::2]
    view[...] = a
    return view


def _gap(a: Any, b: Any, xp: ModuleType) -> float:
    if not (_is_array(b) and tuple(b.shape) == tuple(a.shape)):
        return float("inf")
    d = xp.abs(xp.asarray(a).astype(xp.float64) - xp.asarray(b).astype(xp.float64))
    return float(xp.max(xp.where(xp.isnan(d), xp.inf, d))) if d.size else 0.0


def _equal(a: Any, b: Any) -> Any:
    """Elementwise: bitwise-equal values, NaN equal to NaN, any dtype."""
    return (a == b) | ((a != a) & (b != b))


def same(a: Any, b: Any, xp: ModuleType) -> bool:
    """Same shape and bitwise-equal values, NaN equal to NaN (the deterministic and
    no-mutation contracts)."""
    return _is_array(b) and tuple(b.shape) == tuple(a.shape) and bool(xp.all(_equal(a, b)))


def _within(a: Any, b: Any, rel: float, xp: ModuleType) -> bool:
    """b equals a bitwise (NaN equal to NaN), or within rel * max|a| when rel > 0."""
    if not (_is_array(b) and tuple(b.shape) == tuple(a.shape)):
        return False
    equal = _equal(a, b)
    if bool(xp.all(equal)):
        return True
    if rel == 0:
        return False
    a64, b64 = xp.asarray(a).astype(xp.float64), xp.asarray(b).astype(xp.float64)
    scale = float(xp.max(xp.abs(xp.where(xp.isfinite(a64), a64, 0.0))))
    return bool(xp.all(equal | (xp.abs(a64 - b64) <= rel * scale)))
