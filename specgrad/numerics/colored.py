"""Central differences of whole groups of elements at once (`structure.Coloring`).

Every element of a group is stepped by its own h_j in the same forward call, up and then
down; an output belongs to the one element whose window holds it, and the differences of
the outputs an element owns, contracted with g, are that element's. So each element gets
the same three-point difference, steps, noise and term sizes as `finite_diff` would give
it alone (all in float64, the forward in the tensor's dtype), at two calls per group.

That holds only if the structure is right, so the evaluations check it as they go:
- outputs no element of the group owns must not move (within rounding);
- for groups picked by the caller, a third call moves each element to a seeded choice of
  its two stepped values: every owned output must equal its owner's own stepped value, and
  unowned ones their value at the case's point. An element that moves outputs in a
  group-mate's window shows as a mismatch here (half of all such pairs per verified group).
A failure raises StructureViolation with the element and output it was seen at.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from specgrad.numerics.finite_diff import (
    NumericalGradient,
    Outputs,
    PerturbationError,
    _evaluate_at,
    _outputs64,
    _Stencil,
    stepped,
)
from specgrad.structure import Coloring, Group

#: an output may differ from what the structure predicts by this many units of roundoff of
#: its magnitude plus its output's typical (median) one: a forward whose arithmetic mixes
#: unrelated elements at rounding level (an FFT convolution) is not a structure error. Not
#: the largest magnitude: one huge output would hide every coupling of the others
INTERFERENCE_ULPS = 16


class StructureViolation(Exception):
    """The colored differences contradict the structure they were taken under."""


class StackingRefused(Exception):
    """Stacked copies of the batch do not give what one batch gives: the layer is not
    batch independent, or does not take another batch size."""


@dataclass(frozen=True)
class Stacking:
    """Evaluate `copies` perturbed copies of the batch in one forward call, stacked along
    axis 0: the perturbed input and the `batched` inputs (those with the batch axis) are
    tiled, parameters are not, and each output's axis 0 is cut back into copies.
    For batch-independent layers whose forward costs little per sample, calls, not
    arithmetic, are what a check pays for."""

    forward: Callable[[Mapping[str, Any]], Outputs]
    tensors: Mapping[str, Any]
    name: str  # the perturbed input
    batched: tuple[str, ...]  # the other inputs tiled with it
    copies: int  # per call (memory budget)

    def outputs(self, elements: list[Any], values: list[Any], active: Any, xp: ModuleType) -> list[list[Any]]:
        """float64 outputs with the flat `elements[i]` of `name` set to `values[i]`."""
        x = self.tensors[self.name]
        n = len(values)
        big = xp.concatenate([x] * n, axis=0)
        rows = big.reshape(n, -1)
        for i, (e, v) in enumerate(zip(elements, values, strict=True)):
            rows[i, e] = v
        point = dict(self.tensors)
        point[self.name] = big
        for b in self.batched:
            point[b] = xp.concatenate([self.tensors[b]] * n, axis=0)
        raw = self.forward(point)
        out: list[list[Any]] = [[] for _ in range(n)]
        for k, g, _ in active:
            if (
                k >= len(raw)
                or not hasattr(raw[k], "shape")
                or tuple(raw[k].shape) != (n * g.shape[0], *g.shape[1:])
            ):
                raise StackingRefused(f"output {k} is not {n} copies of its shape {tuple(g.shape)} stacked")
            stacked = xp.asarray(raw[k]).astype(xp.float64).reshape(n, *g.shape)
            for i in range(n):
                out[i].append(stacked[i])
        return out


def colored_difference(
    evaluate: Callable[[], Outputs],
    x: Any,
    upstream: Sequence[Any | None],
    coloring: Coloring,
    epsilon: float,
    unit_roundoff: float,
    xp: ModuleType,
    model_terms: bool = True,
    verify: Collection[int] = (),
    seed: int = 0,
    stacking: Stacking | None = None,
) -> NumericalGradient:
    """dL/dx like `finite_diff.central_difference` (every element, tensor-shaped), taken
    group by group; the groups numbered in `verify` get the interference check. With
    `stacking`, the groups' evaluations go `stacking.copies` to a forward call (the first
    call's first and last copies are checked against evaluations of their own:
    StackingRefused)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        run = _ColoredRun(evaluate, x, upstream, coloring, unit_roundoff, xp, model_terms, seed, stacking)
        pending: list[_Pending] = []
        for number, group in enumerate(coloring.groups()):
            pending.append(run.prepare(group, epsilon, number in verify))
            if stacking is None or sum(len(p.values) for p in pending) >= stacking.copies:
                run.flush(pending)
                pending = []
        run.flush(pending)
        zeros = xp.zeros(x.shape, dtype=xp.float64)
        up, down, power, terms, fanout, a, b = (s.reshape(x.shape) for s in run.sums)
        return run.stencil.from_sums(up, down, power, terms, fanout, zeros, zeros, a, b)


def footprints(
    evaluate: Callable[[], Outputs],
    x: Any,
    upstream: Sequence[Any | None],
    epsilon: float,
    xp: ModuleType,
    to_host: Callable[[Any], np.ndarray],
) -> Callable[[int], tuple[np.ndarray, ...]]:
    """flat element j -> per differentiated output, the (host: `to_host`, the backend's)
    mask of outputs that move when x_j alone takes the step up: what `structure.detect`
    reads links from."""
    stencil = _Stencil(evaluate, x, upstream, 1.0, xp)

    def moved(j: int) -> tuple[np.ndarray, ...]:
        orig = stencil.flat[j].copy()
        h = epsilon * max(abs(float(orig)), 1.0)
        try:
            _, plus = _evaluate_at(evaluate, stencil.flat, j, orig, h, stencil.active, xp)
        except (Exception, SystemExit) as exc:  # user code: attributed to the element
            raise PerturbationError(j, exc) from exc
        finally:
            stencil.flat[j] = orig
        return tuple(to_host((fp != f0).reshape(-1)) for fp, f0 in zip(plus, stencil.base, strict=True))

    return moved


def _summed(xp: ModuleType, index: Any, weights: Any, size: int) -> Any:
    """Sums of `weights` by `index` (each in [0, size)), in float64: ufunc.at, which cupy
    runs as one scatter kernel; its bincount reads the largest index back first (a wait
    for the device per call). On numpy it adds in index order, as bincount does."""
    out = xp.zeros(size, dtype=xp.float64)
    xp.add.at(out, index, weights)
    return out


@dataclass(frozen=True)
class _Pending:
    """A group's stepped values, waiting for their evaluations."""

    group: Group
    elements: Any  # on the device
    values: list[Any]  # up, down[, mixed]
    a: Any  # steps taken up and down, float64
    b: Any
    sigma: Any  # the mix: True where the mixed evaluation takes the up value


class _ColoredRun:
    """The running per-element sums of one tensor's colored differences."""

    def __init__(
        self,
        evaluate: Callable[[], Outputs],
        x: Any,
        upstream: Sequence[Any | None],
        coloring: Coloring,
        unit_roundoff: float,
        xp: ModuleType,
        model_terms: bool,
        seed: int,
        stacking: Stacking | None = None,
    ) -> None:
        self.stencil = _Stencil(evaluate, x, upstream, unit_roundoff, xp, model_terms=model_terms)
        self.stacking, self.checked = stacking, False
        self.evaluate, self.coloring, self.xp, self.u = evaluate, coloring, xp, unit_roundoff
        self.model_terms = model_terms
        n = self.stencil.flat.size
        # up, down, power, terms, fanout, a, b per element
        self.sums = [xp.zeros(n, dtype=xp.float64) for _ in range(7)]
        self.scales = [float(xp.median(xp.abs(f0))) if f0.size else 0.0 for f0 in self.stencil.base]
        self.rng = np.random.default_rng(seed)
        # id(host owner) -> (owner + 1 on the device, unowned outputs)
        self.placed: dict[int, tuple[Any, Any]] = {}
        self.buffers = [xp.empty(int(f0.size), dtype=xp.float64) for f0 in self.stencil.base]

    def _placed(self, owner: np.ndarray, shared: bool) -> tuple[Any, Any]:
        """An owner map on the device (shifted by one: 0 is no owner) and its unowned outputs,
        cached where the Coloring keeps the map (it depends on the group's residues only)."""
        key = id(owner)  # stable only for owners the Coloring keeps (`shared`)
        if key in self.placed:
            return self.placed[key]
        unowned = np.nonzero(owner < 0)[0]
        placed = (self.xp.asarray(owner + 1), self.xp.asarray(unowned) if unowned.size else None)
        if shared:
            self.placed[key] = placed
        return placed

    def prepare(self, group: Group, epsilon: float, verify: bool) -> _Pending:
        """The group's stepped values: up, down and (verified groups) a seeded mix of both."""
        xp = self.xp
        elements = xp.asarray(group.elements)
        orig = self.stencil.flat[elements].copy()
        h = epsilon * xp.maximum(xp.abs(orig.astype(xp.float64)), 1.0)
        up, a = stepped(orig, h, xp)
        down, b = stepped(orig, -h, xp)
        values = [up, down]
        sigma = None
        if verify:
            sigma = xp.asarray(self.rng.integers(0, 2, len(group.elements)).astype(bool))
            values.append(xp.where(sigma, up, down))
        return _Pending(group, elements, values, a, b, sigma)

    def flush(self, pending: list[_Pending]) -> None:
        if not pending:
            return
        elements = [p.elements for p in pending for _ in p.values]
        values = [v for p in pending for v in p.values]
        try:
            if self.stacking is None:
                outputs = [self._in_place(e, v) for e, v in zip(elements, values, strict=True)]
            else:
                outputs = self.stacking.outputs(elements, values, self.stencil.active, self.xp)
                if not self.checked:  # the first and last stacked copies against calls of their own
                    for i in {0, len(values) - 1}:
                        self._same(outputs[i], self._in_place(elements[i], values[i]))
                    self.checked = True
        except StackingRefused:
            raise
        except (Exception, SystemExit) as exc:  # user code: attributed to the group's first element
            if self.stacking is not None:
                raise StackingRefused(
                    f"forward on stacked copies raised {type(exc).__name__}: {exc}"
                ) from exc
            raise PerturbationError(int(pending[0].group.elements[0]), exc) from exc
        at = 0
        for p in pending:
            self.accumulate(p, outputs[at : at + len(p.values)])
            at += len(p.values)

    def _in_place(self, elements: Any, values: Any) -> list[Any]:
        flat = self.stencil.flat
        orig = flat[elements].copy()
        flat[elements] = values
        try:
            return _outputs64(self.evaluate(), self.stencil.active, self.xp)
        finally:
            flat[elements] = orig

    def _same(self, stacked: list[Any], alone: list[Any]) -> None:
        xp = self.xp
        for k, (s, a) in enumerate(zip(stacked, alone, strict=True)):
            limit = INTERFERENCE_ULPS * self.u * (xp.abs(a) + self.scales[k])
            if not bool(xp.all(xp.abs(s - a) <= limit)):
                raise StackingRefused(f"output {k} of a stacked copy differs from the same batch alone")

    def accumulate(self, p: _Pending, outputs: list[list[Any]]) -> None:
        xp, group, elements, a, b, sigma = self.xp, p.group, p.elements, p.a, p.b, p.sigma
        m = len(group.elements)
        plus, minus = outputs[0], outputs[1]
        mixed = outputs[2] if len(outputs) > 2 else None
        active = self.stencil.active
        up, down, power, terms, fanout, steps_a, steps_b = self.sums
        steps_a[elements], steps_b[elements] = a, b
        totals = [xp.zeros(m, dtype=xp.float64) for _ in range(5)]
        for k, ((_, g, _), f0, fp, fm, owner) in enumerate(
            zip(active, self.stencil.base, plus, minus, group.owners, strict=True)
        ):
            shifted, unowned = self._placed(owner, group.shared)
            gf, f0f, fpf, fmf, buf = (
                g.reshape(-1),
                f0.reshape(-1),
                fp.reshape(-1),
                fm.reshape(-1),
                self.buffers[k],
            )
            # differences first, then g (the large common part of L never cancels), in place
            for total, (left, right) in zip(totals, ((fpf, f0f), (f0f, fmf)), strict=False):
                xp.subtract(left, right, out=buf)
                xp.multiply(buf, gf, out=buf)
                total += _summed(xp, shifted, buf, m + 1)[1:]
            # rounding power of the outputs that moved, as finite_diff._contract counts it (an
            # unmoved output adds no noise; counting it would let a large one hide errors)
            xp.not_equal(fpf, fmf, out=buf)
            xp.multiply(buf, self.stencil.weights[k], out=buf)
            totals[2] += _summed(xp, shifted, buf, m + 1)[1:]
            if self.model_terms:
                xp.subtract(fpf, fmf, out=buf)
                xp.multiply(buf, gf, out=buf)
                totals[3] += _summed(xp, shifted, xp.abs(buf, out=buf), m + 1)[1:]
                moved = (fpf != fmf).astype(xp.float64)
                totals[4] += _summed(xp, shifted, moved, m + 1)[1:]
            if unowned is not None:
                for side in (fp, fm):
                    self._expect(side.reshape(-1)[unowned], f0.reshape(-1)[unowned], k, group, unowned, None)
            if mixed is not None and sigma is not None:
                owned_sigma = sigma[xp.maximum(shifted - 1, 0)]
                expected = xp.where(
                    shifted == 0, f0.reshape(-1), xp.where(owned_sigma, fp.reshape(-1), fm.reshape(-1))
                )
                self._expect(mixed[k].reshape(-1), expected, k, group, None, shifted - 1)
        for total, target in zip(totals, (up, down, power, terms, fanout), strict=False):
            target[elements] = total

    def _expect(self, got: Any, expected: Any, k: int, group: Group, where: Any, owners: Any) -> None:
        """StructureViolation where `got` differs from `expected` beyond rounding; `where`
        maps positions to flat outputs (None: already flat), `owners` gives each output's
        owner (None: outputs no element owns)."""
        xp = self.xp
        limit = INTERFERENCE_ULPS * self.u * (xp.abs(expected) + self.scales[k])
        excess = xp.abs(got - expected) - limit
        excess = xp.where(xp.isfinite(excess), excess, -xp.inf)  # non-finite: the finite contract's
        # one read-back per call in the common case (on a GPU each one waits for the device)
        if not excess.size or not bool(xp.any(excess > 0)):
            return
        worst = int(xp.argmax(excess))
        output = int(where[worst]) if where is not None else worst
        shape = self.coloring.out_shapes[k]
        at = ", ".join(map(str, np.unravel_index(output, shape)))
        first = ", ".join(map(str, np.unravel_index(int(group.elements[0]), self.coloring.shape)))
        moved_by = float(xp.abs(got[worst] - expected[worst]))
        if owners is None:
            why = "no element of the group has that output in its window"
        else:
            owner = int(owners[worst])
            if owner < 0:
                why = "no element of the group has that output in its window"
            else:
                idx = ", ".join(map(str, np.unravel_index(int(group.elements[owner]), self.coloring.shape)))
                why = (
                    f"it is in the window of element [{idx}], and it changed when only the other elements "
                    "of the group moved differently"
                )
        raise StructureViolation(
            f"moving the {len(group.elements)} elements of the group of element [{first}] together changed "
            f"output {k} at [{at}] by {moved_by:.3g} (rounding allows {float(limit[worst]):.3g}), but {why}: "
            f"some element moves outputs outside its window ({self.coloring.describe()})"
        )
