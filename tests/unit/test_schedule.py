"""cost.py's estimates and schedule.py's partition and queue: every plan placed once, the
same partition on every machine, balanced by cost, warm-ups kept together, stealing only
where it pays."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specgrad.compile import compile_spec
from specgrad.cost import estimate, warmup
from specgrad.model import Method
from specgrad.schedule import Bin, Queue, Unit, batches, partition
from specgrad.validate import parse_spec
from tests.conftest import SPECS

NO_WARMUP = lambda need: 0.0


def _units(costs: list[float], groups: list[str] | None = None) -> list[Unit]:
    return [
        Unit(key=i, name=f"u{i:04d}", seconds=c, group=groups[i] if groups else "", needs=frozenset())
        for i, c in enumerate(costs)
    ]


@given(
    costs=st.lists(st.floats(0.0, 100.0, allow_nan=False), min_size=0, max_size=60),
    bins=st.integers(1, 9),
)
@settings(max_examples=150, deadline=None)
def test_every_unit_lands_in_exactly_one_bin_and_greedy_bounds_hold(costs: list[float], bins: int) -> None:
    units = _units(costs)
    out = partition(units, bins, NO_WARMUP)
    placed = [u.key for b in out for u in b.units]
    assert sorted(placed) == list(range(len(costs)))
    assert len(out) == bins
    # longest-first list scheduling: no bin ends later than the average plus the largest unit
    if costs:
        assert max(b.load for b in out) <= sum(costs) / bins + max(costs) + 1e-9


@given(costs=st.lists(st.floats(0.0, 10.0, allow_nan=False), min_size=1, max_size=40), seed=st.randoms())
@settings(max_examples=80, deadline=None)
def test_the_partition_does_not_depend_on_the_order_units_come_in(costs: list[float], seed: object) -> None:
    units = _units(costs)
    shuffled = list(units)
    seed.shuffle(shuffled)  # type: ignore[attr-defined]
    keys = lambda bins: [[u.key for u in b.units] for b in bins]
    assert keys(partition(units, 3, NO_WARMUP)) == keys(partition(shuffled, 3, NO_WARMUP))


def test_one_huge_check_starts_at_once_and_the_rest_go_to_the_other_workers() -> None:
    units = _units([100.0] + [1.0] * 50)
    huge, rest = partition(units, 2, NO_WARMUP)
    assert [u.key for u in huge.units] == [0] and len(rest.units) == 50
    queue = Queue.balanced(units, 2, NO_WARMUP)
    assert queue.take(0, set(), now=0.0) == units[0]


def test_a_group_that_fits_stays_on_one_worker_where_its_warm_up_is_paid_once() -> None:
    jax = frozenset({"framework:jax", "bind:jax:layer@jax"})
    units = [Unit(i, f"jax{i}", 0.5, jax, "layer@jax") for i in range(6)]
    units += [Unit(10 + i, f"np{i}", 1.0, frozenset({f"bind:numpy:n{i}"}), f"n{i}") for i in range(12)]
    bins = partition(units, 2, warmup)
    holding = [b for b in bins if any(u.group == "layer@jax" for u in b.units)]
    assert len(holding) == 1


def test_a_group_larger_than_a_fair_share_is_split() -> None:
    units = [Unit(i, f"c{i}", 10.0, frozenset({"bind:numpy:conv"}), "conv") for i in range(8)]
    bins = partition(units, 4, warmup)
    assert [len(b.units) for b in bins] == [2, 2, 2, 2]


def test_a_free_worker_steals_only_where_it_would_finish_first() -> None:
    torch = frozenset({"framework:torch"})
    units = [Unit(0, "a", 5.0), Unit(1, "b", 1.0, torch), Unit(2, "c", 0.5)]
    queue = Queue([Bin(units), Bin([])], warmup)
    assert queue.take(0, set(), now=0.0) == units[0]  # slot 0 runs a (5 s estimated)
    # slot 1 is free: b needs torch (1.5 s to import), less than a has left (4 s): it steals b
    assert queue.take(1, set(), now=1.0) == units[1]
    assert queue.take(1, {"framework:torch"}, now=1.1) == units[2]
    assert not queue


def test_no_steal_when_the_warm_up_costs_more_than_waiting() -> None:
    jax = frozenset({"framework:jax"})
    units = [Unit(0, "a", 0.2), Unit(1, "b", 0.1, jax)]
    queue = Queue([Bin(units), Bin([])], warmup)
    assert queue.take(0, set(), now=0.0) == units[0]
    assert queue.take(1, set(), now=0.05) is None  # 1.5 s of import to save 0.15 s
    assert queue.take(1, set(), now=0.05, force=True) == units[1]  # nobody else busy: go


def test_a_unit_given_back_goes_first_again() -> None:
    units = _units([3.0, 2.0])
    queue = Queue.balanced(units, 1, NO_WARMUP)
    first = queue.take(0, set(), now=0.0)
    assert first is not None
    queue.give_back(0, first)
    assert queue.take(0, set(), now=0.0) == first


# -- cost.py --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def conv_plan():  # type: ignore[no-untyped-def]
    spec = parse_spec(SPECS / "conv2d.yaml")
    return compile_spec(spec, dtypes=["float64"])[0]


def test_estimates_grow_with_the_tensors_and_follow_the_method(conv_plan) -> None:  # type: ignore[no-untyped-def]
    base = estimate(conv_plan).seconds
    x = conv_plan.spec.tensor("x")
    tensors = tuple(
        replace(t, shape=(4, *t.shape[1:])) if t.name == "x" else t for t in conv_plan.spec.tensors
    )
    bigger = replace(conv_plan.spec, tensors=tensors)
    assert x.shape[0] < 4 and estimate(replace(conv_plan, spec=bigger)).seconds > base
    fast = replace(conv_plan, method=Method(mode="directional", directions=1))
    dense = replace(conv_plan, method=Method(structured=False))
    sampled = replace(conv_plan, method=Method(structured=False, max_elements=4))
    assert estimate(fast).seconds < base < estimate(dense).seconds
    assert estimate(sampled).seconds < estimate(dense).seconds


def test_estimates_name_what_a_process_must_load_and_never_depend_on_the_machine() -> None:
    plans = compile_spec(parse_spec(SPECS / "frameworks" / "conv2d.yaml"), dtypes=["float64"])
    by_kind = {p.spec.name: estimate(p) for p in plans}
    torch = next(c for n, c in by_kind.items() if n.endswith("@torch"))
    assert "framework:torch" in torch.needs and any(n.startswith("bind:torch:") for n in torch.needs)
    agreement = next(c for n, c in by_kind.items() if "@" not in n)
    assert {"framework:numpy", "framework:torch", "framework:jax"} <= agreement.needs
    jax = next(c for n, c in by_kind.items() if n.endswith("@jax"))
    numpy = next(c for n, c in by_kind.items() if n.endswith("@numpy"))
    assert jax.seconds > numpy.seconds  # an eager jax call costs more than a numpy one
    assert warmup("framework:torch") > warmup("bind:numpy:x") and warmup("bind:jax:x") > warmup(
        "bind:numpy:x"
    )
    assert [estimate(p) for p in plans] == [estimate(p) for p in plans]


def test_a_gpu_plan_needs_cupy(conv_plan) -> None:  # type: ignore[no-untyped-def]
    assert "framework:cupy" in estimate(replace(conv_plan, device="gpu")).needs
    assert "framework:cupy" not in estimate(conv_plan).needs


def test_declared_structure_makes_a_check_cheaper(conv_plan) -> None:  # type: ignore[no-untyped-def]
    spec = replace(conv_plan.spec, structure={"x": "elementwise"})
    assert estimate(replace(conv_plan, spec=spec)).seconds < estimate(conv_plan).seconds


@given(
    costs=st.lists(st.floats(0.0, 10.0, allow_nan=False), min_size=0, max_size=50),
    groups=st.integers(1, 6),
    workers=st.integers(1, 8),
)
@settings(max_examples=100, deadline=None)
def test_batches_hold_every_unit_once_one_group_each(costs: list[float], groups: int, workers: int) -> None:
    units = _units(costs, [f"g{i % groups}" for i in range(len(costs))])
    out = batches(units, workers, NO_WARMUP)
    assert sorted(u.key for b in out for u in b) == list(range(len(costs)))
    assert all(len({u.group for u in b}) == 1 for b in out)
    totals = [sum(u.seconds for u in b) for b in out]
    assert totals == sorted(totals, reverse=True)
    # a batch is closed once it reaches its share: only its last unit may take it past
    share = sum(costs) / (4 * workers)
    assert all(sum(u.seconds for u in b[:-1]) < share or share == 0 for b in out)
