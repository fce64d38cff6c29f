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
from collections.abc import Callable, Collection, Sequence
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
)
from specgrad.structure import Coloring, Group

#: an output may differ from what the structure predicts by this many units of roundoff of
#: its magnitude plus its output's largest: a forward whose arithmetic mixes unrelated
#: elements at rounding level (an FFT convolution) is not a structure error
INTERFERENCE_ULPS = 16


class StructureViolation(Exception):
    """The colored differences contradict the structure they were taken under."""


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
) -> NumericalGradient:
    """dL/dx like `finite_diff.central_difference` (every element, tensor-shaped), taken
    group by group; the groups numbered in `verify` get the interference check."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        run = _ColoredRun(evaluate, x, upstream, coloring, unit_roundoff, xp, model_terms, seed)
        for number, group in enumerate(coloring.groups()):
            run.group(group, epsilon, number in verify)
        zeros = xp.zeros(x.shape, dtype=xp.float64)
        up, down, power, terms, fanout, a, b = (s.reshape(x.shape) for s in run.sums)
        return run.stencil.from_sums(up, down, power, terms, fanout, zeros, zeros, a, b)


def footprints(
    evaluate: Callable[[], Outputs], x: Any, upstream: Sequence[Any | None], epsilon: float, xp: ModuleType
) -> Callable[[int], tuple[np.ndarray, ...]]:
    """flat element j -> per differentiated output, the (host) mask of outputs that move
    when x_j alone takes the step up: what `structure.detect` reads links from."""
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
        return tuple(_host(xp, (fp != f0).reshape(-1)) for fp, f0 in zip(plus, stencil.base, strict=True))

    return moved


def _host(xp: ModuleType, array: Any) -> np.ndarray:
    return np.asarray(array.get() if hasattr(array, "get") and xp is not np else array)


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
    ) -> None:
        self.stencil = _Stencil(evaluate, x, upstream, unit_roundoff, xp, model_terms=model_terms)
        self.evaluate, self.coloring, self.xp, self.u = evaluate, coloring, xp, unit_roundoff
        self.model_terms = model_terms
        n = self.stencil.flat.size
        # up, down, power, terms, fanout, a, b per element
        self.sums = [xp.zeros(n, dtype=xp.float64) for _ in range(7)]
        self.scales = [float(xp.max(xp.abs(f0))) if f0.size else 0.0 for f0 in self.stencil.base]
        self.rng = np.random.default_rng(seed)
        # id(host owner) -> (owner + 1 on the device, unowned outputs, rounding power per element)
        self.placed: dict[int, tuple[Any, Any, Any]] = {}
        self.buffers = [xp.empty(int(f0.size), dtype=xp.float64) for f0 in self.stencil.base]

    def _placed(self, owner: np.ndarray, k: int, m: int) -> tuple[Any, Any, Any]:
        """An owner map on the device, cached (it depends on the group's residues only), with
        each element's rounding power: 2 g^2 f0^2 summed over the outputs of its window.
        Unlike `finite_diff`, outputs of the window that happen not to move count too (at
        most the window's size, a 3x3 one's 9, times the power: three times the noise)."""
        key = id(owner)
        if key not in self.placed:
            xp = self.xp
            unowned = np.nonzero(owner < 0)[0]
            shifted = xp.asarray(owner + 1)
            power = xp.bincount(shifted, weights=self.stencil.weights[k], minlength=m + 1)[1:]
            self.placed[key] = (shifted, xp.asarray(unowned) if unowned.size else None, power)
        return self.placed[key]

    def group(self, group: Group, epsilon: float, verify: bool) -> None:
        xp, flat, active = self.xp, self.stencil.flat, self.stencil.active
        elements = xp.asarray(group.elements)
        m = len(group.elements)
        orig = flat[elements].copy()
        h = epsilon * xp.maximum(xp.abs(orig.astype(xp.float64)), 1.0)
        mixed, sigma = None, None
        try:
            a, plus = _evaluate_at(self.evaluate, flat, elements, orig, h, active, xp)
            up_values = flat[elements].copy()
            b, minus = _evaluate_at(self.evaluate, flat, elements, orig, -h, active, xp)
            if verify:
                sigma = xp.asarray(self.rng.integers(0, 2, m).astype(bool))
                flat[elements] = xp.where(sigma, up_values, flat[elements])
                mixed = _outputs64(self.evaluate(), active, xp)
        except (Exception, SystemExit) as exc:  # user code: attributed to the group's first element
            raise PerturbationError(int(group.elements[0]), exc) from exc
        finally:
            flat[elements] = orig
        up, down, power, terms, fanout, steps_a, steps_b = self.sums
        steps_a[elements], steps_b[elements] = a, b
        totals = [xp.zeros(m, dtype=xp.float64) for _ in range(5)]
        for k, ((_, g, _), f0, fp, fm, owner) in enumerate(
            zip(active, self.stencil.base, plus, minus, group.owners, strict=True)
        ):
            shifted, unowned, power_of = self._placed(owner, k, m)
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
                total += xp.bincount(shifted, weights=buf, minlength=m + 1)[1:]
            totals[2] += power_of
            if self.model_terms:
                xp.subtract(fpf, fmf, out=buf)
                xp.multiply(buf, gf, out=buf)
                totals[3] += xp.bincount(shifted, weights=xp.abs(buf, out=buf), minlength=m + 1)[1:]
                moved = (fpf != fmf).astype(xp.float64)
                totals[4] += xp.bincount(shifted, weights=moved, minlength=m + 1)[1:]
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
        worst = int(xp.argmax(excess)) if excess.size else 0
        if not excess.size or float(excess[worst]) <= 0 or not bool(xp.isfinite(excess[worst])):
            return
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
