"""Which elements of a tensor can be perturbed together: the Jacobian's structure, and the
graph colouring of its columns that it allows.

A structure is a set of links (model.Link): input axis a moves output axis d only within
a window [c(i) + lo, c(i) + hi] around the element's position mapped onto d,
c(i) = floor((i + 1/2) n_out / n_in) (the identity where the lengths agree, the pooled or
strided position where they do not). Output axes no link names are moved anywhere (dense).
So an element's footprint (the outputs it moves) lies in a box, and two elements whose
boxes are disjoint along one linked axis can be perturbed in the same forward call: every
output then moved by exactly one of them, and its change is that element's alone.

The colouring is the classic one for banded and block Jacobians (Curtis, Powell and Reid):
elements agree on the unlinked axes and on their index modulo a period p per linked axis,
p the smallest shift that separates boxes. Each colour is a group that costs two forward
calls, and every element still gets its own central difference. Everything here is host
side (numpy): the owners it computes are moved to the array namespace by the caller.

A structure can be declared in the spec or detected (`detect`): a few single-element probes
show which outputs each element moves; links are read off how those footprints shift as the
probe walks along each axis. Whether declared or detected, a structure is only a hypothesis:
`numerics.colored` checks every colored result for outputs moved outside their owner's box
and for interference between the elements of a group.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from specgrad.model import Link

#: tensors smaller than this are differenced element by element (probing costs more)
DETECT_MIN = 32

#: each axis is walked this many elements from the probe's base: strided layers (stride up
#: to this) show every phase of their window
WALK = 4

#: a colouring pays off only if it needs at most this share of the per-element calls
WORTH = 0.5

#: owner maps (one int64 per output per residue tuple) are kept up to this size; beyond it
#: (many residues of a large output: a 3-D convolution) they are recomputed per group
OWNER_CACHE_BYTES = 256 << 20


class StructureMismatch(Exception):
    """A declared structure does not fit the tensor or the outputs it is applied to."""


def center(index: np.ndarray, n_in: int, n_out: int) -> np.ndarray:
    """c(i) = floor((i + 1/2) n_out / n_in), in integer arithmetic."""
    return ((2 * index + 1) * n_out) // (2 * n_in)


def elementwise(shape: tuple[int, ...]) -> tuple[Link, ...]:
    return tuple(Link(a, a) for a in range(len(shape)))


def describe(links: Sequence[Link]) -> str:
    if not links:
        return "dense"
    parts = []
    for link in links:
        window = "" if link.lo == link.hi == 0 else f" [{link.lo:+d}, {link.hi:+d}]"
        parts.append(f"axis {link.axis}->{link.out_axis}{window}")
    return ", ".join(parts)


@dataclass(frozen=True)
class Group:
    """One colour: its elements (flat indices, in the order of `positions`), and per output
    the flat index into `elements` of the element whose box holds each output (-1: none)."""

    elements: np.ndarray
    owners: tuple[np.ndarray, ...]
    shared: bool = True  # the owners are cached by the Coloring (other groups reuse them)


@dataclass(frozen=True)
class Coloring:
    """The groups of a tensor of `shape` under `links`, for outputs of `out_shapes`."""

    shape: tuple[int, ...]
    links: tuple[Link, ...]
    out_shapes: tuple[tuple[int, ...], ...]
    periods: tuple[int, ...]  # per link
    origin: str  # "declared" or "detected"
    _owner_cache: dict[tuple[int, ...], tuple[np.ndarray, ...]] = field(default_factory=dict, repr=False)

    @property
    def unlinked(self) -> tuple[int, ...]:
        linked = {link.axis for link in self.links}
        return tuple(a for a in range(len(self.shape)) if a not in linked)

    @property
    def size(self) -> int:
        """The number of groups (colours)."""
        return int(np.prod([self.shape[a] for a in self.unlinked], dtype=np.int64)) * int(
            np.prod(self.periods, dtype=np.int64)
        )

    def describe(self) -> str:
        groups = "1 group" if self.size == 1 else f"{self.size} groups"
        return f"{groups}, structure {self.origin}: {describe(self.links)}"

    def groups(self) -> Iterator[Group]:
        strides = np.array(
            [int(np.prod(self.shape[a + 1 :], dtype=np.int64)) for a in range(len(self.shape))]
        )
        unlinked = self.unlinked
        for fixed in itertools.product(*[range(self.shape[a]) for a in unlinked]):
            base = int(sum(i * strides[a] for a, i in zip(unlinked, fixed, strict=True)))
            for residues in itertools.product(*[range(p) for p in self.periods]):
                positions = [
                    np.arange(r, self.shape[link.axis], p)
                    for link, r, p in zip(self.links, residues, self.periods, strict=True)
                ]
                offsets = np.zeros((), dtype=np.int64)
                for link, pos in zip(self.links, positions, strict=True):
                    offsets = np.add.outer(offsets, pos * strides[link.axis])
                elements = (base + offsets).reshape(-1)
                owners = self._owners(residues, positions)
                yield Group(elements, owners, residues in self._owner_cache)

    def _owners(self, residues: tuple[int, ...], positions: list[np.ndarray]) -> tuple[np.ndarray, ...]:
        """Per output, flat owner indices; they depend on the residues only (not on the
        unlinked coordinates), so they are computed once per residue tuple."""
        cached = self._owner_cache.get(residues)
        if cached is not None:
            return cached
        counts = [len(p) for p in positions]
        multipliers = [int(np.prod(counts[k + 1 :], dtype=np.int64)) for k in range(len(counts))]
        owners = []
        for out_shape in self.out_shapes:
            owner = np.zeros((1,) * len(out_shape), dtype=np.int64)
            for link, pos, mult in zip(self.links, positions, multipliers, strict=True):
                n_out = out_shape[link.out_axis]
                along = np.full(n_out, -1, dtype=np.int64)
                centers = center(pos, self.shape[link.axis], n_out)
                for offset in range(link.lo, link.hi + 1):
                    at = centers + offset
                    inside = (at >= 0) & (at < n_out)
                    along[at[inside]] = np.arange(len(pos))[inside]
                shaped = [1] * len(out_shape)
                shaped[link.out_axis] = n_out
                placed = along.reshape(shaped)
                owner = np.where((owner < 0) | (placed < 0), -1, owner + placed * mult)
            owners.append(np.broadcast_to(owner, out_shape).reshape(-1).copy())
        result = tuple(owners)
        held = sum(o.nbytes for entry in self._owner_cache.values() for o in entry)
        if held + sum(o.nbytes for o in result) <= OWNER_CACHE_BYTES:
            self._owner_cache[residues] = result
        return result


def coloring(
    shape: tuple[int, ...], links: Sequence[Link], out_shapes: Sequence[tuple[int, ...]], origin: str
) -> Coloring:
    """The colouring of `links` (StructureMismatch if they do not fit the shapes)."""
    seen_in, seen_out = set(), set()
    for link in links:
        if not 0 <= link.axis < len(shape):
            raise StructureMismatch(f"axis {link.axis} does not exist: the tensor has shape {shape}")
        for out_shape in out_shapes:
            if not 0 <= link.out_axis < len(out_shape):
                raise StructureMismatch(
                    f"output_axis {link.out_axis} does not exist: an output has shape {out_shape}"
                )
        if link.axis in seen_in or link.out_axis in seen_out:
            raise StructureMismatch(f"axis {link.axis} -> {link.out_axis}: each axis may be linked once")
        if link.lo > link.hi:
            raise StructureMismatch(f"axis {link.axis}: window [{link.lo}, {link.hi}] is empty")
        seen_in.add(link.axis)
        seen_out.add(link.out_axis)
    ordered = tuple(sorted(links, key=lambda link: link.axis))
    periods = tuple(
        _period(shape[link.axis], [o[link.out_axis] for o in out_shapes], link) for link in ordered
    )
    return Coloring(tuple(shape), ordered, tuple(tuple(o) for o in out_shapes), periods, origin)


def _period(n_in: int, n_outs: list[int], link: Link) -> int:
    """The smallest index shift along the input axis that makes boxes disjoint on every output."""
    index = np.arange(n_in)
    width = link.hi - link.lo
    for p in range(1, n_in):
        if all(int(np.min(center(index[p:], n_in, n) - center(index[:-p], n_in, n))) > width for n in n_outs):
            return p
    return n_in


def worthwhile(c: Coloring, extra_calls: int) -> bool:
    size = int(np.prod(c.shape, dtype=np.int64))
    return 2 * c.size + extra_calls <= WORTH * 2 * size


# -- detection --------------------------------------------------------------------------

Footprint = Callable[[int], tuple[np.ndarray, ...]]  # flat element -> per output, moved mask


def detect(
    shape: tuple[int, ...], out_shapes: Sequence[tuple[int, ...]], footprint: Footprint, seed: int
) -> tuple[Link, ...] | None:
    """Links read off single-element probes, or None where nothing can be said.

    The probe's base is an element near the middle whose footprint is not empty (seeded
    fallbacks: a zero derivative there, a ReLU's negative side, moves nothing); each axis
    is then walked WALK elements, and probed a quarter of its length away. Input axis a is
    linked to output axis d where, on every output, the footprints' extents along d follow
    the mapped position c(i) with offsets that vary by at most one over the walk (stride
    phases) and never span the whole axis.
    A footprint can underestimate the true one (an output whose derivative happens to be
    zero at the probe), which is why colored results are cross-checked all the same."""
    if int(np.prod(shape, dtype=np.int64)) < DETECT_MIN or not out_shapes:
        return None
    cache: dict[int, tuple[np.ndarray, ...]] = {}

    def probe(index: tuple[int, ...]) -> tuple[np.ndarray, ...]:
        flat = int(np.ravel_multi_index(index, shape))
        if flat not in cache:
            cache[flat] = tuple(m.reshape(o) for m, o in zip(footprint(flat), out_shapes, strict=True))
        return cache[flat]

    rng = np.random.default_rng(seed)
    starts = [tuple(max(0, min(n // 2, n - WALK)) for n in shape)]
    starts += [tuple(int(rng.integers(0, max(n - WALK, 0) + 1)) for n in shape) for _ in range(3)]
    base = next((s for s in starts if any(m.any() for m in probe(s))), None)
    if base is None:
        return None
    claims: dict[int, list[tuple[tuple[bool, int], Link]]] = {}
    for a, n_in in enumerate(shape):
        if n_in == 1:
            continue
        steps = [base[a] + k for k in range(WALK) if base[a] + k < n_in]
        if n_in >= 2 * WALK:  # and a quarter of the axis away: a constant footprint is no window
            steps.append(base[a] + n_in // 4 if base[a] < n_in // 2 else base[a] - n_in // 4)
        walk = [(*base[:a], i, *base[a + 1 :]) for i in steps]
        masks = [probe(index) for index in walk]
        for d in range(min(len(o) for o in out_shapes)):
            found = _link(a, d, walk, masks, shape, out_shapes)
            if found is not None:
                claims.setdefault(d, []).append(found)
    # an output axis two input axes seem to follow (a short axis can, by chance) goes to the
    # one of its own length whose window kept its place exactly, if exactly one does best
    links = []
    for rivals in claims.values():
        rivals.sort(key=lambda c: c[0])
        if len(rivals) == 1 or rivals[0][0] < rivals[1][0]:
            links.append(rivals[0][1])
    return tuple(sorted(links, key=lambda link: link.axis))


def _link(
    a: int,
    d: int,
    walk: list[tuple[int, ...]],
    masks: list[tuple[np.ndarray, ...]],
    shape: tuple[int, ...],
    out_shapes: Sequence[tuple[int, ...]],
) -> tuple[tuple[bool, int], Link] | None:
    """The link a -> d the probes show, with its rank among rivals (lower is better)."""
    lows, highs = [], []
    for k, out_shape in enumerate(out_shapes):
        n_out = out_shape[d]
        seen = 0
        for index, mask in zip(walk, masks, strict=True):
            along = np.nonzero(mask[k].any(axis=tuple(x for x in range(mask[k].ndim) if x != d)))[0]
            if along.size == 0:
                continue
            seen += 1
            c = int(center(np.array(index[a]), shape[a], n_out))
            lo, hi = int(along[0]) - c, int(along[-1]) - c
            if hi - lo + 1 >= n_out:
                return None  # the whole axis: dense along d
            lows.append(lo)
            highs.append(hi)
        if seen < 2:
            return None  # too few probes moved this output to tell
    spread = max(max(lows) - min(lows), max(highs) - min(highs))
    if spread > 1:
        return None
    same_length = all(o[d] == shape[a] for o in out_shapes)
    # lengths that do not divide (a stride-2 window over 9 elements: 5 outputs) drift against
    # c(i) along the axis: offsets the walk did not see differ by one at most
    drift = int(any(o[d] % shape[a] and shape[a] % o[d] for o in out_shapes))
    return (not same_length, spread), Link(a, d, min(lows) - drift, max(highs) + drift)
