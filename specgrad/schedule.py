"""Which worker (or CI shard) runs which case plan: balanced by estimated cost (cost.py),
not by count, and keeping a spec's plans where its framework is already loaded.

`partition` is a greedy longest-first assignment of groups (a spec's plans): each group,
largest first, goes whole to the bin where it would finish earliest, counting the
warm-ups (importing torch, jax compiling a spec's calls) that bin has not paid yet; a
group larger than a bin's fair share is split, plan by plan, the same way. Largest first
is what keeps one huge convolution from starting last while the other workers go idle;
keeping groups whole is what keeps torch's and jax's warm-ups (seconds, more than most
of the zoo's plans) from being paid in every worker. It depends on the plans alone, ties
broken by name, so N CI jobs that compile the same selection compute the same partition:
`--shard K/N` runs bin K.

`Queue` hands a partition out to running workers: each takes its own bin's plans, largest
first, and a worker whose bin is empty takes over (steals) the largest plan of the bin
with the most work left, when it would finish it, warm-up included, before that bin's
worker would get to it. Estimates are rough; stealing is what corrects them at run time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Unit:
    """One schedulable plan: `name` orders ties (a check id: the same on every machine);
    units of one `group` share warm-ups and go together where they can."""

    key: Hashable
    name: str
    seconds: float
    needs: frozenset[str] = frozenset()
    group: str = ""
    payload: Any = None


@dataclass
class Bin:
    """One worker's (or shard's) units, their estimated seconds and what they warm up."""

    units: list[Unit] = field(default_factory=list)
    load: float = 0.0  # estimated seconds, warm-ups included
    warm: set[str] = field(default_factory=set)


def batches(
    units: Sequence[Unit], workers: int, warmup: Callable[[str], float], per_worker: int = 4
) -> list[list[Unit]]:
    """`units` in batches of one group each, of about 1/(`per_worker` x `workers`) of the
    whole, largest first: what a scheduler that knows nothing of warm-ups (Dask) is given,
    so a spec's plans share a worker's warm-up and the batches still balance."""
    groups: dict[str, list[Unit]] = {}
    for unit in sorted(units, key=lambda u: (-u.seconds, u.name)):
        groups.setdefault(unit.group or unit.name, []).append(unit)
    target = math.fsum(u.seconds for u in units) / max(1, per_worker * workers)
    out: list[list[Unit]] = []
    for members in groups.values():
        current: list[Unit] = []
        for unit in members:
            current.append(unit)
            if math.fsum(u.seconds for u in current) >= target:
                out.append(current)
                current = []
        if current:
            out.append(current)

    def cost(batch: list[Unit]) -> float:
        return _total(batch, set().union(*(u.needs for u in batch)), warmup)

    return sorted(out, key=lambda b: (-cost(b), b[0].name))


def _total(units: Sequence[Unit], needs: set[str], warmup: Callable[[str], float]) -> float:
    """Seconds of `units` plus the warm-ups of `needs`, summed exactly (math.fsum): the
    order a set iterates in differs between processes (hash randomisation), and a float
    sum that depended on it could put a unit in another bin on another CI runner."""
    return math.fsum([*(u.seconds for u in units), *(warmup(n) for n in needs)])


def partition(units: Sequence[Unit], bins: int, warmup: Callable[[str], float]) -> list[Bin]:
    """`units` into `bins` bins of about equal estimated time (each bin's units largest first)."""
    out = [Bin() for _ in range(max(1, bins))]
    groups: dict[str, list[Unit]] = {}
    for unit in sorted(units, key=lambda u: (-u.seconds, u.name)):
        groups.setdefault(unit.group or unit.name, []).append(unit)

    def cost(members: list[Unit], warm: set[str]) -> float:
        needs = set().union(*(u.needs for u in members)) - warm
        return _total(members, needs, warmup)

    fair = cost([u for g in groups.values() for u in g], set()) / len(out)
    ranked = sorted(groups.values(), key=lambda g: (-cost(g, set()), g[0].name))
    for members in ranked:
        for part in [members] if cost(members, set()) <= fair else [[u] for u in members]:
            best = min(range(len(out)), key=lambda i: (out[i].load + cost(part, out[i].warm), i))
            chosen = out[best]
            chosen.load += cost(part, chosen.warm)
            chosen.units += part
            chosen.warm |= set().union(*(u.needs for u in part))
    for b in out:
        b.units.sort(key=lambda u: (-u.seconds, u.name))
    return out


class Queue:
    """A partition handed out to `len(bins)` worker slots as they become free."""

    def __init__(self, bins: list[Bin], warmup: Callable[[str], float]) -> None:
        self.bins = [list(b.units) for b in bins]
        self.warmup = warmup
        self.running: dict[int, tuple[Unit, float]] = {}  # slot: (unit, when it started)

    @classmethod
    def balanced(cls, units: Sequence[Unit], slots: int, warmup: Callable[[str], float]) -> Queue:
        return cls(partition(units, slots, warmup), warmup)

    @classmethod
    def in_order(cls, units: Sequence[Unit]) -> Queue:
        """One bin, handed out in the order given (to whichever slot asks)."""
        return cls([Bin(list(units))], lambda need: 0.0)

    def __bool__(self) -> bool:
        return any(self.bins)

    def take(
        self, slot: int, warm: frozenset[str] | set[str], now: float, force: bool = False
    ) -> Unit | None:
        """The next unit for the worker in `slot` (which has `warm` loaded), or None: its
        own bin's largest, else one worth stealing, else nothing for now (with `force`,
        when no other worker is busy, the largest left)."""
        own = self.bins[slot % len(self.bins)]
        unit = own.pop(0) if own else self._steal(set(warm), now, force)
        if unit is not None:
            self.running[slot] = (unit, now)
        return unit

    def finished(self, slot: int) -> None:
        self.running.pop(slot, None)

    def give_back(self, slot: int, unit: Unit) -> None:
        """A unit taken but not started (its worker died first): it goes first again."""
        self.running.pop(slot, None)
        self.bins[slot % len(self.bins)].insert(0, unit)

    def _steal(self, warm: set[str], now: float, force: bool) -> Unit | None:
        """The first unit of the bin with the most work left that this worker would finish,
        warm-up included, before that bin's worker got to it; a running unit is taken to
        need as long again as it has run, or its estimate if that is longer."""
        best: tuple[float, int] | None = None
        for i, queued in enumerate(self.bins):
            if not queued:
                continue
            ahead = 0.0
            if i in self.running:
                unit, since = self.running[i]
                ahead = max(unit.seconds - (now - since), now - since)
            left = ahead + math.fsum(u.seconds for u in queued)
            if best is None or left > best[0]:
                best = (left, i)
        if best is None:
            return None
        victim = self.bins[best[1]]
        running = self.running.get(best[1])
        ahead = max(running[0].seconds - (now - running[1]), now - running[1]) if running else 0.0
        for j, unit in enumerate(victim):
            if force or math.fsum(self.warmup(n) for n in unit.needs - warm) < ahead:
                return victim.pop(j)
            ahead += unit.seconds
        return None
