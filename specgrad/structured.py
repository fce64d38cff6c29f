"""The element-wise check's differences taken group by group (`structure.Coloring`), and
everything that holds them to the structure they were taken under.

`structured` runs the colored differences (numerics.colored: spill in every group,
interference in `verified` groups), stacks a batch input's groups where the layer takes
stacked copies of its batch, and then holds the result to two structure-free references:
single-element differences of a sample (`confirm_alone`: corners first; the runner also
confirms every out-of-bound element this way before a verdict) and one difference along a
seeded direction that moves every element at once (`across`): a coupling the probes never
saw, between two elements of one group anywhere in the tensor, shows there whatever the
group's seeded mix did. Any disagreement is a StructureViolation.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

from specgrad.budget import stack_bytes
from specgrad.compile import CasePlan
from specgrad.gradient_check import KINK_SUSPECT
from specgrad.numerics.colored import Stacking, StackingRefused, StructureViolation, colored_difference
from specgrad.numerics.finite_diff import (
    NOISE_SIGMAS,
    NumericalGradient,
    _outputs64,
    central_difference,
    stepped,
)
from specgrad.numerics.inputs import stream
from specgrad.numerics.sampling import stratified
from specgrad.numerics.tolerance import UNIT_ROUNDOFF
from specgrad.routes import Forward, Route
from specgrad.structure import Coloring

#: colored groups that get the interference check (seeded): VERIFIED_GROUPS and one in
#: VERIFIED_SHARE of the rest. A wrong window interferes in every group (one caught pair
#: per group in two); a coupling only some elements have needs its group among these
VERIFIED_GROUPS = 4
VERIFIED_SHARE = 16


def verified(groups: int) -> int:
    return min(groups, VERIFIED_GROUPS + groups // VERIFIED_SHARE)


#: elements differenced one by one as well, to hold the colored values to (corners first)
STRUCTURE_SAMPLE = 8

#: out-of-bound (and kink-suspect) colored elements confirmed alone, at most
CONFIRMED = 64


def structured(
    name: str,
    route: Route,
    plan: CasePlan,
    forward: Forward,
    upstream64: Sequence[Any | None],
    xp: ModuleType,
    coloring: Coloring,
    model_terms: bool = True,
) -> tuple[NumericalGradient, str]:
    """Every element's difference, group by group, cross-checked: interference within
    `verified` groups (numerics.colored), and STRUCTURE_SAMPLE elements differenced alone
    must give the same values within their noise (StructureViolation otherwise). Groups of
    a batch input go several to a forward call where the layer takes stacked copies of its
    batch (`stacking`); the second element says so."""
    tensors = route.tensors
    x = tensors[name]
    epsilon, u = plan.spec.tolerances[route.dtype].epsilon, UNIT_ROUNDOFF[route.dtype]
    rng = stream(plan.seed, "<structure>", name)
    verify = set(rng.permutation(coloring.size)[: verified(coloring.size)].tolist())
    seed = int(rng.integers(2**32))
    stack = stacking(name, route, plan, forward, upstream64, coloring)
    how = ""
    try:
        numerical = colored_difference(
            lambda: forward(tensors),
            x,
            upstream64,
            coloring,
            epsilon,
            u,
            xp,
            model_terms,
            verify,
            seed,
            stack,
        )
        if stack is not None:
            how = f", up to {stack.copies} stacked copies of the batch per call"
    except StackingRefused as exc:
        numerical = colored_difference(
            lambda: forward(tensors), x, upstream64, coloring, epsilon, u, xp, model_terms, verify, seed
        )
        how = f" (the batch does not stack: {exc})"
    sample = stratified(tuple(x.shape), STRUCTURE_SAMPLE, plan.seed, f"{name}<structure>")
    picks = list(sample) if sample is not None else list(range(int(x.size)))
    confirm_alone(name, route, plan, forward, upstream64, xp, numerical, picks, coloring)
    across(name, route, plan, forward, upstream64, xp, numerical, coloring)
    return numerical, how


#: fewer copies than this per call are not worth stacking (a large batch is arithmetic-bound)
MIN_COPIES = 8


def stacking(
    name: str,
    route: Route,
    plan: CasePlan,
    forward: Forward,
    upstream64: Sequence[Any | None],
    coloring: Coloring,
) -> Stacking | None:
    """Stacked evaluation for an input whose outputs all lead with its batch axis, in as
    many copies per call as the memory budget gives stacking (budget.stack_bytes) (None: not
    applicable, or fewer than MIN_COPIES fit). Whether the layer really is batch independent is checked on the
    first stacked call (numerics.colored)."""
    tensor = plan.spec.tensor(name)
    x = route.tensors[name]
    active_k = [(k, g, None) for k, g in enumerate(upstream64) if g is not None]
    active = [g for _, g, _ in active_k]
    if tensor.role != "input" or x.ndim == 0 or coloring.size < 2 or not active:
        return None
    n = x.shape[0]
    if any(g.ndim == 0 or g.shape[0] != n for g in active):
        return None
    batched = tuple(
        t.name
        for t in plan.spec.inputs
        if t.name != name and route.tensors[t.name].ndim and route.tensors[t.name].shape[0] == n
    )
    per_copy = x.nbytes + sum(route.tensors[b].nbytes for b in batched) + sum(3 * g.nbytes for g in active)
    outputs = sum(int(g.size) for g in upstream64 if g is not None)
    copies = stack_bytes(plan, name, outputs) // max(per_copy, 1)
    return Stacking(forward, route.tensors, name, batched, int(copies)) if copies >= MIN_COPIES else None


def confirm_alone(
    name: str,
    route: Route,
    plan: CasePlan,
    forward: Forward,
    upstream64: Sequence[Any | None],
    xp: ModuleType,
    numerical: NumericalGradient,
    picks: Sequence[int],
    coloring: Coloring,
) -> None:
    """The flat elements `picks` differenced alone, at the same step, must give the colored
    values within four times their noise; StructureViolation otherwise. The runner also
    holds every element a colored comparison finds out of bound to this: a group-mate's
    outputs counted as its own would otherwise make it look wrong, or look right."""
    tensors = route.tensors
    x = tensors[name]
    epsilon, u = plan.spec.tolerances[route.dtype].epsilon, UNIT_ROUNDOFF[route.dtype]
    alone = central_difference(lambda: forward(tensors), x, upstream64, epsilon, u, xp, picks)
    at = xp.asarray(list(picks))
    together, noise = numerical.value.reshape(-1)[at], numerical.noise.reshape(-1)[at]
    excess = xp.abs(together - alone.value) - 4 * (noise + alone.noise)
    excess = xp.where(xp.isnan(together) & xp.isnan(alone.value), 0.0, excess)
    worst = int(xp.argmax(xp.where(xp.isnan(excess), xp.inf, excess)))
    if not float(excess[worst]) <= 0:
        index = ", ".join(map(str, np.unravel_index(picks[worst], x.shape)))
        raise StructureViolation(
            f"element [{index}] of {name} has difference {float(together[worst]):.6g} when its group moves "
            f"together but {float(alone.value[worst]):.6g} when it moves alone ({coloring.describe()})"
        )


#: `across` leaves out elements whose noise is over this many times the median element's
NOISY = 100.0

#: `across` allows this many times the quadrature sum of the per-element values times
#: sqrt(u) (truncation and rounding that the noise estimates leave out), on top of 8 times
#: the two sides' noise and 4 times the measured cubic term
ACROSS_FLOOR = 8.0


def across(
    name: str,
    route: Route,
    plan: CasePlan,
    forward: Forward,
    upstream64: Sequence[Any | None],
    xp: ModuleType,
    numerical: NumericalGradient,
    coloring: Coloring,
) -> None:
    """The colored values against one difference along a seeded direction that moves every
    element at once, by its own step h_j times a random size in +-[0.5, 1): L(x + t) -
    L(x - t) must equal sum_j t_j D_j (t the steps taken, float64 throughout). What is left
    under a right structure is truncation, O(h^2) (the cubic term is measured from the same
    difference at half the steps: d(1) - 2 d(1/2) = 3/4 of it), and rounding. An element
    that moved a group-mate's outputs shifted that group-mate's value by a first-order
    amount, which shows here unless the two moved alike (hence random sizes, not signs).
    Elements that look like kinks (their one-sided values differ), or whose outputs are far
    noisier than most, stay put."""
    tensors = route.tensors
    x = tensors[name]
    flat = x.reshape(-1)
    if not flat.size:
        return
    epsilon, u = plan.spec.tolerances[route.dtype].epsilon, UNIT_ROUNDOFF[route.dtype]
    value, noise = numerical.value.reshape(-1), numerical.noise.reshape(-1)
    plus, minus = numerical.plus.reshape(-1), numerical.minus.reshape(-1)
    smooth = (
        xp.isfinite(value)
        & xp.isfinite(noise)
        & (xp.abs(plus - minus) <= KINK_SUSPECT * (xp.abs(plus) + xp.abs(minus)) / 2 + 16 * noise)
    )
    # an element whose outputs are far noisier than most (a huge output in its window) would
    # drown everyone's signal in the one sum: it was held to its own noise, and stays put here
    typical = float(xp.median(noise[smooth])) if bool(xp.any(smooth)) else 0.0
    smooth &= noise <= NOISY * max(typical, float(np.finfo(np.float64).tiny))
    # random signs and sizes: two elements whose contamination cancels under equal moves
    # (a pair credited each other's outputs) must not move alike
    rng = stream(plan.seed, "<across>", name)
    # sizes at most one step: an element never crosses a kink its own differences did not
    sizes = (rng.integers(0, 2, flat.size) * 2.0 - 1.0) * (0.5 + 0.5 * rng.random(flat.size))
    v = xp.where(smooth, xp.asarray(sizes), 0.0)
    orig = flat.copy()
    h = epsilon * xp.maximum(xp.abs(orig.astype(xp.float64)), 1.0)
    active_k = [(k, g, None) for k, g in enumerate(upstream64) if g is not None]
    active = [g for _, g, _ in active_k]

    def difference(scale: float) -> tuple[float, float, Any]:
        """(L(x + t) - L(x - t), its rounding noise, t+ + t- per element)."""
        sides, taken, power = [], [], 0.0
        for sign in (1.0, -1.0):
            moved, _ = stepped(orig, xp.where(v == 0, 1.0, sign * scale * v * h), xp)
            moved = xp.where(v == 0, orig, moved)
            flat[...] = moved
            try:
                sides.append(_outputs64(forward(tensors), active_k, xp))
            except (Exception, SystemExit) as exc:
                raise StructureViolation(
                    f"forward failed moving every element at once: {type(exc).__name__}: {exc}"
                ) from exc
            finally:
                flat[...] = orig
            taken.append(moved.astype(xp.float64) - orig.astype(xp.float64))
        d = 0.0
        for g, fp, fm in zip(active, sides[0], sides[1], strict=True):
            d += float(xp.sum(g * (fp - fm)))
            # outputs that did not move add no rounding (finite_diff._contract)
            power += float(xp.sum(xp.where(fp != fm, g * g * (fp * fp + fm * fm), 0.0)))
        return d, NOISE_SIGMAS * u * power**0.5, taken[0] - taken[1]

    d1, noise1, t1 = difference(1.0)
    d2, noise2, t2 = difference(0.5)
    values = xp.where(v == 0, 0.0, value)
    p1, p2 = float(xp.sum(t1 * values)), float(xp.sum(t2 * values))
    noise_p = float(xp.sqrt(xp.sum((t1 * xp.where(v == 0, 0.0, noise)) ** 2)))
    cubic = 4.0 / 3.0 * abs((d1 - p1) - 2 * (d2 - p2)) + 4.0 / 3.0 * (noise1 + 2 * noise2)
    floor = ACROSS_FLOOR * u**0.5 * float(xp.sqrt(xp.sum((t1 * values) ** 2)))
    allowed = 8 * (noise1 + noise_p) + 4 * cubic + floor
    if not abs(d1 - p1) <= allowed:
        raise StructureViolation(
            f"moving every element of {name} at once by its own step (seeded signs) changed L by "
            f"{d1:.9g}, but the colored values predict {p1:.9g} (allowed {allowed:.3g}): some element "
            f"moves outputs in another's window ({coloring.describe()})"
        )
